"""The lab_load_balancer filters: the health checker's one curl, and the nodes it finds healthy."""

import importlib.util

import pytest
from ansible.errors import AnsibleFilterError

from conftest import REPO

SPEC = importlib.util.spec_from_file_location("lab_load_balancer_filter", REPO / "filter_plugins" / "lab_load_balancer.py")
lab_load_balancer_filter = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(lab_load_balancer_filter)
FILTERS = lab_load_balancer_filter.FilterModule().filters()
check_argv, healthy = FILTERS["lab_load_balancer_check_argv"], FILTERS["lab_load_balancer_healthy"]
NODES = ["192.168.100.11", "192.168.100.12", "192.168.100.13"]


def test_one_curl_from_the_client_asks_every_node_at_once():
    argv = check_argv(NODES[:2], "30081", "lab-client", 1)
    assert argv[:8] == ["ip", "netns", "exec", "lab-client", "curl", "--silent", "--no-progress-meter", "--parallel"]
    assert [arg for arg in argv if arg.startswith("http://")] == ["http://192.168.100.11:30081/",
                                                                  "http://192.168.100.12:30081/"]
    assert argv[argv.index("--max-time") + 1] == "1"


def test_only_the_nodes_answering_200_are_healthy_in_node_order():
    output = ("http://192.168.100.13:30081/ 200\n"
              "http://192.168.100.12:30081/ 503\n"
              "http://192.168.100.11:30081/ 200\n")
    assert healthy(output, NODES, 30081) == ["192.168.100.11", "192.168.100.13"]


def test_no_answer_or_no_line_is_unhealthy():
    assert healthy("http://192.168.100.11:30081/ 000\n", NODES, 30081) == []
    assert healthy("", NODES, 30081) == []
    assert healthy(None, NODES, 30081) == []


def test_no_node_to_check_is_refused():
    with pytest.raises(AnsibleFilterError, match="lab_load_balancer_nodes"):
        check_argv([], 30081, "lab-client", 1)
