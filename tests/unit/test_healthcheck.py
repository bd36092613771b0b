"""kube-proxy's service health check server: which ports a node answers with which count
(module_utils/kube_proxy/healthcheck.py), and the answer itself (lab_pods/server.py)."""

import json

from kube_proxy.healthcheck import health_checks, health_file, summary
from lab_pods import server
from lab_services import APP1, config

LB_LOCAL = dict(APP1, type="LoadBalancer", node_port=30080, load_balancer_ips=["192.168.200.10"],
                external_traffic_policy="Local", health_check_node_port=30081,
                endpoints=[dict(ip="10.0.0.2", node_name="lab-node"), dict(ip="10.0.0.3", node_name="lab-node"),
                           dict(ip="10.0.1.2", node_name="lab-node2")])

# kube-proxy's body: strings.Trim(dedent.Dedent(tab-indented raw string), "\n").
GOLDEN_BODY = (
    '{\n'
    '\t"service": {\n'
    '\t\t"namespace": "default",\n'
    '\t\t"name": "app1"\n'
    '\t},\n'
    '\t"localEndpoints": 2,\n'
    '\t"serviceProxyHealthy": true\n'
    '}'
)


def test_each_node_counts_its_own_ready_endpoints():
    cfg = config(LB_LOCAL)
    assert {port: (check.service, check.local_endpoints) for port, check in health_checks(cfg, "lab-node").items()} \
        == {30081: ("default/app1", 2)}
    assert health_checks(cfg, "lab-node2")[30081].local_endpoints == 1
    assert health_checks(cfg, "lab-node3")[30081].local_endpoints == 0
    assert health_checks(cfg, None)[30081].local_endpoints == 0


def test_unready_and_terminating_endpoints_do_not_count():
    # kube-proxy's usable endpoints fall back to serving terminating ones; the health check does not.
    service = dict(LB_LOCAL, endpoints=[dict(ip="10.0.0.2", node_name="lab-node", ready=False, serving=True,
                                             terminating=True),
                                        dict(ip="10.0.0.3", node_name="lab-node", ready=False)])
    assert health_checks(config(service), "lab-node")[30081].local_endpoints == 0


def test_services_without_a_health_check_node_port_have_none():
    assert health_checks(config(APP1, dict(LB_LOCAL, name="app2", cluster_ip="10.96.0.20", node_port=30090,
                                           health_check_node_port=30091, load_balancer_ips=["192.168.200.11"])),
                         "lab-node").keys() == {30091}
    assert health_checks(config(APP1), "lab-node") == {}


def test_the_ports_of_one_service_share_its_health_check_and_each_address_counts_once():
    http = dict(LB_LOCAL, port_name="http")
    https = dict(LB_LOCAL, port_name="https", port=443, node_port=30443, target_port=8443)
    checks = health_checks(config(http, https), "lab-node")
    assert list(checks) == [30081] and checks[30081].local_endpoints == 2


def test_the_health_file_and_the_result_name_the_service_and_count():
    checks = health_checks(config(LB_LOCAL), "lab-node2")
    assert json.loads(health_file(checks)) == {"30081": {"namespace": "default", "name": "app1", "local_endpoints": 1}}
    assert summary(checks) == {"30081": {"service": "default/app1", "local_endpoints": 1}}


def test_the_answer_is_kube_proxys_with_local_endpoints():
    status, headers, body = server.health_answer("default", "app1", 2)
    assert status == 200
    assert headers == [("Content-Type", "application/json"), ("X-Content-Type-Options", "nosniff"),
                       ("X-Load-Balancing-Endpoint-Weight", "2")]
    assert body.decode() == GOLDEN_BODY


def test_no_local_endpoint_answers_503_with_zero():
    status, headers, body = server.health_answer("default", "app1", 0)
    assert status == 503 and ("X-Load-Balancing-Endpoint-Weight", "0") in headers
    assert body.decode() == GOLDEN_BODY.replace('"localEndpoints": 2', '"localEndpoints": 0')
    assert server.health_answer("default", "app1", 3, healthy=False)[0] == 503


def test_the_server_reads_what_the_module_writes(tmp_path):
    path = tmp_path / "lab-node.json"
    path.write_text(health_file(health_checks(config(LB_LOCAL), "lab-node")))
    assert server.read_health(str(path), 30081) == ("default", "app1", 2)
    assert server.read_health(str(path), 30082) == ("", "", 0)
    assert server.read_health(str(tmp_path / "missing.json"), 30081) == ("", "", 0)
    path.write_text("{not json")
    assert server.read_health(str(path), 30081) == ("", "", 0)


def test_the_health_file_is_part_of_a_servers_settings():
    args = server.parser().parse_args(["start", "--pidfile", "/p", "--name", "lab-node", "--port", "30081",
                                       "--health-file", "/run/h.json"])
    assert server.settings(args) == ("lab-node", 30081, "/dev/null", "/run/h.json", None)
    pod = server.parser().parse_args(["start", "--pidfile", "/p", "--name", "pod1"])
    assert server.settings(pod) == ("pod1", 8080, "/dev/null", None, None)
