"""Service declarations shared by the unit tests."""

from kube_proxy.model import build_config

APP1 = dict(
    namespace="default", name="app1", cluster_ip="10.96.0.10", port=80, target_port=8080,
    endpoints=["10.0.0.2", "10.0.0.3", "10.0.0.4"],
)
# The upstream fixture service (pkg/proxy/iptables/proxier_test.go), with ClientIP affinity.
SVC1_AFFINITY = dict(
    namespace="ns1", name="svc1", port_name="p80", cluster_ip="172.30.0.41", port=80,
    endpoints=["10.180.0.1"], session_affinity="ClientIP", session_affinity_timeout=3600,
)
NO_ENDPOINTS = dict(name="gone", cluster_ip="10.96.0.11", port=53, protocol="UDP")


def config(*services, **options):
    options.setdefault("mode", "iptables")
    options.setdefault("cluster_cidr", "10.0.0.0/24")
    return build_config(services=list(services), **options)
