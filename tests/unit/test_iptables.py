"""The iptables renderer against golden text, and the comparator against real iptables-save output.

The two fixtures were captured by restoring ``golden/iptables-mixed.rules`` into scratch
namespaces of a 6.18 kernel with iptables 1.8.9 (nf_tables and legacy backends).
"""

import pytest

from conftest import FIXTURES, GOLDEN
from kube_proxy import iptables
from kube_proxy.naming import endpoint_chain, external_chain, local_chain, service_chain
from lab_services import APP1, NO_ENDPOINTS, SVC1_AFFINITY, config

MIXED = (APP1, SVC1_AFFINITY, NO_ENDPOINTS)


@pytest.mark.parametrize("golden, services", [
    ("iptables-app1.rules", (APP1,)),
    ("iptables-mixed.rules", MIXED),
])
def test_render_matches_golden(golden, services):
    rendered = iptables.restore_text(iptables.render(config(*services)))
    assert rendered == (GOLDEN / golden).read_text()


def test_probabilities_are_one_over_remaining_endpoints():
    five = dict(APP1, endpoints=["10.0.0.%d" % host for host in range(2, 7)])
    nat = iptables.render(config(five))["nat"]
    svc_chain = [chain for chain in nat.chains if chain.startswith("KUBE-SVC-")][0]
    probabilities = [
        rule.split("--probability ")[1].split()[0] if "--probability" in rule else None
        for rule in nat.chains[svc_chain][1:]
    ]
    assert probabilities == ["0.2000000000", "0.2500000000", "0.3333333333", "0.5000000000", None]


def test_kube_services_ends_with_the_nodeports_jump():
    rules = iptables.render(config(APP1))["nat"].chains["KUBE-SERVICES"]
    assert rules[-1].endswith("-m addrtype --dst-type LOCAL -j KUBE-NODEPORTS")


def test_masquerade_all_drops_the_source_condition():
    nat = iptables.render(config(APP1, masquerade_all=True))["nat"]
    first = [rules[0] for chain, rules in nat.chains.items() if chain.startswith("KUBE-SVC-")][0]
    assert "! -s" not in first and first.endswith("-j KUBE-MARK-MASQ")


def test_service_without_endpoints_has_no_nat_chains_and_a_reject():
    state = iptables.render(config(NO_ENDPOINTS))
    assert not [chain for chain in state["nat"].chains if chain.startswith(("KUBE-SVC-", "KUBE-SEP-"))]
    assert [rule for rule in state["nat"].chains["KUBE-SERVICES"] if "KUBE-NODEPORTS" not in rule] == []
    assert state["filter"].chains["KUBE-SERVICES"] == [
        '-m comment --comment "default/gone has no endpoints" -m udp -p udp -d 10.96.0.11 --dport 53 -j REJECT'
    ]


@pytest.mark.parametrize("rendered, saved", [
    ("-m statistic --mode random --probability 0.3333333333 -j X",
     "-m statistic --mode random --probability 0.33333333349 -j X"),
    ("-m statistic --mode random --probability 0.5000000000 -j X",
     "-m statistic --mode random --probability 0.50000000000 -j X"),
    ("-j MARK --or-mark 0x4000", "-j MARK --set-xmark 0x4000/0x4000"),
    ("-j MARK --xor-mark 0x4000", "-j MARK --set-xmark 0x4000/0x0"),
    ("-j MARK --set-mark 0x4000", "-j MARK --set-xmark 0x4000/0xffffffff"),
    ('-m comment --comment "a b" -m tcp -p tcp -d 10.96.0.10 --dport 80 ! -s 10.0.0.0/24 -j X',
     '! -s 10.0.0.0/24 -d 10.96.0.10/32 -p tcp -m comment --comment "a b" -m tcp --dport 80 -j X'),
    ("-m comment --comment ns/a -s 10.0.0.2 -j KUBE-MARK-MASQ",
     '-s 10.0.0.2/32 -m comment --comment "ns/a" -j KUBE-MARK-MASQ'),
    ("-p TCP --dport 80 -j X", "-p tcp -m tcp --dport 80 -j X"),
    ("-m udp -p udp -d 10.96.0.11 --dport 53 -j REJECT",
     "-d 10.96.0.11/32 -p udp -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable"),
    ("-m recent --name S --rcheck --seconds 60 --reap -j S",
     "-m recent --rcheck --seconds 60 --reap --name S --mask 255.255.255.255 --rsource -j S"),
    ("-m recent --name S --set -j DNAT --to-destination 10.0.0.2:8080",
     "-m recent --set --name S --mask 255.255.255.255 --rsource -j DNAT --to-destination 10.0.0.2:8080"),
    # As iptables-legacy 1.8.9 printed kube-proxy's IPVS-mode rule in the user-mode-linux node.
    ("-s 192.168.200.10 -m ipvs --vaddr 192.168.200.10 --vproto tcp --vport 80 -j DROP",
     "-s 192.168.200.10/32 -m ipvs --vproto 6 --vaddr 192.168.200.10 --vport 80 -j DROP"),
])
def test_normalise_matches_what_iptables_save_prints(rendered, saved):
    assert iptables.normalise_rule(rendered) == iptables.normalise_rule(saved)
    assert iptables.rule_text(iptables.normalise_rule(rendered)) == saved
    assert iptables.saved_rule(rendered) == saved


def test_different_rules_stay_different():
    assert iptables.normalise_rule("-s 10.0.0.2 -j X") != iptables.normalise_rule("! -s 10.0.0.2 -j X")
    assert iptables.normalise_rule("-m statistic --mode random --probability 0.3333333333 -j X") != \
        iptables.normalise_rule("-m statistic --mode random --probability 0.25 -j X")


@pytest.mark.parametrize("fixture", ["iptables-nft-save.txt", "iptables-legacy-save.txt"])
def test_live_state_restored_from_render_needs_no_change(fixture):
    live = iptables.parse_save((FIXTURES / fixture).read_text())
    result = iptables.plan(iptables.render(config(*MIXED)), live)
    assert not result.changed, result.restore
    assert result.restore == ""
    assert result.before == result.after


@pytest.mark.parametrize("fixture", ["iptables-nft-save.txt", "iptables-legacy-save.txt"])
def test_the_kernel_prints_every_rendered_rule_in_its_saved_form(fixture):
    # What makes a no-change sync cheap: a live chain is compared as text, normalised only
    # where the texts differ.
    live = iptables.parse_save((FIXTURES / fixture).read_text())
    for table, desired in iptables.render(config(*MIXED)).items():
        for chain, rules in desired.chains.items():
            assert live.tables[table].saved[chain] == [iptables.saved_rule(rule) for rule in rules], chain


def test_a_chain_printed_another_way_is_still_the_same_chain():
    text = (FIXTURES / "iptables-nft-save.txt").read_text()
    reordered = text.replace("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000", "-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000")
    assert reordered != text
    assert not iptables.plan(iptables.render(config(*MIXED)), iptables.parse_save(reordered)).changed


def test_backend_is_read_from_the_header():
    assert iptables.parse_save((FIXTURES / "iptables-nft-save.txt").read_text()).backend == "nf_tables"
    assert iptables.parse_save((FIXTURES / "iptables-legacy-save.txt").read_text()).backend == "legacy"


def test_parse_keeps_only_owned_chains_and_jumps():
    text = "\n".join([
        "*nat",
        ":PREROUTING ACCEPT [0:0]",
        ":DOCKER - [0:0]",
        ":KUBE-SERVICES - [0:0]",
        "-A PREROUTING -j DOCKER",
        '-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES',
        "-A DOCKER -j RETURN",
        "COMMIT",
    ])
    nat = iptables.parse_save(text).tables["nat"]
    assert list(nat.chains) == ["KUBE-SERVICES"]
    assert list(nat.jumps) == ["PREROUTING"]
    assert len(nat.jumps["PREROUTING"]) == 1


def test_empty_node_gets_everything_in_one_restore():
    result = iptables.plan(iptables.render(config(APP1)), iptables.parse_save(""))
    assert result.changed
    assert result.restore.count("COMMIT") == 2
    assert "-I PREROUTING 1 -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES" in result.restore
    assert not result.deleted_chains
    assert "nat/KUBE-SERVICES" in result.changed_chains


def _jumps_land(restore, live_text):
    """Every KUBE-* target a table's section jumps to exists in that table once it commits."""
    live = iptables.parse_save(live_text)
    for section in restore.split("*")[1:]:
        table, body = section.split("\n", 1)
        chains = set(live.tables[table].chains)
        chains |= {line[1:].split()[0] for line in body.splitlines() if line.startswith(":")}
        chains -= {line.split()[1] for line in body.splitlines() if line.startswith("-X ")}
        for line in body.splitlines():
            if line.startswith(("-A ", "-I ")) and " -j KUBE-" in line:
                target = line.split(" -j ")[1].split()[0]
                assert target in chains, "%s: %s jumps to a chain the table does not hold" % (table, line)


@pytest.mark.parametrize("before, after", [
    ((), (APP1,)),
    ((APP1,), (NO_ENDPOINTS,)),
    ((NO_ENDPOINTS,), (dict(NO_ENDPOINTS, endpoints=["10.0.0.2"]),)),
    ((APP1, SVC1_AFFINITY), (APP1,)),
    ((APP1,), ()),
])
def test_each_table_of_a_restore_only_jumps_to_chains_it_holds(before, after):
    """A restore killed between its two COMMITs leaves one table new and one old: neither may
    hold a rule that jumps to a chain only the other transaction would create."""
    live_text = iptables.restore_text(iptables.render(config(*before))) if before else ""
    result = iptables.plan(iptables.render(config(*after)), iptables.parse_save(live_text))
    assert result.changed
    _jumps_land(result.restore, live_text)


def test_removed_endpoint_rewrites_the_service_and_deletes_its_chain():
    live = iptables.parse_save((FIXTURES / "iptables-nft-save.txt").read_text())
    fewer = dict(APP1, endpoints=["10.0.0.2", "10.0.0.4"])
    result = iptables.plan(iptables.render(config(fewer, SVC1_AFFINITY, NO_ENDPOINTS)), live)
    gone = "KUBE-SEP-UTOHTRJPHPWSMQ2O"  # default/app1 tcp 10.0.0.3:8080
    assert result.deleted_chains == ["nat/" + gone]
    assert result.changed_chains == ["nat/KUBE-SVC-4QFXEAV27BCWXK5E"]
    lines = result.restore.splitlines()
    assert ":%s - [0:0]" % gone in lines and "-X " + gone in lines
    assert lines.index("-X " + gone) > max(i for i, line in enumerate(lines) if line.startswith("-A "))
    assert "filter" not in result.restore  # untouched table is left alone


def test_absent_deletes_every_owned_chain_and_jump():
    live = iptables.parse_save((FIXTURES / "iptables-nft-save.txt").read_text())
    result = iptables.plan(iptables.absent_state(), live)
    lines = result.restore.splitlines()
    assert sum(line.startswith("-D ") for line in lines) == 5
    deleted = {line.split()[1] for line in lines if line.startswith("-X ")}
    assert "KUBE-SERVICES" in deleted and "KUBE-SVC-XPGD46QRK7WJZT7O" in deleted
    assert not [line for line in lines if line.startswith(("-A", "-I"))]
    assert result.after == ""


def test_foreign_rules_are_never_touched():
    text = "*nat\n:POSTROUTING ACCEPT [0:0]\n-A POSTROUTING -o eth0 -j MASQUERADE\nCOMMIT\n"
    result = iptables.plan(iptables.absent_state(), iptables.parse_save(text))
    assert not result.changed


def test_duplicated_jump_is_reduced_to_one():
    live = iptables.parse_save((FIXTURES / "iptables-nft-save.txt").read_text())
    portal_jump = live.tables["nat"].jumps["OUTPUT"][0]
    live.tables["nat"].jumps["OUTPUT"].append(portal_jump)
    result = iptables.plan(iptables.render(config(*MIXED)), live)
    lines = result.restore.splitlines()
    assert len([line for line in lines if line.startswith("-D OUTPUT ")]) == 2
    assert len([line for line in lines if line.startswith("-I OUTPUT ")]) == 1
    assert not result.changed_chains and not result.deleted_chains


def test_tokenize_unescapes_quoted_strings():
    assert iptables.tokenize('-m comment --comment "say \\"hi\\" now" -j X') == [
        "-m", "comment", "--comment", 'say "hi" now', "-j", "X"]


# kube-proxy's TestOverallIPTablesRules (pkg/proxy/iptables/proxier_test.go): a ClusterIP
# Service, a LoadBalancer with the Local policy, a NodePort, external IPs, a LoadBalancer with
# source ranges and affinity, a Service without endpoints; on node test-node, pod CIDR
# 10.0.0.0/8, node ports on every local address, node ports 3001-3003 (the test's fake
# proxier checks no range). Inputs the API server would refuse are written as it would
# have them: svc4, a NodePort without a nodePort, is a ClusterIP Service with external IPs
# (the same rules), and svc5, a Cluster-policy LoadBalancer, has no healthCheckNodePort
# (kube-proxy ignores it there).
UPSTREAM_OVERALL = (
    dict(namespace="ns1", name="svc1", port_name="p80", cluster_ip="172.30.0.41", port=80,
         endpoints=["10.180.0.1"]),
    dict(namespace="ns2", name="svc2", port_name="p80", type="LoadBalancer", external_traffic_policy="Local",
         cluster_ip="172.30.0.42", port=80, node_port=3001, load_balancer_ips=["1.2.3.4"],
         external_ips=["192.168.99.22"], health_check_node_port=30000, endpoints=["10.180.0.2"]),
    dict(namespace="ns3", name="svc3", port_name="p80", type="NodePort", cluster_ip="172.30.0.43", port=80,
         node_port=3003, endpoints=["10.180.0.3"]),
    dict(namespace="ns4", name="svc4", port_name="p80", cluster_ip="172.30.0.44", port=80, target_port=80,
         external_ips=["192.168.99.33"], endpoints=["10.180.0.4", dict(ip="10.180.0.5", node_name="test-node")]),
    dict(namespace="ns5", name="svc5", port_name="p80", type="LoadBalancer", external_traffic_policy="Cluster",
         cluster_ip="172.30.0.45", port=80, node_port=3002, load_balancer_ips=["5.6.7.8"],
         load_balancer_source_ranges=[" 203.0.113.0/25"], session_affinity="ClientIP",
         session_affinity_timeout=10800, endpoints=["10.180.0.3"]),
    dict(namespace="ns6", name="svc6", port_name="p80", cluster_ip="172.30.0.46", port=80, target_port=80),
)


def test_render_matches_kube_proxys_overall_rules():
    """Chain by chain, as kube-proxy's test compares them, with three known differences in the
    golden file: no KUBE-FIREWALL and KUBE-FORWARD chains (the lab writes only what Services
    need), no nfacct-counted localhost NodePort rules (this lab loads no nfacct, and
    kube-proxy leaves them out then too), and MASQUERADE --random-fully (the test's fake
    iptables has no random-fully)."""
    state = iptables.render(config(*UPSTREAM_OVERALL, cluster_cidr="10.0.0.0/8", node_name="test-node",
                                   node_port_range="3000-32767"))
    rendered = iptables.parse_save(iptables.restore_text(state))
    expected = iptables.parse_save((GOLDEN / "iptables-upstream-overall.rules").read_text())
    for table in iptables.TABLES:
        assert rendered.tables[table].chains == expected.tables[table].chains, table


LOCAL_NODE_PORT = dict(APP1, type="NodePort", node_port=30080, external_traffic_policy="Local",
                       endpoints=[dict(ip="10.0.0.2", node_name="lab-node"), dict(ip="10.0.1.2", node_name="lab-node2")])


def test_a_local_policy_sends_external_traffic_to_the_nodes_own_endpoints_unmasqueraded():
    nat = iptables.render(config(LOCAL_NODE_PORT, cluster_cidr="10.0.0.0/16", node_name="lab-node"))["nat"]
    name = "default/app1"
    ext, svl, svc = (naming(name, "tcp") for naming in (external_chain, local_chain, service_chain))
    assert nat.chains["KUBE-NODEPORTS"] == ["-m comment --comment default/app1 -m tcp -p tcp --dport 30080 -j " + ext]
    assert nat.chains[ext][-1] == "-j " + svl and not [rule for rule in nat.chains[ext] if rule.endswith("KUBE-MARK-MASQ")
                                                      and "addrtype" not in rule]
    assert nat.chains[svl] == ['-m comment --comment "default/app1 -> 10.0.0.2:8080" -j '
                               + endpoint_chain(name, "tcp", "10.0.0.2:8080")]
    assert len([rule for rule in nat.chains[svc] if "-j KUBE-SEP-" in rule]) == 2  # the ClusterIP still balances over both


def test_a_node_without_local_endpoints_drops_what_comes_from_outside():
    state = iptables.render(config(LOCAL_NODE_PORT, cluster_cidr="10.0.0.0/16", node_name="lab-node3"))
    assert state["filter"].chains["KUBE-EXTERNAL-SERVICES"] == [
        '-m comment --comment "default/app1 has no local endpoints" -m addrtype --dst-type LOCAL '
        '-m tcp -p tcp --dport 30080 -j DROP']
    ext = external_chain("default/app1", "tcp")
    assert not [rule for rule in state["nat"].chains[ext] if "KUBE-SVL-" in rule]


def test_an_internal_local_policy_without_local_endpoints_drops_the_cluster_ip():
    service = dict(LOCAL_NODE_PORT, type="ClusterIP", node_port=None, external_traffic_policy=None,
                   internal_traffic_policy="Local")
    state = iptables.render(config(service, cluster_cidr="10.0.0.0/16", node_name="lab-node3"))
    assert state["filter"].chains["KUBE-SERVICES"] == [
        '-m comment --comment "default/app1 has no local endpoints" -m tcp -p tcp -d 10.96.0.10 --dport 80 -j DROP']
    assert "KUBE-EXTERNAL-SERVICES" not in state["filter"].chains  # a ClusterIP lab keeps today's filter table


def test_node_ports_answer_only_on_the_node_ips_when_given():
    rules = iptables.render(config(APP1, node_ips=["192.168.100.11"]))["nat"].chains["KUBE-SERVICES"]
    assert rules[-1] == ('-m comment --comment "kubernetes service nodeports; NOTE: this must be the last rule in '
                         'this chain" -d 192.168.100.11 -j KUBE-NODEPORTS')


@pytest.mark.parametrize("services", [MIXED, UPSTREAM_OVERALL])
def test_a_rule_s_saved_form_is_its_normalised_text(services):
    for desired in iptables.render(config(*services, cluster_cidr="10.0.0.0/8", node_name="test-node",
                                          node_port_range="3000-32767")).values():
        for rules in list(desired.chains.values()) + list(desired.jumps.values()):
            for rule in rules:
                assert iptables.saved_rule(rule) == iptables.rule_text(iptables.normalise_rule(rule)), rule
