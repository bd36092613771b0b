"""tools/bench_lib.py: the bench's pure helpers (no kernel, no timing asserted)."""

import ipaddress
import os
import sys

import pytest
import yaml

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools"))

import bench_lib as lib  # noqa: E402

SERVICE_CIDR = ipaddress.ip_network("10.96.0.0/12")


def test_cluster_ips_are_distinct_usable_and_stable():
    ips = lib.cluster_ips(10000)
    assert len(set(ips)) == 10000
    for ip in ips:
        address = ipaddress.ip_address(ip)
        assert address in SERVICE_CIDR
        assert address not in (SERVICE_CIDR.network_address, SERVICE_CIDR.broadcast_address)
    # Same seed, same draw: the first Services are the same at every N and every run.
    assert lib.cluster_ips(10) == lib.cluster_ips(10)
    assert lib.cluster_ips(3, seed=1) != lib.cluster_ips(3, seed=0)


def test_cluster_ips_refuses_more_than_fit():
    with pytest.raises(ValueError):
        lib.cluster_ips(7, cidr="10.96.0.0/29")


def test_services_are_the_module_argument_in_sorted_order():
    declared = lib.services(12)
    assert [service["name"] for service in declared] == sorted(service["name"] for service in declared)
    assert declared[0] == dict(namespace="bench", name="svc-00000", protocol="TCP",
                               cluster_ip=declared[0]["cluster_ip"], port=80, target_port=8080,
                               endpoints=["10.0.0.2", "10.0.0.3", "10.0.0.4"])
    assert len(lib.services(123456)[-1]["name"]) == len("svc-123455")


def test_one_endpoint_changed_touches_only_the_middle_service_and_copies():
    declared = lib.services(5)
    changed = lib.with_one_endpoint_changed(declared)
    assert [s["endpoints"] for s in changed] == [list(lib.POD_IPS)] * 2 + [list(lib.POD_IPS[:2])] + [list(lib.POD_IPS)] * 2
    assert declared[2]["endpoints"] == list(lib.POD_IPS)


def test_percentile_and_latency_summary():
    assert lib.percentile([3, 1, 2], 0.5) == 2
    assert lib.percentile([1, 2, 3, 4], 0.5) == 2.5
    assert lib.percentile(list(range(101)), 0.95) == pytest.approx(95)
    assert lib.percentile([7], 0.95) == 7
    with pytest.raises(ValueError):
        lib.percentile([], 0.5)
    summary = lib.latency_summary([0.001] * 19 + [0.011])
    assert summary["median_ms"] == pytest.approx(1.0)
    assert summary["p95_ms"] == pytest.approx(1.5)


def probe(answered, failed):
    return {"seconds": [0.001] * answered, "failed": failed}


def test_data_plane_failure_none_when_every_connection_or_nearly_every_one_answered():
    assert lib.data_plane_failure("iptables", 10, {"10.96.0.7:80": probe(30, 0), "10.96.0.9:80": probe(30, 0)}) is None
    assert lib.data_plane_failure("iptables", 10, {"10.96.0.7:80": probe(199, 1)}) is None
    assert lib.data_plane_failure("ipvs", 10, {"10.96.0.7:80": probe(190, 10)}) is None


def test_data_plane_failure_names_mode_n_and_every_target_that_failed():
    message = lib.data_plane_failure("nftables", 100, {"10.96.0.7:80": probe(30, 0), "10.96.0.9:80": probe(0, 30)})
    assert message == "nftables mode, N=100: all 30 connections to 10.96.0.9:80 failed"
    message = lib.data_plane_failure("ipvs", 10, {"10.96.0.7:80": probe(28, 2), "10.96.0.9:80": probe(0, 30)})
    assert message == ("ipvs mode, N=10: 2 of 30 connections to 10.96.0.7:80 failed (more than 5 %); "
                       "all 30 connections to 10.96.0.9:80 failed")
    assert lib.data_plane_failure("iptables", 10, {"a:80": probe(189, 11)}, max_failed_fraction=0.1) is None
    assert "12 of 200" in lib.data_plane_failure("iptables", 10, {"a:80": probe(188, 12)})


def test_count_rules_iptables_and_nft():
    assert lib.count_rules("*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j X\n-A A -j B\nCOMMIT\n") == 2
    assert lib.count_rules("add chain ip t c\nadd rule ip t c drop\nadd element ip t s { 1 }\n") == 1


def test_predicted_seconds():
    assert lib.predicted_seconds(None, 10) is None
    assert lib.predicted_seconds((10, 0.5), 100) == pytest.approx(5.0)
    assert lib.predicted_seconds((1000, 2.0), 2000) == pytest.approx(8.0)


def test_csv_round_trip_and_markdown():
    rows = [dict(kernel="native 6.1", mode="iptables", services=10, cold_s=0.123456789, note=None)]
    text = lib.to_csv(rows, ("kernel", "mode", "services", "cold_s", "note"))
    assert text == "kernel,mode,services,cold_s,note\nnative 6.1,iptables,10,0.123457,\n"
    assert lib.from_csv(text) == [dict(kernel="native 6.1", mode="iptables", services="10", cold_s="0.123457", note="")]
    table = lib.markdown_table(lib.from_csv(text), ("mode", "services", "cold_s", "note"), ("mode", "N", "cold s", "note"))
    assert table == "| mode | N | cold s | note |\n|---|---|---|---|\n| iptables | 10 | 0.123 |  |\n"
    assert lib.markdown_table([dict(x=1234.5678), dict(x=0.000123456)], ("x",)).splitlines()[2:] == ["| 1235 |", "| 0.000123 |"]


def test_series_groups_measured_rows_by_kernel_and_mode():
    rows = [dict(kernel="k", mode="ipvs", services="100", cold_s="2"), dict(kernel="k", mode="ipvs", services="10", cold_s="1"),
            dict(kernel="k", mode="ipvs", services="1000", cold_s=""), dict(kernel="k", mode="iptables", services="10", cold_s="1")]
    groups = lib.series(rows)
    assert [row["services"] for row in groups[("k", "ipvs")]] == ["10", "100"]
    assert list(groups) == [("k", "ipvs"), ("k", "iptables")]


RENDERED = """*filter
:KUBE-SERVICES - [0:0]
COMMIT
*nat
:KUBE-SERVICES - [0:0]
:KUBE-SVC-A - [0:0]
:KUBE-SEP-B - [0:0]
:KUBE-SEP-C - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A KUBE-SERVICES -m comment --comment "bench/svc-00000 cluster IP" -m tcp -p tcp -d 10.96.0.7 --dport 80 -j KUBE-SVC-A
-A KUBE-SVC-A -m comment --comment "bench/svc-00000 cluster IP" -m tcp -p tcp -d 10.96.0.7 --dport 80 ! -s 10.0.0.0/24 -j KUBE-MARK-MASQ
-A KUBE-SVC-A -m comment --comment "bench/svc-00000 -> 10.0.0.2:8080" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-B
-A KUBE-SVC-A -m comment --comment "bench/svc-00000 -> 10.0.0.3:8080" -j KUBE-SEP-C
-A KUBE-SEP-B -m comment --comment bench/svc-00000 -s 10.0.0.2 -j KUBE-MARK-MASQ
-A KUBE-SEP-B -m comment --comment bench/svc-00000 -m tcp -p tcp -j DNAT --to-destination 10.0.0.2:8080
-A KUBE-SEP-C -m comment --comment bench/svc-00000 -s 10.0.0.3 -j KUBE-MARK-MASQ
-A KUBE-SEP-C -m comment --comment bench/svc-00000 -m tcp -p tcp -j DNAT --to-destination 10.0.0.3:8080
-A KUBE-SERVICES -m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in this chain" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS
COMMIT
"""


def test_baseline_rules_keep_per_service_rules_targets_first():
    rules = lib.baseline_rules(RENDERED)
    assert [options["chain"] for options in rules] == ["KUBE-SEP-B"] * 2 + ["KUBE-SEP-C"] * 2 + ["KUBE-SVC-A"] * 3 + ["KUBE-SERVICES"]
    assert rules[-1] == dict(table="nat", chain="KUBE-SERVICES", chain_management=True, comment="bench/svc-00000 cluster IP",
                             match=["tcp"], protocol="tcp", destination="10.96.0.7", destination_port="80", jump="KUBE-SVC-A")
    assert rules[4]["source"] == "!10.0.0.0/24"
    assert rules[1]["to_destination"] == "10.0.0.2:8080"
    assert lib.baseline_chains(rules) == ["KUBE-SEP-B", "KUBE-SEP-C", "KUBE-SVC-A"]


def test_baseline_rule_leaves_out_what_ansible_builtin_iptables_cannot_say():
    options = lib.baseline_rule(
        "KUBE-SVC-A", '-m comment --comment "x -> y" -m statistic --mode random --probability 0.5000000000 -j KUBE-SEP-B')
    assert options == dict(table="nat", chain="KUBE-SVC-A", chain_management=True, comment="x -> y", jump="KUBE-SEP-B")
    options = lib.baseline_rule("KUBE-MARK-MASQ", "-j MARK --or-mark 0x00004000")
    assert options == dict(table="nat", chain="KUBE-MARK-MASQ", chain_management=True, jump="MARK")
    assert lib.baseline_rule("X", "-j MASQUERADE --random-fully")["jump"] == "MASQUERADE"
    with pytest.raises(ValueError):
        lib.baseline_rule("X", "-m recent --set -j Y")


def test_baseline_playbook_names_its_vars_file_and_both_loops():
    text = lib.baseline_playbook()
    assert "  vars_files:\n    - %s\n" % lib.VARS_FILE_PLACEHOLDER in text
    assert 'loop: "{{ bench_chains }}"' in text and 'loop: "{{ bench_rules }}"' in text


def test_report_has_one_header_per_field():
    import bench_report  # pylint: disable=import-outside-toplevel  (tools/ is on the path above)

    assert len(bench_report.SYNC_HEADERS) == len(lib.RESULT_FIELDS)
    assert len(bench_report.BASELINE_HEADERS) == len(lib.BASELINE_FIELDS)


def _lab_netns():
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                                    "module_utils"))
    from lab_netns import model, plan  # pylint: disable=import-outside-toplevel
    return model, plan


def test_the_bench_topology_is_the_labs_shape_in_its_own_namespaces():
    model, plan = _lab_netns()
    topology = model.build_topology(lib.topology("kpl-bench-"))
    lines = [line for batch in plan.plan(topology, [], {}) for line in batch.shown()]
    assert lines[0] == "ip netns add kpl-bench-node"
    assert all(" kpl-bench-" in line or line.startswith("ip -n kpl-bench-") for line in lines), lines
    for expected in ("ip -n kpl-bench-node link add veth-pod3 type veth peer name eth0 netns kpl-bench-pod3",
                     "ip -n kpl-bench-node link set dev veth-pod1 type bridge_slave hairpin on",
                     "ip -n kpl-bench-node route replace 10.96.0.0/12 dev cni0",
                     "ip -n kpl-bench-pod2 address replace 10.0.0.3/24 dev eth0",
                     "ip -n kpl-bench-client route replace 10.96.0.0/12 via 192.168.100.1",
                     "ip netns exec kpl-bench-node sysctl -w net.ipv4.ip_forward=1 net.bridge.bridge-nf-call-iptables=1"):
        assert expected in lines


def test_the_bench_topology_sets_bridge_nf_only_where_asked():
    sysctls = lib.topology("kpl-bench-", bridge_nf=False)[0]["sysctls"]
    assert sysctls == {"net.ipv4.ip_forward": 1}


RECAP = """PLAY RECAP *********************************************************************
localhost                  : ok=17   changed=0    unreachable=0    failed=0    skipped=16   rescued=0    ignored=0
"""


def test_the_lab_row_reads_changed_from_the_play_recap():
    assert lib.recap_changed("TASK [x] ***\nok: [localhost]\n\n" + RECAP) == 0
    assert lib.recap_changed(RECAP.replace("changed=0", "changed=7")) == 7


def test_a_run_without_a_recap_is_an_error_not_a_zero():
    with pytest.raises(ValueError):
        lib.recap_changed("ERROR! the playbook could not be found\n")


def test_lab_rows_round_trip_through_the_csv():
    row = dict(kernel="native 6.18", mode="iptables", rounds=3, ping_s=1.0, cold_s=11.5, noop_s=8.0,
               noop_changed=0, teardown_s=7.0)
    text = lib.to_csv([row], lib.LAB_FIELDS)
    assert lib.from_csv(text)[0]["cold_s"] == "11.5"
    assert lib.to_csv(lib.from_csv(text), lib.LAB_FIELDS) == text


def test_the_loopback_ssh_inventory_reaches_one_lab_host_on_127_0_0_1_with_the_systems_python():
    inventory = yaml.safe_load(lib.loopback_ssh_inventory("lab-over-ssh", 40022, "/tmp/k/client_key", "/tmp/k/known"))
    host = inventory["all"]["children"]["lab"]["hosts"]["lab-over-ssh"]
    assert host["ansible_host"] == "127.0.0.1" and host["ansible_port"] == 40022 and host["ansible_user"] == "root"
    assert host["ansible_python_interpreter"] == "/usr/bin/python3"
    assert host["ansible_ssh_private_key_file"] == "/tmp/k/client_key"
    assert "UserKnownHostsFile=/tmp/k/known" in host["ansible_ssh_common_args"]
