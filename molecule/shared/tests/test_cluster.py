"""The lab as a cluster (make lab NODES=2 PODS=4), in the scenario's mode: kube-proxy on both
nodes, pods spread over them, traffic that crosses nodes.

The module's fixture builds the cluster once and puts the scenario's one-node lab back
afterwards (in a finally), so the idempotence and host-safety checks that follow see the lab
converge built. The layout (node IPs, pod CIDRs, which pod runs where) is the lab's own:
create.yml writes it with the lab_nodes and lab_pods filters.
"""

import json

import pytest

from conftest import MAX_TRIES, curl, endpoint_ips, play
from test_classroom import namespaces, programmed


@pytest.fixture(scope="module")
def cluster(host, lab):
    layout = lab["cluster"]
    for pod in layout["pods_list"]:
        pod["netns"] = lab["pods_netns_prefix"] + pod["name"]
    try:
        play("lab.yml", mode=lab["mode"], nodes=layout["nodes"], pods=layout["pods"])
        yield layout
    finally:
        play("lab.yml", mode=lab["mode"])


def app1_url(lab):
    service = lab["services"][0]
    return "http://%s:%s/" % (service["cluster_ip"], service["port"])


def answers_until_every_pod(host, source, url, pods):
    """Requests from SOURCE until every pod has answered (at most MAX_TRIES); the answers."""
    answers = []
    for _ in range(MAX_TRIES):
        answers.append(curl(host, source, url))
        if {answer["pod"] for answer in answers if answer} == {pod["name"] for pod in pods}:
            break
    return answers


def cluster_sources(lab, cluster):
    return [node["netns"] for node in cluster["node_list"]] + [pod["netns"] for pod in cluster["pods_list"]] + [
        lab["client_netns"]]


def test_pods_are_spread_over_the_nodes(host, cluster):
    for node in cluster["node_list"]:
        ports = host.check_output("ip -n %s -o link show master cni0", node["netns"])
        wanted = [pod["name"] for pod in cluster["pods_list"] if pod["node"] == node["netns"]]
        assert sorted(line.split(":")[1].strip().split("@")[0] for line in ports.splitlines()) == sorted(
            "veth-" + name for name in wanted), ports
    assert len({pod["node"] for pod in cluster["pods_list"]}) == cluster["nodes"]


def test_every_source_reaches_every_pod(host, lab, cluster):
    url = app1_url(lab)
    for source in cluster_sources(lab, cluster):
        answers = answers_until_every_pod(host, source, url, cluster["pods_list"])
        assert None not in answers, "from %s: a request failed" % source
        seen = {answer["pod"] for answer in answers}
        assert seen == {pod["name"] for pod in cluster["pods_list"]}, "from %s only %s answered" % (source, sorted(seen))


def test_a_pod_reaching_a_pod_on_another_node_is_seen_with_its_own_address(host, lab, cluster):
    """Pod-to-pod across nodes is routed, never masqueraded, through the Service or not."""
    first = cluster["pods_list"][0]
    elsewhere = [pod for pod in cluster["pods_list"] if pod["node"] != first["node"]]
    for answer in answers_until_every_pod(host, first["netns"], app1_url(lab), cluster["pods_list"]):
        if answer and answer["pod"] in {pod["name"] for pod in elsewhere}:
            assert answer["ip"] == first["ip"], "%s saw %s, not %s's own address" % (answer["pod"], answer["ip"], first["name"])
    direct = curl(host, first["netns"], "http://%s:%s/" % (elsewhere[0]["ip"], lab["services"][0]["target_port"]))
    assert direct and (direct["pod"], direct["ip"]) == (elsewhere[0]["name"], first["ip"]), direct


def test_the_clients_connections_are_masqueraded_by_the_node_that_dnats_them(host, lab, cluster):
    """The client routes the Service range via the first node, which DNATs and masquerades:
    its own pods see its bridge address, the other node's pods its node IP (the reply then
    has to come back through it, kube-proxy's reason to masquerade)."""
    gateway = cluster["node_list"][0]
    expected = {pod["name"]: gateway["bridge_address"].split("/")[0] if pod["node"] == gateway["netns"] else gateway["ip"]
                for pod in cluster["pods_list"]}
    answers = answers_until_every_pod(host, lab["client_netns"], app1_url(lab), cluster["pods_list"])
    wrong = sorted({"%s saw %s" % (answer["pod"], answer["ip"]) for answer in answers
                    if answer and answer["ip"] != expected[answer["pod"]]})
    assert not wrong, "expected %s; %s" % (expected, "; ".join(wrong))


def test_each_nodes_kube_proxy_holds_every_endpoint_of_the_cluster(host, lab, cluster):
    service = dict(lab["services"][0], endpoints=[pod["ip"] for pod in cluster["pods_list"]])
    for node in cluster["node_list"]:
        endpoints, _probabilities = programmed(host, dict(lab, node_netns=node["netns"]), service)
        assert sorted(endpoints) == sorted(endpoint_ips(service)), "%s holds %s" % (node["netns"], endpoints)


def test_every_node_routes_the_other_nodes_pod_cidrs(host, cluster):
    for node in cluster["node_list"]:
        routes = json.loads(host.check_output("ip -n %s -j route show", node["netns"]))
        for other in cluster["node_list"]:
            if other is not node:
                assert dict(dst=other["pod_cidr"], gateway=other["ip"], dev="eth0") in [
                    dict((key, route.get(key)) for key in ("dst", "gateway", "dev")) for route in routes], routes


def test_a_second_run_changes_nothing(lab, cluster):
    result = play("lab.yml", mode=lab["mode"], nodes=cluster["nodes"], pods=cluster["pods"])
    recap = [line for line in result.stdout.splitlines() if "changed=" in line and "ok=" in line]
    assert recap and all(" changed=0 " in line for line in recap), "\n".join(recap)


def test_scaling_to_one_node_and_back_converges(host, lab, cluster):
    """NODES=1 with the same pods: the second node, its LAN port and the routes to its pod
    CIDR go, its pods move to the first node; NODES=2 again puts everything back."""
    first, second = cluster["node_list"][:2]
    play("lab.yml", mode=lab["mode"], nodes=1, pods=cluster["pods"])
    assert second["netns"] not in namespaces(host)
    assert second["pod_cidr"] not in host.check_output("ip -n %s route show", first["netns"])
    assert second["netns"] not in host.check_output("ip -n %s -o link show", lab["lan_netns"])
    seen = {answer["pod"] for answer in answers_until_every_pod(host, lab["client_netns"], app1_url(lab),
                                                                cluster["pods_list"]) if answer}
    assert seen == {pod["name"] for pod in cluster["pods_list"]}
    play("lab.yml", mode=lab["mode"], nodes=cluster["nodes"], pods=cluster["pods"])
    assert second["netns"] in namespaces(host)
    seen = {answer["pod"] for answer in answers_until_every_pod(host, second["netns"], app1_url(lab), cluster["pods_list"])
            if answer}
    assert seen == {pod["name"] for pod in cluster["pods_list"]}
