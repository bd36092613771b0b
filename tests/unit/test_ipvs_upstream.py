"""IPVS mode against kube-proxy's own expectations: the inputs of pkg/proxy/ipvs/proxier_test.go
(the cases with one IPv4 node) and what those tests assert, on the module's renderer.

kube-proxy's IPVS tests check the virtual servers and real servers, the entries of the sets
they name, and, for the chains they name, each rule's target and match set in order (their
checkIptables, with nat's rules before filter's for KUBE-NODE-PORT, which both tables have).
``chain_rules`` reads the rendered rules the same way. Where the lab's model differs from the
test's fixture, the case says so: node ports below 30000 need ``node_port_range``; the lab names
the node ``lab-node`` where the tests say ``test-node``; kube-proxy's fake proxier has no
cluster CIDR (its KUBE-CLUSTER-IP rule matches ``src,dst`` instead of ``! -s CIDR``, which
checkIptables does not compare either). IPv6 addresses of the fixtures are left out: the lab
is IPv4 only, as kube-proxy's IPv4 proxier drops them.

Covered: TestNodePortIPv4 (its five IPv4 cases), TestExternalIPsNoEndpoint, TestExternalIPs,
TestOnlyLocalExternalIPs, Test_EndpointSliceReadyAndTerminatingCluster/Local,
Test_EndpointSliceOnlyReadyAndTerminatingCluster/Local, TestLoadBalancer,
TestOnlyLocalLoadBalancing, TestLoadBalancerSourceRanges, TestAcceptIPVSTraffic,
TestOnlyLocalNodePorts, TestHealthCheckNodePort, TestSessionAffinity, TestEndpointSliceE2E,
TestCreateAndLinkKubeChain.
"""

import pytest

from kube_proxy import ipvs
from kube_proxy.iptables import tokenize
from lab_services import config

NODE = "lab-node"
# The fixture's eth0 (NewFakeProxier's nodeIPs), as `ip -o -4 addr show` prints it.
ETH0 = "2: eth0    inet 100.101.102.103/24 scope global eth0\n"


def upstream(*services, **options):
    options.setdefault("node_name", NODE)
    options.setdefault("node_port_range", "1-65535")
    return config(*services, mode="ipvs", **options)


def svc1(**fields):
    return dict(dict(namespace="ns1", name="svc1", port_name="p80", cluster_ip="10.20.30.41", port=80,
                     target_port=80), **fields)


def local(ip, node=NODE, **conditions):
    return dict(dict(ip=ip, node_name=node), **conditions)


def render(*services, addresses="", **options):
    state = ipvs.render(upstream(*services, **options), ipvs.parse_local_addresses(addresses))
    return state, ipvs.render_iptables(upstream(*services, **options), state)


def servers(state):
    """{(protocol flag, address:port): [real server address:port, ...]}, as checkIPVS reads them."""
    return {key: sorted(real.endpoint for real in server.real_servers) for key, server in state.virtual_servers.items()}


def chain_rules(tables, chain):
    """Each rule of CHAIN, nat's then filter's, as (target, match set or None): checkIptables."""
    rules = []
    for table in ("nat", "filter"):
        for rule in tables[table].chains.get(chain, []):
            words = tokenize(rule)
            match_set = words[words.index("--match-set") + 1] if "--match-set" in words else None
            rules.append((words[words.index("-j") + 1], match_set))
    return rules


SERVICES_CLUSTER_IP_ONLY = [("RETURN", None), ("KUBE-MARK-MASQ", "KUBE-CLUSTER-IP"), ("KUBE-NODE-PORT", None),
                            ("ACCEPT", "KUBE-CLUSTER-IP")]
SERVICES_WITH_LOAD_BALANCER = [("RETURN", None), ("KUBE-LOAD-BALANCER", "KUBE-LOAD-BALANCER"),
                               ("KUBE-MARK-MASQ", "KUBE-CLUSTER-IP"), ("KUBE-NODE-PORT", None),
                               ("ACCEPT", "KUBE-CLUSTER-IP"), ("ACCEPT", "KUBE-LOAD-BALANCER")]


# --------------------------------------------------------------------------- TestNodePortIPv4

def test_node_port_with_two_endpoints():
    """"1 service with node port, has 2 endpoints" (the second endpoint is its IPv6 one)."""
    state, _tables = render(svc1(type="NodePort", node_port=3001, endpoints=["10.180.0.1"]), addresses=ETH0)
    assert servers(state) == {("-t", "10.20.30.41:80"): ["10.180.0.1:80"],
                              ("-t", "100.101.102.103:3001"): ["10.180.0.1:80"]}


def test_udp_node_port_with_endpoints():
    """"1 UDP service with node port, has endpoints" (nodePortAddresses 0.0.0.0/0: every address)."""
    state, tables = render(svc1(type="NodePort", node_port=3001, protocol="UDP", endpoints=["10.180.0.1"]),
                           addresses=ETH0)
    assert servers(state) == {("-u", "10.20.30.41:80"): ["10.180.0.1:80"],
                              ("-u", "100.101.102.103:3001"): ["10.180.0.1:80"]}
    assert state.entries(ipvs.NODE_PORT_SETS["udp"][0]) == {"3001"}
    assert chain_rules(tables, "KUBE-NODE-PORT") == [("KUBE-MARK-MASQ", "KUBE-NODE-PORT-UDP"),
                                                     ("ACCEPT", "KUBE-HEALTH-CHECK-NODE-PORT")]
    assert chain_rules(tables, "KUBE-SERVICES") == SERVICES_CLUSTER_IP_ONLY


def test_node_port_without_endpoints():
    """"service has node port but no endpoints": both virtual servers, no real server."""
    state, _tables = render(svc1(type="NodePort", node_port=3001), addresses=ETH0)
    assert servers(state) == {("-t", "10.20.30.41:80"): [], ("-t", "100.101.102.103:3001"): []}


def test_sctp_node_port_on_a_node_with_several_addresses():
    """"node port service with protocol sctp on a node with multiple nodeIPs": one hash entry per address."""
    addresses = "".join("2: eth0    inet 100.101.102.%d/24 scope global eth0\n" % host for host in (103, 104, 105))
    state, _tables = render(svc1(type="NodePort", node_port=3001, protocol="SCTP", endpoints=["10.180.0.1"]),
                            addresses=addresses)
    assert servers(state) == dict(
        [(("--sctp-service", "10.20.30.41:80"), ["10.180.0.1:80"])]
        + [(("--sctp-service", "100.101.102.%d:3001" % host), ["10.180.0.1:80"]) for host in (103, 104, 105)])
    assert state.entries(ipvs.NODE_PORT_SETS["sctp"][0]) == {
        "100.101.102.%d,sctp:3001" % host for host in (103, 104, 105)}


def test_sctp_node_port_with_the_local_policy():
    """"node port service with protocol sctp and externalTrafficPolicy local"."""
    state, tables = render(svc1(type="NodePort", node_port=3001, protocol="SCTP", external_traffic_policy="Local",
                                endpoints=[local("10.180.0.1"), local("10.180.1.1", "other-node")]),
                           addresses=ETH0)
    assert servers(state) == {("--sctp-service", "10.20.30.41:80"): ["10.180.0.1:80", "10.180.1.1:80"],
                              ("--sctp-service", "100.101.102.103:3001"): ["10.180.0.1:80"]}
    masquerade_set, local_set = ipvs.NODE_PORT_SETS["sctp"]
    assert state.entries(masquerade_set) == state.entries(local_set) == {"100.101.102.103,sctp:3001"}
    assert chain_rules(tables, "KUBE-NODE-PORT") == [
        ("RETURN", "KUBE-NODE-PORT-LOCAL-SCTP-HASH"), ("KUBE-MARK-MASQ", "KUBE-NODE-PORT-SCTP-HASH"),
        ("ACCEPT", "KUBE-HEALTH-CHECK-NODE-PORT")]


# --------------------------------------------------------------------------- external IPs

def test_external_ip_without_endpoints():
    """TestExternalIPsNoEndpoint: a virtual server on the external IP, with no real server, bound."""
    state, _tables = render(svc1(external_ips=["50.60.70.81"]))
    assert servers(state) == {("-t", "10.20.30.41:80"): [], ("-t", "50.60.70.81:80"): []}
    assert state.entries(ipvs.EXTERNAL_IP_SET) == {"50.60.70.81,tcp:80"}
    assert state.entries(ipvs.IPVS_SET) == {"10.20.30.41", "50.60.70.81"}


def test_external_ips():
    """TestExternalIPs, without its IPv6 and loopback addresses (the lab's API checks refuse a
    loopback external IP): a virtual server per external IP, with the Service's endpoints."""
    state, _tables = render(svc1(external_ips=["50.60.70.81"], endpoints=["10.180.0.1"]))
    assert servers(state) == {("-t", "10.20.30.41:80"): ["10.180.0.1:80"], ("-t", "50.60.70.81:80"): ["10.180.0.1:80"]}


def test_external_ips_with_the_local_policy():
    """TestOnlyLocalExternalIPs: the external IP's virtual server has this node's endpoint only."""
    state, tables = render(svc1(external_ips=["50.60.70.81"], external_traffic_policy="Local",
                                endpoints=[local("10.180.0.1"), local("10.180.1.1", "other-node")]))
    assert servers(state) == {("-t", "10.20.30.41:80"): ["10.180.0.1:80", "10.180.1.1:80"],
                              ("-t", "50.60.70.81:80"): ["10.180.0.1:80"]}
    assert state.entries(ipvs.EXTERNAL_IP_LOCAL_SET) == {"50.60.70.81,tcp:80"}
    assert not state.entries(ipvs.EXTERNAL_IP_SET)
    assert state.entries(ipvs.LOOP_BACK_SET) == {"10.180.0.1,tcp:80,10.180.0.1"}
    # The Local set only accepts, it does not mark for masquerade.
    assert ("KUBE-MARK-MASQ", "KUBE-EXTERNAL-IP-LOCAL") not in chain_rules(tables, "KUBE-SERVICES")


# Test_EndpointSlice{,Only}ReadyAndTerminating{Cluster,Local}: (ready, serving, terminating, node).
READY_AND_TERMINATING = [(True, True, False, NODE), (True, True, False, NODE), (False, True, True, NODE),
                         (False, False, True, NODE), (True, True, False, "another-node")]
ONLY_TERMINATING_CLUSTER = [(False, True, True, NODE), (False, True, True, NODE), (False, False, True, NODE),
                            (False, True, True, "another-node"), (False, False, False, "another-node")]
ONLY_TERMINATING_LOCAL = ONLY_TERMINATING_CLUSTER[:4] + [(True, True, False, "another-node")]


@pytest.mark.parametrize("endpoints, policy, cluster_ip_reals, external_reals, loop_back", [
    (READY_AND_TERMINATING, "Cluster", [1, 2, 5], [1, 2, 5], [1, 2, 3, 4]),
    (READY_AND_TERMINATING, "Local", [1, 2, 5], [1, 2], [1, 2, 3, 4]),
    (ONLY_TERMINATING_CLUSTER, "Cluster", [1, 2, 4], [1, 2, 4], [1, 2, 3]),
    (ONLY_TERMINATING_LOCAL, "Local", [5], [1, 2], [1, 2, 3]),
], ids=["ReadyAndTerminatingCluster", "ReadyAndTerminatingLocal", "OnlyReadyAndTerminatingCluster",
        "OnlyReadyAndTerminatingLocal"])
def test_ready_and_terminating_endpoints(endpoints, policy, cluster_ip_reals, external_reals, loop_back):
    declared = [local("10.0.1.%d" % host, node, ready=ready, serving=serving, terminating=terminating)
                for host, (ready, serving, terminating, node) in enumerate(endpoints, 1)]
    state, _tables = render(svc1(cluster_ip="172.20.1.1", port_name="", external_ips=["1.2.3.4"],
                                 external_traffic_policy=policy, endpoints=declared))
    assert servers(state) == {("-t", "172.20.1.1:80"): ["10.0.1.%d:80" % host for host in cluster_ip_reals],
                              ("-t", "1.2.3.4:80"): ["10.0.1.%d:80" % host for host in external_reals]}
    assert state.entries(ipvs.LOOP_BACK_SET) == {"10.0.1.%d,tcp:80,10.0.1.%d" % (host, host) for host in loop_back}


# --------------------------------------------------------------------------- load balancers

def test_load_balancer():
    """TestLoadBalancer (whose fixture has no node address: no node port virtual server)."""
    state, tables = render(svc1(type="LoadBalancer", node_port=3001, load_balancer_ips=["1.2.3.4"],
                                endpoints=["10.180.0.1"]))
    assert servers(state) == {("-t", "10.20.30.41:80"): ["10.180.0.1:80"], ("-t", "1.2.3.4:80"): ["10.180.0.1:80"]}
    assert state.entries(ipvs.LOAD_BALANCER_SET) == {"1.2.3.4,tcp:80"}
    assert chain_rules(tables, "KUBE-SERVICES") == SERVICES_WITH_LOAD_BALANCER
    assert chain_rules(tables, "KUBE-LOAD-BALANCER") == [("KUBE-MARK-MASQ", None)]


def test_load_balancer_with_the_local_policy():
    """TestOnlyLocalLoadBalancing."""
    state, tables = render(svc1(type="LoadBalancer", node_port=3001, load_balancer_ips=["1.2.3.4"],
                                external_traffic_policy="Local", health_check_node_port=30000,
                                endpoints=[local("10.180.0.1"), local("10.180.1.1", "other-node")]))
    assert servers(state) == {("-t", "10.20.30.41:80"): ["10.180.0.1:80", "10.180.1.1:80"],
                              ("-t", "1.2.3.4:80"): ["10.180.0.1:80"]}
    assert state.entries(ipvs.LOAD_BALANCER_SET) == state.entries(ipvs.LOAD_BALANCER_LOCAL_SET) == {"1.2.3.4,tcp:80"}
    assert chain_rules(tables, "KUBE-SERVICES") == SERVICES_WITH_LOAD_BALANCER
    assert chain_rules(tables, "KUBE-LOAD-BALANCER") == [("RETURN", "KUBE-LOAD-BALANCER-LOCAL"),
                                                         ("KUBE-MARK-MASQ", None)]


def test_load_balancer_source_ranges():
    """TestLoadBalancerSourceRanges; and, as proxier.go writes it (no test of kube-proxy checks
    it), the node itself shut out of a load balancer IP whose ranges leave its address out."""
    state, tables = render(svc1(type="LoadBalancer", node_port=30080, load_balancer_ips=["1.2.3.4"],
                                load_balancer_source_ranges=["10.0.0.0/8"], endpoints=["10.180.0.1"]))
    assert servers(state) == {("-t", "10.20.30.41:80"): ["10.180.0.1:80"], ("-t", "1.2.3.4:80"): ["10.180.0.1:80"]}
    assert state.entries(ipvs.LOAD_BALANCER_SET) == state.entries(ipvs.LOAD_BALANCER_FW_SET) == {"1.2.3.4,tcp:80"}
    assert state.entries(ipvs.LOAD_BALANCER_SOURCE_CIDR_SET) == {"1.2.3.4,tcp:80,10.0.0.0/8"}
    assert chain_rules(tables, "KUBE-SERVICES") == SERVICES_WITH_LOAD_BALANCER
    assert chain_rules(tables, "KUBE-PROXY-FIREWALL") == [("KUBE-SOURCE-RANGES-FIREWALL", "KUBE-LOAD-BALANCER-FW")]
    assert chain_rules(tables, "KUBE-SOURCE-RANGES-FIREWALL") == [("RETURN", "KUBE-LOAD-BALANCER-SOURCE-CIDR"),
                                                                  ("DROP", None)]
    assert tables["filter"].chains["KUBE-IPVS-OUT-FILTER"] == [
        "-s 1.2.3.4 -m ipvs --vaddr 1.2.3.4 --vproto tcp --vport 80 -j DROP"]

    # A node inside the ranges may reach the load balancer IP it holds, from that address.
    state, tables = render(svc1(type="LoadBalancer", node_port=30080, load_balancer_ips=["1.2.3.4"],
                                load_balancer_source_ranges=["10.0.0.0/8"], endpoints=["10.180.0.1"]),
                           node_ips=["10.1.2.3"])
    assert state.entries(ipvs.LOAD_BALANCER_SOURCE_IP_SET) == {"1.2.3.4,tcp:80,1.2.3.4"}
    assert chain_rules(tables, "KUBE-SOURCE-RANGES-FIREWALL") == [
        ("RETURN", "KUBE-LOAD-BALANCER-SOURCE-CIDR"), ("RETURN", "KUBE-LOAD-BALANCER-SOURCE-IP"), ("DROP", None)]
    assert tables["filter"].chains["KUBE-IPVS-OUT-FILTER"] == []


def test_accept_ipvs_traffic():
    """TestAcceptIPVSTraffic: KUBE-SERVICES for an external IP, a load balancer and a node port,
    none with endpoints (node ports 80 in the fixture; the lab's range starts at 1 here)."""
    _state, tables = render(
        svc1(name="svc1", cluster_ip="10.20.30.40", external_ips=["5.6.7.8"]),
        svc1(name="svc2", cluster_ip="10.20.30.41", type="LoadBalancer", node_port=80, load_balancer_ips=["1.2.3.4"]),
        svc1(name="svc3", cluster_ip="10.20.30.42", type="NodePort", node_port=81))
    assert chain_rules(tables, "KUBE-SERVICES") == [
        ("RETURN", None), ("KUBE-LOAD-BALANCER", "KUBE-LOAD-BALANCER"), ("KUBE-MARK-MASQ", "KUBE-CLUSTER-IP"),
        ("KUBE-MARK-MASQ", "KUBE-EXTERNAL-IP"), ("ACCEPT", "KUBE-EXTERNAL-IP"), ("ACCEPT", "KUBE-EXTERNAL-IP"),
        ("KUBE-NODE-PORT", None), ("ACCEPT", "KUBE-CLUSTER-IP"), ("ACCEPT", "KUBE-LOAD-BALANCER")]


# --------------------------------------------------------------------------- Local node ports, health checks

def test_node_port_with_the_local_policy():
    """TestOnlyLocalNodePorts (--nodeport-addresses 100.101.102.0/24, resolved: the node_ips)."""
    state, tables = render(svc1(type="NodePort", node_port=3001, external_traffic_policy="Local",
                                endpoints=[local("10.180.0.1"), local("10.180.1.1", "other-node")]),
                           node_ips=["100.101.102.103"])
    assert servers(state) == {("-t", "10.20.30.41:80"): ["10.180.0.1:80", "10.180.1.1:80"],
                              ("-t", "100.101.102.103:3001"): ["10.180.0.1:80"]}
    masquerade_set, local_set = ipvs.NODE_PORT_SETS["tcp"]
    assert state.entries(masquerade_set) == state.entries(local_set) == {"3001"}
    assert chain_rules(tables, "KUBE-SERVICES") == SERVICES_CLUSTER_IP_ONLY
    assert chain_rules(tables, "KUBE-NODE-PORT") == [("RETURN", "KUBE-NODE-PORT-LOCAL-TCP"),
                                                     ("KUBE-MARK-MASQ", "KUBE-NODE-PORT-TCP"),
                                                     ("ACCEPT", "KUBE-HEALTH-CHECK-NODE-PORT")]


def test_health_check_node_ports():
    """TestHealthCheckNodePort: the Local Services' health check node ports (its third Service,
    Cluster with a health check port, is refused by the lab's API checks, as the API server
    refuses it; and each Service has its own ClusterIP and node port here)."""
    state, tables = render(
        svc1(name="valid-svc1", type="LoadBalancer", node_port=3000, external_traffic_policy="Local",
             health_check_node_port=30000),
        svc1(name="valid-svc2", cluster_ip="10.20.30.42", type="LoadBalancer", node_port=3002,
             external_traffic_policy="Local", health_check_node_port=30001),
        node_ips=["100.101.102.103"])
    assert state.entries(ipvs.HEALTH_CHECK_NODE_PORT_SET) == {"30000", "30001"}
    assert chain_rules(tables, "KUBE-NODE-PORT") == [("RETURN", "KUBE-NODE-PORT-LOCAL-TCP"),
                                                     ("KUBE-MARK-MASQ", "KUBE-NODE-PORT-TCP"),
                                                     ("ACCEPT", "KUBE-HEALTH-CHECK-NODE-PORT")]


# --------------------------------------------------------------------------- related

def test_session_affinity_on_every_virtual_server():
    """TestSessionAffinity: the ClusterIP's, the external IP's and the node port's servers persist 10800 s."""
    state, _tables = render(svc1(type="NodePort", node_port=3001, external_ips=["50.60.70.81"],
                                 session_affinity="ClientIP", session_affinity_timeout=10800), addresses=ETH0)
    assert {key: server.persistence for key, server in state.virtual_servers.items()} == {
        ("-t", "10.20.30.41:80"): 10800, ("-t", "50.60.70.81:80"): 10800, ("-t", "100.101.102.103:3001"): 10800}


def test_loop_back_holds_only_this_nodes_endpoints():
    """TestEndpointSliceE2E."""
    state, _tables = render(svc1(cluster_ip="172.20.1.1", port_name="", endpoints=[
        local("10.0.1.1"), local("10.0.1.2", "node2"), local("10.0.1.3", "node3"),
        local("10.0.1.4", "node3", ready=False)]))
    assert state.entries(ipvs.LOOP_BACK_SET) == {"10.0.1.1,tcp:80,10.0.1.1"}
    assert servers(state) == {("-t", "172.20.1.1:80"): ["10.0.1.1:80", "10.0.1.2:80", "10.0.1.3:80"]}


def test_the_chains_kube_proxy_keeps_once_a_service_is_reachable_from_outside():
    """TestCreateAndLinkKubeChain's chains, in its order."""
    _state, tables = render(svc1(type="NodePort", node_port=3001), addresses=ETH0)
    assert list(tables["nat"].chains) == ["KUBE-SERVICES", "KUBE-POSTROUTING", "KUBE-NODE-PORT",
                                          "KUBE-LOAD-BALANCER", "KUBE-MARK-MASQ"]
    assert list(tables["filter"].chains) == ["KUBE-FORWARD", "KUBE-NODE-PORT", "KUBE-PROXY-FIREWALL",
                                             "KUBE-SOURCE-RANGES-FIREWALL", "KUBE-IPVS-FILTER", "KUBE-IPVS-OUT-FILTER"]
