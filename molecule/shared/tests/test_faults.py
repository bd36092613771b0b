"""The lab under faults a careless or unlucky user causes, in the scenario's mode: a Service
scaled to zero endpoints, a --check of a change that creates pods, and rules that are not
kube-proxy's in the node.

Each test puts the lab back as converge built it (in a finally), so the idempotence and
host-safety checks that follow see the same lab.
"""

import re

from conftest import infrastructure, play
from host_snapshot import differences, namespace_snapshot
from test_classroom import scaled_pods
from test_modes import kernel_modes

# Refused is curl's exit 7; a connection nobody answers would end in 28 (timed out).
CURL_REFUSED = 7
REFUSE_WAIT = 5
CHECKED_PODS = 5


def lab_namespaces(host, lab):
    return sorted(name for name in host.check_output("ip netns list").split()
                  if name in infrastructure(lab) or name.startswith(lab["pods_netns_prefix"]))


def test_a_service_scaled_to_zero_rejects_at_once(host, lab):
    """kube-proxy's "has no endpoints" rejection: a Deployment scaled to zero refuses its
    clients at once (iptables REJECT, nftables reject, IPVS's ICMP for a server with no real
    servers), instead of leaving them to time out."""
    service = lab["services"][0]
    url = "http://%s:%s/" % (service["cluster_ip"], service["port"])
    try:
        play("lab.yml", mode=lab["mode"], pods=0)
        left = [name for name in lab_namespaces(host, lab) if name not in infrastructure(lab)]
        assert not left, "pods=0 left pod namespaces: %s" % left
        for source in (lab["node_netns"], lab["client_netns"]):
            result = host.run("ip netns exec %s curl -sS --max-time %s %s", source, str(REFUSE_WAIT), url)
            assert result.rc == CURL_REFUSED, "from %s: curl exit %d, not refused: %s" % (source, result.rc, result.stderr)
    finally:
        play("lab.yml", mode=lab["mode"])


def test_check_of_a_scale_up_reports_it_and_changes_nothing(host, lab):
    before = namespace_snapshot(lab_namespaces(host, lab))
    result = play("lab.yml", "--check", "--diff", must_succeed=False, mode=lab["mode"], pods=CHECKED_PODS)
    output = result.stdout + result.stderr
    assert result.returncode == 0, "--check failed:\n" + output[-4000:]
    recap = re.search(r"changed=(\d+)\s+unreachable=\d+\s+failed=(\d+)", output)
    assert recap and int(recap.group(1)) > 0 and recap.group(2) == "0", "recap: " + (recap.group(0) if recap else output[-800:])
    new_pods = scaled_pods(lab, CHECKED_PODS)[len(lab["pods"]):]
    # The lab_netns task's diff shows each new pod's namespace, from nothing.
    for pod in new_pods:
        assert re.search(r"^\+netns %s$" % re.escape(pod["netns"]), output, re.MULTILINE), \
            "--check did not report creating %s" % pod["netns"]
    # The kube_proxy task's diff adds the new pods as endpoints of the Service.
    added = "\n".join(line for line in output.splitlines() if line.startswith("+"))
    for pod in new_pods:
        assert pod["ip"] in added, "--diff shows no endpoint %s:\n%s" % (pod["ip"], added)
    after = namespace_snapshot(lab_namespaces(host, lab))
    assert not differences(before, after), "--check changed the lab:\n" + differences(before, after)


def add_foreign_state(host, node, with_nft):
    """A chain, a rule in a built-in chain and an inet table of somebody else's."""
    for table in ("filter", "nat"):
        host.check_output("ip netns exec %s iptables -t %s -N LAB-FOREIGN", node, table)
        host.check_output("ip netns exec %s iptables -t %s -A LAB-FOREIGN -j RETURN", node, table)
        host.check_output("ip netns exec %s iptables -t %s -A OUTPUT -m comment --comment foreign -j LAB-FOREIGN", node, table)
    if with_nft:
        host.check_output("ip netns exec %s nft add table inet lab-foreign", node)
        host.check_output("ip netns exec %s nft add chain inet lab-foreign input", node)


def foreign_state(host, node, with_nft):
    """The foreign lines in the node, each with its table (filter and nat hold the same ones)."""
    found, table = set(), None
    for line in host.check_output("ip netns exec %s iptables-save", node).splitlines():
        if line.startswith("*"):
            table = line[1:]
        elif "LAB-FOREIGN" in line:
            found.add("%s: %s" % (table, line))
    if with_nft:
        listed = host.run("ip netns exec %s nft list table inet lab-foreign", node)
        if listed.rc == 0:
            found |= {"nft: " + line.strip() for line in listed.stdout.splitlines() if line.strip()}
    return found


def remove_foreign_state(host, node):
    for table in ("filter", "nat"):
        host.run("ip netns exec %s iptables -t %s -D OUTPUT -m comment --comment foreign -j LAB-FOREIGN", node, table)
        host.run("ip netns exec %s iptables -t %s -F LAB-FOREIGN", node, table)
        host.run("ip netns exec %s iptables -t %s -X LAB-FOREIGN", node, table)
    host.run("ip netns exec %s nft delete table inet lab-foreign", node)


def test_foreign_rules_survive_syncs_and_mode_switches(host, lab):
    """The module owns KUBE-* chains, their jumps, its ipsets, IPVS and table ip kube-proxy,
    nothing else: a switch through every mode this kernel runs must leave the rest alone."""
    node, mode = lab["node_netns"], lab["mode"]
    # The user-mode-linux node's kernel has no nf_tables for an inet table.
    with_nft = host.run("ip netns exec %s nft -c add table inet lab-foreign", node).rc == 0
    steps = [other for other in kernel_modes(host, lab) if other != mode] + [mode]
    try:
        add_foreign_state(host, node, with_nft)
        planted = foreign_state(host, node, with_nft)
        assert len(planted) >= 6, planted
        for step_mode in steps:
            play("lab.yml", "--tags", "lab_proxy", mode=step_mode)
            assert foreign_state(host, node, with_nft) == planted, "after a sync in mode %s" % step_mode
    finally:
        remove_foreign_state(host, node)
        play("lab.yml", "--tags", "lab_proxy", mode=mode)
