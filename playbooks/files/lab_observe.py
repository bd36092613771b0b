#!/usr/bin/env python3
"""kube-proxy-lab's observer (playbooks/observe.yml), Python standard library only.

    lab_observe.py requests --protocol tcp|udp --address A --port P [--count N] [--timeout S]
                                                                   # inside the source namespace
    lab_observe.py trace --kind xtables|nft -- REQUEST_ARGV...     # inside the node namespace
    lab_observe.py locate < target.json                            # on the lab's host: who handles a target
    lab_observe.py holds < service.json                            # on the lab's host: is the ClusterIP there
    lab_observe.py report < observation.json                       # anywhere: the text for a student

``requests`` sends N requests, over TCP one HTTP GET per connection (as N curls would, in
one process), over UDP one datagram per fresh socket (as N separate DNS queries are), and
prints, as JSON, how many each pod answered and the client addresses it saw.
``trace`` runs the kernel's trace monitor (``xtables-monitor --trace`` or
``nft monitor trace``), runs REQUEST_ARGV (one request from the source) while it listens,
and prints the monitor's lines as JSON. ``locate`` says, for a node port, load balancer or
external IP, whether the node's kube-proxy rules hold it for the Service (read live) and
which node's rules handle a connection from the source (the source's first hop); ``holds``
says whether the node's live rules hold the Service's ClusterIP. ``report`` turns what
observe.yml collected into tables: the distribution, the kernel's counters, the conntrack
entries, the path of one request through the rules.
"""

import argparse
import collections
import http.client
import json
import re
import socket
import subprocess
import sys
import time

ANSWER = re.compile(r"^pod=(?P<pod>\S+) client=(?P<ip>[0-9.]+):\d+$")
COUNTED_RULE = re.compile(r"^\[(?P<packets>\d+):\d+\] -A (?P<chain>\S+) (?P<rule>.*)$")
TARGET = re.compile(r"-j (?P<target>\S+)(?P<args>.*)$")
CONNTRACK_FIELD = re.compile(r"(\w+)=(\S+)")
XT_TRACE = re.compile(r"^\s*TRACE: \d+ (?P<id>\w+) (?P<table>[\w-]+):(?P<chain>[^:]+):(?P<kind>rule|return|policy):(?P<rest>.*)$")
NFT_TRACE = re.compile(r"^trace id (?P<id>\w+) (?P<family>\w+) (?P<table>\S+) (?P<chain>\S+) (?P<kind>rule|verdict|policy|packet:)\s*(?P<rest>.*)$")
XT_PACKET_ID = re.compile(r" ID=(\d+) ")
NFT_PACKET_ID = re.compile(r" ip id (\d+) ")
# xtables-monitor prints a chain's return as nf_tables' numeric verdict.
XT_VERDICTS = {"0xfffffffb": "RETURN"}
IPVS_SERVICE = re.compile(r"^(?P<proto>TCP|UDP|SCTP)\s+(?P<addr>\S+)\s+(?P<conns>\d+)")
IPVS_REAL = re.compile(r"^\s+->\s+(?P<addr>\S+)\s+(?P<conns>\d+)")
# Seconds the monitor gets to subscribe before the request, and to print after it.
MONITOR_SETTLE = 0.5


# ---------------------------------------------------------------- requests

def request_url(protocol, address, port):
    """How the report names where the requests went: the URL the pods answer GET on for TCP,
    udp://ADDRESS:PORT for UDP."""
    return ("http://%s:%s/" if protocol == "tcp" else "udp://%s:%s") % (address, port)


def one_request(host, port, timeout):
    connection = http.client.HTTPConnection(host, port, timeout=timeout)
    try:
        connection.request("GET", "/")
        return connection.getresponse().read().decode(errors="replace").strip()
    finally:
        connection.close()


class Datagrams:
    """UDP requests as separate DNS queries are: each one datagram from a fresh socket, so from
    a source port of its own, through a conntrack entry of its own that the rules balance anew,
    and answered by one datagram."""

    def __init__(self, open_socket=socket.socket):
        self.open_socket = open_socket
        self.used_ports = set()

    def fresh_socket(self):
        """A UDP socket bound to a source port this run has not sent from yet. The kernel hands
        a closed socket's port out again at random, and a datagram from it would match the
        earlier one's conntrack entry (kept 30 s) and reach the same pod without being balanced;
        a port it repeats stays bound while it picks another."""
        repeated = []
        try:
            while True:
                udp = self.open_socket(socket.AF_INET, socket.SOCK_DGRAM)
                udp.bind(("0.0.0.0", 0))
                port = udp.getsockname()[1]
                if port not in self.used_ports:
                    self.used_ports.add(port)
                    return udp
                repeated.append(udp)
        finally:
            for udp in repeated:
                udp.close()

    def __call__(self, host, port, timeout):
        with self.fresh_socket() as udp:
            udp.settimeout(timeout)
            # Connected, the socket takes only the Service's answer, and the ICMP port unreachable
            # that rejects a Service without endpoints comes back as ConnectionRefusedError.
            udp.connect((host, port))
            udp.send(b"lab observe\n")
            return udp.recv(2048).decode(errors="replace").strip()


def sender(protocol):
    """What sends one request and returns the answer line, for the Service's protocol."""
    return one_request if protocol == "tcp" else Datagrams()


def requests(protocol, address, port, count, timeout):
    ask = sender(protocol)
    pods = collections.OrderedDict()
    failed = collections.Counter()
    for _ in range(count):
        try:
            match = ANSWER.match(ask(address, port, timeout))
        except (OSError, http.client.HTTPException) as error:
            failed[type(error).__name__] += 1
            continue
        if not match:
            failed["unexpected answer"] += 1
            continue
        pod = pods.setdefault(match["pod"], {"count": 0, "clients": collections.Counter()})
        pod["count"] += 1
        pod["clients"][match["ip"]] += 1
    return {"url": request_url(protocol, address, port), "count": count, "pods": pods, "failed": dict(failed)}


# ---------------------------------------------------------------- trace

def trace(kind, request_argv):
    """Run the monitor around one request; its output lines."""
    monitor = ["xtables-monitor", "--trace"] if kind == "xtables" else ["nft", "monitor", "trace"]
    with subprocess.Popen(monitor, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as process:
        try:
            time.sleep(MONITOR_SETTLE)
            answer = subprocess.run(request_argv, capture_output=True, text=True, check=False)
            time.sleep(MONITOR_SETTLE)
        finally:
            process.terminate()
        output, _ = process.communicate(timeout=5)
    return {"monitor": " ".join(monitor), "lines": output.splitlines(), "request": answer.stdout.strip()}


# ---------------------------------------------------------------- parsers

def counted_rules(save_text):
    """[(chain, rule, packets)] from ``iptables-save -c``; repeated rules keep their order."""
    rules = []
    for line in save_text.splitlines():
        match = COUNTED_RULE.match(line)
        if match:
            rules.append((match["chain"], match["rule"], int(match["packets"])))
    return rules


def counter_deltas(before_text, after_text):
    """[(chain, rule, packets now, packets added)]: after's rules against before's."""
    seen = collections.Counter()
    before = {}
    for chain, rule, packets in counted_rules(before_text):
        seen[(chain, rule)] += 1
        before[(chain, rule, seen[(chain, rule)])] = packets
    seen.clear()
    result = []
    for chain, rule, packets in counted_rules(after_text):
        seen[(chain, rule)] += 1
        result.append((chain, rule, packets, packets - before.get((chain, rule, seen[(chain, rule)]), 0)))
    return result


def catches(rule, proto, port, address=None):
    """Whether a KUBE-SERVICES or KUBE-NODEPORTS rule matches PROTO packets to PORT (and ADDRESS):
    a UDP and a TCP Service may share an address and a port number."""
    return ((address is None or re.search(r"-d %s(/32)? " % re.escape(address), rule) is not None)
            and "-p %s " % proto in rule and "--dport %s " % port in rule + " ")


def iptables_service_chains(rules, vip, proto, port):
    """The service's KUBE-SVC chain and its KUBE-SEP chains, in rule order, with each SEP's DNAT target."""
    svc = None
    for chain, rule, *_ in rules:
        target = TARGET.search(rule)
        if (chain == "KUBE-SERVICES" and target and target["target"].startswith("KUBE-SVC-")
                and catches(rule, proto, port, vip)):
            svc = target["target"]
            break
    seps = []
    for chain, rule, *_ in rules:
        target = TARGET.search(rule)
        if chain == svc and target and target["target"].startswith("KUBE-SEP-") and target["target"] not in seps:
            seps.append(target["target"])
    dnat = {}
    for chain, rule, *_ in rules:
        match = re.search(r"--to-destination ([0-9.]+):\d+", rule)
        if chain in seps and match:
            dnat[chain] = match.group(1)
    return svc, seps, dnat


def nft_endpoints(table_text, vip, proto, port):
    """Endpoint IPs of the service's numgen vmap in ``nft list table ip kube-proxy``, and that line."""
    match = re.search(r"%s \. %s \. %s : goto (\S+?)[,\s}]" % (re.escape(vip), proto, port), table_text)
    if not match:
        return [], ""
    chain = match.group(1)
    body = re.search(r"chain %s \{(.*?)\n\t\}" % re.escape(chain), table_text, re.S)
    line = next((text.strip() for text in (body.group(1) if body else "").splitlines() if "numgen" in text), "")
    return re.findall(r"__([0-9.]+)/\d+", line), line


def ipvs_block(stats_text, vip, proto, port):
    """(virtual server line, {real ip: conns}) of PROTO VIP:port in ``ipvsadm -Ln --stats``."""
    lines, reals, inside = [], collections.OrderedDict(), False
    for line in stats_text.splitlines():
        service = IPVS_SERVICE.match(line)
        if service:
            inside = (service["proto"], service["addr"]) == (proto.upper(), "%s:%s" % (vip, port))
            if inside:
                lines.append(line)
            continue
        real = IPVS_REAL.match(line)
        if inside and real:
            lines.append(line)
            reals[real["addr"].rsplit(":", 1)[0]] = int(real["conns"])
    return lines, reals


def conntrack_entries(text, vip, proto, port):
    """Entries of ``conntrack -L -p PROTO -d VIP`` for the port, as (original source, pod address,
    line); the line starts with the protocol's name, and [UNREPLIED] ones too have a reply tuple."""
    entries = []
    for line in text.splitlines():
        fields = CONNTRACK_FIELD.findall(line)
        values = collections.defaultdict(list)
        for key, value in fields:
            values[key].append(value)
        if (line.split()[:1] != [proto] or len(values["src"]) < 2 or values["dst"][0] != vip
                or values["dport"][:1] != [str(port)]):
            continue
        entries.append(("%s:%s" % (values["src"][0], values["sport"][0]), values["src"][1], line.strip()))
    return entries


# ---------------------------------------------------------------- the path of one connection

def walk_counters(deltas, start):
    """The rules one new connection went through, from the counters it raised: from the hook
    chain, the first rule that counted it in each chain is followed into its target."""
    chains = collections.OrderedDict()
    for chain, rule, _packets, added in deltas:
        chains.setdefault(chain, []).append((rule, added))
    steps = []

    def visit(chain, depth):
        if depth > 10:
            return False
        for rule, added in chains.get(chain, []):
            if added <= 0:
                continue
            target = TARGET.search(rule)
            name = target["target"] if target else ""
            steps.append((chain, rule))
            if name in chains:
                if visit(name, depth + 1):
                    return True
                continue
            if name in ("DNAT", "ACCEPT", "DROP", "REJECT"):
                return True
            if name == "RETURN":
                return False
        return False

    visit(start, 0)
    return steps


def trace_steps(kind, lines):
    """(where, rule and verdict) for the connection's first packet, the only one the nat hooks
    see. The monitor's trace ids are reused by later packets, so the packet is told by its IP
    header's id, printed in each packet line (xtables ``ID=N``, nft ``ip ... id N``)."""
    pattern, packet_id = (XT_TRACE, XT_PACKET_ID) if kind == "xtables" else (NFT_TRACE, NFT_PACKET_ID)
    first = current = None
    steps = []
    for line in lines:
        packet = packet_id.search(line) if ("PACKET:" in line or "packet:" in line) else None
        if packet:
            current = packet.group(1)
            first = first or current
            continue
        match = pattern.match(line)
        if not match or current != first or match["kind"] in ("packet:", "return"):
            continue
        where = "%s %s" % (match["table"], match["chain"])
        rest = match["rest"].strip()
        if kind == "xtables" and match["kind"] == "rule":
            # rule:0x5:JUMP:KUBE-SERVICES  -4 -t nat -A OUTPUT ... : keep the rule and its verdict
            handle_verdict, _sep, rule = rest.partition("  ")
            verdict = ":".join(handle_verdict.split(":")[1:])
            rest = "%s  => %s" % (re.sub(r"^-4 -t \S+ -A \S+ ", "", rule.strip()), XT_VERDICTS.get(verdict, verdict))
        elif match["kind"] != "rule":
            rest = "%s %s" % (match["kind"], rest)
        steps.append((where, rest))
    return steps


# ---------------------------------------------------------------- locate, holds: what the node's live rules hold

# What each target is called in a sentence, and what builds a Service that has it.
TARGETS = {
    "node-port": ("node port", "make lab TYPE=NodePort (or TYPE=LoadBalancer)"),
    "load-balancer": ("load balancer IP", "make lab TYPE=LoadBalancer"),
    "external-ip": ("external IP", "make lab TYPE=NodePort (or TYPE=LoadBalancer)"),
}
READ_RULES = {"iptables": ["iptables-save", "-t", "nat"], "nftables": ["nft", "list", "table", "ip", "kube-proxy"],
              "ipvs": ["ipvsadm", "-Ln"]}


def nft_elements(table_text, key):
    """The chains the table's map elements KEY (``ip . tcp . port`` or ``tcp . port``) go to."""
    return re.findall(r"(?:^|[{,])\s*%s : goto (\S+?)(?=[,\s}])" % re.escape(key), table_text, re.M)


def programmed(mode, text, service, target, address, port, proto):
    """Whether the mode's rules (``READ_RULES``) hold TARGET (address:port) for SERVICE."""
    if mode == "iptables":
        chain, address = ("KUBE-NODEPORTS", None) if target == "node-port" else ("KUBE-SERVICES", address)
        # kube-proxy's comment names the service port: ns/name, or ns/name:portname for a named one
        names_service = re.compile(r'--comment "%s(:\S+)?[ "]' % re.escape(service))
        return any(line.startswith("-A %s " % chain) and names_service.search(line) and catches(line, proto, port, address)
                   for line in text.splitlines())
    if mode == "nftables":
        key = "%s . %s" % (proto, port) if target == "node-port" else "%s . %s . %s" % (address, proto, port)
        return any("-%s/%s/" % (service, proto) in chain for chain in nft_elements(text, key))
    # ipvs: one virtual server per address and port (ipvsadm names no Service)
    return re.search(r"^%s\s+%s:%s\s" % (proto.upper(), re.escape(address), port), text, re.M) is not None


def first_hops(routes_json, nodes):
    """The nodes a packet to the target goes to first, from ``ip -j route show match ADDR`` in
    the source (its longest matching route): the node whose node IP or bridge address is each
    gateway, None for a gateway that is no node. Several for a multipath route (a load balancer
    spreading connections over the nodes: the kernel picks one per connection)."""
    try:
        routes = json.loads(routes_json or "[]")
    except ValueError:
        return []

    def prefix(route):
        dst = route.get("dst", "default")
        return 0 if dst == "default" else int(dst.split("/")[1]) if "/" in dst else 32

    if not routes:
        return []
    route = max(routes, key=prefix)
    gateways = [hop.get("gateway") for hop in route.get("nexthops", [])] or [route.get("gateway")]
    by_address = {address: node["netns"] for node in nodes
                  for address in (node["ip"], node["bridge_address"].split("/")[0])}
    return [by_address.get(gateway) for gateway in gateways]


def locate(data, run=subprocess.run):
    """Where a connection to the target is handled, and whether the rules there hold it.

    A node port is DNATed by the node it is the port of, whoever sends; an external or load
    balancer IP by the source's own node (a pod's, or the node itself) or, from the client, by
    the node its route goes via. The connection comes "from outside" (kube-proxy's external
    traffic policy applies to it) when its source address is neither a pod's nor the node's own."""
    target, nodes = data["target"], data["nodes"]
    netns = [node["netns"] for node in nodes]
    source = data["source_netns"]
    if target == "node-port":
        handler, hop = data["node"], "the node port is %s's" % data["node"]
    elif source in netns:
        handler, hop = source, "the source is that node"
    else:
        route = run(["ip", "netns", "exec", source, "ip", "-j", "route", "show", "match", data["address"]],
                    capture_output=True, text=True, check=False)
        hops = first_hops(route.stdout, nodes) if route.returncode == 0 else []
        handler = hops[0] if len(hops) == 1 else None
        if handler:
            hop = "%s routes %s via %s" % (source, data["address"], handler)
        elif len(hops) > 1:
            hop = ("%s routes %s via %s (a multipath route: the kernel picks a node per connection)"
                   % (source, data["address"], " and ".join(hop or "a router" for hop in hops)))
        else:
            hop = "%s routes %s %s" % (source, data["address"], "via no node of this lab" if hops else "nowhere")
    result = {"address": data["address"], "address_port": data["port"],
              "handler": handler or "", "hop": hop, "read": " ".join(READ_RULES[data["mode"]]),
              "from_outside": source == data["client_netns"] or (source in netns and source != handler),
              "hook": "OUTPUT" if source == handler else "PREROUTING"}
    rules_netns = handler or data["node"]
    rules = run(["ip", "netns", "exec", rules_netns] + READ_RULES[data["mode"]], capture_output=True, text=True,
                check=False)
    result["rules_netns"] = rules_netns
    result["programmed"] = rules.returncode == 0 and programmed(
        data["mode"], rules.stdout, data["service"], target, data["address"], data["port"], data["protocol"])
    result["refusal"] = ""
    if not result["programmed"]:
        what, build = TARGETS[target]
        result["refusal"] = (
            "target=%s: %s has no %s %s:%s in %s's kube-proxy rules (read live with %s): the running Service is "
            "no %s Service. Build one first, %s, or observe its ClusterIP (target=cluster-ip)."
            % (target, data["service"], what, data["address"], data["port"], rules_netns, result["read"],
               "LoadBalancer" if target == "load-balancer" else "NodePort or LoadBalancer", build))
    return result


def holds(data, run=subprocess.run):
    """Whether the node's live kube-proxy rules hold the Service's ClusterIP, and if not, the
    refusal: observe.yml knows the dns Service whether or not the running lab was built with it."""
    rules = run(["ip", "netns", "exec", data["netns"]] + READ_RULES[data["mode"]], capture_output=True, text=True,
                check=False)
    held = rules.returncode == 0 and programmed(data["mode"], rules.stdout, data["service"], "cluster-ip",
                                                data["address"], data["port"], data["protocol"])
    refusal = "" if held else (
        "service=%s: %s's kube-proxy rules (read live with %s) have no ClusterIP %s:%s/%s for it: the running lab "
        "was built without this Service. Build it first: %s."
        % (data["service"], data["netns"], " ".join(READ_RULES[data["mode"]]), data["address"], data["port"],
           data["protocol"].upper(), data["build"]))
    return {"programmed": held, "refusal": refusal}


# ---------------------------------------------------------------- report

def percent(part, whole):
    return "%5.1f %%" % (100.0 * part / whole) if whole else "      -"


def distribution(data, endpoints):
    result = data["requests"]
    answered = result["pods"]
    names = [pod["name"] for pod in data["pods"]]
    names += [name for name in answered if name not in names]
    by_name = {pod["name"]: pod["ip"] for pod in data["pods"]}
    node_of = {pod["name"]: pod.get("node", "?") for pod in data["pods"]}
    # One node: the table the one-node lab always printed; pods on several nodes: which one.
    with_node = len(set(node_of.values())) > 1

    def row(name, ip, node, *rest):
        return "  %-8s %-10s " % (name, ip) + ("%-10s " % node if with_node else "") + "%6s %8s %9s   %s" % rest

    lines = ["%d requests from %s to %s (%s, mode %s):" % (result["count"], data["source"], result["url"],
                                                           data["service"], data["mode"])]
    if data["protocol"] == "udp":
        # The rules balance conntrack entries, not datagrams: each request is an entry of its own.
        lines.append("(each request: one datagram from a fresh socket, so from a source port of its own, as separate")
        lines.append(" DNS queries are; its answer: one datagram back)")
    lines += ["", row("pod", "ip", "node", "count", "share", "expected", "source address(es) the pod saw")]
    for name in names:
        pod = answered.get(name, {"count": 0, "clients": {}})
        ip = by_name.get(name, "?")
        expected = ("    ?" if endpoints is None else
                    "%5.1f %%" % (100.0 / len(endpoints)) if ip in endpoints else "  - (not an endpoint)")
        clients = ", ".join("%s (%d)" % item for item in sorted(pod["clients"].items())) or "-"
        lines.append(row(name, ip, node_of.get(name, "?"), pod["count"], percent(pod["count"], result["count"]),
                         expected, clients))
    failed = sum(result["failed"].values())
    if failed:
        lines.append(row("failed", "", "", failed, percent(failed, result["count"]), "0.0 %",
                         ", ".join("%s: %d" % item for item in sorted(result["failed"].items()))))
    lines.append("")
    if endpoints is None:
        lines.append("Endpoints programmed in the kernel: not read (no node known to handle the connection).")
        return lines
    lines.append("Endpoints programmed in the kernel: %s (%d, so each should get 1/%d)."
                 % (", ".join(endpoints) or "none", len(endpoints), max(len(endpoints), 1)))
    return lines


def destination(data):
    """The address and port the requests went to: the ClusterIP's, or the target's."""
    if data.get("target", "cluster-ip") == "cluster-ip":
        return data["cluster_ip"], data["port"]
    return data["address"], data["address_port"]


def policy_jump(rules, from_outside, jump):
    """The chain an EXT (external-) chain sends this source to: from outside, its last rule when
    that is a bare jump (none when it is not: the Local policy without local endpoints); from a
    pod or the node itself, the first jump to the cluster chain (the Local policy's short-circuit)."""
    targets = [(rule, found.group(1)) for rule in rules for found in [re.search(jump, rule)] if found]
    if from_outside:
        return targets[-1][1] if targets and re.match(r"^(-j|goto) \S+$", targets[-1][0].strip()) else None
    return next((chain for _rule, chain in targets if chain.startswith(("KUBE-SVC-", "service-"))), None)


def external_kernel_view(data):
    """kernel_view for a node port, load balancer or external IP: the rule that catches it, the
    Service's firewall (source ranges) and EXT chains, and the policy chain they lead this source to."""
    mode, (address, port) = data["mode"], destination(data)
    node, outside = data["handler"], data["from_outside"]
    what = TARGETS[data["target"]][0]
    lines = []
    if mode == "iptables":
        deltas = counter_deltas(data["before"]["iptables"], data["after"]["iptables"])
        if data["target"] == "node-port":
            entry = [d for d in deltas if d[0] == "KUBE-NODEPORTS" and catches(d[1], data["protocol"], port)]
        else:
            entry = [d for d in deltas if d[0] == "KUBE-SERVICES" and catches(d[1], data["protocol"], port, address)]
        chains = [TARGET.search(rule)["target"] for _chain, rule, *_ in entry if TARGET.search(rule)]
        rules_of = collections.OrderedDict()
        for chain, rule, *_ in deltas:
            rules_of.setdefault(chain, []).append(rule)
        for chain in list(chains):
            if chain.startswith("KUBE-FW-"):
                chains += [t["target"] for t in map(TARGET.search, rules_of.get(chain, [])) if t and t["target"] not in chains]
        ext = next((chain for chain in chains if chain.startswith("KUBE-EXT-")), None)
        policy = policy_jump(rules_of.get(ext, []), outside, r"-j (KUBE-SV[CL]-\S+)")
        seps = [t["target"] for t in map(TARGET.search, rules_of.get(policy, [])) if t and t["target"].startswith("KUBE-SEP-")]
        dnat = {chain: found.group(1) for chain, rule, *_ in deltas if chain in seps
                for found in [re.search(r"--to-destination ([0-9.]+):\d+", rule)] if found}
        endpoints = [dnat[sep] for sep in seps if sep in dnat]
        lines.append("iptables-save -c -t nat in %s (packets: total, +added by these requests): the %s's rule in %s,"
                     % (node, what, "KUBE-NODEPORTS" if data["target"] == "node-port" else "KUBE-SERVICES"))
        lines.append("then %s; there %s goes on to %s%s."
                     % (" and ".join(chains) or "no chain (not programmed)",
                        "a connection from outside" if outside else "a pod's or the node's own connection",
                        policy or "no chain (dropped: no endpoint for it)", " and its KUBE-SEP-*" if seps else ""))
        lines.extend("  %7d %+6d  -A %s %s" % (packets, added, chain, rule) for chain, rule, packets, added in entry)
        for wanted in chains + ([policy] if policy else []) + seps:
            lines.extend("  %7d %+6d  -A %s %s" % (packets, added, chain, rule)
                         for chain, rule, packets, added in deltas if chain == wanted)
        if any(chain.startswith("KUBE-FW-") for chain in chains):
            lines.append("A source outside the ranges falls through KUBE-FW-* un-DNATed; filter's KUBE-PROXY-FIREWALL drops it.")
    elif mode == "ipvs":
        block, reals_after = ipvs_block(data["after"]["ipvs"], address, data["protocol"], port)
        _block, reals_before = ipvs_block(data["before"]["ipvs"], address, data["protocol"], port)
        endpoints = list(reals_after)
        lines.append("ipvsadm -Ln --stats in %s, the %s's virtual server (Conns: connections scheduled to each"
                     % (node, what))
        lines.append("real server; +added by these requests):")
        lines.extend("  " + line for line in block)
        for ip, conns in reals_after.items():
            lines.append("  %-15s +%d connections" % (ip, conns - reals_before.get(ip, 0)))
    else:
        table = data["after"]["nftables"]
        proto = data["protocol"]
        key = "%s . %s" % (proto, port) if data["target"] == "node-port" else "%s . %s . %s" % (address, proto, port)
        chains = list(dict.fromkeys(nft_elements(table, key)))

        def body(chain):
            found = re.search(r"chain %s \{(.*?)\n\t\}" % re.escape(chain), table, re.S)
            return [text.strip() for text in (found.group(1) if found else "").splitlines() if text.strip()]

        ext = next((chain for chain in chains if chain.startswith("external-")), None)
        policy = policy_jump(body(ext) if ext else [], outside, r"goto ((?:service|local)-\S+)")
        numgen = next((line for line in (body(policy) if policy else []) if "numgen" in line), "")
        endpoints = re.findall(r"__([0-9.]+)/\d+", numgen)
        lines.append("nft list table ip kube-proxy in %s (no counters, see the ClusterIP's observe): the %s's"
                     % (node, what))
        lines.append("map element%s %s, and the chain%s it goes to:" % ("s" if len(chains) > 1 else "", key,
                                                                        "s" if len(chains) > 1 else ""))
        for chain in chains:
            lines.append("  chain %s:" % chain)
            lines.extend("    " + line for line in body(chain))
        lines.append("  then, for %s: %s" % ("a connection from outside" if outside else "a pod's or the node's own connection",
                                             policy or "none: dropped"))
        if numgen:
            lines.append("    " + numgen)
    return lines, endpoints


# What a nat rule's packet counter counts: nat sees only the first packet of each conntrack entry.
NAT_COUNTS = {
    "tcp": ["The nat table sees only a connection's first packet, so a count is a number of connections."],
    "udp": ["The nat table sees only the first datagram of a conntrack entry (one per source address and port),",
            "and each request came from a source port of its own, so a count is a number of requests."],
}


def kernel_view(data):
    """The mode's own counters for the service, and the endpoints they name."""
    if data.get("target", "cluster-ip") != "cluster-ip":
        return external_kernel_view(data)
    mode, vip, proto, port = data["mode"], data["cluster_ip"], data["protocol"], data["port"]
    lines = []
    if mode == "iptables":
        deltas = counter_deltas(data["before"]["iptables"], data["after"]["iptables"])
        svc, seps, dnat = iptables_service_chains(deltas, vip, proto, port)
        endpoints = [dnat[sep] for sep in seps if sep in dnat]
        lines.append("iptables-save -c -t nat, chains %s and its KUBE-SEP-* (packets: total, +added by these requests)." % svc)
        lines.extend(NAT_COUNTS[proto])
        for wanted in [svc] + seps:
            lines.extend("  %7d %+6d  -A %s %s" % (packets, added, chain, rule)
                         for chain, rule, packets, added in deltas if chain == wanted)
    elif mode == "ipvs":
        block, reals_after = ipvs_block(data["after"]["ipvs"], vip, proto, port)
        _block, reals_before = ipvs_block(data["before"]["ipvs"], vip, proto, port)
        endpoints = list(reals_after)
        lines.append("ipvsadm -Ln --stats (Conns: connections scheduled to each real server; +added by these requests):")
        lines.extend("  " + line for line in block)
        for ip, conns in reals_after.items():
            lines.append("  %-15s +%d connections" % (ip, conns - reals_before.get(ip, 0)))
    else:
        endpoints, vmap = nft_endpoints(data["after"]["nftables"], vip, proto, port)
        lines.append("nft list table ip kube-proxy: kube-proxy's rules carry no `counter`, so nftables keeps no")
        lines.append("per-rule counts (adding counters would change the table kube-proxy writes). The choice is")
        lines.append("made by this line, one random number per new connection; conntrack below counts the result:")
        lines.append("  " + (vmap or "(no numgen line found for %s:%s)" % (vip, port)))
    return lines, endpoints


def conntrack_view(data):
    (vip, port), proto = destination(data), data["protocol"]
    before = {entry[0] for entry in conntrack_entries(data["before"]["conntrack"], vip, proto, port)}
    entries = [entry for entry in conntrack_entries(data["after"]["conntrack"], vip, proto, port)
               if entry[0] not in before]
    names = {pod["ip"]: pod["name"] for pod in data["pods"]}
    per_pod = collections.Counter("%s (%s)" % (ip, names.get(ip, "?")) for _source, ip, _line in entries)
    lines = ["conntrack -L -p %s -d %s: %d new entries for these requests; the reply comes from the pod the"
             % (proto, vip, len(entries)),
             "connection was DNATed to (the second src=):"]
    lines.extend("  %-20s %d" % item for item in sorted(per_pod.items()))
    unreplied = [line for _source, _pod, line in entries if "[UNREPLIED]" in line]
    if unreplied:
        lines.append("  %d of them [UNREPLIED]: no answer came back through them (yet)" % len(unreplied))
    lines.extend("  e.g. " + line for _source, _pod, line in entries[:2])
    return lines


# What one request is to the rules: a TCP connection, or over UDP its one datagram.
ONE_REQUEST = {"tcp": "connection", "udp": "request (one datagram)"}


def path_view(data):
    path = data["path"]
    (vip, port), proto = destination(data), data["protocol"]
    lines = ["One %s from %s, followed through the rules%s:"
             % (ONE_REQUEST[proto], data["source"],
                " of %s" % data["handler"] if data.get("target", "cluster-ip") != "cluster-ip" else "")]
    if path["method"] in ("xtables", "nft"):
        lines.append("(%s, inside the node; the trace rules are removed again)" % path["trace"]["monitor"])
        steps = trace_steps(path["method"], path["trace"]["lines"])
        if not steps:
            lines.append("  the monitor saw nothing: %s" % (" | ".join(path["trace"]["lines"][:3]) or "no output"))
    else:
        lines.append("(no trace here: %s. The path below is the rules whose packet counters" % path["why"])
        lines.append(" one request raised, read with iptables-save -c before and after it)")
        steps = walk_counters(counter_deltas(path["before"], path["after"]), path["hook"])
    if steps:
        lines.append("  " + summary(path["method"], steps))
    for where, what in steps:
        lines.append("  %-40s %s" % (where, what))
    if path.get("ipvs_before") is not None:
        _b, before = ipvs_block(path["ipvs_before"], vip, proto, port)
        _a, after = ipvs_block(path["ipvs_after"], vip, proto, port)
        chosen = [ip for ip, conns in after.items() if conns > before.get(ip, 0)]
        lines.append("  %-40s virtual server %s:%s -> real server %s (masquerade, port %s)"
                     % ("IPVS (LOCAL_IN/LOCAL_OUT hook)", vip, port,
                        ", ".join(chosen) or "?", data["target_port"]))
    lines.append("  %-40s %s" % ("answer", answered_by(path.get("answer"))))
    return lines


# Where the Service's path runs: iptables' nat table (and its KUBE-* chains), or the nat side of
# kube-proxy's nftables table; the other tables and filter chains a traced packet crosses are left out.
PATH_TABLES = {"xtables": ("nat",), "nft": ("kube-proxy",), "counters": ("",)}
NFT_FILTER_CHAINS = ("filter-", "firewall-", "cluster-ips-check", "service-endpoints-check",
                     "nodeport-endpoints-check")


def summary(method, steps):
    """PREROUTING -> KUBE-SERVICES -> KUBE-SVC-... -> KUBE-SEP-... -> DNAT 10.0.0.3:8080, from the
    steps; a chain returned to is not repeated, and a masquerade on the way out is added."""
    chains, dnat, masquerade = [], None, False
    for where, what in steps:
        table, _sep, chain = where.rpartition(" ")
        if table not in PATH_TABLES[method] or chain.startswith(NFT_FILTER_CHAINS):
            continue
        if dnat:
            masquerade = masquerade or re.search(r"MASQUERADE|masquerade", what) is not None
            continue
        if chain not in chains:
            chains.append(chain)
        found = re.search(r"(?:--to-destination|dnat to) ([0-9.:]+)", what)
        if found:
            dnat = found.group(1)
    if dnat:
        chains.append("DNAT " + dnat)
    text = "path: " + " -> ".join(chains)
    return text + ("; on the way out POSTROUTING masquerades the source" if masquerade else "")


def answered_by(answer):
    """What the one traced request got back (the requests JSON of a count of 1)."""
    try:
        pods = json.loads(answer)["pods"]
    except (TypeError, ValueError, KeyError):
        return "none (%s)" % (answer or "no output")
    return ", ".join("%s, which saw the client as %s" % (name, ", ".join(pod["clients"]))
                     for name, pod in pods.items()) or "none: the request failed"


def report(data):
    for when in ("before", "after"):
        texts = dict.fromkeys(("iptables", "ipvs", "nftables", "conntrack"), "")
        texts.update(dict(data[when]))
        data[when] = texts
    if data.get("target", "cluster-ip") == "cluster-ip":
        kernel, endpoints = kernel_view(data)
        sections = [distribution(data, endpoints), kernel, conntrack_view(data), path_view(data)]
    elif data["handler"]:
        kernel, endpoints = kernel_view(data)
        sections = [distribution(data, endpoints), kernel, conntrack_view(data), path_view(data)]
        sections[0][1:1] = ["(the %s of %s; %s, so %s's kube-proxy rules handle the connection)"
                            % (TARGETS[data["target"]][0], data["service"], data["hop"], data["handler"])]
    else:
        # Which node's rules DNAT the connection is not known: no counters, conntrack or path to show.
        sections = [distribution(data, None)]
        sections[0][1:1] = ["(the %s of %s; %s)" % (TARGETS[data["target"]][0], data["service"], data["hop"])]
        sections.append(["Which node handles the connection is not known here, so this report leaves out the",
                         "kernel's counters, the conntrack entries and the path of one connection."])
    return "\n".join("\n".join(line.rstrip() for line in section) + "\n" for section in sections)


# ---------------------------------------------------------------- command line

def main(argv=None):
    cli = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    commands = cli.add_subparsers(dest="command", required=True)
    send = commands.add_parser("requests")
    send.add_argument("--protocol", choices=["tcp", "udp"], required=True)
    send.add_argument("--address", required=True)
    send.add_argument("--port", type=int, required=True)
    send.add_argument("--count", type=int, default=300)
    send.add_argument("--timeout", type=float, default=2.0)
    follow = commands.add_parser("trace")
    follow.add_argument("--kind", choices=["xtables", "nft"], required=True)
    follow.add_argument("request", nargs="+")
    commands.add_parser("locate")
    commands.add_parser("holds")
    commands.add_parser("report")
    args = cli.parse_args(argv)
    if args.command == "requests":
        print(json.dumps(requests(args.protocol, args.address, args.port, args.count, args.timeout)))
    elif args.command == "trace":
        print(json.dumps(trace(args.kind, args.request)))
    elif args.command == "locate":
        print(json.dumps(locate(json.load(sys.stdin))))
    elif args.command == "holds":
        print(json.dumps(holds(json.load(sys.stdin))))
    else:
        sys.stdout.write(report(json.load(sys.stdin)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
