"""nftables.update_script: a change edits the live table in place, as kube-proxy's partial
sync does, instead of replacing the whole table (which made a one-endpoint change at 2,000
Services slower than a cold sync). Checked against the kernel by tools/bench."""

import copy

from kube_proxy import nftables
from lab_services import APP1, NO_ENDPOINTS, config

SERVICE_CIDR = "10.96.0.0/12"
APP2 = dict(APP1, name="app2", cluster_ip="10.96.0.20")


def state(*services):
    return nftables.render(config(*services, mode="nftables"), SERVICE_CIDR)


def test_nothing_to_do_is_none():
    assert nftables.update_script(state(APP1), state(APP1)) is None


def test_one_endpoint_gone_rewrites_one_service_chain_and_deletes_one_endpoint_chain():
    fewer = dict(APP1, endpoints=APP1["endpoints"][:-1])
    lines = nftables.update_script(state(fewer), state(APP1)).splitlines()
    flushed = [line.split()[-1] for line in lines if line.startswith("flush chain")]
    deleted = [line.split()[-1] for line in lines if line.startswith("delete chain")]
    assert len(deleted) == 1 and deleted[0].startswith("endpoint-") and deleted[0].endswith("/8080")
    assert flushed[0].startswith("service-") and flushed[-1] == deleted[0]
    assert "numgen random mod %d vmap" % len(fewer["endpoints"]) in "\n".join(lines)
    assert not any(line.startswith(("add table", "delete table", "add element", "delete element")) for line in lines)
    # The chain is deleted only after the rule that jumped to it is gone.
    assert lines.index("delete chain ip kube-proxy " + deleted[0]) > lines.index("flush chain ip kube-proxy " + flushed[0])


def test_a_service_added_and_removed_edits_the_maps_in_place():
    lines = nftables.update_script(state(APP1, APP2), state(APP1)).splitlines()
    assert any(line.startswith("add element ip kube-proxy service-ips { 10.96.0.20 . tcp . 80 : goto service-")
               for line in lines)
    assert lines.index(next(line for line in lines if line.startswith("add chain"))) < lines.index(
        next(line for line in lines if line.startswith("add element ip kube-proxy service-ips")))
    back = nftables.update_script(state(APP1), state(APP1, APP2)).splitlines()
    assert "delete element ip kube-proxy service-ips { 10.96.0.20 . tcp . 80 }" in back
    first_delete_chain = min(i for i, line in enumerate(back) if line.startswith("delete chain"))
    assert all(i < first_delete_chain for i, line in enumerate(back) if line.startswith("delete element"))


def test_a_service_losing_every_endpoint():
    lines = nftables.update_script(state(APP1, NO_ENDPOINTS), state(APP1, dict(NO_ENDPOINTS, endpoints=["10.0.0.2"])))
    assert lines is not None and "add element ip kube-proxy no-endpoint-services" in lines


def test_what_cannot_be_edited_in_place_is_replaced_whole():
    live = state(APP1)
    unknown = copy.deepcopy(live)
    unknown.other.append("something nft printed that the model does not hold")
    assert nftables.update_script(state(APP1), unknown) is None
    other_set = copy.deepcopy(live)
    name = sorted(other_set.sets)[0]
    other_set.sets[name].type = "ipv4_addr . inet_service"
    assert nftables.update_script(state(APP1), other_set) is None
    missing_set = copy.deepcopy(live)
    del missing_set.sets[name]
    assert nftables.update_script(state(APP1), missing_set) is None
