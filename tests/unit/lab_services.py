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
# A named port with ClientIP affinity (the upstream ns1/svc1), a UDP service, a service without
# endpoints, and one with more than ten endpoints (vmap keys 10 and 11 sort after 9).
STICKY = dict(SVC1_AFFINITY, endpoints=["10.180.0.1", "10.180.0.2"])
DNS = dict(namespace="kube-system", name="kube-dns", port_name="dns", protocol="UDP",
           cluster_ip="10.96.0.53", port=53, endpoints=["10.0.0.3", "10.0.0.4"])
WIDE = dict(name="wide", cluster_ip="10.96.0.12", port=80, target_port=8080,
            endpoints=["10.0.1.%d" % host for host in range(1, 13)])
# The Services of golden/nftables-mixed.nft and fixtures/nft-mixed.json.
MIXED = (APP1, STICKY, DNS, NO_ENDPOINTS, WIDE)


def config(*services, **options):
    options.setdefault("mode", "iptables")
    options.setdefault("cluster_cidr", "10.0.0.0/24")
    return build_config(services=list(services), **options)
