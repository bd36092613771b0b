"""The lab_proxy filters: what the readiness probe asks, and the Services it hands kube-proxy."""

import importlib.util

import pytest
from ansible.errors import AnsibleFilterError

from conftest import REPO

SPEC = importlib.util.spec_from_file_location("lab_proxy_filter", REPO / "filter_plugins" / "lab_proxy.py")
lab_proxy_filter = importlib.util.module_from_spec(SPEC)
SPEC.loader.exec_module(lab_proxy_filter)
FILTERS = lab_proxy_filter.FilterModule().filters()
probe_targets, ready_services = FILTERS["lab_proxy_probe_targets"], FILTERS["lab_proxy_ready_services"]

APP1 = dict(name="app1", cluster_ip="10.96.0.10", port=80, target_port=8080, endpoints=["10.0.0.2", "10.0.0.3", "10.0.0.4"])
APP2 = dict(name="app2", cluster_ip="10.96.0.20", port=8080, endpoints=["10.0.0.2", "10.0.0.3"])
DNS = dict(name="dns", port_name="dns", protocol="UDP", cluster_ip="10.96.0.53", port=53, target_port=8053,
           endpoints=["10.0.0.2", "10.0.0.3", "10.0.0.4"])


def UNREADY(ip):  # noqa: N802 - reads like the constant it stands for
    return dict(ip=ip, ready=False, serving=False)


def test_each_endpoint_is_probed_once_at_its_target_port():
    assert probe_targets([APP1, APP2]) == ["10.0.0.2:8080", "10.0.0.3:8080", "10.0.0.4:8080"]


def test_a_service_without_target_port_is_probed_at_its_port():
    assert probe_targets([dict(APP2, port=9000)]) == ["10.0.0.2:9000", "10.0.0.3:9000"]


def test_udp_service_ports_are_not_asked_over_http():
    assert probe_targets([DNS]) == []
    assert probe_targets([DNS, APP2]) == ["10.0.0.2:8080", "10.0.0.3:8080"]


def test_a_udp_endpoint_is_ready_when_its_pod_answered_on_a_tcp_port():
    (app1, dns) = ready_services([APP1, DNS], ["10.0.0.2:8080", "10.0.0.4:8080"])
    assert dns["endpoints"] == ["10.0.0.2", UNREADY("10.0.0.3"), "10.0.0.4"]
    (dns,) = ready_services([DNS], [], assumed_ready=["10.0.0.3"])
    assert dns["endpoints"] == [UNREADY("10.0.0.2"), "10.0.0.3", UNREADY("10.0.0.4")]


@pytest.mark.parametrize("services", [[], [dict(APP1, endpoints=[])], [dict(APP1, endpoints=None)]])
def test_no_endpoints_means_nothing_to_probe(services):
    assert probe_targets(services) == []


def test_services_must_be_a_list():
    with pytest.raises(AnsibleFilterError, match="lab_proxy_services must be a list"):
        probe_targets("app1")


def test_only_the_endpoints_that_answered_stay():
    (app1,) = ready_services([APP1], ["10.0.0.2:8080", "10.0.0.4:8080"])
    assert app1["endpoints"] == ["10.0.0.2", UNREADY("10.0.0.3"), "10.0.0.4"]
    assert APP1["endpoints"] == ["10.0.0.2", "10.0.0.3", "10.0.0.4"], "the declared Service was changed"


def test_an_answer_on_another_port_does_not_count():
    (app2,) = ready_services([dict(APP2, port=9000)], ["10.0.0.2:8080"])
    assert app2["endpoints"] == [UNREADY("10.0.0.2"), UNREADY("10.0.0.3")]


def test_a_service_left_with_no_endpoint_is_kept_for_its_rejection():
    assert ready_services([APP1, APP2], []) == [
        dict(APP1, endpoints=[UNREADY(ip) for ip in APP1["endpoints"]]),
        dict(APP2, endpoints=[UNREADY(ip) for ip in APP2["endpoints"]])]


def test_endpoint_objects_keep_their_node_and_are_marked_like_addresses():
    app1 = dict(APP1, endpoints=[dict(ip="10.0.0.2", node_name="lab-node"), dict(ip="10.0.1.2", node_name="lab-node2")])
    assert probe_targets([app1]) == ["10.0.0.2:8080", "10.0.1.2:8080"]
    (ready,) = ready_services([app1], ["10.0.1.2:8080"])
    assert ready["endpoints"] == [dict(ip="10.0.0.2", node_name="lab-node", ready=False, serving=False),
                                  dict(ip="10.0.1.2", node_name="lab-node2")]


def test_assumed_ready_addresses_count_without_an_answer():
    (app1,) = ready_services([APP1], ["10.0.0.2:8080"], ["10.0.0.4"])
    assert app1["endpoints"] == ["10.0.0.2", UNREADY("10.0.0.3"), "10.0.0.4"]


def test_assumed_ready_endpoints_are_not_probed():
    assert probe_targets([APP1, APP2], ["10.0.0.3"]) == ["10.0.0.2:8080", "10.0.0.4:8080"]


def test_one_curl_probes_every_target_inside_the_node():
    argv = FILTERS["lab_proxy_probe_argv"](["10.0.0.2:8080", "10.0.0.3:8080"], "lab-node", 1)
    assert argv[:5] == ["ip", "netns", "exec", "lab-node", "curl"]
    assert "--parallel" in argv and argv[argv.index("--max-time") + 1] == "1"
    assert argv[-6:] == ["--output", "/dev/null", "http://10.0.0.2:8080/", "--output", "/dev/null", "http://10.0.0.3:8080/"]


def test_the_targets_that_answered_are_read_from_curls_own_output():
    """The probe's curl, run for real on loopback (outside any lab namespace), against one port
    that answers and one that refuses: its --write-out lines are what lab_proxy_answered reads."""
    import shutil  # pylint: disable=import-outside-toplevel
    import socket  # pylint: disable=import-outside-toplevel
    import subprocess  # pylint: disable=import-outside-toplevel
    import threading  # pylint: disable=import-outside-toplevel
    from http.server import BaseHTTPRequestHandler, HTTPServer  # pylint: disable=import-outside-toplevel

    if shutil.which("curl") is None:
        pytest.fail("curl is missing: make packages installs it")

    class Answer(BaseHTTPRequestHandler):
        def do_GET(self):  # pylint: disable=invalid-name
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused = "127.0.0.1:%d" % closed.getsockname()[1]
    answering = "127.0.0.1:%d" % server.server_address[1]
    try:
        argv = FILTERS["lab_proxy_probe_argv"]([answering, refused], "unused", 2)
        output = subprocess.run(argv[4:], stdout=subprocess.PIPE, text=True, timeout=20, check=False).stdout
    finally:
        server.shutdown()
        server.server_close()
    assert FILTERS["lab_proxy_answered"](output) == [answering]
