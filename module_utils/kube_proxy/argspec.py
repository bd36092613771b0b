"""The Ansible argument spec of one service port, shared by the modules that take the lab's
Services (kube_proxy, kube_proxy_health): one declaration, so both accept exactly the same list."""

from .model import AFFINITIES, DEFAULT_AFFINITY_TIMEOUT, PROTOCOLS, SERVICE_TYPES, TRAFFIC_POLICIES

SERVICE_OPTIONS = dict(
    namespace=dict(type="str", default="default"),
    name=dict(type="str", required=True),
    port_name=dict(type="str", default=""),
    protocol=dict(type="str", choices=list(PROTOCOLS), default="TCP"),
    cluster_ip=dict(type="str", required=True),
    port=dict(type="int", required=True),
    target_port=dict(type="int"),
    session_affinity=dict(type="str", choices=list(AFFINITIES), default="None"),
    session_affinity_timeout=dict(type="int", default=DEFAULT_AFFINITY_TIMEOUT),
    endpoints=dict(type="list", elements="raw", default=[]),
    type=dict(type="str", choices=list(SERVICE_TYPES), default="ClusterIP"),
    node_port=dict(type="int"),
    external_ips=dict(type="list", elements="str", default=[]),
    load_balancer_ips=dict(type="list", elements="str", default=[]),
    load_balancer_source_ranges=dict(type="list", elements="str", default=[]),
    external_traffic_policy=dict(type="str", choices=list(TRAFFIC_POLICIES)),
    internal_traffic_policy=dict(type="str", choices=list(TRAFFIC_POLICIES), default="Cluster"),
    health_check_node_port=dict(type="int"),
)
