"""nftables mode: names against kube-proxy's fixtures, the renderer against golden text, and
the JSON reader against what nft 1.0.6 printed on a 6.18 kernel.

The fixtures were captured by tools/capture-nft-fixtures: it applies golden/nftables-app1.nft
to an empty scratch namespace, then golden/nftables-mixed.nft (which replaces that table),
and saves ``nft -j list table ip kube-proxy`` after each.
"""

import json
import re

import pytest

from conftest import FIXTURES, GOLDEN
from kube_proxy import nftables
from lab_services import APP1, DNS, MIXED, NO_ENDPOINTS, STICKY, SVC1_AFFINITY, WIDE, config

SERVICE_CIDR = "10.96.0.0/12"

APP1_CONFIG = config(APP1, mode="nftables")
MIXED_CONFIG = config(*MIXED, mode="nftables")

APP1_CHAIN = "service-GX25I5IS-default/app1/tcp/"
STICKY_CHAIN = "service-ULMVA6XW-ns1/svc1/tcp/p80"
STICKY_ENDPOINT = "endpoint-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"
STICKY_AFFINITY = "affinity-5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"


def fixture(name):
    return (FIXTURES / name).read_text()


def fixture_json(name):
    return json.loads(fixture(name))


def objects(document, kind, name=None):
    return [item[kind] for item in document["nftables"]
            if kind in item and (name is None or item[kind].get("name", item[kind].get("chain")) == name)]


# --------------------------------------------------------------------------- naming

@pytest.mark.parametrize("namespace, name, port_name, expected", [
    # pkg/proxy/nftables/proxier_test.go, TestOverallNFTablesRules
    ("ns1", "svc1", "p80", "ULMVA6XW-ns1/svc1/tcp/p80"),
    ("ns2", "svc2", "p80", "42NFTM6N-ns2/svc2/tcp/p80"),
    ("ns3", "svc3", "p80", "4AT6LBPK-ns3/svc3/tcp/p80"),
    ("ns4", "svc4", "p80", "LAUZTJTB-ns4/svc4/tcp/p80"),
    ("ns5", "svc5", "p80", "HVFWP5L3-ns5/svc5/tcp/p80"),
])
def test_service_chain_base_matches_kube_proxy_fixtures(namespace, name, port_name, expected):
    assert nftables.service_chain_base(namespace, name, "tcp", port_name) == expected


@pytest.mark.parametrize("namespace, name, ip, expected", [
    ("ns1", "svc1", "10.180.0.1", "5OJB2KTY-ns1/svc1/tcp/p80__10.180.0.1/80"),
    ("ns2", "svc2", "10.180.0.2", "SGOXE6O3-ns2/svc2/tcp/p80__10.180.0.2/80"),
    ("ns3", "svc3", "10.180.0.3", "UEIP74TE-ns3/svc3/tcp/p80__10.180.0.3/80"),
    ("ns4", "svc4", "10.180.0.4", "UNZV3OEC-ns4/svc4/tcp/p80__10.180.0.4/80"),
    ("ns4", "svc4", "10.180.0.5", "5RFCDDV7-ns4/svc4/tcp/p80__10.180.0.5/80"),
    ("ns5", "svc5", "10.180.0.3", "GTK6MW7G-ns5/svc5/tcp/p80__10.180.0.3/80"),
])
def test_endpoint_chain_base_matches_kube_proxy_fixtures(namespace, name, ip, expected):
    assert nftables.endpoint_chain_base(namespace, name, "tcp", "p80", ip, 80) == expected


def test_unnamed_port_hashes_an_empty_last_field():
    assert nftables.service_chain_base("default", "app1", "tcp", "") == "GX25I5IS-default/app1/tcp/"


def test_long_names_are_truncated_like_kube_proxy():
    base = nftables.service_chain_base("n" * 63, "s" * 63, "sctp", "p" * 120)
    assert len(base) == 240 and base.endswith("...")


def test_render_uses_the_names_for_chains_and_affinity_sets():
    state = nftables.render(config(SVC1_AFFINITY, mode="nftables"))
    assert {STICKY_CHAIN, STICKY_ENDPOINT} <= set(state.chains)
    assert STICKY_AFFINITY in state.sets


# --------------------------------------------------------------------------- rendering

@pytest.mark.parametrize("golden, cfg, options, live_exists", [
    ("nftables-app1.nft", APP1_CONFIG, dict(service_cidr=SERVICE_CIDR), False),
    ("nftables-mixed.nft", MIXED_CONFIG, {}, True),
])
def test_script_matches_golden(golden, cfg, options, live_exists):
    assert nftables.script(nftables.render(cfg, **options), live_exists) == (GOLDEN / golden).read_text()


def test_service_chain_masquerades_off_cluster_sources_then_balances():
    rules = nftables.render(APP1_CONFIG).chains[APP1_CHAIN].rules
    assert rules[0] == "ip daddr 10.96.0.10 ip saddr != 10.0.0.0/24 jump mark-for-masquerade"
    assert rules[1].startswith(
        "numgen random mod 3 vmap { 0 : goto endpoint-NKCX5X2T-default/app1/tcp/__10.0.0.2/8080, ")
    assert len(rules) == 2


def test_masquerade_all_drops_the_source_condition():
    rules = nftables.render(config(APP1, mode="nftables", masquerade_all=True)).chains[APP1_CHAIN].rules
    assert rules[0] == "ip daddr 10.96.0.10 jump mark-for-masquerade"


def test_a_host_cluster_cidr_is_written_the_way_nft_prints_it():
    rules = nftables.render(config(APP1, mode="nftables", cluster_cidr="10.0.0.7/32")).chains[APP1_CHAIN].rules
    assert rules[0] == "ip daddr 10.96.0.10 ip saddr != 10.0.0.7 jump mark-for-masquerade"


def test_endpoint_chain_marks_hairpin_then_dnats():
    chain = nftables.render(APP1_CONFIG).chains["endpoint-NKCX5X2T-default/app1/tcp/__10.0.0.2/8080"]
    assert chain.rules == ["ip saddr 10.0.0.2 jump mark-for-masquerade", "meta l4proto tcp dnat to 10.0.0.2:8080"]


def test_client_ip_affinity_checks_before_balancing_and_updates_between_hairpin_and_dnat():
    state = nftables.render(config(SVC1_AFFINITY, mode="nftables"))
    assert state.chains[STICKY_CHAIN].rules[1:] == [
        "ip saddr @%s goto %s" % (STICKY_AFFINITY, STICKY_ENDPOINT),
        "numgen random mod 1 vmap { 0 : goto %s }" % STICKY_ENDPOINT,
    ]
    assert state.chains[STICKY_ENDPOINT].rules[1] == "update @%s { ip saddr }" % STICKY_AFFINITY
    affinity = state.sets[STICKY_AFFINITY]
    assert (affinity.type, affinity.flags, affinity.timeout) == ("ipv4_addr", {"dynamic", "timeout"}, 3600)


def test_service_without_endpoints_is_rejected_through_the_map():
    state = nftables.render(config(NO_ENDPOINTS, mode="nftables"))
    assert state.sets["cluster-ips"].elements == {"10.96.0.11"}
    assert state.sets["no-endpoint-services"].elements == {
        '10.96.0.11 . udp . 53 comment "default/gone" : goto reject-chain'}
    assert state.sets["service-ips"].elements == set()
    assert not [name for name in state.chains if "/" in name]


def test_service_cidr_adds_the_drop_rule():
    without = nftables.render(APP1_CONFIG).chains["cluster-ips-check"].rules
    with_cidr = nftables.render(APP1_CONFIG, service_cidr=SERVICE_CIDR).chains["cluster-ips-check"].rules
    assert with_cidr == without + ['ip daddr 10.96.0.0/12 drop comment "Drop traffic to unallocated ClusterIPs"']


_DECLARE = re.compile(r"^add (?:chain|set|map) ip kube-proxy (\S+)")
_USE = re.compile(r"(?:jump|goto) (\S+?)(?:,| |$)|@([^\s,]+)")


def test_script_declares_every_chain_and_set_before_anything_names_it():
    lines = nftables.script(nftables.render(MIXED_CONFIG, service_cidr=SERVICE_CIDR), True).splitlines()
    assert lines[:2] == ["add table ip kube-proxy", "delete table ip kube-proxy"]
    declared = set()
    uses = 0
    for line in lines:
        declaration = _DECLARE.match(line)
        if declaration:
            declared.add(declaration.group(1))
        elif line.startswith(("add rule ", "add element ")):
            for jumped, referenced in _USE.findall(line):
                assert (jumped or referenced) in declared, line
                uses += 1
    assert uses > 50


def test_fresh_script_does_not_delete_and_delete_script_always_succeeds():
    script = nftables.script(nftables.render(APP1_CONFIG), False)
    assert script.startswith('add table ip kube-proxy { comment "rules for kube-proxy" ; }\n')
    assert "delete" not in script
    assert nftables.delete_script() == "add table ip kube-proxy\ndelete table ip kube-proxy\n"


# --------------------------------------------------------------------------- reading back

@pytest.mark.parametrize("name, cfg, options", [
    ("nft-app1.json", APP1_CONFIG, dict(service_cidr=SERVICE_CIDR)),
    ("nft-mixed.json", MIXED_CONFIG, {}),
])
def test_live_table_applied_from_render_needs_no_change(name, cfg, options):
    live = nftables.parse_json(fixture(name))
    desired = nftables.render(cfg, **options)
    assert live.other == []
    assert nftables.listing(live) == nftables.listing(desired)
    assert live == desired


def test_changed_endpoints_are_a_change():
    live = nftables.parse_json(fixture("nft-app1.json"))
    fewer = config(dict(APP1, endpoints=["10.0.0.2", "10.0.0.4"]), mode="nftables")
    assert live != nftables.render(fewer, service_cidr=SERVICE_CIDR)
    moved = config(dict(APP1, target_port=8081), mode="nftables")
    assert live != nftables.render(moved, service_cidr=SERVICE_CIDR)


@pytest.mark.parametrize("cfg, options", [
    (APP1_CONFIG, {}),  # no service CIDR: one rule fewer
    (APP1_CONFIG, dict(service_cidr="10.96.0.0/16")),
    (config(APP1, mode="nftables", masquerade_all=True), dict(service_cidr=SERVICE_CIDR)),
    (config(dict(APP1, session_affinity="ClientIP"), mode="nftables"), dict(service_cidr=SERVICE_CIDR)),
    (config(dict(APP1, protocol="UDP"), mode="nftables"), dict(service_cidr=SERVICE_CIDR)),
])
def test_other_settings_are_a_change(cfg, options):
    assert nftables.parse_json(fixture("nft-app1.json")) != nftables.render(cfg, **options)


def test_affinity_timeout_is_compared():
    live = nftables.parse_json(fixture("nft-mixed.json"))
    shorter = config(APP1, dict(STICKY, session_affinity_timeout=60), DNS, NO_ENDPOINTS, WIDE, mode="nftables")
    assert live != nftables.render(shorter)


def test_printed_forms_of_nft_meet_the_rendered_ones():
    live = nftables.parse_json(fixture("nft-mixed.json"))
    assert live.chains["mark-for-masquerade"].rules == ["mark set mark or 0x00004000"]
    assert live.chains["masquerading"].rules[0] == "mark and 0x00004000 == 0 return"
    assert live.chains["reject-chain"].rules == ["reject"]
    assert live.chains["filter-input"].rules[0] == "ct state new jump nodeport-endpoints-check"
    wide = [rule for name, chain in live.chains.items() if "/wide/" in name for rule in chain.rules
            if rule.startswith("numgen")][0]
    keys = re.findall(r"(\d+) : goto", wide)
    assert keys == [str(key) for key in range(12)]


def test_learnt_affinity_addresses_and_counters_are_not_configuration():
    document = fixture_json("nft-mixed.json")
    # As nft -j prints an affinity set after a client has been sent somewhere.
    (affinity,) = objects(document, "set", STICKY_AFFINITY)
    affinity["elem"] = [{"elem": {"val": "192.168.100.2", "expires": 3595}}]
    objects(document, "rule")[0]["expr"].insert(0, {"counter": {"packets": 7, "bytes": 420}})
    assert nftables.parse_json(json.dumps(document)) == nftables.render(MIXED_CONFIG)


def test_the_dynamic_flag_nft_leaves_out_is_restored_from_the_update_rule():
    document = fixture_json("nft-mixed.json")
    (affinity,) = objects(document, "set", STICKY_AFFINITY)
    assert affinity["flags"] == ["timeout"] and affinity["size"] == 65535
    for rule in objects(document, "rule", STICKY_ENDPOINT):
        rule["expr"] = [item for item in rule["expr"] if "set" not in item]
    live = nftables.parse_json(json.dumps(document))
    assert live.sets[STICKY_AFFINITY].flags == {"timeout"}
    assert "set %s: size 65535" % STICKY_AFFINITY in live.other


def _with(document_name, change):
    document = fixture_json(document_name)
    change(document)
    return nftables.parse_json(json.dumps(document))


def _reject_with_host_unreachable(document):
    (rule,) = objects(document, "rule", "reject-chain")
    rule["expr"] = [{"reject": {"type": "icmp", "expr": "host-unreachable"}}]


def _dnat_persistent(document):
    rule = objects(document, "rule", "endpoint-NKCX5X2T-default/app1/tcp/__10.0.0.2/8080")[-1]
    rule["expr"][-1]["dnat"]["flags"] = ["persistent"]


def _xt_match(document):
    objects(document, "rule", "nat-output")[0]["expr"].insert(0, {"xt": {"type": "match", "name": "comment"}})


def _policy_drop(document):
    objects(document, "chain", "filter-input")[0]["policy"] = "drop"


def _foreign_object(document):
    document["nftables"].append({"counter": {"family": "ip", "table": "kube-proxy", "name": "c1", "handle": 99}})


def _set_size(document):
    objects(document, "set", "cluster-ips")[0]["size"] = 100


def _stale_element(document):
    objects(document, "set", "cluster-ips")[0]["elem"].append("10.96.0.99")


def _stale_chain(document):
    document["nftables"].append({"chain": {"family": "ip", "table": "kube-proxy", "name": "service-OLD", "handle": 98}})


@pytest.mark.parametrize("change", [
    _reject_with_host_unreachable, _dnat_persistent, _xt_match, _policy_drop, _foreign_object,
    _set_size, _stale_element, _stale_chain,
])
def test_anything_unexpected_is_a_change(change):
    assert _with("nft-app1.json", change) != nftables.render(APP1_CONFIG, service_cidr=SERVICE_CIDR)


def test_unknown_expressions_print_as_unknown():
    live = _with("nft-app1.json", _xt_match)
    assert live.chains["nat-output"].rules[0].startswith('<unknown {"xt": ')
    assert "jump services" in live.chains["nat-output"].rules[0]


@pytest.mark.parametrize("expressions, text", [
    # As nft 1.0.6 printed rules the renderer never writes (6.18 kernel).
    ([{"match": {"op": "==", "left": {"ct": {"key": "state"}}, "right": {"set": ["established", "new"]}}},
      {"counter": {"packets": 0, "bytes": 0}}, {"accept": None}],
     "ct state == { established, new } accept"),
    ([{"masquerade": {"flags": ["random", "fully-random"]}}], "masquerade random,fully-random"),
    ([{"mangle": {"key": {"meta": {"key": "mark"}}, "value": 16}}], "mark set 0x00000010"),
    ([{"reject": {"type": "icmp", "expr": "host-unreachable"}}], "reject with icmp host-unreachable"),
    ([{"vmap": {"key": {"numgen": {"mode": "random", "mod": 2, "offset": 5}},
                "data": {"set": [[5, {"accept": None}], [6, {"drop": None}]]}}}],
     "numgen random mod 2 offset 5 vmap { 5 : accept, 6 : drop }"),
    ([{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": 80}},
      {"dnat": {"addr": "1.2.3.4"}}], "tcp dport 80 dnat to 1.2.3.4"),
])
def test_printer_keeps_what_it_does_not_render_distinct(expressions, text):
    document = {"nftables": [
        {"table": {"family": "ip", "name": "kube-proxy", "handle": 1}},
        {"chain": {"family": "ip", "table": "kube-proxy", "name": "c", "handle": 2}},
        {"rule": {"family": "ip", "table": "kube-proxy", "chain": "c", "handle": 3, "expr": expressions}},
    ]}
    assert nftables.parse_json(json.dumps(document)).chains["c"].rules == [text]


def test_only_the_kube_proxy_table_is_read():
    document = fixture_json("nft-app1.json")
    foreign = [{"table": {"family": "inet", "name": "kube-proxy", "handle": 7}},
               {"chain": {"family": "inet", "table": "kube-proxy", "name": "services", "handle": 1}},
               {"rule": {"family": "ip", "table": "nat", "chain": "services", "handle": 2, "expr": [{"drop": None}]}}]
    document["nftables"][1:1] = foreign
    assert nftables.parse_json(json.dumps(document)) == nftables.render(APP1_CONFIG, service_cidr=SERVICE_CIDR)
    with pytest.raises(ValueError):
        nftables.parse_json(json.dumps({"nftables": [{"metainfo": {"version": "1.0.6"}}] + foreign}))


# --------------------------------------------------------------------------- listing

def test_listing_is_sorted_and_readable():
    text = nftables.listing(nftables.render(MIXED_CONFIG))
    assert text.startswith("table ip kube-proxy {\n\tset affinity-")
    assert "\tchain filter-forward {\n\t\ttype filter hook forward priority 0; policy accept;\n" in text
    cluster_ips = text.split("\tset cluster-ips {")[1].split("\t}")[0]
    assert cluster_ips.index("10.96.0.10,") < cluster_ips.index("10.96.0.53,") < cluster_ips.index("172.30.0.41,")


def test_listing_shows_what_the_model_could_not_read():
    assert "# not understood: counter c1\n" in nftables.listing(_with("nft-app1.json", _foreign_object))


def service_part(text):
    """From an nft script: each Service's chains (service-, local-, external-, firewall-,
    endpoint-) and their rules, the affinity sets, and every element of the maps and sets, one element a line
    (``x, y`` in a vmap separated as nft separates them, ``{ x }`` of one item bare, as nft
    prints both back)."""
    chains, sets, elements = {}, set(), set()
    prefix = "ip %s " % nftables.TABLE_NAME
    for line in text.splitlines():
        if line.startswith("add chain " + prefix):
            chains.setdefault(line.split()[4], [])
        elif line.startswith("add rule " + prefix):
            chain, rule = line[len("add rule " + prefix):].split(" ", 1)
            rule = re.sub(r"\{ ([^{},]+) \}(?= drop)", r"\1", rule.replace(" , ", ", "))
            chains.setdefault(chain, []).append(rule)
        elif line.startswith("add set " + prefix + nftables.AFFINITY_SET_PREFIX):
            sets.add(line.split()[4])
        elif line.startswith("add element " + prefix):
            name, element = line[len("add element " + prefix):].split(" ", 1)
            elements.add((name, element.strip()[2:-2]))
    # A Service's chain names carry its ns/name/protocol/port; the fixed chains' do not.
    return {name: rules for name, rules in chains.items() if "/" in name}, sets, elements


def test_render_matches_kube_proxys_overall_table():
    """kube-proxy's TestOverallNFTablesRules (pkg/proxy/nftables/proxier_test.go), its Service
    part (the fixed part is test_script_matches_golden's): the inputs as test_iptables'
    UPSTREAM_OVERALL writes them, with the node IP 192.168.0.2 as kube-proxy's primary
    --nodeport-addresses. Chains, affinity sets and elements compared as sets and rule lists."""
    from test_iptables import UPSTREAM_OVERALL
    cfg = config(*UPSTREAM_OVERALL, mode="nftables", cluster_cidr="10.0.0.0/8", node_name="test-node",
                 node_ips=["192.168.0.2"], node_port_range="3000-32767")
    rendered = service_part(nftables.script(nftables.render(cfg), live_exists=False))
    assert rendered == service_part((GOLDEN / "nftables-upstream-overall.nft").read_text())
