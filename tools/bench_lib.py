"""Pure helpers of tools/bench: the Services it declares, statistics, and the CSV, Markdown
and baseline-playbook text it writes. No I/O on the kernel here, so tests/tools can check
every function in milliseconds (tools/bench does the measuring).
"""

import csv
import io
import ipaddress
import math
import random
import re

SERVICE_CIDR = "10.96.0.0/12"
# The lab's pods (roles/lab_pods): the bench's pods have the same addresses.
POD_IPS = ("10.0.0.2", "10.0.0.3", "10.0.0.4")
SERVICE_PORT = 80
TARGET_PORT = 8080

# One row of results.csv: one mode at one N on one kernel.
RESULT_FIELDS = (
    "kernel", "mode", "services", "rules",
    "cold_s", "nochange_s", "onechange_s", "peak_rss_mb", "bare_apply_s",
    "first_median_ms", "first_p95_ms", "last_median_ms", "last_p95_ms",
    "connections", "failed_connections", "note",
)
# One row of baseline.csv: per-rule ansible.builtin.iptables against the module, same rules.
BASELINE_FIELDS = ("kernel", "services", "rules", "ansible_iptables_s", "empty_playbook_s", "module_playbook_s",
                   "module_cold_s", "speedup", "speedup_module")


def topology(prefix, pods=POD_IPS, bridge_nf=True):
    """The lab's shape as the lab_netns module's ``namespaces``, in namespaces named PREFIX*:
    a node with bridge cni0 10.0.0.1/24 (hairpin ports, forwarding, a route for the Service
    CIDR), pods pod1.. at ``pods``, and a client 192.168.100.2 routed to the Service CIDR
    through the node. ``bridge_nf`` sets bridge-nf-call-iptables in the node (only a kernel
    with br_netfilter loaded has it; the client's routed path does not need it)."""
    node, client = prefix + "node", prefix + "client"
    sysctls = {"net.ipv4.ip_forward": 1}
    if bridge_nf:
        sysctls["net.bridge.bridge-nf-call-iptables"] = 1
    pod_names = ["pod%d" % (index + 1) for index in range(len(pods))]
    node_links = [dict(name="lo"), dict(name="cni0", kind="bridge", addresses=["10.0.0.1/24"]),
                  dict(name="veth-client", kind="veth", peer=dict(name="eth0", netns=client),
                       addresses=["192.168.100.1/24"])]
    node_links += [dict(name="veth-" + name, kind="veth", peer=dict(name="eth0", netns=prefix + name),
                        master="cni0", hairpin=True) for name in pod_names]
    return ([dict(name=node, sysctls=sysctls, links=node_links, routes=[dict(to=SERVICE_CIDR, dev="cni0")])]
            + [dict(name=prefix + name, links=[dict(name="lo"), dict(name="eth0", addresses=[ip + "/24"])],
                    routes=[dict(to="default", via="10.0.0.1")]) for name, ip in zip(pod_names, pods)]
            + [dict(name=client, links=[dict(name="lo"), dict(name="eth0", addresses=["192.168.100.2/24"])],
                    routes=[dict(to=SERVICE_CIDR, via="192.168.100.1")])])


def cluster_ips(count, seed=0, cidr=SERVICE_CIDR):
    """count distinct ClusterIPs drawn at random (fixed seed) from cidr, never its network
    or broadcast address, so every run and every N declares the same first services."""
    network = ipaddress.ip_network(cidr)
    if count > network.num_addresses - 2:
        raise ValueError("%d services do not fit in %s" % (count, cidr))
    offsets = random.Random(seed).sample(range(1, network.num_addresses - 1), count)
    return [str(network.network_address + offset) for offset in offsets]


def services(count, seed=0, endpoints=POD_IPS):
    """The module's `services` argument: count Services, each port 80 -> 8080 on the pods.

    Names are zero-padded, so the declared order (which is the rule order in KUBE-SERVICES)
    is also the sorted order.
    """
    width = max(5, len(str(count)))
    return [
        dict(namespace="bench", name="svc-%0*d" % (width, index), protocol="TCP", cluster_ip=ip,
             port=SERVICE_PORT, target_port=TARGET_PORT, endpoints=list(endpoints))
        for index, ip in enumerate(cluster_ips(count, seed))
    ]


def with_one_endpoint_changed(declared):
    """The same Services with the middle one's last endpoint gone, as when one pod turns
    unready: the smallest change an endpoints controller sends kube-proxy."""
    changed = [dict(service, endpoints=list(service["endpoints"])) for service in declared]
    middle = changed[len(changed) // 2]
    middle["endpoints"] = middle["endpoints"][:-1]
    return changed


def percentile(values, fraction):
    """Linear-interpolated percentile (fraction 0..1) of a non-empty sequence."""
    if not values:
        raise ValueError("no values")
    ordered = sorted(values)
    position = (len(ordered) - 1) * fraction
    low = math.floor(position)
    high = math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(seconds):
    """Median and p95 of connection times in seconds, as milliseconds."""
    return dict(median_ms=percentile(seconds, 0.5) * 1000.0, p95_ms=percentile(seconds, 0.95) * 1000.0)


# A working data plane answers every probe; on a loaded machine one may time out now and then.
# More failures than this fraction of a target's connections mean the rules do not work.
MAX_FAILED_FRACTION = 0.05


def data_plane_failure(mode, count, probes, max_failed_fraction=MAX_FAILED_FRACTION):
    """Why the data plane measured for mode at count Services is broken, or None if it works.

    probes is tools/bench_probe.py's answer: {"IP:PORT": {"seconds": [...], "failed": N}}. It is
    broken when every connection to a target failed, or more than max_failed_fraction of them:
    a correctness check on the rules just programmed, whatever the latencies."""
    problems = []
    for target, probe in probes.items():
        failed = probe["failed"]
        tried = failed + len(probe["seconds"])
        if tried and failed == tried:
            problems.append("all %d connections to %s failed" % (tried, target))
        elif failed > max_failed_fraction * tried:
            problems.append("%d of %d connections to %s failed (more than %g %%)"
                            % (failed, tried, target, max_failed_fraction * 100))
    if not problems:
        return None
    return "%s mode, N=%d: %s" % (mode, count, "; ".join(problems))


def count_rules(text):
    """Rules in an iptables-restore text (its -A lines) or an nft script (its add rule lines)."""
    return sum(1 for line in text.splitlines() if line.startswith(("-A ", "add rule ")))


def predicted_seconds(previous, count):
    """A cold sync's time at count Services, from (N, seconds) measured at a smaller N.

    From N >= 1000 it assumes growth with N squared: the nf_tables paths measured here grow
    faster than linearly there, and a linear guess would start runs that take hours. Below,
    the fixed cost of a run dominates, and it assumes linear growth. None without a previous."""
    if previous is None:
        return None
    size, seconds = previous
    return seconds * (count / float(size)) ** (2 if size >= 1000 else 1)


# One row of lab.csv: ansible-playbook lab.yml as a student runs it, medians of a few rounds.
LAB_FIELDS = ("kernel", "mode", "rounds", "ping_s", "cold_s", "noop_s", "noop_changed", "teardown_s")


def recap_changed(output, host="localhost"):
    """The changed= count of ansible-playbook's PLAY RECAP line for host."""
    found = re.search(r"^%s\s*:.*\bchanged=(\d+)" % re.escape(host), output, re.MULTILINE)
    if not found:
        raise ValueError("no PLAY RECAP line for %s in the output" % host)
    return int(found.group(1))


def loopback_ssh_inventory(host, port, key, known_hosts):
    """An inventory (YAML) with one host of the group lab reached over SSH at 127.0.0.1:PORT
    as root, as a remote Debian/Ubuntu host is: key login, the system's /usr/bin/python3."""
    return (
        "all:\n  children:\n    lab:\n      hosts:\n        %s:\n"
        "          ansible_host: 127.0.0.1\n"
        "          ansible_port: %d\n"
        "          ansible_user: root\n"
        "          ansible_ssh_private_key_file: %s\n"
        "          ansible_ssh_common_args: -F /dev/null -o StrictHostKeyChecking=no -o UserKnownHostsFile=%s\n"
        "          ansible_python_interpreter: /usr/bin/python3\n" % (host, port, key, known_hosts))


def to_csv(rows, fields):
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({key: _cell(row.get(key)) for key in fields})
    return out.getvalue()


def from_csv(text):
    return list(csv.DictReader(io.StringIO(text)))


def _cell(value):
    if value is None:
        return ""
    if isinstance(value, float):
        return "%.6g" % value
    return value


def markdown_table(rows, fields, headers=None):
    """A GitHub Markdown table; empty cells for missing values."""
    headers = headers or fields
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    for row in rows:
        lines.append("| " + " | ".join(_md_cell(row.get(key)) for key in fields) + " |")
    return "\n".join(lines) + "\n"


def _md_cell(value):
    if value is None or value == "":
        return ""
    if isinstance(value, float):
        return _round(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return str(value)
    return str(value) if "." not in str(value) else _round(number)


def _round(number):
    """Three significant digits, plain notation: 0.000123 -> 0.000123, 1234.5 -> 1235."""
    if number == 0:
        return "0"
    digits = max(0, 2 - int(math.floor(math.log10(abs(number)))))
    return "%.*f" % (digits, number)


def baseline_rule(chain, rule_args):
    """One kube-proxy nat rule (iptables-restore arguments after `-A CHAIN`) as the options
    of ansible.builtin.iptables, which has one option per match it knows.

    It has none for `-m statistic --probability` nor for MARK's `--or-mark`/`--xor-mark`:
    those words are left out (the rule is still added, one module run per rule, which is what
    is being measured; docs/performance.md says so). Any other word it cannot say is an error.
    """
    words = _split(rule_args)
    options = dict(table="nat", chain=chain, chain_management=True)
    position = 0
    negate = False
    while position < len(words):
        word = words[position]
        value = words[position + 1] if position + 1 < len(words) else None
        step = 2
        if word == "!":
            negate, step = True, 1
        elif word == "-m" and value == "comment":
            options["comment"] = words[position + 3]
            step = 4
        elif word == "-m" and value in ("tcp", "udp", "sctp"):
            options.setdefault("match", []).append(value)
        elif word == "-p":
            options["protocol"] = value
        elif word == "-d":
            options["destination"] = ("!" if negate else "") + value
            negate = False
        elif word == "-s":
            options["source"] = ("!" if negate else "") + value
            negate = False
        elif word == "--dport":
            options["destination_port"] = value
        elif word == "-j":
            options["jump"] = value
        elif word == "--to-destination":
            options["to_destination"] = value
        elif word == "-m" and value == "statistic":
            step = 6            # -m statistic --mode random --probability P
        elif word in ("--or-mark", "--xor-mark"):
            step = 2
        elif word == "--random-fully":
            step = 1
        else:
            raise ValueError("no ansible.builtin.iptables option for %r in %r" % (word, rule_args))
        position += step
    return options


def _split(text):
    """Split restore arguments, keeping a double-quoted comment as one word."""
    words, current, quoted = [], [], False
    for char in text:
        if char == '"':
            quoted = not quoted
        elif char == " " and not quoted:
            if current:
                words.append("".join(current))
                current = []
        else:
            current.append(char)
    if current:
        words.append("".join(current))
    return words


def baseline_rules(restore_text):
    """Per-service nat rules of a rendered iptables restore text (KUBE-SERVICES dispatch,
    KUBE-SVC-*, KUBE-SEP-*), in order, as ansible.builtin.iptables options. The fixed
    chains (masquerade, nodeports, jumps from built-ins) are the same few rules at any N and
    are left out of the baseline on purpose: they do not grow with N (tools/bench creates
    them first, untimed).

    Ordered so every rule's target chain exists before the rule: endpoint chains, then
    service chains, then the dispatch rules (iptables refuses a jump to a missing chain)."""
    rules, in_nat = [], False
    for line in restore_text.splitlines():
        if line.startswith("*"):
            in_nat = line == "*nat"
        if not in_nat or not line.startswith("-A "):
            continue
        _a, chain, rest = line.split(" ", 2)
        if chain.startswith(("KUBE-SVC-", "KUBE-SEP-")) or (chain == "KUBE-SERVICES" and "KUBE-SVC-" in rest):
            rules.append(baseline_rule(chain, rest))
    order = {"KUBE-SEP": 0, "KUBE-SVC": 1}
    return sorted(rules, key=lambda options: order.get(options["chain"][:8], 2))


def baseline_chains(rules):
    """The chains the per-service rules live in, each once, in the rules' order (the dispatch
    chain KUBE-SERVICES is made beforehand with the fixed chains)."""
    chains = []
    for options in rules:
        if options["chain"] != "KUBE-SERVICES" and options["chain"] not in chains:
            chains.append(options["chain"])
    return chains


# Where a playbook's text names its variables file: tools/bench writes the file and puts its
# path (as a YAML string) in place of this word.
VARS_FILE_PLACEHOLDER = "VARFILE"


def baseline_playbook():
    """A playbook creating each chain, then adding each rule, with ansible.builtin.iptables,
    one loop item (one module run) per chain and per rule, as a role written rule by rule
    would (ansible.builtin.iptables creates a chain only in a task without rule options).
    Its vars file is VARS_FILE_PLACEHOLDER. It runs on localhost; tools/bench starts it
    inside the bench node's namespace (ip netns exec), so every iptables call it makes
    lands there."""
    return (
        "---\n"
        "- name: Baseline, one ansible.builtin.iptables task run per rule\n"
        "  hosts: localhost\n"
        "  connection: local\n"
        "  gather_facts: false\n"
        "  vars_files:\n"
        "    - %s\n"
        "  tasks:\n"
        "    - name: Create the chain\n"
        "      ansible.builtin.iptables:\n"
        "        table: nat\n"
        "        chain: \"{{ item }}\"\n"
        "        chain_management: true\n"
        "      loop: \"{{ bench_chains }}\"\n"
        "    - name: Add the rule\n"
        "      ansible.builtin.iptables:\n"
        "        table: \"{{ item.table }}\"\n"
        "        chain: \"{{ item.chain }}\"\n"
        "        chain_management: true\n"
        "        protocol: \"{{ item.protocol | default(omit) }}\"\n"
        "        match: \"{{ item.match | default(omit) }}\"\n"
        "        source: \"{{ item.source | default(omit) }}\"\n"
        "        destination: \"{{ item.destination | default(omit) }}\"\n"
        "        destination_port: \"{{ item.destination_port | default(omit) }}\"\n"
        "        comment: \"{{ item.comment | default(omit) }}\"\n"
        "        jump: \"{{ item.jump | default(omit) }}\"\n"
        "        to_destination: \"{{ item.to_destination | default(omit) }}\"\n"
        "      loop: \"{{ bench_rules }}\"\n"
        "      loop_control:\n"
        "        label: \"{{ item.chain }}\"\n"
    ) % VARS_FILE_PLACEHOLDER


def series(rows):
    """Measured rows (not the skipped) grouped by (kernel, mode), sorted by N: one line of a plot."""
    groups = {}
    for row in rows:
        if row.get("cold_s") not in (None, ""):
            groups.setdefault((row["kernel"], row["mode"]), []).append(row)
    return {key: sorted(group, key=lambda row: int(row["services"])) for key, group in groups.items()}
