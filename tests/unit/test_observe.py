"""playbooks/files/lab_observe.py: the parsers and the report observe.yml prints, against
output captured from the lab's node (fixtures/observe/)."""

import importlib.util
import json
import re
import socket
import threading

import pytest
from ansible.module_utils.lab_pods import server

from conftest import FIXTURES, REPO

SPEC = importlib.util.spec_from_file_location("lab_observe", REPO / "playbooks" / "files" / "lab_observe.py")
observe = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(observe)

SAMPLES = FIXTURES / "observe"
PODS = [{"name": "pod%d" % n, "ip": "10.0.0.%d" % (n + 1)} for n in (1, 2, 3)]


def sample(name):
    return (SAMPLES / name).read_text(encoding="utf-8")


def test_counter_deltas_pair_rules_by_text():
    deltas = observe.counter_deltas(sample("iptables-before.txt"), sample("iptables-after.txt"))
    raised = {chain: added for chain, _rule, _packets, added in deltas if added}
    assert {"OUTPUT", "KUBE-SERVICES", "KUBE-SVC-4QFXEAV27BCWXK5E", "POSTROUTING"} <= set(raised)
    assert set(raised.values()) == {1}, "one request, one connection, one packet in each nat rule"


def test_the_services_chains_and_their_endpoints():
    rules = observe.counted_rules(sample("iptables-after.txt"))
    svc, seps, dnat = observe.iptables_service_chains(rules, "10.96.0.10", "tcp", 80)
    assert svc == "KUBE-SVC-4QFXEAV27BCWXK5E"
    assert len(seps) == 3
    assert [dnat[sep] for sep in seps] == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]


def test_the_path_from_counters_ends_in_dnat():
    steps = observe.walk_counters(
        observe.counter_deltas(sample("iptables-before.txt"), sample("iptables-after.txt")), "OUTPUT")
    chains = [chain for chain, _rule in steps]
    assert chains[:2] == ["OUTPUT", "KUBE-SERVICES"]
    assert chains[2].startswith("KUBE-SVC-") and chains[-1].startswith("KUBE-SEP-")
    assert "-j DNAT --to-destination 10.0.0." in steps[-1][1]
    summary = observe.summary("counters", steps)
    assert summary.startswith("path: OUTPUT -> KUBE-SERVICES -> KUBE-SVC-")
    assert ":8080" in summary.split("DNAT ")[1]


def test_the_xtables_trace_of_the_first_packet():
    steps = observe.trace_steps("xtables", sample("xtables-trace.txt").splitlines())
    summary = observe.summary("xtables", steps)
    # from the external client: marked for masquerade in KUBE-SVC, masqueraded in POSTROUTING
    assert summary.startswith("path: PREROUTING -> KUBE-SERVICES -> KUBE-SVC-"), summary
    assert "-> KUBE-MARK-MASQ -> KUBE-SEP-" in summary and " -> DNAT 10.0.0." in summary
    assert summary.endswith("masquerades the source")
    assert all(where.split()[0] in ("raw", "nat", "filter") for where, _what in steps)
    assert not any("ACK" in what for _where, what in steps), "only the first packet (the SYN)"


def test_the_nft_trace_of_the_first_packet():
    steps = observe.trace_steps("nft", sample("nft-trace.txt").splitlines())
    summary = observe.summary("nft", steps)
    # from pod1, which the Service sent to itself: marked in the endpoint chain (hairpin)
    assert summary.startswith("path: nat-prerouting -> services -> service-"), summary
    assert "-> endpoint-" in summary and " -> DNAT 10.0.0.2:8080" in summary
    assert summary.endswith("masquerades the source")
    assert len([what for where, what in steps if where == "lab-trace prerouting"]) == 2, "only the first packet"


def test_the_numgen_line_names_the_endpoints():
    endpoints, line = observe.nft_endpoints(sample("nft-table.txt"), "10.96.0.10", "tcp", 80)
    assert endpoints == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
    assert line.startswith("numgen random mod 3 vmap")


def test_the_ipvs_block_and_its_connections():
    lines, reals = observe.ipvs_block(sample("ipvs-stats-after.txt"), "10.96.0.10", "tcp", 80)
    assert lines[0].startswith("TCP  10.96.0.10:80")
    assert reals == {"10.0.0.2": 1, "10.0.0.3": 2, "10.0.0.4": 1}


def test_conntrack_entries_name_the_pod_in_the_reply():
    entries = observe.conntrack_entries(sample("conntrack.txt"), "10.96.0.10", "tcp", 80)
    assert entries
    assert {pod for _source, pod, _line in entries} <= {pod["ip"] for pod in PODS}


def report_input(mode, **parts):
    data = {
        "mode": mode, "source": "node", "service": "default/app1", "cluster_ip": "10.96.0.10", "port": "80",
        "target_port": "8080", "protocol": "tcp", "pods": PODS,
        "requests": {"url": "http://10.96.0.10:80/", "count": 300, "failed": {},
                     "pods": {pod["name"]: {"count": 100, "clients": {"10.0.0.1": 100}} for pod in PODS}},
        "before": [["conntrack", ""]], "after": [["conntrack", sample("conntrack.txt")]],
        "path": {"method": "counters", "hook": "OUTPUT", "why": "a test", "trace": {},
                 "before": sample("iptables-before.txt"), "after": sample("iptables-after.txt"),
                 "ipvs_before": None, "ipvs_after": None,
                 "answer": json.dumps({"pods": {"pod2": {"count": 1, "clients": {"10.0.0.1": 1}}}})},
    }
    data.update(parts)
    return data


@pytest.mark.parametrize("mode, before, after, kernel_line", [
    ("iptables", [["iptables", sample("iptables-before.txt")]], [["iptables", sample("iptables-after.txt")]],
     "-A KUBE-SVC-4QFXEAV27BCWXK5E"),
    ("ipvs", [["ipvs", sample("ipvs-stats-before.txt")]], [["ipvs", sample("ipvs-stats-after.txt")]],
     "10.0.0.3        +1 connections"),
    ("nftables", [], [["nftables", sample("nft-table.txt")]], "numgen random mod 3 vmap"),
])
def test_the_report_a_student_reads(mode, before, after, kernel_line):
    data = report_input(mode)
    data["before"] = before + data["before"]
    data["after"] = after + data["after"]
    text = observe.report(data)
    assert "300 requests from node to http://10.96.0.10:80/ (default/app1, mode %s)" % mode in text
    for pod in PODS:
        row = r"^  %s\s+%s\s+100\s+33\.3 %%\s+33\.3 %%\s+10\.0\.0\.1 \(100\)$" % (pod["name"], re.escape(pod["ip"]))
        assert re.search(row, text, re.M), text
    assert kernel_line in text
    assert "path: OUTPUT -> KUBE-SERVICES" in text
    assert "pod2, which saw the client as 10.0.0.1" in text
    assert all(line == line.rstrip() and line.isascii() for line in text.splitlines()), "YAML block output needs both"


def test_a_pod_that_is_no_endpoint_is_expected_to_get_nothing():
    data = report_input("iptables", before=[["iptables", sample("iptables-before.txt")]],
                        after=[["iptables", sample("iptables-after.txt").replace("10.0.0.4:8080", "10.0.0.9:8080")]])
    text = observe.report(data)
    assert "pod3     10.0.0.4" in text and "(not an endpoint)" in text


def test_failed_requests_get_their_own_row():
    data = report_input("nftables", after=[["nftables", sample("nft-table.txt")], ["conntrack", ""]])
    data["requests"]["failed"] = {"ConnectionRefusedError": 5}
    assert "ConnectionRefusedError: 5" in observe.report(data)


# ---------------------------------------------------------------- targets other than the ClusterIP

NODES = [{"netns": "lab-node", "ip": "192.168.100.11", "bridge_address": "10.0.0.1/24"},
         {"netns": "lab-node2", "ip": "192.168.100.12", "bridge_address": "10.0.1.1/24"}]
NAT_LB = """-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "default/app1 cluster IP" -m tcp --dport 80 -j KUBE-SVC-X
-A KUBE-SERVICES -d 192.168.200.10/32 -p tcp -m comment --comment "default/app1 loadbalancer IP" -m tcp --dport 80 -j KUBE-FW-X
-A KUBE-NODEPORTS -p tcp -m comment --comment "default/app1" -m tcp --dport 30080 -j KUBE-EXT-X
"""
NFT_NODEPORT = """\tmap service-nodeports {
\t\telements = { tcp . 30080 : goto external-GX25I5IS-default/app1/tcp/ }
\t}
\tmap service-ips {
\t\telements = { 10.96.0.10 . tcp . 80 : goto service-GX25I5IS-default/app1/tcp/,
\t\t\t     192.168.200.20 . tcp . 80 : goto external-GX25I5IS-default/app1/tcp/ }
\t}
"""


@pytest.mark.parametrize("mode, text, target, address, port, held", [
    ("iptables", NAT_LB, "node-port", "192.168.100.12", 30080, True),
    ("iptables", NAT_LB, "load-balancer", "192.168.200.10", 80, True),
    ("iptables", NAT_LB, "external-ip", "192.168.200.20", 80, False),
    ("iptables", NAT_LB.replace("default/app1", "default/app2"), "node-port", "192.168.100.12", 30080, False),
    ("nftables", NFT_NODEPORT, "node-port", "192.168.100.11", 30080, True),
    ("nftables", NFT_NODEPORT, "external-ip", "192.168.200.20", 80, True),
    ("nftables", NFT_NODEPORT, "load-balancer", "192.168.200.10", 80, False),
    ("nftables", NFT_NODEPORT.replace("30080", "30099"), "node-port", "192.168.100.11", 30080, False),
    ("ipvs", "TCP  192.168.100.11:30080 rr\n  -> 10.0.0.2:8080 Masq 1 0 0\n", "node-port", "192.168.100.11", 30080, True),
    ("ipvs", "TCP  10.96.0.10:80 rr\n", "load-balancer", "192.168.200.10", 80, False),
])
def test_whether_the_rules_hold_the_target(mode, text, target, address, port, held):
    assert observe.programmed(mode, text, "default/app1", target, address, port, "tcp") is held


@pytest.mark.parametrize("gateway, node", [("192.168.100.11", "lab-node"), ("10.0.1.1", "lab-node2"),
                                           ("192.168.100.1", None)])
def test_the_first_hop_is_the_node_the_gateway_belongs_to(gateway, node):
    routes = [{"dst": "default", "gateway": "192.168.100.1"}, {"dst": "192.168.200.0/24", "gateway": gateway}]
    assert observe.first_hops(json.dumps(routes), NODES) == [node]


def test_a_multipath_route_has_a_first_hop_per_node():
    routes = [{"dst": "192.168.200.0/24", "gateway": "192.168.100.11"},
              {"dst": "192.168.200.10", "nexthops": [{"gateway": "192.168.100.11"}, {"gateway": "192.168.100.12"}]}]
    assert observe.first_hops(json.dumps(routes), NODES) == ["lab-node", "lab-node2"]


class Ran:
    """What locate ran, answered from a table of outputs: it runs only ip netns exec ...."""

    def __init__(self, route, rules):
        self.route, self.rules, self.argv = route, rules, []

    def __call__(self, argv, **_kwargs):
        self.argv.append(argv)
        stdout = self.route if argv[4:7] == ["ip", "-j", "route"] else self.rules
        return type("Done", (), {"returncode": 0, "stdout": stdout})()


def locate_input(**parts):
    data = dict(target="load-balancer", mode="iptables", service="default/app1", protocol="tcp",
                address="192.168.200.10", port=80, source_netns="lab-client", client_netns="lab-client",
                nodes=NODES, node="lab-node")
    data.update(parts)
    return data


def test_the_client_s_load_balancer_ip_is_handled_by_the_node_it_routes_via():
    run = Ran(json.dumps([{"gateway": "192.168.100.11"}]), NAT_LB)
    found = observe.locate(locate_input(), run=run)
    assert (found["handler"], found["hook"], found["from_outside"], found["programmed"]) == (
        "lab-node", "PREROUTING", True, True)
    assert all(argv[:3] == ["ip", "netns", "exec"] for argv in run.argv)


def test_a_node_port_is_handled_by_its_node_and_a_node_s_own_request_is_not_from_outside():
    run = Ran("", NAT_LB)
    found = observe.locate(locate_input(target="node-port", node="lab-node2", address="192.168.100.12",
                                        port=30080, source_netns="lab-node2"), run=run)
    assert (found["handler"], found["hook"], found["from_outside"]) == ("lab-node2", "OUTPUT", False)
    other = observe.locate(locate_input(target="node-port", node="lab-node2", address="192.168.100.12",
                                        port=30080, source_netns="lab-node"), run=run)
    assert (other["handler"], other["hook"], other["from_outside"]) == ("lab-node2", "PREROUTING", True)


def test_a_target_the_service_lacks_is_refused_naming_the_variable_and_the_build():
    found = observe.locate(locate_input(target="external-ip", address="192.168.200.20"),
                           run=Ran(json.dumps([{"gateway": "192.168.100.11"}]), NAT_LB))
    assert not found["programmed"]
    assert found["refusal"].startswith("target=external-ip: default/app1 has no external IP 192.168.200.20:80")
    assert "make lab TYPE=NodePort" in found["refusal"]


def test_the_ext_chain_sends_outside_traffic_to_its_last_jump_and_pods_to_the_cluster_chain():
    local = ['-s 10.0.0.0/16 -m comment --comment "pod traffic" -j KUBE-SVC-X',
             '-m addrtype --src-type LOCAL -m comment --comment "masq" -j KUBE-MARK-MASQ',
             '-m addrtype --src-type LOCAL -m comment --comment "route" -j KUBE-SVC-X', "-j KUBE-SVL-X"]
    jump = r"-j (KUBE-SV[CL]-\S+)"
    assert observe.policy_jump(local, True, jump) == "KUBE-SVL-X"
    assert observe.policy_jump(local, False, jump) == "KUBE-SVC-X"
    assert observe.policy_jump(local[:3], True, jump) is None, "Local policy, no local endpoint: dropped"


def test_a_report_without_a_known_node_leaves_the_kernel_parts_out():
    data = report_input("iptables", target="load-balancer", address="192.168.200.10", address_port=80, handler="",
                        hop="lab-client routes 192.168.200.10 via no node of this lab", from_outside=True,
                        before=[], after=[])
    text = observe.report(data)
    assert "via no node of this lab" in text and "leaves out the" in text
    assert "conntrack -L" not in text and "path:" not in text


def test_a_multipath_route_to_the_load_balancer_ip_names_no_one_node():
    routes = [{"dst": "192.168.200.10", "nexthops": [{"gateway": "192.168.100.11"}, {"gateway": "192.168.100.12"}]}]
    found = observe.locate(locate_input(), run=Ran(json.dumps(routes), NAT_LB))
    assert found["handler"] == "" and found["programmed"]
    assert "via lab-node and lab-node2 (a multipath route" in found["hop"]


# ---------------------------------------------------------------- the UDP Service (dns)

def test_the_requests_are_named_by_the_service_s_protocol():
    assert observe.request_url("tcp", "10.96.0.10", 80) == "http://10.96.0.10:80/"
    assert observe.request_url("udp", "10.96.0.53", 53) == "udp://10.96.0.53:53"


def test_tcp_is_asked_over_http_and_udp_with_datagrams():
    assert observe.sender("tcp") is observe.one_request
    assert isinstance(observe.sender("udp"), observe.Datagrams)


def pod_server(pod_name):
    """The pod server's own UDP loop on a loopback port: its address, and its socket to close."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    listener.bind(("127.0.0.1", 0))
    threading.Thread(target=server.serve_datagrams, args=(listener, pod_name), daemon=True).start()
    return listener


def test_each_datagram_comes_from_a_source_port_of_its_own():
    listener = pod_server("pod2")
    ask = observe.Datagrams()
    answers = [ask(*listener.getsockname(), 2.0) for _ in range(5)]
    assert all(observe.ANSWER.match(answer)["pod"] == "pod2" for answer in answers)
    ports = {int(answer.rsplit(":", 1)[1]) for answer in answers}
    assert len(ports) == 5 and ports == ask.used_ports


def test_udp_requests_count_the_pods_and_the_clients_they_saw():
    listener = pod_server("pod3")
    result = observe.requests("udp", "127.0.0.1", listener.getsockname()[1], 4, 2.0)
    assert result["url"] == "udp://127.0.0.1:%d" % listener.getsockname()[1]
    assert result["pods"] == {"pod3": {"count": 4, "clients": {"127.0.0.1": 4}}} and result["failed"] == {}


def test_an_unanswered_datagram_times_out_and_a_closed_port_refuses():
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    assert observe.requests("udp", "127.0.0.1", silent.getsockname()[1], 2, 0.2)["failed"] == {"TimeoutError": 2}
    closed_port = silent.getsockname()[1]
    silent.close()
    # the kernel answers with an ICMP port unreachable, as for a Service that kube-proxy rejects
    assert observe.requests("udp", "127.0.0.1", closed_port, 1, 1.0)["failed"] == {"ConnectionRefusedError": 1}


class Bound:
    """A socket that the kernel binds to the next of PORTS; it knows whether it was closed."""

    def __init__(self, ports, opened):
        self.ports, self.port, self.closed = ports, None, False
        opened.append(self)

    def bind(self, _address):
        self.port = self.ports.pop(0)

    def getsockname(self):
        return ("0.0.0.0", self.port)

    def close(self):
        self.closed = True


def test_a_source_port_the_kernel_hands_out_again_is_not_sent_from_twice():
    ports, opened = [40000, 40000, 40001], []
    ask = observe.Datagrams(open_socket=lambda *_family: Bound(ports, opened))
    first, second = ask.fresh_socket(), ask.fresh_socket()
    assert (first.port, second.port) == (40000, 40001)
    assert [sock.closed for sock in opened] == [False, True, False], "the repeat was held, then let go"


# Captured in the lab built with udp_service=true (make lab UDP=1), iptables and nftables mode:
# one datagram from the client (iptables-udp-*, xtables-trace-udp), one from pod2 (nft-trace-udp),
# and the conntrack entries after pod2's server was stopped (playbooks/pod.yml): 7 [UNREPLIED].
DNS = dict(service="default/dns", address="10.96.0.53", port=53)
# kube-dns serves 53 over UDP and TCP at one ClusterIP: IPVS has a virtual server for each.
IPVS_DNS = """Prot LocalAddress:Port               Conns   InPkts  OutPkts  InBytes OutBytes
  -> RemoteAddress:Port
TCP  10.96.0.53:53                       5       30       20     1700     2050
  -> 10.0.0.2:8053                       5       30       20     1700     2050
UDP  10.96.0.53:53                       9        9        9      540      900
  -> 10.0.0.2:8053                       3        3        3      180      300
  -> 10.0.0.3:8053                       2        2        2      120      200
  -> 10.0.0.4:8053                       4        4        4      240      400
"""
# The two shapes of a UDP conntrack entry: answered, and [UNREPLIED] (no datagram back yet).
CONNTRACK_UDP_LINES = [
    "udp      17 29 src=192.168.100.2 dst=10.96.0.53 sport=40000 dport=53 src=10.0.0.3 dst=192.168.100.11 "
    "sport=8053 dport=40000 mark=0 use=1",
    "udp      17 29 src=192.168.100.2 dst=10.96.0.53 sport=40001 dport=53 [UNREPLIED] src=10.0.0.4 "
    "dst=192.168.100.11 sport=8053 dport=40001 mark=0 use=1",
]


def without_counters(save_text):
    """iptables-save -c's output as iptables-save prints it (what locate and holds read)."""
    return re.sub(r"^\[\d+:\d+\] ", "", save_text, flags=re.M)


def test_a_udp_service_s_chains_are_found_by_its_protocol():
    rules = observe.counted_rules(sample("iptables-udp-after.txt"))
    svc, seps, dnat = observe.iptables_service_chains(rules, "10.96.0.53", "udp", 53)
    assert svc == "KUBE-SVC-2MBSHUE5GJKPO227"
    assert [dnat[sep] for sep in seps] == ["10.0.0.2", "10.0.0.3", "10.0.0.4"]
    assert observe.iptables_service_chains(rules, "10.96.0.53", "tcp", 53) == (None, [], {})
    assert observe.iptables_service_chains(rules, "10.96.0.10", "tcp", 80)[0] == "KUBE-SVC-4QFXEAV27BCWXK5E"


@pytest.mark.parametrize("rule, proto, port, address, caught", [
    ("-d 10.96.0.53/32 -p udp -m comment --comment \"default/dns:dns cluster IP\" -m udp --dport 53 -j KUBE-SVC-X",
     "udp", 53, "10.96.0.53", True),
    ("-d 10.96.0.53/32 -p udp -m udp --dport 53 -j KUBE-SVC-X", "tcp", 53, "10.96.0.53", False),
    ("-d 10.96.0.53/32 -p udp -m udp --dport 5353 -j KUBE-SVC-X", "udp", 53, "10.96.0.53", False),
    ("-d 10.96.0.54/32 -p udp -m udp --dport 53 -j KUBE-SVC-X", "udp", 53, "10.96.0.53", False),
    ("-p udp -m comment --comment \"default/dns:dns\" -m udp --dport 30053 -j KUBE-EXT-X", "udp", 30053, None, True),
])
def test_a_rule_catches_one_protocol_port_and_address(rule, proto, port, address, caught):
    assert observe.catches(rule, proto, port, address) is caught


def test_the_path_of_one_datagram_from_the_counters_it_raised():
    deltas = observe.counter_deltas(sample("iptables-udp-before.txt"), sample("iptables-udp-after.txt"))
    steps = observe.walk_counters(deltas, "PREROUTING")
    assert observe.summary("counters", steps) == (
        "path: PREROUTING -> KUBE-SERVICES -> KUBE-SVC-2MBSHUE5GJKPO227 -> KUBE-MARK-MASQ"
        " -> KUBE-SEP-ZAKFMPYQC7BOIJIM -> DNAT 10.0.0.3:8053")


def test_the_xtables_trace_of_one_datagram():
    steps = observe.trace_steps("xtables", sample("xtables-trace-udp.txt").splitlines())
    assert observe.summary("xtables", steps) == (
        "path: PREROUTING -> KUBE-SERVICES -> KUBE-SVC-2MBSHUE5GJKPO227 -> KUBE-MARK-MASQ"
        " -> KUBE-SEP-LON7KM3ZDC3Z6W43 -> DNAT 10.0.0.2:8053; on the way out POSTROUTING masquerades the source")
    assert any("-p udp -m udp --dport 53 -j TRACE" in what for _where, what in steps)


def test_the_nft_trace_of_one_datagram():
    steps = observe.trace_steps("nft", sample("nft-trace-udp.txt").splitlines())
    # from pod2 (10.0.0.3) to pod1: inside the cluster CIDR, not masqueraded
    assert observe.summary("nft", steps) == (
        "path: nat-prerouting -> services -> service-Z3XHB2ZZ-default/dns/udp/dns"
        " -> endpoint-4ROGNEWD-default/dns/udp/dns__10.0.0.2/8053 -> DNAT 10.0.0.2:8053")


def test_the_udp_numgen_line_is_found_by_its_protocol():
    endpoints, line = observe.nft_endpoints(sample("nft-table-udp.txt"), "10.96.0.53", "udp", 53)
    assert endpoints == ["10.0.0.2", "10.0.0.3", "10.0.0.4"] and line.startswith("numgen random mod 3 vmap")
    assert observe.nft_endpoints(sample("nft-table-udp.txt"), "10.96.0.53", "tcp", 53) == ([], "")


def test_the_ipvs_block_is_the_virtual_server_of_the_protocol():
    lines, reals = observe.ipvs_block(IPVS_DNS, "10.96.0.53", "udp", 53)
    assert lines[0].startswith("UDP  10.96.0.53:53") and len(lines) == 4
    assert reals == {"10.0.0.2": 3, "10.0.0.3": 2, "10.0.0.4": 4}
    assert observe.ipvs_block(IPVS_DNS, "10.96.0.53", "tcp", 53)[1] == {"10.0.0.2": 5}


def test_udp_conntrack_entries_answered_or_unreplied_name_the_pod_in_the_reply():
    entries = observe.conntrack_entries("\n".join(CONNTRACK_UDP_LINES), "10.96.0.53", "udp", 53)
    assert [entry[:2] for entry in entries] == [("192.168.100.2:40000", "10.0.0.3"), ("192.168.100.2:40001", "10.0.0.4")]
    captured = observe.conntrack_entries(sample("conntrack-udp.txt"), "10.96.0.53", "udp", 53)
    assert len(captured) == len(sample("conntrack-udp.txt").splitlines())
    assert {pod for _source, pod, line in captured if "[UNREPLIED]" in line} == {"10.0.0.3"}, "pod2 was stopped"


def test_conntrack_entries_of_the_other_protocol_are_left_out():
    both = sample("conntrack.txt") + sample("conntrack-udp.txt")
    assert observe.conntrack_entries(both, "10.96.0.10", "udp", 80) == []
    assert len(observe.conntrack_entries(both, "10.96.0.10", "tcp", 80)) == len(sample("conntrack.txt").splitlines())
    tcp_to_53 = CONNTRACK_UDP_LINES[0].replace("udp      17 29", "tcp      6 29 TIME_WAIT")
    assert observe.conntrack_entries(tcp_to_53, "10.96.0.53", "udp", 53) == []


@pytest.mark.parametrize("mode, text, proto, held", [
    ("iptables", without_counters(sample("iptables-udp-after.txt")), "udp", True),
    ("iptables", without_counters(sample("iptables-udp-after.txt")), "tcp", False),
    ("iptables", without_counters(sample("iptables-after.txt")), "udp", False),
    ("nftables", sample("nft-table-udp.txt"), "udp", True),
    ("nftables", sample("nft-table-udp.txt"), "tcp", False),
    ("nftables", sample("nft-table.txt"), "udp", False),
    ("ipvs", IPVS_DNS, "udp", True),
    ("ipvs", IPVS_DNS.replace("UDP ", "SCTP"), "udp", False),
])
def test_whether_the_rules_hold_the_dns_cluster_ip(mode, text, proto, held):
    assert observe.programmed(mode, text, DNS["service"], "cluster-ip", DNS["address"], DNS["port"], proto) is held


def holds_input(**parts):
    data = dict(DNS, mode="iptables", netns="lab-node", protocol="udp", build="make lab UDP=1")
    data.update(parts)
    return data


def test_the_node_s_live_rules_hold_the_dns_service():
    run = Ran("", without_counters(sample("iptables-udp-after.txt")))
    assert observe.holds(holds_input(), run=run) == {"programmed": True, "refusal": ""}
    assert run.argv == [["ip", "netns", "exec", "lab-node", "iptables-save", "-t", "nat"]]


def test_a_lab_built_without_the_dns_service_is_refused_naming_the_service_and_the_build():
    found = observe.holds(holds_input(), run=Ran("", without_counters(sample("iptables-after.txt"))))
    assert not found["programmed"]
    assert found["refusal"].startswith(
        "service=default/dns: lab-node's kube-proxy rules (read live with iptables-save -t nat) have no ClusterIP "
        "10.96.0.53:53/UDP")
    assert found["refusal"].endswith("Build it first: make lab UDP=1.")


def udp_report_input(mode, before, after):
    data = report_input(
        mode, source="client", service="default/dns", cluster_ip="10.96.0.53", port="53", target_port="8053",
        protocol="udp", before=before + [["conntrack", ""]], after=after + [["conntrack", sample("conntrack-udp.txt")]])
    data["requests"] = {"url": "udp://10.96.0.53:53", "count": 30, "failed": {"ConnectionRefusedError": 7},
                        "pods": {"pod1": {"count": 13, "clients": {"10.0.0.1": 13}},
                                 "pod3": {"count": 10, "clients": {"10.0.0.1": 10}}}}
    data["path"].update(method="xtables", hook="PREROUTING",
                        trace={"monitor": "xtables-monitor --trace", "lines": sample("xtables-trace-udp.txt").splitlines()})
    return data


@pytest.mark.parametrize("mode, before, after, kernel_lines", [
    ("iptables", [["iptables", sample("iptables-udp-before.txt")]], [["iptables", sample("iptables-udp-after.txt")]],
     ["-A KUBE-SEP-ZAKFMPYQC7BOIJIM -p udp", observe.NAT_COUNTS["udp"][1]]),
    ("ipvs", [["ipvs", IPVS_DNS.replace("   3        3", "   1        1")]], [["ipvs", IPVS_DNS]],
     ["  UDP  10.96.0.53:53", "10.0.0.2        +2 connections"]),
    ("nftables", [], [["nftables", sample("nft-table-udp.txt")]], ["goto endpoint-4ROGNEWD-default/dns/udp/dns__10.0.0.2"]),
])
def test_the_report_of_the_udp_service(mode, before, after, kernel_lines):
    text = observe.report(udp_report_input(mode, before, after))
    assert "30 requests from client to udp://10.96.0.53:53 (default/dns, mode %s):\n(each request: one datagram" % mode in text
    assert re.search(r"^  pod2\s+10\.0\.0\.3\s+0\s+0\.0 %\s+33\.3 %\s+-$", text, re.M), text
    assert "ConnectionRefusedError: 7" in text
    assert "Endpoints programmed in the kernel: 10.0.0.2, 10.0.0.3, 10.0.0.4 (3" in text
    assert all(line in text for line in kernel_lines), text
    assert "conntrack -L -p udp -d 10.96.0.53: 52 new entries" in text
    assert "  7 of them [UNREPLIED]: no answer came back through them (yet)" in text
    assert "One request (one datagram) from client, followed through the rules:" in text
    assert "-> KUBE-SEP-LON7KM3ZDC3Z6W43 -> DNAT 10.0.0.2:8053" in text
    assert all(line == line.rstrip() and line.isascii() for line in text.splitlines()), "YAML block output needs both"


def test_the_tcp_report_keeps_its_words():
    text = observe.report(report_input("nftables", after=[["nftables", sample("nft-table.txt")],
                                                         ["conntrack", sample("conntrack.txt")]]))
    assert "(default/app1, mode nftables):\n\n  pod " in text, "no UDP note"
    assert "One connection from node, followed through the rules:" in text
    assert "conntrack -L -p tcp -d 10.96.0.10: 6 new entries" in text and "[UNREPLIED]" not in text
