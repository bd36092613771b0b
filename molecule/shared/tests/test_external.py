"""Traffic from outside (make lab NODES=2 PODS=4 TYPE=NodePort|LoadBalancer POLICY=Cluster|Local),
in the scenario's mode: app1 as a NodePort or LoadBalancer Service, reached from the client at
every node IP on the node port, at its external IP and at its load balancer IP (both routed by
the client via the first node), with each traffic policy.

Runs in scenarios default and nftables: ipvs mode does not program these types yet (lab.yml
and the kube_proxy module refuse them there, by name). The module's fixture puts the
scenario's one-node ClusterIP lab back afterwards, in a finally.
"""

import pytest

from conftest import as_cluster, changed_tasks, curl, play
from test_cluster import answers_until_every_pod
from test_exercises import bridge_address

CLUSTER_LAYOUT = {"nodes": 2, "pods": 4}


def build(lab, service_type, traffic_policy="Cluster", **layout):
    layout = dict(CLUSTER_LAYOUT, **layout)
    play("lab.yml", mode=lab["mode"], service_type=service_type, traffic_policy=traffic_policy, **layout)


@pytest.fixture(scope="module")
def cluster(lab):
    try:
        yield as_cluster(lab)
    finally:
        play("lab.yml", mode=lab["mode"])


def external_urls(lab):
    app1 = lab["services"][0]
    return {"external IP": "http://%s:%s/" % (lab["external_ip"], app1["port"]),
            "load balancer IP": "http://%s:%s/" % (lab["load_balancer_ip"], app1["port"])}


def node_port_url(lab, node):
    return "http://%s:%s/" % (node["ip"], lab["node_port"])


def test_a_node_port_on_every_node_reaches_every_pod_masqueraded_with_the_cluster_policy(host, lab, cluster):
    """Each node DNATs to any pod and masquerades (the pod may be on another node): its own
    pods see its bridge address, the other node's pods its node IP."""
    build(lab, "NodePort")
    for node in cluster["nodes"]:
        seen = answers_until_every_pod(host, lab["client_netns"], node_port_url(lab, node), cluster["pods"])
        assert None not in seen, "a request to %s failed" % node_port_url(lab, node)
        assert {answer["pod"] for answer in seen} == {pod["name"] for pod in cluster["pods"]}
        want = {pod["name"]: bridge_address(node) if pod["node"] == node["netns"] else node["ip"]
                for pod in cluster["pods"]}
        wrong = sorted({"%s saw %s" % (a["pod"], a["ip"]) for a in seen if a["ip"] != want[a["pod"]]})
        assert not wrong, "via %s: %s (expected %s)" % (node["netns"], wrong, want)
    seen = answers_until_every_pod(host, lab["client_netns"], external_urls(lab)["external IP"], cluster["pods"])
    assert None not in seen and {a["pod"] for a in seen} == {pod["name"] for pod in cluster["pods"]}


def test_a_pod_reaches_a_node_port_of_its_own_node(host, lab, cluster):
    first = cluster["pods"][0]
    node = next(node for node in cluster["nodes"] if node["netns"] == first["node"])
    answer = curl(host, first["netns"], node_port_url(lab, node))
    assert answer is not None, "%s could not reach %s" % (first["name"], node_port_url(lab, node))


def test_the_local_policy_keeps_the_client_address_and_the_node_s_own_pods(host, lab, cluster):
    """externalTrafficPolicy=Local: a node sends outside traffic only to its own pods, not
    masqueraded; the external IP, routed via the first node, reaches the first node's pods."""
    build(lab, "NodePort", "Local")
    client_ip = lab["client_address"].split("/")[0]
    for node in cluster["nodes"]:
        local = [pod for pod in cluster["pods"] if pod["node"] == node["netns"]]
        seen = answers_until_every_pod(host, lab["client_netns"], node_port_url(lab, node), local)
        assert None not in seen
        assert {a["pod"] for a in seen} == {pod["name"] for pod in local}, node["netns"]
        assert {a["ip"] for a in seen} == {client_ip}, seen
    first = cluster["nodes"][0]
    on_first = [pod for pod in cluster["pods"] if pod["node"] == first["netns"]]
    seen = answers_until_every_pod(host, lab["client_netns"], external_urls(lab)["external IP"], on_first)
    assert {a["pod"] for a in seen if a} == {pod["name"] for pod in on_first}


def test_a_node_without_local_pods_drops_what_comes_from_outside(host, lab, cluster):
    """One pod, on the first node: the second node's node port takes the connection attempt
    and drops it (curl times out; no refusal), while the first node's still answers."""
    build(lab, "NodePort", "Local", pods=1)
    first, second = cluster["nodes"][:2]
    result = host.run("ip netns exec %s curl -s --max-time 2 %s", lab["client_netns"], node_port_url(lab, second))
    assert result.rc == 28, "expected a time-out (dropped), got curl exit %d: %s" % (result.rc, result.stdout)
    assert curl(host, lab["client_netns"], node_port_url(lab, first)) is not None


def test_a_load_balancer_ip_reaches_the_service(host, lab, cluster):
    build(lab, "LoadBalancer")
    seen = answers_until_every_pod(host, lab["client_netns"], external_urls(lab)["load balancer IP"], cluster["pods"])
    assert None not in seen and {a["pod"] for a in seen} == {pod["name"] for pod in cluster["pods"]}


def test_a_second_run_changes_nothing(host, lab, cluster):
    # host, though unused, keeps this test in file order: pytest runs the tests parametrized by
    # testinfra's host together, and a test without it after them all.
    result = play("lab.yml", mode=lab["mode"], service_type="LoadBalancer", traffic_policy="Cluster", **CLUSTER_LAYOUT)
    changed = changed_tasks(result.stdout)
    assert changed is None, "the second run changed: %s" % changed


def test_back_to_cluster_ip_leaves_nothing_of_the_external_rules(host, lab, cluster):
    build(lab, "ClusterIP")
    for node in cluster["nodes"]:
        if lab["mode"] == "iptables":
            saved = host.check_output("ip netns exec %s iptables-save", node["netns"])
            assert not [word for word in ("KUBE-EXT-", "KUBE-EXTERNAL-SERVICES", "KUBE-PROXY-FIREWALL", "KUBE-FW-")
                        if word in saved], saved
        else:
            table = host.check_output("ip netns exec %s nft list table ip kube-proxy", node["netns"])
            assert "external-" not in table and "service-nodeports" in table, table
    result = host.run("ip netns exec %s curl -s --max-time 2 %s", lab["client_netns"],
                      node_port_url(lab, cluster["nodes"][0]))
    assert result.rc != 0, "the node port still answers: %s" % result.stdout
