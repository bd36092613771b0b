"""playbooks/files/lab_observe.py: the parsers and the report observe.yml prints, against
output captured from the lab's node (fixtures/observe/)."""

import importlib.util
import json
import re

import pytest

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
    svc, seps, dnat = observe.iptables_service_chains(rules, "10.96.0.10", 80)
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
    lines, reals = observe.ipvs_block(sample("ipvs-stats-after.txt"), "10.96.0.10", 80)
    assert lines[0].startswith("TCP  10.96.0.10:80")
    assert reals == {"10.0.0.2": 1, "10.0.0.3": 2, "10.0.0.4": 1}


def test_conntrack_entries_name_the_pod_in_the_reply():
    entries = observe.conntrack_entries(sample("conntrack.txt"), "10.96.0.10", 80)
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
