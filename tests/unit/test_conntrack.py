"""module_utils/kube_proxy/conntrack.py: kube-proxy's UDP conntrack cleanup, as pure logic.

The matrix of test_the_upstream_cleanup_matrix is kube-proxy's own TestCleanStaleEntries
(pkg/proxy/conntrack/cleanup_test.go): one Service with a TCP, a UDP (with a NodePort) and an
SCTP port, all on one port number, an external and a load balancer IP, one serving and one
non-serving endpoint, and flows to every Service IP on the service port and on another port,
DNATed to the serving, the non-serving and a deleted endpoint, in every protocol; plus flows
never DNATed (a Service without endpoints then). Only the UDP ones to the service port (or
NodePort) that went elsewhere than the serving endpoint go.
"""

import itertools

import pytest

from kube_proxy import conntrack
from lab_services import DNS, config

CLUSTER_IP, EXTERNAL_IP, LB_IP = "172.30.1.1", "192.168.99.100", "1.2.3.4"
SERVING, NOT_SERVING, DELETED = "10.240.0.4", "10.240.1.5", "10.240.2.6"
SERVICE_PORT, NODE_PORT, OTHER_PORT = 8000, 32000, 3000
CLIENT = "10.0.0.99"

PROTOCOL_NUMBERS = {"tcp": 6, "udp": 17, "sctp": 132}


def flow(protocol, destination, port, reply_source, reply_port=None, client_port=40000):
    """One line of `conntrack -L`, as conntrack-tools prints it."""
    return ("%-8s %d 29 src=%s dst=%s sport=%d dport=%d src=%s dst=%s sport=%d dport=%d mark=0 use=1"
            % (protocol, PROTOCOL_NUMBERS[protocol], CLIENT, destination, client_port, port,
               reply_source, CLIENT, reply_port or port, client_port))


def upstream_services():
    endpoints = [dict(ip=SERVING), dict(ip=NOT_SERVING, ready=False, serving=False)]
    common = dict(namespace="test", name="cleanup-test", cluster_ip=CLUSTER_IP, port=SERVICE_PORT,
                  external_ips=[EXTERNAL_IP], load_balancer_ips=[LB_IP], type="LoadBalancer",
                  endpoints=endpoints)
    return config(
        dict(common, port_name="test-tcp", protocol="TCP", node_port=NODE_PORT),
        dict(common, port_name="test-udp", protocol="UDP", node_port=NODE_PORT),
        dict(common, port_name="test-sctp", protocol="SCTP", node_port=NODE_PORT),
    ).services


def test_the_upstream_cleanup_matrix():
    before, expected_gone = [], []
    for reply_source, protocol in itertools.product((SERVING, NOT_SERVING, DELETED), ("tcp", "udp", "sctp")):
        for destination, port in itertools.product((CLUSTER_IP, LB_IP, EXTERNAL_IP), (SERVICE_PORT, OTHER_PORT)):
            line = flow(protocol, destination, port, reply_source)
            before.append(line)
            if protocol == "udp" and port == SERVICE_PORT and reply_source != SERVING:
                expected_gone.append(line)
        line = flow(protocol, "192.168.100.11", NODE_PORT, reply_source)
        before.append(line)
        if protocol == "udp" and reply_source != SERVING:
            expected_gone.append(line)
    for destination, port in itertools.product((CLUSTER_IP, LB_IP, EXTERNAL_IP), (SERVICE_PORT, OTHER_PORT)):
        line = flow("udp", destination, port, destination)  # never DNATed
        before.append(line)
        if port == SERVICE_PORT:
            expected_gone.append(line)
    assert len(before) == 69

    entries = conntrack.parse_entries("\n".join(before) + "\n")
    assert [entry.text for entry in entries] == [line.strip() for line in before]
    stale, _filters = conntrack.find_stale(upstream_services(), entries)
    assert [entry.text for entry in stale] == [line.strip() for line in expected_gone]


def test_filters_are_exact_and_each_written_once():
    services = upstream_services()
    entries = conntrack.parse_entries("\n".join([
        flow("udp", CLUSTER_IP, SERVICE_PORT, DELETED, client_port=40000),
        flow("udp", CLUSTER_IP, SERVICE_PORT, DELETED, client_port=40001),
        flow("udp", "192.168.100.11", NODE_PORT, NOT_SERVING),
        flow("udp", CLUSTER_IP, SERVICE_PORT, SERVING),
    ]))
    assert [item.argv for item in conntrack.find_stale(services, entries)[1]] == [
        ("conntrack", "-D", "-p", "udp", "--orig-dst", CLUSTER_IP, "--orig-port-dst", "8000", "--reply-src", DELETED),
        ("conntrack", "-D", "-p", "udp", "--orig-port-dst", "32000", "--reply-src", NOT_SERVING),
    ]


def test_a_service_port_without_endpoints_keeps_its_flows():
    """kube-proxy's TestServiceWithoutEndpoints: nothing could take them over."""
    services = config(dict(DNS, endpoints=[])).services
    entries = conntrack.parse_entries("\n".join([
        flow("udp", "10.96.0.53", 53, "10.0.0.3", reply_port=8053), flow("udp", "10.96.0.53", 53, "10.96.0.53")]))
    assert conntrack.find_stale(services, entries)[1] == []


def test_a_service_port_whose_endpoints_all_stopped_serving_loses_them_all():
    services = config(dict(DNS, endpoints=[dict(ip="10.0.0.3", ready=False, serving=False)])).services
    entries = conntrack.parse_entries(flow("udp", "10.96.0.53", 53, "10.0.0.3", reply_port=8053))
    assert [item.reply_src for item in conntrack.find_stale(services, entries)[1]] == ["10.0.0.3"]


def test_a_terminating_endpoint_still_serving_keeps_its_flows():
    services = config(dict(DNS, endpoints=[dict(ip="10.0.0.3", ready=False, serving=True, terminating=True),
                                           "10.0.0.4"])).services
    entries = conntrack.parse_entries(flow("udp", "10.96.0.53", 53, "10.0.0.3", reply_port=8053))
    assert conntrack.find_stale(services, entries)[1] == []


@pytest.mark.parametrize("text", [
    "conntrack v1.4.7 (conntrack-tools): 2 flow entries have been shown.\n",
    "",
    "udp 17 29 src=10.0.0.1 dst=10.96.0.53\n",  # no reply tuple
])
def test_lines_that_are_no_flow_are_skipped(text):
    assert conntrack.parse_entries(text) == []


def test_the_extended_format_and_flags_parse_too():
    text = ("ipv4     2 udp      17 25 src=10.0.0.1 dst=10.96.0.54 sport=40000 dport=53 [UNREPLIED] "
            "src=10.96.0.54 dst=10.0.0.1 sport=53 dport=40000 mark=0 use=1\n")
    (entry,) = conntrack.parse_entries(text)
    assert (entry.protocol, entry.orig_dst, entry.orig_dport, entry.reply_src, entry.reply_sport) == (
        "udp", "10.96.0.54", 53, "10.96.0.54", 53)


def test_only_udp_service_ports_with_endpoints_need_a_cleanup():
    assert conntrack.needs_cleanup(config(DNS).services)
    assert not conntrack.needs_cleanup(config(dict(DNS, protocol="TCP")).services)
    assert not conntrack.needs_cleanup(config(dict(DNS, endpoints=[])).services)


@pytest.mark.parametrize("stderr, nothing", [
    ("conntrack v1.4.7 (conntrack-tools): 0 flow entries have been deleted.\n", True),
    ("conntrack v1.4.7 (conntrack-tools): 10 flow entries have been deleted.\n", False),
    ("conntrack v1.4.7 (conntrack-tools): Operation not permitted\n", False),
])
def test_a_delete_that_found_nothing_is_told_from_a_failure(stderr, nothing):
    assert bool(conntrack.NOTHING_DELETED.search(stderr)) is nothing
