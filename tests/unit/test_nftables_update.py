"""nftables.update_script: a change edits the live table in place, as kube-proxy's partial
sync does, instead of replacing the whole table (which made a one-endpoint change at 2,000
Services slower than a cold sync); where an edit in place cannot be trusted it gives None,
and sync.plan replaces the table whole.

``apply`` plays an update script against a live table the way ``nft -f`` would, refusing
what nft refuses, and each transition must leave exactly the desired table. The live tables
are what nft printed (tests/unit/fixtures, read by parse_json), or rendered where no fixture
holds the state: test_nftables shows the two read alike."""

import copy
import json
import re

import pytest

from conftest import FIXTURES
from kube_proxy import nftables, sync
from lab_services import APP1, DNS, MIXED, NO_ENDPOINTS, STICKY, config

SERVICE_CIDR = "10.96.0.0/12"
APP2 = dict(APP1, name="app2", cluster_ip="10.96.0.20")
NEW_RELEASE = "6.18.44-fc-v782"
OLD_RELEASE = "6.1.0-18-amd64"
NEW_KERNEL = nftables.kernel_version(NEW_RELEASE)
OLD_KERNEL = nftables.kernel_version(OLD_RELEASE)


def state(*services):
    """APP1's table (fixtures/nft-app1.json) has the service CIDR's drop rule."""
    return nftables.render(config(*services, mode="nftables"), SERVICE_CIDR)


def mixed_but(original, replacement):
    """The mixed table (fixtures/nft-mixed.json, without a service CIDR), one Service changed."""
    services = [replacement if service is original else service for service in MIXED]
    return nftables.render(config(*services, mode="nftables"))


def live_json(name, *changes):
    """The text nft -j printed for a fixture, after ``changes`` to its objects."""
    document = json.loads((FIXTURES / name).read_text())
    for change in changes:
        change(document["nftables"])
    return json.dumps(document)


def live(name, *changes):
    return nftables.parse_json(live_json(name, *changes))


def without(service, count=1):
    return dict(service, endpoints=service["endpoints"][:-count])


def with_one_more(service):
    return dict(service, endpoints=service["endpoints"] + ["10.0.0.5"])


# --------------------------------------------------------------------------- nft -f, modelled

_COMMAND = re.compile(r"(add|flush|delete) (chain|rule|element) ip kube-proxy (\S+)(?: (.*))?")
_CHAIN_NAMED = re.compile(r"(?:jump|goto) ([^\s,}]+)")
_SET_NAMED = re.compile(r"@([^\s,}]+)")


def _key(named, element):
    """What nft tells elements apart by: the key, without map value or comment."""
    key = element.split(" : ", 1)[0] if named.map else element
    return key.split(' comment "', 1)[0]


def _chains_named(table):
    texts = [rule for chain in table.chains.values() for rule in chain.rules]
    texts += [element for named in table.sets.values() if named.map for element in named.elements]
    return {name for text in texts for name in _CHAIN_NAMED.findall(text)}


def _assert_names_exist(table, text):
    for name in _CHAIN_NAMED.findall(text):
        assert name in table.chains, "names chain %s before it exists: %s" % (name, text)
    for name in _SET_NAMED.findall(text):
        assert name in table.sets, "names set %s before it exists: %s" % (name, text)


def apply(script, table, kernel):
    """The table ``nft -f`` leaves after ``script``, for the commands update_script writes.

    Fails where nft would: any other command, a chain or set named before it exists, an
    element added over one with its key or deleted while absent, a chain deleted while it
    has rules or anything names it, and, on kernels before 6.2, a chain deleted at all when
    something named it as the transaction began (EBUSY).
    """
    table = copy.deepcopy(table)
    named_before = _chains_named(table)
    for line in script.splitlines():
        command = _COMMAND.fullmatch(line)
        assert command, "not a command an edit in place writes: " + line
        verb, kind, name, rest = command.groups()
        if (verb, kind) == ("add", "chain"):
            table.chains.setdefault(name, nftables.Chain())
        elif (verb, kind) == ("flush", "chain"):
            table.chains[name].rules = []
        elif (verb, kind) == ("delete", "chain"):
            assert not table.chains[name].rules, "deletes chain %s with rules in it" % name
            assert name not in _chains_named(table), "deletes chain %s while something names it" % name
            assert kernel >= (6, 2) or name not in named_before, "deletes chain %s before 6.2" % name
            del table.chains[name]
        elif (verb, kind) == ("add", "rule"):
            _assert_names_exist(table, rest)
            table.chains[name].rules.append(rest)
        elif kind == "element" and verb in ("add", "delete"):
            assert rest.startswith("{ ") and rest.endswith(" }"), line
            element, named = rest[2:-2], table.sets[name]
            keys = {_key(named, have): have for have in named.elements}
            if verb == "add":
                _assert_names_exist(table, element)
                assert _key(named, element) not in keys, "adds over an element: " + line
                named.elements.add(element)
            else:
                assert element in keys, "deletes what is not there, or not by its key alone: " + line
                named.elements.remove(keys[element])
        else:
            raise AssertionError("not a command an edit in place writes: " + line)
    return table


def test_the_model_refuses_what_old_kernels_refuse():
    fewer = state(without(APP1))
    script = nftables.update_script(fewer, state(APP1), NEW_KERNEL)
    assert apply(script, state(APP1), NEW_KERNEL) == fewer
    with pytest.raises(AssertionError, match="before 6.2"):
        apply(script, state(APP1), OLD_KERNEL)


def test_the_model_refuses_a_chain_deleted_before_what_names_it():
    script = nftables.update_script(state(without(APP1)), state(APP1), NEW_KERNEL).splitlines()
    (deleted,) = [line.split()[-1] for line in script if line.startswith("delete chain")]
    stale_first = [line for line in script if line.endswith(" " + deleted)]
    reordered = stale_first + [line for line in script if line not in stale_first]
    with pytest.raises(AssertionError, match="while something names it"):
        apply("\n".join(reordered), state(APP1), NEW_KERNEL)


# --------------------------------------------------------------------------- transitions

APP1_LIVE = "nft-app1.json"
MIXED_LIVE = "nft-mixed.json"
IN_PLACE, WHOLE = "in place", "whole table"

TRANSITIONS = [
    # id, live, desired, on a 6.2+ kernel, before 6.2 (where deleting a chain means WHOLE)
    ("one endpoint lost", APP1_LIVE, state(without(APP1)), IN_PLACE, WHOLE),
    ("one endpoint added", APP1_LIVE, state(with_one_more(APP1)), IN_PLACE, IN_PLACE),
    ("a Service gains endpoints after having none",
     MIXED_LIVE, mixed_but(NO_ENDPOINTS, dict(NO_ENDPOINTS, endpoints=["10.0.0.2"])), IN_PLACE, IN_PLACE),
    ("a Service loses every endpoint", APP1_LIVE, state(dict(APP1, endpoints=[])), IN_PLACE, WHOLE),
    ("a Service renamed at the same ClusterIP", APP1_LIVE, state(dict(APP1, name="web")), IN_PLACE, WHOLE),
    ("the service port changes", APP1_LIVE, state(dict(APP1, port=81)), IN_PLACE, IN_PLACE),
    ("the target port changes", APP1_LIVE, state(dict(APP1, target_port=8081)), IN_PLACE, WHOLE),
    ("a second Service", APP1_LIVE, state(APP1, APP2), IN_PLACE, IN_PLACE),
    # The ClientIP Service keeps its affinity sets, and with them the clients they learnt.
    ("an endpoint lost beside a ClientIP Service",
     MIXED_LIVE, mixed_but(DNS, without(DNS)), IN_PLACE, WHOLE),
    # Affinity sets come and go with the endpoints: a set added or deleted replaces the table.
    ("a ClientIP Service loses an endpoint", MIXED_LIVE, mixed_but(STICKY, without(STICKY)), WHOLE, WHOLE),
    ("a ClientIP Service gains an endpoint", MIXED_LIVE, mixed_but(STICKY, with_one_more(STICKY)), WHOLE, WHOLE),
    ("a Service turns to ClientIP affinity", APP1_LIVE, state(dict(APP1, session_affinity="ClientIP")), WHOLE, WHOLE),
]


@pytest.mark.parametrize("live_name, desired, on_new, on_old", [
    pytest.param(*transition[1:], id=transition[0]) for transition in TRANSITIONS])
@pytest.mark.parametrize("kernel", [NEW_KERNEL, OLD_KERNEL], ids=["6.18", "6.1"])
def test_each_transition_leaves_exactly_the_desired_table(live_name, desired, on_new, on_old, kernel):
    table = live(live_name)
    assert table != desired
    script = nftables.update_script(desired, table, kernel)
    expected = on_new if kernel >= (6, 2) else on_old
    assert (WHOLE if script is None else IN_PLACE) == expected
    if script is not None:
        edited = apply(script, table, kernel)
        assert nftables.listing(edited) == nftables.listing(desired)
        assert edited == desired


def test_nothing_to_do_is_none():
    assert nftables.update_script(state(APP1), live(APP1_LIVE), NEW_KERNEL) is None


def test_an_edit_touches_only_what_differs():
    lines = nftables.update_script(state(without(APP1)), live(APP1_LIVE), NEW_KERNEL).splitlines()
    written = {line.split()[-1] for line in lines if not line.startswith("add rule")}
    assert len(lines) == 5, lines  # one chain flushed and refilled (2 rules), one flushed and deleted
    assert all(name.startswith(("service-", "endpoint-")) for name in written)


@pytest.mark.parametrize("release, version", [
    (NEW_RELEASE, (6, 18)), (OLD_RELEASE, (6, 1)), ("6.2", (6, 2)), ("5.15.0-91-generic", (5, 15)),
    ("", (0, 0)), ("unknown", (0, 0)),
])
def test_kernel_version_reads_the_release(release, version):
    assert nftables.kernel_version(release) == version


# --------------------------------------------------------------------------- replaced whole

def _named(objects, kind, name):
    (found,) = [item[kind] for item in objects if kind in item and item[kind].get("name") == name]
    return found


def _counted_element(objects):
    # An element with a counter, which parse_json cannot read: it prints as <unknown …>.
    _named(objects, "set", "cluster-ips")["elem"].append(
        {"elem": {"val": "10.96.0.99", "counter": {"packets": 0, "bytes": 0}}})


def _unknown_rule(objects):
    rule = next(item["rule"] for item in objects if item.get("rule", {}).get("chain") == "nat-output")
    rule["expr"].insert(0, {"xt": {"type": "match", "name": "comment"}})


def _drifted_comment(objects):
    _named(objects, "set", "cluster-ips")["comment"] = "edited by hand"


def _drifted_type(objects):
    _named(objects, "map", "service-ips")["type"] = ["ipv4_addr", "inet_service"]


def _drifted_policy(objects):
    _named(objects, "chain", "filter-input")["policy"] = "drop"


def _foreign_set(objects):
    objects.append({"set": {"family": "ip", "table": "kube-proxy", "name": "extra", "handle": 97,
                            "type": "ipv4_addr"}})


def _missing_set(objects):
    objects.remove({"set": _named(objects, "set", "nodeport-ips")})


DRIFTS = [_counted_element, _unknown_rule, _drifted_comment, _drifted_type, _drifted_policy, _foreign_set,
          _missing_set]


@pytest.mark.parametrize("drift", DRIFTS)
def test_a_table_not_wholly_understood_or_declared_otherwise_is_replaced_whole(drift):
    fewer = state(without(APP1))
    assert nftables.update_script(fewer, live(APP1_LIVE, drift), NEW_KERNEL) is None
    # Also when nothing else differs: sync.plan then replaces the table because they differ.
    drifted = live(APP1_LIVE, drift)
    assert drifted != state(APP1) and nftables.update_script(state(APP1), drifted, NEW_KERNEL) is None


# --------------------------------------------------------------------------- through sync.plan

def nft_input(services, nft_table, release):
    cfg = config(*services, mode="nftables", service_cidr=SERVICE_CIDR)
    plan = sync.plan(cfg, True, sync.Live(iptables_save="", nft_table=nft_table, kernel_release=release))
    (step,) = [step for step in plan.steps if step.name == "nftables"]
    ((argv, text),) = step.commands
    assert argv == ("nft", "-f", "-")
    return text


def test_sync_plan_edits_an_existing_table_in_place():
    text = nft_input([without(APP1)], live_json(APP1_LIVE), NEW_RELEASE)
    assert apply(text, live(APP1_LIVE), NEW_KERNEL) == state(without(APP1))


@pytest.mark.parametrize("services, nft_table, release", [
    pytest.param([without(APP1)], live_json(APP1_LIVE), OLD_RELEASE, id="a chain to delete before 6.2"),
    pytest.param([without(APP1)], live_json(APP1_LIVE), "", id="an unreadable kernel release"),
    pytest.param([without(APP1)], live_json(APP1_LIVE, _counted_element), NEW_RELEASE, id="an element not understood"),
    pytest.param([APP1], live_json(APP1_LIVE, _drifted_comment), NEW_RELEASE, id="a drifted set comment"),
    pytest.param([dict(APP1, session_affinity="ClientIP")], live_json(APP1_LIVE), NEW_RELEASE,
                 id="affinity sets added"),
])
def test_sync_plan_replaces_the_table_whole_where_it_must(services, nft_table, release):
    assert nft_input(services, nft_table, release) == nftables.script(state(*services), live_exists=True)


def test_sync_plan_writes_a_new_table_whole():
    assert nft_input([APP1], None, NEW_RELEASE) == nftables.script(state(APP1), live_exists=False)
