"""The lab_pods filter: -e pods=N becomes pod1..podN spread over the nodes, each on its node's subnet."""

import importlib.util

import pytest
from ansible.errors import AnsibleFilterError

from conftest import REPO

SPEC = importlib.util.spec_from_file_location("lab_pods_filter", REPO / "filter_plugins" / "lab_pods.py")
lab_pods_filter = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(lab_pods_filter)
lab_pods = lab_pods_filter.FilterModule().filters()["lab_pods"]


def one_node(bridge_address="10.0.0.1/24"):
    return [dict(netns="lab-node", bridge_address=bridge_address)]


TWO_NODES = [dict(netns="lab-node", bridge_address="10.0.0.1/24"), dict(netns="lab-node2", bridge_address="10.0.1.1/24")]


def test_three_pods_are_the_seed_lab():
    assert lab_pods(3, one_node()) == [
        dict(name="pod%d" % number, ip="10.0.0.%d" % (number + 1), node="lab-node", gateway="10.0.0.1", prefix_length=24)
        for number in (1, 2, 3)]


def test_pods_go_round_robin_over_the_nodes_each_on_its_own_subnet():
    assert [(pod["name"], pod["ip"], pod["node"], pod["gateway"]) for pod in lab_pods(4, TWO_NODES)] == [
        ("pod1", "10.0.0.2", "lab-node", "10.0.0.1"), ("pod2", "10.0.1.2", "lab-node2", "10.0.1.1"),
        ("pod3", "10.0.0.3", "lab-node", "10.0.0.1"), ("pod4", "10.0.1.3", "lab-node2", "10.0.1.1")]


def test_the_count_may_come_as_a_string_from_extra_vars():
    assert [pod["ip"] for pod in lab_pods("5", one_node())] == ["10.0.0.%d" % n for n in range(2, 7)]


def test_addresses_follow_the_bridge_not_the_network_start():
    assert [pod["ip"] for pod in lab_pods(2, one_node("172.16.5.10/28"))] == ["172.16.5.11", "172.16.5.12"]


def test_zero_pods():
    assert lab_pods(0, one_node()) == []


@pytest.mark.parametrize("count, address", [(14, "10.0.0.1/28"), (-1, "10.0.0.1/24"), ("many", "10.0.0.1/24"),
                                            (1, "10.0.0.1"), (1, "fd00::1/64")])
def test_impossible_requests_fail_with_a_message(count, address):
    with pytest.raises(AnsibleFilterError, match="lab_pods"):
        lab_pods(count, one_node(address))


def test_a_node_that_cannot_hold_its_share_is_named():
    nodes = [dict(netns="lab-node", bridge_address="10.0.0.1/24"), dict(netns="lab-node2", bridge_address="10.0.1.1/30")]
    with pytest.raises(AnsibleFilterError, match="put 2 pods on lab-node2"):
        lab_pods(4, nodes)


FILTERS = lab_pods_filter.FilterModule().filters()
WIRING = dict(node_netns="lab-node", bridge="cni0", netns_prefix="lab-", veth_prefix="veth-",
              prefix_length="24", gateway="10.0.0.1")


def test_each_pod_is_a_namespace_plugged_into_the_bridge():
    namespaces = FILTERS["lab_pods_namespaces"](lab_pods(2, one_node()), **WIRING)
    assert namespaces[0] == dict(name="lab-node", links=[
        dict(name="cni0", kind="bridge"),
        dict(name="veth-pod1", kind="veth", peer=dict(name="eth0", netns="lab-pod1"), master="cni0", hairpin=True),
        dict(name="veth-pod2", kind="veth", peer=dict(name="eth0", netns="lab-pod2"), master="cni0", hairpin=True),
    ])
    assert namespaces[2] == dict(name="lab-pod2", links=[
        dict(name="lo"), dict(name="eth0", addresses=["10.0.0.3/24"], announce=True)],
        routes=[dict(to="default", via="10.0.0.1")])


def test_the_wiring_is_a_topology_the_lab_netns_module_accepts():
    from lab_netns.model import build_topology  # pylint: disable=import-outside-toplevel

    topology = build_topology(FILTERS["lab_pods_namespaces"](lab_pods(3, one_node()), **WIRING))
    assert [namespace.name for namespace in topology.namespaces] == ["lab-node", "lab-pod1", "lab-pod2", "lab-pod3"]


def test_hairpin_off_may_come_as_a_string_from_extra_vars():
    namespaces = FILTERS["lab_pods_namespaces"](lab_pods(1, one_node()), hairpin="false", **WIRING)
    assert namespaces[0]["links"][1]["hairpin"] is False


def test_a_veth_name_the_kernel_cannot_hold_names_the_knobs_to_shorten():
    with pytest.raises(AnsibleFilterError, match=r"veth-a-long-podname .* shorten the pod names or lab_pods_veth_prefix"):
        FILTERS["lab_pods_namespaces"]([dict(name="a-long-podname", ip="10.0.0.2")], **WIRING)


def test_each_node_gets_the_ports_of_its_own_pods():
    namespaces = FILTERS["lab_pods_namespaces"](lab_pods(3, TWO_NODES), **WIRING)
    assert [(namespace["name"], [link["name"] for link in namespace["links"]]) for namespace in namespaces[:2]] == [
        ("lab-node", ["cni0", "veth-pod1", "veth-pod3"]), ("lab-node2", ["cni0", "veth-pod2"])]
    assert namespaces[3]["routes"] == [dict(to="default", via="10.0.1.1")]


def test_unplugged_pods_are_bridge_ports_or_known_pods_not_declared():
    found = {"lab-node": [dict(name="cni0", kind="bridge", master=None), dict(name="eth0", kind="veth", master=None),
                          dict(name="veth-pod1", kind="veth", master="cni0"), dict(name="veth-pod5", kind="veth", master="cni0"),
                          dict(name="other", kind="veth", master="cni0")],
             "lab-node2": [dict(name="veth-pod4", kind="veth", master="cni0")]}
    assert FILTERS["lab_pods_unplugged"](found, "cni0", "veth-", lab_pods(3, one_node())) == ["pod4", "pod5"]
    assert FILTERS["lab_pods_unplugged"](found, "cni0", "veth-", lab_pods(3, one_node()), ["pod3", "pod6"]) == [
        "pod4", "pod5", "pod6"]
    assert FILTERS["lab_pods_unplugged"](None, "cni0", "veth-", []) == []


def test_endpoints_carry_their_node():
    assert FILTERS["lab_pods_endpoints"](lab_pods(2, TWO_NODES)) == [
        dict(ip="10.0.0.2", node_name="lab-node"), dict(ip="10.0.1.2", node_name="lab-node2")]
    assert FILTERS["lab_pods_endpoints"]([dict(name="pod1", ip="10.0.0.2")]) == ["10.0.0.2"]


def test_pods_to_delete_are_namespaces_by_name():
    assert FILTERS["lab_pods_netns"](["pod4", "pod5"], "lab-") == [dict(name="lab-pod4"), dict(name="lab-pod5")]


def test_teardown_empties_the_bridge_of_every_node():
    assert FILTERS["lab_pods_bridges"](["lab-node", "lab-node2"], "cni0") == [
        dict(netns="lab-node", bridge="cni0"), dict(netns="lab-node2", bridge="cni0")]


def test_the_running_lab_has_the_pods_named_as_pods_n_names_them():
    running = lab_pods_filter.FilterModule().filters()["lab_pods_running"]
    assert running(["lab-node", "lab-pod2", "lab-pod1", "lab-pod3", "lab-client"], "lab-") == 3
    assert running(["lab-pod1", "lab-pod3"], "lab-") == 1
    assert running(["lab-node", "lab-web"], "lab-") == 0
