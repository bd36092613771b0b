"""The lab_nodes filter: -e nodes=N becomes the nodes' names, node IPs and pod CIDRs, and the
topology that puts them on one LAN with a route to every other node's pods."""

import importlib.util

import pytest
from ansible.errors import AnsibleFilterError

from conftest import REPO

SPEC = importlib.util.spec_from_file_location("lab_nodes_filter", REPO / "filter_plugins" / "lab_nodes.py")
lab_nodes_filter = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(lab_nodes_filter)
FILTERS = lab_nodes_filter.FilterModule().filters()
PLAN = dict(first_netns="lab-node", cluster_cidr="10.0.0.0/16", lan="192.168.100.0/24", first_host=11)
SYSCTLS = {"net.ipv4.ip_forward": 1}


def nodes(count):
    return FILTERS["lab_nodes"](count, **PLAN)


def test_one_node_is_the_seed_lab():
    assert nodes(1) == [dict(netns="lab-node", ip="192.168.100.11", lan_prefix_length=24, pod_cidr="10.0.0.0/24",
                             bridge_address="10.0.0.1/24")]


def test_nodes_are_named_like_kind_workers_with_a_24_each():
    assert [(node["netns"], node["ip"], node["pod_cidr"]) for node in nodes("3")] == [
        ("lab-node", "192.168.100.11", "10.0.0.0/24"), ("lab-node2", "192.168.100.12", "10.0.1.0/24"),
        ("lab-node3", "192.168.100.13", "10.0.2.0/24")]


@pytest.mark.parametrize("count", [0, 5, "two", None])
def test_a_node_count_outside_1_to_4_names_nodes(count):
    with pytest.raises(AnsibleFilterError, match="nodes must be"):
        nodes(count)


@pytest.mark.parametrize("plan, message", [
    (dict(PLAN, cluster_cidr="10.0.0.0/25"), "smaller than one node's /24"),
    (dict(PLAN, cluster_cidr="10.0.0.0/23"), "holds 2 node /24"),
    (dict(PLAN, lan="192.168.100.0/29"), "no room for 4 node IPs"),
    (dict(PLAN, cluster_cidr="10.0.0.0/33"), "lab_nodes: "),
])
def test_an_address_plan_too_small_for_four_nodes_is_refused(plan, message):
    with pytest.raises(AnsibleFilterError, match=message):
        FILTERS["lab_nodes"](2, **plan)


def test_scaling_down_names_the_nodes_beyond_the_count():
    assert FILTERS["lab_nodes_absent"](2, "lab-node") == ["lab-node3", "lab-node4"]
    assert FILTERS["lab_nodes_absent"](4, "lab-node") == []


def test_the_running_lab_has_the_nodes_present_from_the_first_on():
    running = FILTERS["lab_nodes_running"]
    assert running(["lab-pod1", "lab-node2", "lab-node", "lab-lan"], "lab-node") == 2
    assert running(["lab-node", "lab-node3"], "lab-node") == 1
    assert running(["lab-node2", "lab-client"], "lab-node") == 0
    assert running([], "lab-node") == 0


def test_teardown_looks_for_every_node_and_the_lan():
    assert FILTERS["lab_nodes_every"]("lab-node") == ["lab-node", "lab-node2", "lab-node3", "lab-node4"]
    assert [namespace["name"] for namespace in FILTERS["lab_nodes_every_netns"]("lab-node", "lab-lan")] == [
        "lab-node", "lab-node2", "lab-node3", "lab-node4", "lab-lan"]


def topology(count):
    return FILTERS["lab_nodes_namespaces"](nodes(count), "10.0.0.0/16", "lab-lan", "lan0", "cni0", "10.96.0.0/12", SYSCTLS)


def test_each_node_is_a_port_of_the_lan_named_like_it():
    lan = topology(2)[0]
    assert lan == dict(name="lab-lan", links=[
        dict(name="lan0", kind="bridge"),
        dict(name="lab-node", kind="veth", peer=dict(name="eth0", netns="lab-node"), master="lan0"),
        dict(name="lab-node2", kind="veth", peer=dict(name="eth0", netns="lab-node2"), master="lan0")])


def test_every_node_routes_the_others_pod_cidrs_and_none_of_the_nodes_scaled_away():
    node1, node2 = topology(2)[1:]
    assert node1["links"] == [dict(name="lo"), dict(name="cni0", kind="bridge", addresses=["10.0.0.1/24"]),
                              dict(name="eth0", addresses=["192.168.100.11/24"], announce=True)]
    assert node1["routes"] == [dict(to="10.96.0.0/12", dev="cni0"),
                               dict(to="10.0.1.0/24", via="192.168.100.12", dev="eth0"),
                               dict(to="10.0.2.0/24", state="absent"), dict(to="10.0.3.0/24", state="absent")]
    assert node2["routes"][1] == dict(to="10.0.0.0/24", via="192.168.100.11", dev="eth0")
    assert node1["sysctls"] == SYSCTLS


def test_the_topology_is_one_the_lab_netns_module_accepts():
    from lab_netns.model import build_topology  # pylint: disable=import-outside-toplevel

    built = build_topology(topology(4))
    assert [namespace.name for namespace in built.namespaces] == ["lab-lan", "lab-node", "lab-node2", "lab-node3",
                                                                 "lab-node4"]
