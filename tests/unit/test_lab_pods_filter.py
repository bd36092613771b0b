"""The lab_pods filter: -e pods=N becomes pod1..podN on the bridge's subnet."""

import importlib.util

import pytest
from ansible.errors import AnsibleFilterError

from conftest import REPO

SPEC = importlib.util.spec_from_file_location("lab_pods_filter", REPO / "filter_plugins" / "lab_pods.py")
lab_pods_filter = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(lab_pods_filter)
lab_pods = lab_pods_filter.FilterModule().filters()["lab_pods"]


def test_three_pods_are_the_seed_lab():
    assert lab_pods(3, "10.0.0.1/24") == [
        {"name": "pod1", "ip": "10.0.0.2"},
        {"name": "pod2", "ip": "10.0.0.3"},
        {"name": "pod3", "ip": "10.0.0.4"},
    ]


def test_the_count_may_come_as_a_string_from_extra_vars():
    assert [pod["ip"] for pod in lab_pods("5", "10.0.0.1/24")] == ["10.0.0.%d" % n for n in range(2, 7)]


def test_addresses_follow_the_bridge_not_the_network_start():
    assert lab_pods(2, "172.16.5.10/28") == [{"name": "pod1", "ip": "172.16.5.11"}, {"name": "pod2", "ip": "172.16.5.12"}]


def test_zero_pods():
    assert lab_pods(0, "10.0.0.1/24") == []


@pytest.mark.parametrize("count, address", [(14, "10.0.0.1/28"), (-1, "10.0.0.1/24"), ("many", "10.0.0.1/24"),
                                            (1, "10.0.0.1"), (1, "fd00::1/64")])
def test_impossible_requests_fail_with_a_message(count, address):
    with pytest.raises(AnsibleFilterError, match="lab_pods"):
        lab_pods(count, address)
