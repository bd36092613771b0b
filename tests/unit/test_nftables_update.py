"""nftables.update_script: a change edits the live table in place, as kube-proxy's partial
sync does, instead of replacing the whole table (which made a one-endpoint change at 2,000
Services slower than a cold sync). Checked against the kernel by tools/bench."""

import copy
import json

import pytest

from conftest import FIXTURES
from kube_proxy import nftables
from lab_services import APP1, NO_ENDPOINTS, config

SERVICE_CIDR = "10.96.0.0/12"
APP2 = dict(APP1, name="app2", cluster_ip="10.96.0.20")
NEW_KERNEL = nftables.kernel_version("6.18.44-fc-v782")
OLD_KERNEL = nftables.kernel_version("6.1.0-18-amd64")


def state(*services):
    return nftables.render(config(*services, mode="nftables"), SERVICE_CIDR)


def test_nothing_to_do_is_none():
    assert nftables.update_script(state(APP1), state(APP1), NEW_KERNEL) is None


def test_one_endpoint_gone_rewrites_one_service_chain_and_deletes_one_endpoint_chain():
    fewer = dict(APP1, endpoints=APP1["endpoints"][:-1])
    lines = nftables.update_script(state(fewer), state(APP1), NEW_KERNEL).splitlines()
    flushed = [line.split()[-1] for line in lines if line.startswith("flush chain")]
    deleted = [line.split()[-1] for line in lines if line.startswith("delete chain")]
    assert len(deleted) == 1 and deleted[0].startswith("endpoint-") and deleted[0].endswith("/8080")
    assert flushed[0].startswith("service-") and flushed[-1] == deleted[0]
    assert "numgen random mod %d vmap" % len(fewer["endpoints"]) in "\n".join(lines)
    assert not any(line.startswith(("add table", "delete table", "add element", "delete element")) for line in lines)
    # The chain is deleted only after the rule that jumped to it is gone.
    assert lines.index("delete chain ip kube-proxy " + deleted[0]) > lines.index("flush chain ip kube-proxy " + flushed[0])


def test_a_service_added_and_removed_edits_the_maps_in_place():
    lines = nftables.update_script(state(APP1, APP2), state(APP1), NEW_KERNEL).splitlines()
    assert any(line.startswith("add element ip kube-proxy service-ips { 10.96.0.20 . tcp . 80 : goto service-")
               for line in lines)
    assert lines.index(next(line for line in lines if line.startswith("add chain"))) < lines.index(
        next(line for line in lines if line.startswith("add element ip kube-proxy service-ips")))
    back = nftables.update_script(state(APP1), state(APP1, APP2), NEW_KERNEL).splitlines()
    assert "delete element ip kube-proxy service-ips { 10.96.0.20 . tcp . 80 }" in back
    first_delete_chain = min(i for i, line in enumerate(back) if line.startswith("delete chain"))
    assert all(i < first_delete_chain for i, line in enumerate(back) if line.startswith("delete element"))


def test_a_service_losing_every_endpoint():
    lines = nftables.update_script(
        state(APP1, NO_ENDPOINTS), state(APP1, dict(NO_ENDPOINTS, endpoints=["10.0.0.2"])), NEW_KERNEL)
    assert lines is not None and "add element ip kube-proxy no-endpoint-services" in lines


def _live_app1(*changes):
    """The table nft printed for APP1 (tests/unit/fixtures), after ``changes`` to its JSON."""
    document = json.loads((FIXTURES / "nft-app1.json").read_text())
    for change in changes:
        change(document["nftables"])
    return nftables.parse_json(json.dumps(document))


def _named(objects, kind, name):
    (found,) = [item[kind] for item in objects if kind in item and item[kind].get("name") == name]
    return found


def _counted_element(objects):
    # An element with a counter, which parse_json cannot read: it prints as <unknown …>.
    _named(objects, "set", "cluster-ips")["elem"].append(
        {"elem": {"val": "10.96.0.99", "counter": {"packets": 0, "bytes": 0}}})


def _drifted_comment(objects):
    _named(objects, "set", "cluster-ips")["comment"] = "edited by hand"


@pytest.mark.parametrize("change", [_counted_element, _drifted_comment])
def test_a_table_not_wholly_understood_or_declared_otherwise_is_replaced_whole(change):
    fewer = state(dict(APP1, endpoints=APP1["endpoints"][:-1]))
    assert nftables.update_script(fewer, _live_app1(), NEW_KERNEL) is not None
    assert nftables.update_script(fewer, _live_app1(change), NEW_KERNEL) is None
    # Also when nothing else differs, and sync.plan replaces the table because they differ.
    assert nftables.update_script(state(APP1), _live_app1(change), NEW_KERNEL) is None


def test_what_cannot_be_edited_in_place_is_replaced_whole():
    live = state(APP1)
    unknown = copy.deepcopy(live)
    unknown.other.append("something nft printed that the model does not hold")
    assert nftables.update_script(state(APP1), unknown, NEW_KERNEL) is None
    other_set = copy.deepcopy(live)
    name = sorted(other_set.sets)[0]
    other_set.sets[name].type = "ipv4_addr . inet_service"
    assert nftables.update_script(state(APP1), other_set, NEW_KERNEL) is None
    missing_set = copy.deepcopy(live)
    del missing_set.sets[name]
    assert nftables.update_script(state(APP1), missing_set, NEW_KERNEL) is None


@pytest.mark.parametrize("release, version", [
    ("6.18.44-fc-v782", (6, 18)), ("6.1.0-18-amd64", (6, 1)), ("6.2", (6, 2)), ("5.15.0-91-generic", (5, 15)),
    ("", (0, 0)), ("unknown", (0, 0)),
])
def test_kernel_version_reads_the_release(release, version):
    assert nftables.kernel_version(release) == version


def test_before_6_2_a_chain_to_delete_means_replacing_the_table():
    # Those kernels refuse to delete a chain in the transaction that removes what jumped to it.
    fewer = dict(APP1, endpoints=APP1["endpoints"][:-1])
    assert nftables.update_script(state(fewer), state(APP1), OLD_KERNEL) is None
    assert nftables.update_script(state(fewer), state(APP1), (6, 2)) is not None


def test_before_6_2_what_deletes_no_chain_is_still_edited_in_place():
    more = dict(APP1, endpoints=APP1["endpoints"] + ["10.0.0.5"])
    on_old = nftables.update_script(state(more), state(APP1), OLD_KERNEL)
    assert on_old is not None and "delete chain" not in on_old
    assert on_old == nftables.update_script(state(more), state(APP1), NEW_KERNEL)
