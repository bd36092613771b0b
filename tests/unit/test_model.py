"""Bad input fails before anything is applied, with a message naming the field."""

import pytest

from kube_proxy.model import ValidationError, build_config, categorize_endpoints, validate_netns
from lab_services import APP1, config


def service(**overrides):
    merged = dict(APP1)
    merged.update(overrides)
    return merged


def test_app1_builds_with_kube_proxy_defaults():
    (svc,) = config(APP1).services
    assert svc.port_name_string == "default/app1"
    assert svc.proto == "tcp"
    assert svc.session_affinity == "None"
    assert svc.session_affinity_timeout == 10800
    assert svc.endpoints == ("10.0.0.2", "10.0.0.3", "10.0.0.4")


def test_named_port_is_part_of_the_service_port_name():
    (svc,) = config(service(port_name="http")).services
    assert svc.port_name_string == "default/app1:http"


def test_target_port_defaults_to_port():
    raw = service()
    del raw["target_port"]
    assert config(raw).services[0].target_port == 80


@pytest.mark.parametrize(
    "overrides, field, words",
    [
        (dict(cluster_ip="10.96.0.300"), "services[0].cluster_ip", "not an IPv4 address"),
        (dict(cluster_ip=""), "services[0].cluster_ip", "required"),
        (dict(cluster_ip="fd00::10"), "services[0].cluster_ip", "not an IPv4 address"),
        (dict(endpoints=["10.0.0.2", "pod3"]), "services[0].endpoints[1]", "not an IPv4 address"),
        (dict(endpoints=["10.0.0.2", "10.0.0.2"]), "services[0].endpoints[1]", "listed twice"),
        (dict(endpoints="10.0.0.2"), "services[0].endpoints", "must be a list"),
        (dict(port=0), "services[0].port", "not a port"),
        (dict(port=65536), "services[0].port", "not a port"),
        (dict(port="http"), "services[0].port", "not a port"),
        (dict(port=True), "services[0].port", "not a port"),
        (dict(target_port=70000), "services[0].target_port", "not a port"),
        (dict(protocol="ICMP"), "services[0].protocol", "not one of TCP, UDP, SCTP"),
        (dict(protocol="tcp"), "services[0].protocol", "not one of"),
        (dict(name="App1"), "services[0].name", "not a valid Kubernetes Service name"),
        (dict(name="1app"), "services[0].name", "starting with a letter"),
        (dict(name="a" * 64), "services[0].name", "at most 63"),
        (dict(name=None), "services[0].name", "required"),
        (dict(namespace="kube_system"), "services[0].namespace", "not a valid Kubernetes namespace name"),
        (dict(port_name="HTTP"), "services[0].port_name", "not a valid Kubernetes port name"),
        (dict(session_affinity="Cookie"), "services[0].session_affinity", "not one of None, ClientIP"),
        (dict(session_affinity_timeout=0), "services[0].session_affinity_timeout", "1..86400"),
        (dict(session_affinity_timeout=86401), "services[0].session_affinity_timeout", "1..86400"),
        (dict(colour="blue"), "services[0].colour", "unknown field"),
    ],
)
def test_bad_service_field_is_named(overrides, field, words):
    with pytest.raises(ValidationError) as caught:
        config(service(**overrides))
    assert caught.value.field == field
    assert words in str(caught.value)
    assert str(caught.value).startswith(field + ": ")


def test_service_that_is_not_a_mapping():
    with pytest.raises(ValidationError) as caught:
        config("app1")
    assert caught.value.field == "services[0]"


def test_duplicate_service_port_name():
    with pytest.raises(ValidationError) as caught:
        config(APP1, service(cluster_ip="10.96.0.20"))
    assert caught.value.field == "services[1]"
    assert "default/app1 TCP is declared twice (also services[0])" in str(caught.value)


def test_duplicate_portal():
    with pytest.raises(ValidationError) as caught:
        config(APP1, service(name="app2"))
    assert caught.value.field == "services[1]"
    assert "10.96.0.10:80/TCP is already served by services[0]" in str(caught.value)


def test_same_port_other_protocol_is_a_different_service_port():
    assert len(config(APP1, service(protocol="UDP")).services) == 2


@pytest.mark.parametrize(
    "cidr, words",
    [
        ("10.0.0.0/33", "not an IPv4 CIDR"),
        ("banana", "not an IPv4 CIDR"),
        ("10.0.0.1/24", "host bits set; did you mean 10.0.0.0/24?"),
        ("10.0.0.0", "no prefix length"),
    ],
)
def test_bad_cluster_cidr(cidr, words):
    with pytest.raises(ValidationError) as caught:
        config(APP1, cluster_cidr=cidr)
    assert caught.value.field == "cluster_cidr"
    assert words in str(caught.value)


@pytest.mark.parametrize("field, options", [
    ("mode", dict(mode="userspace")),
    ("ipvs_scheduler", dict(ipvs_scheduler="random")),
])
def test_bad_choice(field, options):
    with pytest.raises(ValidationError) as caught:
        build_config(cluster_cidr="10.0.0.0/24", services=[APP1], **dict(dict(mode="iptables"), **options))
    assert caught.value.field == field


def test_services_must_be_a_list():
    with pytest.raises(ValidationError) as caught:
        build_config("iptables", "10.0.0.0/24", APP1)
    assert caught.value.field == "services"


@pytest.mark.parametrize("name", ["", None, "../etc", "lab/node", ".", "..", "-x", "n" * 64, 42])
def test_bad_netns(name):
    with pytest.raises(ValidationError) as caught:
        validate_netns(name)
    assert caught.value.field == "netns"


@pytest.mark.parametrize("name", ["lab-node", "node_1", "bench.3"])
def test_good_netns(name):
    assert validate_netns(name) == name


def test_service_cidr_is_optional_and_validated():
    assert config(APP1).service_cidr is None
    assert config(APP1, service_cidr="10.96.0.0/12").service_cidr == "10.96.0.0/12"
    with pytest.raises(ValidationError) as caught:
        config(APP1, service_cidr="10.96.0.1/12")
    assert caught.value.field == "service_cidr"


def test_endpoint_objects_program_only_the_ready_and_keep_their_nodes():
    (svc,) = config(service(endpoints=[
        dict(ip="10.0.0.2", node_name="lab-node"),
        dict(ip="10.0.1.2", node_name="lab-node2", ready=False),
        "10.0.0.3",
    ])).services
    assert svc.endpoints == ("10.0.0.2", "10.0.0.3")
    assert [(endpoint.ip, endpoint.node_name, endpoint.serving) for endpoint in svc.declared_endpoints] == [
        ("10.0.0.2", "lab-node", True), ("10.0.1.2", "lab-node2", False), ("10.0.0.3", None, True)]
    assert svc.local_endpoints("lab-node") == ("10.0.0.2",)
    assert svc.local_endpoints("lab-node2") == ()


def test_when_none_is_ready_the_serving_terminating_ones_are_used():
    (svc,) = config(service(endpoints=[
        dict(ip="10.0.0.2", ready=False, serving=True, terminating=True),
        dict(ip="10.0.0.3", ready=False, serving=False, terminating=True),
        dict(ip="10.0.0.4", ready=False),
    ])).services
    assert svc.endpoints == ("10.0.0.2",)


@pytest.mark.parametrize("endpoint, field, words", [
    (dict(node_name="lab-node"), "services[0].endpoints[0].ip", "is required"),
    (dict(ip="10.0.0.300"), "services[0].endpoints[0].ip", "IPv4"),
    (dict(ip="10.0.0.2", node_name="Lab_Node"), "services[0].endpoints[0].node_name", "node name"),
    (dict(ip="10.0.0.2", ready="yes"), "services[0].endpoints[0].ready", "true or false"),
    (dict(ip="10.0.0.2", zone="a"), "services[0].endpoints[0].zone", "unknown field"),
])
def test_a_bad_endpoint_object_names_its_field(endpoint, field, words):
    with pytest.raises(ValidationError) as raised:
        config(service(endpoints=[endpoint]))
    assert raised.value.field == field and words in str(raised.value)


NODE_PORT = dict(type="NodePort", node_port=30080)
LOCAL_LB = dict(type="LoadBalancer", node_port=30080, load_balancer_ips=["192.168.200.10"],
                external_traffic_policy="Local", health_check_node_port=30081)


@pytest.mark.parametrize("overrides, field, words", [
    (dict(type="NodePort"), "services[0].node_port", "is required for type NodePort"),
    (dict(type="NodePort", node_port=8080), "services[0].node_port", "not a node port (node_port_range)"),
    (dict(node_port=30080), "services[0].node_port", "may not be set when type is ClusterIP"),
    (dict(external_traffic_policy="Local"), "services[0].external_traffic_policy",
     "only be set for externally-accessible services"),
    (dict(NODE_PORT, external_traffic_policy="Nearby"), "services[0].external_traffic_policy", "not one of Cluster, Local"),
    (dict(load_balancer_ips=["192.168.200.10"]), "services[0].load_balancer_ips", "only be set when type is LoadBalancer"),
    (dict(LOCAL_LB, load_balancer_source_ranges=["192.168.100.0/33"]), "services[0].load_balancer_source_ranges[0]",
     "not an IPv4 CIDR"),
    (dict(LOCAL_LB, load_balancer_source_ranges=["192.168.100.1/24"]), "services[0].load_balancer_source_ranges[0]",
     "host bits set"),
    (dict(external_ips=["192.168.200.300"]), "services[0].external_ips[0]", "not an IPv4 address"),
    (dict(external_ips="192.168.200.20"), "services[0].external_ips", "must be a list"),
    (dict(LOCAL_LB, health_check_node_port=None), "services[0].health_check_node_port", "is required"),
    (dict(LOCAL_LB, health_check_node_port=30080), "services[0].health_check_node_port", "is the node_port too"),
    (dict(NODE_PORT, health_check_node_port=30081), "services[0].health_check_node_port",
     "only be set when type is LoadBalancer and external_traffic_policy is Local"),
])
def test_bad_external_field_is_named(overrides, field, words):
    with pytest.raises(ValidationError) as error:
        config(service(**overrides))
    assert error.value.field == field and words in str(error.value), str(error.value)


def test_a_node_port_serves_one_service_port_per_protocol():
    other = service(name="app2", cluster_ip="10.96.0.20", **NODE_PORT)
    with pytest.raises(ValidationError, match=r"services\[1\].node_port: 30080/TCP is already services\[0\].node_port"):
        config(service(**NODE_PORT), other)
    assert config(service(**NODE_PORT), dict(other, protocol="UDP")).services[1].node_port == 30080


def test_a_health_check_node_port_is_shared_by_the_services_ports_only():
    http = service(port_name="http", **LOCAL_LB)
    metrics = service(port_name="metrics", port=9090, **dict(LOCAL_LB, node_port=30090))
    assert [svc.health_check_node_port for svc in config(http, metrics).services] == [30081, 30081]
    stranger = service(name="app2", cluster_ip="10.96.0.20", **dict(LOCAL_LB, node_port=30090))
    with pytest.raises(ValidationError, match=r"services\[1\].health_check_node_port"):
        config(http, stranger)
    with pytest.raises(ValidationError, match=r"services\[1\].node_port: 30081/TCP is already"):
        config(http, service(name="app2", cluster_ip="10.96.0.20", type="NodePort", node_port=30081))


@pytest.mark.parametrize("value", ["30000", "32767-30000", "a-b", "0-100"])
def test_a_bad_node_port_range_is_named(value):
    with pytest.raises(ValidationError, match="node_port_range"):
        config(APP1, node_port_range=value)


def test_nftables_mode_needs_the_node_ips_for_node_ports():
    with pytest.raises(ValidationError, match="node_ips: mode nftables answers NodePorts"):
        config(service(**NODE_PORT), mode="nftables")
    assert config(service(**NODE_PORT), mode="nftables", node_ips=["192.168.100.11"]).node_ips == ("192.168.100.11",)


SPREAD = [dict(ip="10.0.0.2", node_name="lab-node"), dict(ip="10.0.1.2", node_name="lab-node2"),
          dict(ip="10.0.0.3", node_name="lab-node", ready=False, serving=True, terminating=True)]


@pytest.mark.parametrize("overrides, node, cluster, local, reachable", [
    (dict(), "lab-node", ("10.0.0.2", "10.0.1.2"), (), ("10.0.0.2", "10.0.1.2")),
    (dict(NODE_PORT, external_traffic_policy="Local"), "lab-node", ("10.0.0.2", "10.0.1.2"), ("10.0.0.2",),
     ("10.0.0.2", "10.0.1.2")),
    (dict(NODE_PORT, external_traffic_policy="Local"), "lab-node3", ("10.0.0.2", "10.0.1.2"), (), ("10.0.0.2", "10.0.1.2")),
    (dict(internal_traffic_policy="Local"), "lab-node2", (), ("10.0.1.2",), ("10.0.1.2",)),
])
def test_endpoints_are_split_by_policy_as_kube_proxy_splits_them(overrides, node, cluster, local, reachable):
    (svc,) = config(service(endpoints=SPREAD, **overrides)).services
    split = categorize_endpoints(svc, node)
    assert (split.cluster, split.local, split.reachable, split.any) == (cluster, local, reachable, True)


def test_a_local_policy_falls_back_to_the_nodes_serving_terminating_endpoints():
    only_terminating = [SPREAD[1], SPREAD[2]]
    (svc,) = config(service(endpoints=only_terminating, internal_traffic_policy="Local")).services
    assert categorize_endpoints(svc, "lab-node").local == ("10.0.0.3",)
