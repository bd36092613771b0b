"""The lab as a cluster (make lab NODES=2 PODS=4), in the scenario's mode: kube-proxy on both
nodes, pods spread over them, traffic that crosses nodes.

The module's fixture builds the cluster once and puts the scenario's one-node lab back
afterwards (in a finally), so the idempotence and host-safety checks that follow see the lab
converge built. The layout (node IPs, pod CIDRs, which pod runs where) is the lab's own:
create.yml writes it with the lab_nodes and lab_pods filters.
"""

import json

import pytest

from conftest import MAX_TRIES, as_cluster, changed_tasks, curl, endpoint_ips, play, sources
from test_classroom import namespaces, programmed
from test_exercises import breaks_and_fixes

# The exercises that need two nodes (measured in every mode): masquerade shows why the client's
# connections are masqueraded, pod_route what a pod network route is for.
CLUSTER_EXERCISES = ["masquerade", "pod_route"]


def build(lab, cluster):
    """lab.yml for the cluster, as make lab NODES=2 PODS=4 runs it; the finished run."""
    return play("lab.yml", mode=lab["mode"], nodes=len(cluster["nodes"]), pods=len(cluster["pods"]))


@pytest.fixture(scope="module")
def cluster(lab):
    cluster = as_cluster(lab)
    try:
        build(lab, cluster)
        yield cluster
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


def test_pods_are_spread_over_the_nodes(host, cluster):
    for node in cluster["nodes"]:
        ports = host.check_output("ip -n %s -o link show master cni0", node["netns"])
        wanted = [pod["name"] for pod in cluster["pods"] if pod["node"] == node["netns"]]
        assert sorted(line.split(":")[1].strip().split("@")[0] for line in ports.splitlines()) == sorted(
            "veth-" + name for name in wanted), ports
    assert len({pod["node"] for pod in cluster["pods"]}) == len(cluster["nodes"])


def test_every_source_reaches_every_pod(host, lab, cluster):
    url = app1_url(lab)
    for source in sources(cluster):
        answers = answers_until_every_pod(host, source, url, cluster["pods"])
        assert None not in answers, "from %s: a request failed" % source
        seen = {answer["pod"] for answer in answers}
        assert seen == {pod["name"] for pod in cluster["pods"]}, "from %s only %s answered" % (source, sorted(seen))


def test_a_pod_reaching_a_pod_on_another_node_is_seen_with_its_own_address(host, lab, cluster):
    """Pod-to-pod across nodes is routed, never masqueraded, through the Service or not."""
    first = cluster["pods"][0]
    elsewhere = [pod for pod in cluster["pods"] if pod["node"] != first["node"]]
    for answer in answers_until_every_pod(host, first["netns"], app1_url(lab), cluster["pods"]):
        if answer and answer["pod"] in {pod["name"] for pod in elsewhere}:
            assert answer["ip"] == first["ip"], "%s saw %s, not %s's own address" % (answer["pod"], answer["ip"], first["name"])
    direct = curl(host, first["netns"], "http://%s:%s/" % (elsewhere[0]["ip"], lab["services"][0]["target_port"]))
    assert direct and (direct["pod"], direct["ip"]) == (elsewhere[0]["name"], first["ip"]), direct


def test_the_clients_connections_are_masqueraded_by_the_node_that_dnats_them(host, lab, cluster):
    """The client routes the Service range via the first node, which DNATs and masquerades:
    its own pods see its bridge address, the other node's pods its node IP (the reply then
    has to come back through it, kube-proxy's reason to masquerade)."""
    gateway = cluster["nodes"][0]
    expected = {pod["name"]: gateway["bridge_address"].split("/")[0] if pod["node"] == gateway["netns"] else gateway["ip"]
                for pod in cluster["pods"]}
    answers = answers_until_every_pod(host, lab["client_netns"], app1_url(lab), cluster["pods"])
    wrong = sorted({"%s saw %s" % (answer["pod"], answer["ip"]) for answer in answers
                    if answer and answer["ip"] != expected[answer["pod"]]})
    assert not wrong, "expected %s; %s" % (expected, "; ".join(wrong))


def test_each_nodes_kube_proxy_holds_every_endpoint_of_the_cluster(host, lab, cluster):
    service = dict(lab["services"][0], endpoints=[pod["ip"] for pod in cluster["pods"]])
    for node in cluster["nodes"]:
        endpoints, _probabilities = programmed(host, dict(lab, node_netns=node["netns"]), service)
        assert sorted(endpoints) == sorted(endpoint_ips(service)), "%s holds %s" % (node["netns"], endpoints)


def test_every_node_routes_the_other_nodes_pod_cidrs(host, cluster):
    for node in cluster["nodes"]:
        routes = json.loads(host.check_output("ip -n %s -j route show", node["netns"]))
        for other in cluster["nodes"]:
            if other is not node:
                assert dict(dst=other["pod_cidr"], gateway=other["ip"], dev="eth0") in [
                    dict((key, route.get(key)) for key in ("dst", "gateway", "dev")) for route in routes], routes


@pytest.mark.parametrize("exercise", CLUSTER_EXERCISES)
def test_cluster_exercise_breaks_and_fixes(host, cluster, exercise):
    breaks_and_fixes(host, cluster, exercise)


def test_a_second_run_changes_nothing(host, lab, cluster):
    # host, though unused, keeps this test in file order: pytest runs the tests parametrized by
    # testinfra's host together, and a test without it after them all.
    changed = changed_tasks(build(lab, cluster).stdout)
    assert changed is None, "the second run changed: %s" % changed


def test_scaling_to_one_node_and_back_converges(host, lab, cluster):
    """NODES=1 with the same pods: the second node, its LAN port and the routes to its pod
    CIDR go, its pods move to the first node; NODES=2 again puts everything back."""
    first, second = cluster["nodes"][:2]
    play("lab.yml", mode=lab["mode"], nodes=1, pods=len(cluster["pods"]))
    assert second["netns"] not in namespaces(host)
    assert second["pod_cidr"] not in host.check_output("ip -n %s route show", first["netns"])
    assert second["netns"] not in host.check_output("ip -n %s -o link show", lab["lan_netns"])
    seen = {answer["pod"] for answer in answers_until_every_pod(host, lab["client_netns"], app1_url(lab),
                                                                cluster["pods"]) if answer}
    assert seen == {pod["name"] for pod in cluster["pods"]}
    build(lab, cluster)
    assert second["netns"] in namespaces(host)
    seen = {answer["pod"] for answer in answers_until_every_pod(host, second["netns"], app1_url(lab), cluster["pods"])
            if answer}
    assert seen == {pod["name"] for pod in cluster["pods"]}
