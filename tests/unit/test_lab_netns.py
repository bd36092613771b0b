"""lab_netns: validation that names the field, the live-state reader, and the planner."""

import json

import pytest

from lab_netns.model import ValidationError, build_topology
from lab_netns.plan import LiveLink, LiveNamespace, found, parse_namespace, plan, plan_absent, plugged_peers

NODE = dict(
    name="lab-node",
    sysctls={"net.ipv4.ip_forward": 1},
    links=[dict(name="lo"),
           dict(name="cni0", kind="bridge", addresses=["10.0.0.1/24"]),
           dict(name="veth-pod1", kind="veth", peer=dict(name="eth0", netns="lab-pod1"), master="cni0", hairpin=True)],
    routes=[dict(to="10.96.0.0/12", dev="cni0")],
)
POD1 = dict(name="lab-pod1", links=[dict(name="lo"), dict(name="eth0", addresses=["10.0.0.2/24"])],
            routes=[dict(to="default", via="10.0.0.1")])


def shown(batches):
    return [line for batch in batches for line in batch.shown()]


def test_an_empty_host_gets_every_command_in_dependency_order():
    topology = build_topology([POD1, NODE])
    assert shown(plan(topology, [], {})) == [
        "ip netns add lab-pod1",
        "ip netns add lab-node",
        # the node creates the veth whose peer lands in the pod, so it goes first
        "ip -n lab-node link add cni0 type bridge",
        "ip -n lab-node link add veth-pod1 type veth peer name eth0 netns lab-pod1",
        "ip -n lab-node link set dev veth-pod1 master cni0",
        "ip -n lab-node link set dev veth-pod1 type bridge_slave hairpin on",
        "ip -n lab-node address replace 10.0.0.1/24 dev cni0",
        "ip -n lab-node link set dev lo up",
        "ip -n lab-node link set dev cni0 up",
        "ip -n lab-node link set dev veth-pod1 up",
        "ip -n lab-node route replace 10.96.0.0/12 dev cni0",
        "ip -n lab-pod1 address replace 10.0.0.2/24 dev eth0",
        "ip -n lab-pod1 link set dev lo up",
        "ip -n lab-pod1 link set dev eth0 up",
        "ip -n lab-pod1 route replace default via 10.0.0.1",
        "ip netns exec lab-node sysctl -w net.ipv4.ip_forward=1",
    ]


def test_one_process_per_namespace_that_changes():
    batches = plan(build_topology([NODE, POD1]), [], {})
    assert [batch.argv for batch in batches] == [
        ("ip", "-batch", "-"), ("ip", "-n", "lab-node", "-batch", "-"), ("ip", "-n", "lab-pod1", "-batch", "-"),
        ("ip", "netns", "exec", "lab-node", "sysctl", "-w", "net.ipv4.ip_forward=1")]
    assert batches[1].input.startswith("link add cni0 type bridge\n")


def built_live():
    return {
        "lab-node": LiveNamespace(
            links={"lo": LiveLink("lo", None, None, None, True, ("127.0.0.1/8",)),
                   "cni0": LiveLink("cni0", "bridge", None, None, True, ("10.0.0.1/24",)),
                   "veth-pod1": LiveLink("veth-pod1", "veth", "cni0", True, True, ())},
            routes=[parse_route("10.0.0.0/24", dev="cni0"), parse_route("10.96.0.0/12", dev="cni0")],
            sysctls={"net.ipv4.ip_forward": "1"}),
        "lab-pod1": LiveNamespace(
            links={"lo": LiveLink("lo", None, None, None, True, ("127.0.0.1/8",)),
                   "eth0": LiveLink("eth0", "veth", None, None, True, ("10.0.0.2/24",))},
            routes=[parse_route("default", via="10.0.0.1", dev="eth0")]),
    }


def parse_route(to, via=None, dev=None):
    entry = dict(dst=to, **({"gateway": via} if via else {}), **({"dev": dev} if dev else {}))
    return parse_namespace(json.dumps([]) + json.dumps([entry])).routes[0]


def test_a_built_topology_plans_nothing():
    assert plan(build_topology([NODE, POD1]), ["lab-node", "lab-pod1"], built_live()) == []


def test_only_what_differs_is_written():
    live = built_live()
    live["lab-node"].links["veth-pod1"].hairpin = False
    live["lab-pod1"].links["eth0"].up = False
    live["lab-node"].sysctls["net.ipv4.ip_forward"] = "0"
    assert shown(plan(build_topology([NODE, POD1]), ["lab-node", "lab-pod1"], live)) == [
        "ip -n lab-node link set dev veth-pod1 type bridge_slave hairpin on",
        "ip -n lab-pod1 link set dev eth0 up",
        "ip netns exec lab-node sysctl -w net.ipv4.ip_forward=1",
    ]


def test_a_route_via_another_gateway_is_replaced():
    live = built_live()
    live["lab-pod1"].routes = [parse_route("default", via="10.0.0.254", dev="eth0")]
    assert shown(plan(build_topology([NODE, POD1]), ["lab-node", "lab-pod1"], live)) == [
        "ip -n lab-pod1 route replace default via 10.0.0.1"]


def test_absent_deletes_only_the_namespaces_that_exist():
    assert shown(plan_absent(["lab-pod1", "lab-pod2"], ["lab-node", "lab-pod1"])) == ["ip netns delete lab-pod1"]
    assert plan_absent(["lab-pod2"], ["lab-node"]) == []


def test_a_route_declared_absent_is_deleted_only_when_there():
    node = dict(NODE, routes=NODE["routes"] + [dict(to="10.0.1.0/24", state="absent")])
    live = built_live()
    assert plan(build_topology([node, POD1]), ["lab-node", "lab-pod1"], live) == []
    live["lab-node"].routes.append(parse_route("10.0.1.0/24", via="192.168.100.12", dev="eth0"))
    assert shown(plan(build_topology([node, POD1]), ["lab-node", "lab-pod1"], live)) == [
        "ip -n lab-node route del 10.0.1.0/24"]


def test_absent_namespaces_go_before_anything_is_built():
    assert shown(plan(build_topology([NODE, POD1]), ["lab-node", "lab-pod1", "lab-node2"], built_live(),
                      absent=["lab-node2", "lab-node3"])) == ["ip netns delete lab-node2"]


def test_a_pod_moved_to_another_node_loses_its_old_end_first():
    """lab-pod1's eth0 is the end of lab-node's veth-pod1; declared on lab-node2 instead, that
    eth0 is in the way of the new veth's end: deleted first, then configured afresh."""
    node2 = dict(name="lab-node2", links=[dict(name="cni0", kind="bridge", addresses=["10.0.1.1/24"]),
                                          dict(name="veth-pod1", kind="veth", peer=dict(name="eth0", netns="lab-pod1"),
                                               master="cni0")])
    pod1 = dict(POD1, links=[dict(name="lo"), dict(name="eth0", addresses=["10.0.1.2/24"])],
                routes=[dict(to="default", via="10.0.1.1")])
    live = built_live()
    live["lab-node2"] = LiveNamespace(links={"cni0": LiveLink("cni0", "bridge", None, None, True, ("10.0.1.1/24",))})
    before = repr(live)
    assert shown(plan(build_topology([node2, pod1]), ["lab-node", "lab-node2", "lab-pod1"], live)) == [
        "ip -n lab-pod1 link delete eth0",
        "ip -n lab-node2 link add veth-pod1 type veth peer name eth0 netns lab-pod1",
        "ip -n lab-node2 link set dev veth-pod1 master cni0",
        "ip -n lab-node2 link set dev veth-pod1 up",
        "ip -n lab-pod1 address replace 10.0.1.2/24 dev eth0",
        "ip -n lab-pod1 link set dev eth0 up",
        "ip -n lab-pod1 route replace default via 10.0.1.1",
    ]
    assert repr(live) == before, "the plan changed the live state it was given"


IP_BATCH_OUTPUT = json.dumps([
    {"ifindex": 1, "ifname": "lo", "flags": ["LOOPBACK", "UP", "LOWER_UP"],
     "addr_info": [{"family": "inet", "local": "127.0.0.1", "prefixlen": 8}]},
    {"ifindex": 2, "ifname": "cni0", "flags": ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"],
     "linkinfo": {"info_kind": "bridge", "info_data": {"stp_state": 0}},
     "addr_info": [{"family": "inet", "local": "10.0.0.1", "prefixlen": 24}]},
    {"ifindex": 3, "ifname": "veth-pod1", "flags": ["BROADCAST", "MULTICAST"], "master": "cni0",
     "linkinfo": {"info_kind": "veth", "info_slave_kind": "bridge", "info_slave_data": {"hairpin": True}},
     "addr_info": []},
]) + "\n" + json.dumps([
    {"dst": "10.0.0.0/24", "dev": "cni0", "protocol": "kernel", "scope": "link", "prefsrc": "10.0.0.1", "flags": []},
]) + "\n"


def test_parse_reads_links_addresses_routes_and_sysctls():
    live = parse_namespace(IP_BATCH_OUTPUT, "net.ipv4.ip_forward = 1\nnet.bridge.bridge-nf-call-iptables = 0\n")
    assert live.links["cni0"] == LiveLink("cni0", "bridge", None, None, True, ("10.0.0.1/24",))
    assert live.links["veth-pod1"] == LiveLink("veth-pod1", "veth", "cni0", True, False, ())
    assert live.links["lo"].kind is None and live.links["lo"].up
    assert [(route.to, route.dev) for route in live.routes] == [("10.0.0.0/24", "cni0")]
    assert live.sysctls == {"net.ipv4.ip_forward": "1", "net.bridge.bridge-nf-call-iptables": "0"}


def test_parse_wants_both_arrays():
    with pytest.raises(ValueError, match="two JSON arrays"):
        parse_namespace(json.dumps([]))


@pytest.mark.parametrize("namespaces, field", [
    ([dict(name="lab node")], "namespaces[0].name"),
    ([dict(name="lab-node"), dict(name="lab-node")], "namespaces[1].name"),
    ([dict(name="n", links=[dict(name="veth-with-a-long-name")])], "namespaces[0].links[0].name"),
    ([dict(name="n", links=[dict(name="br0", kind="vxlan")])], "namespaces[0].links[0].kind"),
    ([dict(name="n", links=[dict(name="v", kind="veth")])], "namespaces[0].links[0].peer"),
    ([dict(name="n", links=[dict(name="v", kind="veth", peer=dict(name="eth0", netns="ghost"))])],
     "namespaces[0].links[0].peer.netns"),
    ([dict(name="n", links=[dict(name="eth0")])], "namespaces[0].links[0]"),
    ([dict(name="n", links=[dict(name="v", kind="dummy", master="br0")])], "namespaces[0].links[0].master"),
    ([dict(name="n", links=[dict(name="v", kind="dummy", hairpin=True)])], "namespaces[0].links[0].hairpin"),
    ([dict(name="n", links=[dict(name="v", kind="dummy", addresses=["10.0.0.300/24"])])],
     "namespaces[0].links[0].addresses[0]"),
    ([dict(name="n", links=[dict(name="v", kind="dummy", addresses=["10.0.0.3"])])],
     "namespaces[0].links[0].addresses[0]"),
    ([dict(name="n", routes=[dict(to="10.96.0.0/12", dev="cni0")])], "namespaces[0].routes[0].dev"),
    ([dict(name="n", routes=[dict(to="somewhere", via="10.0.0.1")])], "namespaces[0].routes[0].to"),
    ([dict(name="n", routes=[dict(to="default")])], "namespaces[0].routes[0]"),
    ([dict(name="n", routes=[dict(to="default", via="10.0.0.1", state="gone")])], "namespaces[0].routes[0].state"),
    ([dict(name="n", routes=[dict(to="default", via="10.0.0.1", state="absent")])], "namespaces[0].routes[0]"),
    ([dict(name="n", sysctls={"net.ipv4.ip_forward": True})], "namespaces[0].sysctls.net.ipv4.ip_forward"),
    ([dict(name="n", colour="blue")], "namespaces[0].colour"),
])
def test_bad_declarations_name_their_field(namespaces, field):
    with pytest.raises(ValidationError) as raised:
        build_topology(namespaces)
    assert raised.value.field == field
    assert str(raised.value).startswith(field + ": ")


def test_two_veths_cannot_share_a_peer():
    twice = dict(NODE, links=NODE["links"] + [dict(name="veth-again", kind="veth", peer=dict(name="eth0", netns="lab-pod1"))])
    with pytest.raises(ValidationError, match="peer of two veths"):
        build_topology([twice, POD1])


def test_veths_that_create_each_other_are_refused():
    first = dict(name="a", links=[dict(name="to-b", kind="veth", peer=dict(name="from-a", netns="b"))])
    second = dict(name="b", links=[dict(name="to-a", kind="veth", peer=dict(name="from-b", netns="a"))])
    with pytest.raises(ValueError, match="cycle"):
        plan(build_topology([first, second]), [], {})


ANNOUNCED_POD = dict(POD1, links=[dict(name="lo"), dict(name="eth0", addresses=["10.0.0.2/24"], announce=True)])


def test_an_announced_address_is_announced_once_after_everything_else_when_added():
    lines = shown(plan(build_topology([NODE, ANNOUNCED_POD]), [], {}))
    assert lines[-1] == "ip netns exec lab-pod1 arping -U -c 1 -I eth0 10.0.0.2"
    assert lines.index("ip -n lab-pod1 link set dev eth0 up") < len(lines) - 1
    assert sum("arping" in line for line in lines) == 1


def test_an_address_already_there_is_not_announced_again():
    live = built_live()
    assert shown(plan(build_topology([NODE, ANNOUNCED_POD]), ["lab-node", "lab-pod1"], live)) == []


def test_announce_must_be_a_boolean():
    with pytest.raises(ValidationError) as caught:
        build_topology([NODE, dict(ANNOUNCED_POD, links=[dict(name="eth0", announce="yes")])])
    assert caught.value.field == "namespaces[1].links[0].announce"


def test_found_lists_the_links_as_read_sorted_by_name():
    assert found(built_live()["lab-node"])[-1] == dict(name="veth-pod1", kind="veth", master="cni0", up=True,
                                                          addresses=[])
    assert [link["name"] for link in found(built_live()["lab-node"])] == sorted(built_live()["lab-node"].links)


# ip -n lab-node -json -details link show master cni0 (trimmed), and ip -n lab-node -json netns list-id.
BRIDGE_PORTS = json.dumps([
    dict(ifname="veth-pod1", link_netnsid=0, linkinfo=dict(info_kind="veth", info_slave_kind="bridge")),
    dict(ifname="veth-pod7", link_netnsid=2, linkinfo=dict(info_kind="veth", info_slave_kind="bridge")),
    dict(ifname="tap0", linkinfo=dict(info_kind="tun", info_slave_kind="bridge")),
])
NETNS_IDS = json.dumps([dict(nsid=0, name="lab-pod1"), dict(nsid=1, name="lab-client"), dict(nsid=2, name="lab-pod7")])


def test_plugged_peers_are_the_namespaces_at_the_far_end_of_the_bridge_veths():
    assert plugged_peers(BRIDGE_PORTS, NETNS_IDS) == ["lab-pod1", "lab-pod7"]


def test_a_peer_whose_namespace_has_no_name_is_left_out():
    assert plugged_peers(BRIDGE_PORTS, json.dumps([dict(nsid=0, name="lab-pod1"), dict(nsid=2)])) == ["lab-pod1"]
    assert plugged_peers("[]", "") == []


def test_a_pod_given_another_address_loses_the_old_one_and_gets_its_route_back():
    """lab-pod1 at 10.0.0.3 now (its node's subnet shifted): 10.0.0.2 goes first (deleting a
    primary address deletes its secondaries), and the default route, which went with it, is
    planned again."""
    pod1 = dict(POD1, links=[dict(name="lo"), dict(name="eth0", addresses=["10.0.0.3/24"])])
    assert shown(plan(build_topology([NODE, pod1]), ["lab-node", "lab-pod1"], built_live())) == [
        "ip -n lab-pod1 address del 10.0.0.2/24 dev eth0",
        "ip -n lab-pod1 address replace 10.0.0.3/24 dev eth0",
        "ip -n lab-pod1 route replace default via 10.0.0.1",
    ]


def test_a_link_declared_without_addresses_keeps_its_own():
    assert plan(build_topology([NODE, POD1]), ["lab-node", "lab-pod1"], built_live()) == []
    assert "127.0.0.1/8" in built_live()["lab-node"].links["lo"].addresses


def test_an_address_kept_beside_a_stale_primary_is_added_again_after_it_goes():
    live = built_live()
    live["lab-pod1"].links["eth0"].addresses = ("10.0.0.4/24", "10.0.0.2/24")
    assert shown(plan(build_topology([NODE, POD1]), ["lab-node", "lab-pod1"], live)) == [
        "ip -n lab-pod1 address del 10.0.0.4/24 dev eth0",
        "ip -n lab-pod1 address replace 10.0.0.2/24 dev eth0",
        "ip -n lab-pod1 route replace default via 10.0.0.1",
    ]


def test_the_end_of_another_pair_in_the_node_is_deleted_before_the_pod_comes_back():
    """lab-pod1 was deleted a moment ago and is declared again: until the kernel has torn the old
    namespace down, lab-node still holds veth-pod1, the end of the old pair. It cannot be the new
    pair (its peer namespace does not exist yet), so it goes before the pair is created anew."""
    live = built_live()
    del live["lab-pod1"]
    assert shown(plan(build_topology([NODE, POD1]), ["lab-node"], live))[:3] == [
        "ip netns add lab-pod1",
        "ip -n lab-node link delete veth-pod1",
        "ip -n lab-node link add veth-pod1 type veth peer name eth0 netns lab-pod1",
    ]


CLIENT = dict(name="lab-client", routes=[dict(to="192.168.200.10/32", nexthops=["192.168.100.11", "192.168.100.12"])])


def client_live(*routes):
    return {"lab-client": LiveNamespace(routes=list(routes))}


def test_a_multipath_route_is_written_with_one_nexthop_per_gateway():
    assert shown(plan(build_topology([CLIENT]), ["lab-client"], client_live())) == [
        "ip -n lab-client route replace 192.168.200.10/32 nexthop via 192.168.100.11 nexthop via 192.168.100.12"]


def test_a_multipath_route_as_read_plans_nothing_whatever_the_order_of_its_hops():
    # ip -json prints a host route without /32 and a multipath route's gateways under nexthops.
    read = parse_namespace(json.dumps([]) + json.dumps([{
        "dst": "192.168.200.10", "flags": [], "nexthops": [
            {"gateway": "192.168.100.12", "dev": "eth0", "weight": 1, "flags": []},
            {"gateway": "192.168.100.11", "dev": "eth0", "weight": 1, "flags": []}]}])).routes
    assert read[0].to == "192.168.200.10/32" and read[0].nexthops == ("192.168.100.12", "192.168.100.11")
    assert read[0].dev == "eth0" and read[0].via is None
    assert plan(build_topology([CLIENT]), ["lab-client"], client_live(*read)) == []


def test_a_single_route_becomes_multipath_and_back():
    single = parse_route("192.168.200.10", via="192.168.100.11", dev="eth0")
    assert single.to == "192.168.200.10/32"
    assert shown(plan(build_topology([CLIENT]), ["lab-client"], client_live(single))) == [
        "ip -n lab-client route replace 192.168.200.10/32 nexthop via 192.168.100.11 nexthop via 192.168.100.12"]
    # One next hop is a plain route via it, as the kernel keeps it: as read, nothing to do.
    one = dict(CLIENT, routes=[dict(to="192.168.200.10/32", nexthops=["192.168.100.11"])])
    assert plan(build_topology([one]), ["lab-client"], client_live(single)) == []
    multipath = parse_namespace(json.dumps([]) + json.dumps([{"dst": "192.168.200.10", "nexthops": [
        {"gateway": "192.168.100.11", "dev": "eth0"}, {"gateway": "192.168.100.12", "dev": "eth0"}]}])).routes
    assert shown(plan(build_topology([one]), ["lab-client"], client_live(*multipath))) == [
        "ip -n lab-client route replace 192.168.200.10/32 via 192.168.100.11"]


def test_a_host_route_declared_absent_is_deleted_when_there():
    gone = dict(name="lab-client", routes=[dict(to="192.168.200.10/32", state="absent")])
    assert plan(build_topology([gone]), ["lab-client"], client_live()) == []
    read = parse_route("192.168.200.10", via="192.168.100.11", dev="eth0")
    assert shown(plan(build_topology([gone]), ["lab-client"], client_live(read))) == [
        "ip -n lab-client route del 192.168.200.10/32"]


@pytest.mark.parametrize("route, field", [
    (dict(to="192.168.200.10/32", nexthops=["192.168.100.11", "nowhere"]), "namespaces[0].routes[0].nexthops[1]"),
    (dict(to="192.168.200.10/32", nexthops=["192.168.100.11", "192.168.100.11"]), "namespaces[0].routes[0].nexthops[1]"),
    (dict(to="192.168.200.10/32", nexthops=["192.168.100.11", "192.168.100.12"], via="192.168.100.11"),
     "namespaces[0].routes[0].nexthops"),
    (dict(to="192.168.200.10/32", nexthops=["192.168.100.11"], state="absent"), "namespaces[0].routes[0]"),
    (dict(to="192.168.200.10/32", nexthops=[]), "namespaces[0].routes[0]"),
])
def test_bad_nexthops_name_their_field(route, field):
    with pytest.raises(ValidationError) as raised:
        build_topology([dict(name="lab-client", routes=[route])])
    assert raised.value.field == field
