"""The lab, end to end: every source reaches every pod through the Service, each backend
sees the source address kube-proxy's masquerade rules promise, the kernel holds
kube-proxy's chains, the pod servers are proper daemons, and the host's root network
namespace is untouched."""

import json
import os

import pytest
from conftest import curl, endpoint_ips, ephemeral_dir, infrastructure
from host_snapshot import differences, snapshot
from kube_proxy import naming
from kube_proxy.model import build_config


def test_every_pod_answers(source, answers, lab):
    pods = {pod["name"] for pod in lab["pods"]}
    seen = {answer["pod"] for answer in answers(source) if answer}
    failed = sum(answer is None for answer in answers(source))
    message = f"{len(answers(source))} requests ({failed} failed) reached only {sorted(seen)}"
    assert seen == pods, f"from {source}, {message}"


def expected_source(source, answer, lab):
    """The client address a backend should see.

    From the node: the node's own address on the bridge. From the external client:
    masqueraded to the node's bridge address (it is outside the cluster CIDR). From a pod
    to another pod: the pod's own address (no masquerade). From a pod to itself (hairpin):
    masqueraded to the node's bridge address, or the reply would never leave the pod.
    """
    pod = next((pod for pod in lab["pods"] if pod["netns"] == source), None)
    if pod is None or pod["name"] == answer["pod"]:
        return lab["node_ip"]
    return pod["ip"]


def test_backends_see_the_expected_source(source, answers, lab):
    wrong = [
        f"{answer['pod']} saw {answer['ip']}, expected {expected_source(source, answer, lab)}"
        for answer in answers(source)
        if answer and answer["ip"] != expected_source(source, answer, lab)
    ]
    assert not wrong, f"from {source}: " + "; ".join(sorted(set(wrong)))


def svc_chain(service):
    """The KUBE-SVC- chain of a declared Service, named by the module's own helper."""
    port = build_config("iptables", "10.0.0.0/24", [service]).services[0]
    return naming.service_chain(port.port_name_string, port.proto)


def kernel_probability(n, i):
    """The statistic match's probability 1/(n-i) as iptables-save prints it back: the kernel
    keeps it in steps of 1/2^31 (1/3 -> 0.33333333349)."""
    return "%.11f" % (round(0x80000000 / (n - i)) / 0x80000000)


def check_iptables(host, lab):
    rules = host.check_output("ip netns exec %s iptables-save", lab["node_netns"])
    chains = [line[1:].split()[0] for line in rules.splitlines() if line.startswith(":")]
    for chain in ("KUBE-SERVICES", "KUBE-MARK-MASQ", "KUBE-POSTROUTING"):
        assert chain in chains
    for service in lab["services"]:
        svc = svc_chain(service)
        assert svc in chains, f"{svc} (for {service['namespace']}/{service['name']}) missing"
        jumps = [
            line
            for line in rules.splitlines()
            if line.startswith(f"-A {svc} ") and "KUBE-SEP-" in line
        ]
        endpoints = len(endpoint_ips(service))
        assert len(jumps) == endpoints
        seps = {line.split("-j ")[-1].split()[0] for line in jumps}
        assert len(seps) == endpoints and seps <= set(chains)
        for i, line in enumerate(jumps[:-1]):
            assert f"--probability {kernel_probability(endpoints, i)}" in line
        assert "--probability" not in jumps[-1]
    if any(len(endpoint_ips(service)) == 3 for service in lab["services"]):
        assert "--probability 0.33333333349" in rules and "--probability 0.50000000000" in rules


def check_ipvs(host, lab):
    table = host.check_output("ip netns exec %s ipvsadm -Ln", lab["node_netns"])
    print(f"ip netns exec {lab['node_netns']} ipvsadm -Ln\n{table}")
    lines = [line.split() for line in table.splitlines()]
    for service in lab["services"]:
        portal = f"{service['cluster_ip']}:{service['port']}"
        assert [service["protocol"], portal, "rr"] in lines, f"no virtual server {portal} rr:\n{table}"
        start = lines.index([service["protocol"], portal, "rr"])
        reals = []
        for words in lines[start + 1:]:
            if words[:1] != ["->"]:
                break
            reals.append((words[1], words[2], words[3]))
        assert sorted(reals) == sorted(
            (f"{ip}:{service['target_port']}", "Masq", "1") for ip in endpoint_ips(service)), table
    addresses = host.check_output("ip netns exec %s ip -4 -o addr show dev kube-ipvs0", lab["node_netns"])
    for service in lab["services"]:
        assert f"inet {service['cluster_ip']}/32 " in addresses, addresses


def check_nftables(host, lab):
    table = host.check_output("ip netns exec %s nft list table ip kube-proxy", lab["node_netns"])
    print(f"ip netns exec {lab['node_netns']} nft list table ip kube-proxy\n{table}")
    for service in lab["services"]:
        element = f"{service['cluster_ip']} . {service['protocol'].lower()} . {service['port']} : goto service-"
        assert element in table, f"no service-ips element {element!r}"
        assert f"numgen random mod {len(endpoint_ips(service))} vmap" in table


def test_kernel_holds_the_modes_state(host, lab):
    """What a student sees with the mode's own tool: iptables-save, ipvsadm -Ln, nft list."""
    {"iptables": check_iptables, "ipvs": check_ipvs, "nftables": check_nftables}[lab["mode"]](host, lab)


@pytest.mark.mode_independent
def test_pod_servers_are_daemons_in_their_pods(host, lab):
    for pod in lab["pods"]:
        pidfile = host.file(f"{lab['run_dir']}/{pod['name']}.pid")
        assert pidfile.exists, f"{pidfile.path} missing"
        pid = int(pidfile.content_string.strip())
        cmdline = host.file(f"/proc/{pid}/cmdline").content_string.split("\0")
        assert any(arg.endswith("lab_pod_server.py") for arg in cmdline), cmdline
        netns = host.check_output("ip netns identify %s", str(pid)).split()
        assert pod["netns"] in netns, f"{pod['name']}'s server (pid {pid}) runs in {netns}"


@pytest.mark.mode_independent
def test_a_pod_server_started_with_stdin_closed_answers(host, lab):
    """A caller with no stdin (a CI runner, `cmd 0<&-`) once left a server that listened on
    fd 0 until its own daemonizing closed the socket: started, pidfile written, no answer."""
    pod = lab["pods"][0]
    pid = int(host.file(f"{lab['run_dir']}/{pod['name']}.pid").content_string.strip())
    cmdline = host.file(f"/proc/{pid}/cmdline").content_string.split("\0")
    python, server = cmdline[0], next(arg for arg in cmdline if arg.endswith("lab_pod_server.py"))
    scratch = host.check_output("mktemp -d")
    pidfile = f"{scratch}/stdin-closed.pid"
    try:
        started = host.run("ip netns exec %s %s %s start --name stdin-closed --port 18080 --pidfile %s 0<&-",
                           pod["netns"], python, server, pidfile)
        assert started.rc == 0, started.stderr
        answer = curl(host, lab["node_netns"], f"http://{pod['ip']}:18080/")
        assert answer and answer["pod"] == "stdin-closed", answer
    finally:
        host.run("ip netns exec %s %s %s stop --pidfile %s", pod["netns"], python, server, pidfile)
        host.run("rm -rf %s", scratch)


def test_host_root_namespace_unchanged(lab):
    with open(os.path.join(ephemeral_dir(), "host-snapshot.json"), encoding="utf-8") as handle:
        before = json.load(handle)
    lab_netns = infrastructure(lab) + [pod["netns"] for pod in lab["pods"]]
    diff = differences(before, snapshot(ignore_netns=lab_netns))
    assert not diff, "the host's root network namespace changed:\n" + diff
