"""The classroom features, in the scenario's mode: observe prints the distribution and the
kernel's view; -e pods=N scales the Service's endpoints and probabilities; a stopped pod
server leaves the Service (and comes back); a second Service answers next to the first.

Each test changes the running lab through the playbooks a student uses and puts it back in
a finally, so the idempotence and host-safety checks that follow see the lab converge built.

Scaling, reused addresses and the stopped pod prove what holds whatever kube-proxy's mode
(pods made and removed, readiness, neighbour caches): they are marked mode_independent and
run in scenario default. The mode's part of them, the module programming a changed endpoint
list, runs in every mode (test_modes.test_changed_endpoints_are_programmed_and_a_repeat_changes_nothing).
"""

import ipaddress
import json
import re

import pytest

from conftest import Answers, curl, endpoint_ips, play
from test_lab import kernel_probability, svc_chain

OBSERVE_COUNT = 300
# A loose sanity bound, not a statistical test: with 3 pods each gets 1/3 on average; 15 % of
# 300 is 45, more than 10 standard deviations below the mean of 100.
MIN_SHARE = 0.15
SCALED = 5
ROW = re.compile(r"^\s+(?P<pod>\S+)\s+(?P<ip>[0-9.?]+)\s+(?P<count>\d+)\s+(?P<share>[0-9.]+) %\s+(?P<expected>[0-9.]+) %\s+(?P<seen>.*)$")


def programmed(host, lab, service):
    """The service's endpoints as the kernel holds them, and (iptables) the probabilities."""
    node, mode = lab["node_netns"], lab["mode"]
    if mode == "iptables":
        rules = host.check_output("ip netns exec %s iptables-save -t nat", node).splitlines()
        svc = svc_chain(service)
        jumps = [line for line in rules if line.startswith("-A %s " % svc) and "-j KUBE-SEP-" in line]
        seps = [line.split("-j ")[-1].split()[0] for line in jumps]
        dnat = {line.split()[1]: re.search(r"--to-destination ([0-9.]+):", line).group(1)
                for line in rules if "--to-destination" in line}
        probabilities = [re.search(r"--probability (\S+)", line).group(1) if "--probability" in line else None
                         for line in jumps]
        return [dnat[sep] for sep in seps], probabilities
    if mode == "ipvs":
        table = host.check_output("ip netns exec %s ipvsadm -Ln -t %s:%s", node, service["cluster_ip"], str(service["port"]))
        return [line.split()[1].rsplit(":", 1)[0] for line in table.splitlines() if line.strip().startswith("->")
                and line.split()[1][0].isdigit()], None
    table = host.check_output("ip netns exec %s nft list table ip kube-proxy", node)
    marker = "-%s/%s/%s/%s " % (service["namespace"], service["name"], service["protocol"].lower(), service["port_name"])
    chain = table.split("chain service-")
    body = next((part for part in chain[1:] if marker in part.split("{", 1)[0] + " "), "")
    numgen = next((line for line in body.splitlines() if "numgen random mod" in line), "")
    modulus = re.search(r"numgen random mod (\d+)", numgen)
    endpoints = re.findall(r"__([0-9.]+)/\d+", numgen)
    assert modulus and int(modulus.group(1)) == len(endpoints), numgen
    return endpoints, None


def scaled_pods(lab, count):
    first = ipaddress.ip_address(lab["node_ip"])
    return [dict(name="pod%d" % number, ip=str(first + number), netns=lab["pods_netns_prefix"] + "pod%d" % number)
            for number in range(1, count + 1)]


def namespaces(host):
    return {entry["name"] for entry in json.loads(host.check_output("ip -j netns list") or "[]")}


# ---------------------------------------------------------------- observe

def observe_sources(lab):
    return ["node", "client", lab["pods"][0]["name"]]


def pytest_generate_tests(metafunc):
    if "observe_source" in metafunc.fixturenames:
        from conftest import load_lab
        metafunc.parametrize("observe_source", observe_sources(load_lab()))


def test_observe_prints_the_distribution(host, lab, observe_source):
    output = play("playbooks/observe.yml", source=observe_source, count=OBSERVE_COUNT).stdout
    print(output)
    rows = {match["pod"]: match for match in map(ROW.match, output.splitlines()) if match}
    service = lab["services"][0]
    assert "%d requests from %s to http://%s:%s/" % (OBSERVE_COUNT, observe_source, service["cluster_ip"], service["port"]) in output
    assert "mode %s" % lab["mode"] in output
    for pod in lab["pods"]:
        assert pod["name"] in rows, "no row for %s in:\n%s" % (pod["name"], output)
        row = rows[pod["name"]]
        assert int(row["count"]) >= MIN_SHARE * OBSERVE_COUNT, "%s got %s of %d" % (pod["name"], row["count"], OBSERVE_COUNT)
        assert row["expected"] == "%.1f" % (100.0 / len(lab["pods"]))
        assert row["seen"] != "-"
    assert not re.search(r"^\s+failed\s+\d+", output, re.M), output
    assert sum(int(row["count"]) for row in rows.values()) == OBSERVE_COUNT
    kernel = {"iptables": "-A %s " % svc_chain(service), "ipvs": "ipvsadm -Ln --stats",
              "nftables": "numgen random mod %d" % len(lab["pods"])}[lab["mode"]]
    assert kernel in output
    for pod in lab["pods"]:
        assert "%s (%s)" % (pod["ip"], pod["name"]) in output, "conntrack shows no entry for %s" % pod["name"]
    hook = "OUTPUT" if observe_source == "node" else "PREROUTING"
    path = next((line for line in output.splitlines() if line.strip().startswith("path: ")), "")
    if lab["mode"] == "ipvs":
        assert "real server 10." in output
        assert path.strip().startswith("path: %s -> KUBE-SERVICES" % hook), path
    else:
        assert re.search(r"path: (nat-)?%s -> .* -> DNAT 10\.[0-9.]+:%s" % (hook.lower() if lab["mode"] == "nftables" else hook,
                                                                            service["target_port"]), path), output
    assert "TRACE" not in host.check_output("ip netns exec %s iptables-save -t raw", lab["node_netns"])
    if lab["mode"] == "nftables":
        assert "lab-trace" not in host.check_output("ip netns exec %s nft list tables", lab["node_netns"])


# ---------------------------------------------------------------- scale

@pytest.mark.mode_independent
def test_scaling_follows_the_pod_count(host, lab):
    service = lab["services"][0]
    pods = scaled_pods(lab, SCALED)
    try:
        play("lab.yml", mode=lab["mode"], pods=SCALED)
        endpoints, probabilities = programmed(host, lab, service)
        assert sorted(endpoints) == sorted(pod["ip"] for pod in pods)
        if probabilities is not None:
            assert probabilities == [kernel_probability(SCALED, i) for i in range(SCALED - 1)] + [None]
        answers = Answers(host, dict(lab, pods=pods))
        seen = {answer["pod"] for answer in answers(lab["node_netns"]) if answer}
        assert seen == {pod["name"] for pod in pods}
    finally:
        play("lab.yml", mode=lab["mode"])
    endpoints, _ = programmed(host, lab, service)
    assert sorted(endpoints) == sorted(pod["ip"] for pod in lab["pods"])
    assert not {pod["netns"] for pod in pods[len(lab["pods"]):]} & namespaces(host)
    ports = host.check_output("ip -n %s -o link show master cni0", lab["node_netns"])
    assert len(ports.splitlines()) == len(lab["pods"]), ports


@pytest.mark.mode_independent
def test_pods_at_reused_addresses_are_ready_at_once(host, lab):
    """Scaled down and up again, new pods get the removed pods' addresses, which the node still
    caches with the old MACs: left alone, it would take 5 s (delay_first_probe_time) to notice,
    longer than the readiness probe waits, and the new pods would be left out of the Service."""
    service = lab["services"][0]
    pods = scaled_pods(lab, SCALED)
    reused = pods[len(lab["pods"]):]
    old_mac = "02:00:00:00:00:%02x"
    try:
        for number, pod in enumerate(reused):
            host.check_output("ip -n %s neigh replace %s lladdr %s dev cni0 nud stale",
                              lab["node_netns"], pod["ip"], old_mac % number)
        play("lab.yml", mode=lab["mode"], pods=SCALED)
        endpoints, _ = programmed(host, lab, service)
        assert sorted(endpoints) == sorted(pod["ip"] for pod in pods), "a new pod was left out as not ready"
        cached = host.check_output("ip -n %s neigh show dev cni0", lab["node_netns"])
        for pod in reused:
            assert "%s lladdr %s " % (pod["ip"], mac(host, pod["netns"])) in cached, cached
    finally:
        play("lab.yml", mode=lab["mode"])


def mac(host, netns):
    return json.loads(host.check_output("ip -n %s -j link show dev eth0", netns))[0]["address"]


# ---------------------------------------------------------------- endpoints follow health

@pytest.mark.mode_independent
def test_a_stopped_pod_leaves_the_service(host, lab):
    service = lab["services"][0]
    stopped = lab["pods"][1]
    url = "http://%s:%s/" % (service["cluster_ip"], service["port"])
    try:
        play("playbooks/pod.yml", pod=stopped["name"], server="stop")
        play("lab.yml", mode=lab["mode"])  # the whole lab: the pod stays stopped, its endpoint goes
        endpoints, _ = programmed(host, lab, service)
        assert sorted(endpoints) == sorted(pod["ip"] for pod in lab["pods"] if pod is not stopped)
        answers = [curl(host, lab["node_netns"], url) for _ in range(30)]
        assert None not in answers, "a request failed with %s stopped and taken out" % stopped["name"]
        assert stopped["name"] not in {answer["pod"] for answer in answers}
        play("playbooks/pod.yml", pod=stopped["name"], server="start")
        play("lab.yml", "--tags", "lab_proxy", mode=lab["mode"])
        endpoints, _ = programmed(host, lab, service)
        assert sorted(endpoints) == sorted(pod["ip"] for pod in lab["pods"])
        seen = {answer["pod"] for answer in Answers(host, lab)(lab["node_netns"]) if answer}
        assert seen == {pod["name"] for pod in lab["pods"]}
    finally:
        play("playbooks/pod.yml", pod=stopped["name"], server="start")
        play("lab.yml", "--tags", "lab_proxy", mode=lab["mode"])


# ---------------------------------------------------------------- a second Service

def test_a_second_service_answers(host, lab):
    app2 = lab["second_service"]
    url = "http://%s:%s/" % (app2["cluster_ip"], app2["port"])
    backends = {pod["name"] for pod in lab["pods"] if pod["ip"] in endpoint_ips(app2)}
    try:
        play("lab.yml", "--tags", "lab_proxy", mode=lab["mode"], second_service=True)
        endpoints, _ = programmed(host, lab, app2)
        assert sorted(endpoints) == sorted(endpoint_ips(app2))
        for source in (lab["node_netns"], lab["client_netns"], lab["pods"][-1]["netns"]):
            seen = set()
            for _ in range(40):
                answer = curl(host, source, url)
                assert answer, "from %s: %s did not answer" % (source, url)
                seen.add(answer["pod"])
                if seen == backends:
                    break
            assert seen == backends, "from %s, %s reached %s" % (source, url, sorted(seen))
        first = lab["services"][0]
        assert curl(host, lab["node_netns"], "http://%s:%s/" % (first["cluster_ip"], first["port"]))
    finally:
        play("lab.yml", "--tags", "lab_proxy", mode=lab["mode"])
    assert host.run("ip netns exec %s curl -s --max-time 2 %s", lab["node_netns"], url).rc != 0
