"""The lab_service filter: -e source_ranges= as the CIDR list app1's loadBalancerSourceRanges
takes, refused by the variable's name where the kube_proxy module would refuse it."""

import importlib.util

import pytest
from ansible.errors import AnsibleFilterError

from conftest import REPO
from kube_proxy.model import ValidationError, build_config

SPEC = importlib.util.spec_from_file_location("lab_service_filter", REPO / "filter_plugins" / "lab_service.py")
lab_service_filter = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(lab_service_filter)
source_ranges = lab_service_filter.FilterModule().filters()["lab_source_ranges"]


@pytest.mark.parametrize("given, cidrs", [
    ([], []), ("", []), (None, []),
    ("203.0.113.0/24", ["203.0.113.0/24"]),
    ("203.0.113.0/24, 192.168.100.0/24", ["203.0.113.0/24", "192.168.100.0/24"]),
    (["192.168.100.0/24"], ["192.168.100.0/24"]),
])
def test_a_list_or_a_comma_separated_string(given, cidrs):
    assert source_ranges(given) == cidrs


def module_accepts(cidr):
    service = dict(namespace="default", name="app1", cluster_ip="10.96.0.10", port=80, protocol="TCP",
                   type="LoadBalancer", node_port=30080, load_balancer_ips=["192.168.200.10"],
                   load_balancer_source_ranges=[cidr], endpoints=[])
    try:
        build_config("iptables", "10.0.0.0/16", [service])
    except ValidationError:
        return False
    return True


@pytest.mark.parametrize("cidr", ["10.0.0.1/24", "abc", "10.1.0.0", "192.168.100.0/33", "::/0", "5"])
def test_what_the_module_refuses_is_refused_by_name(cidr):
    assert not module_accepts(cidr)
    with pytest.raises(AnsibleFilterError, match=r"^source_ranges: "):
        source_ranges(cidr)


def test_what_the_module_accepts_passes():
    assert module_accepts("0.0.0.0/0") and source_ranges("0.0.0.0/0") == ["0.0.0.0/0"]


def test_a_mapping_is_no_list():
    with pytest.raises(AnsibleFilterError, match="source_ranges must be a list"):
        source_ranges({"a": 1})
