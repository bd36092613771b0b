"""The declared Services, validated into an immutable model.

Every check names the field it rejects (``services[1].port``), and all checks run before
anything is rendered or applied, so bad input never leaves half a ruleset behind.
"""

import ipaddress
import re
from dataclasses import dataclass
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

MODES = ("iptables", "ipvs", "nftables")
STATES = ("present", "absent", "query")
PROTOCOLS = ("TCP", "UDP", "SCTP")
AFFINITIES = ("None", "ClientIP")
SERVICE_TYPES = ("ClusterIP", "NodePort", "LoadBalancer")
TRAFFIC_POLICIES = ("Cluster", "Local")
IPVS_SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh")

# Kubernetes' defaults and limits (core/v1 validation).
DEFAULT_AFFINITY_TIMEOUT = 10800
MAX_AFFINITY_TIMEOUT = 86400
# The API server's default --service-node-port-range.
NODE_PORT_RANGE = (30000, 32767)

# A Service name is an RFC 1035 label, a namespace and a port name RFC 1123 labels.
_DNS1035_LABEL = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_DNS1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
_LABEL_MAX = 63
# `ip netns` keeps namespaces as files under /run/netns: one path component.
_NETNS_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$")


class ValidationError(ValueError):
    """Bad input; ``field`` is the path of the offending parameter."""

    def __init__(self, field: str, message: str):
        super().__init__("%s: %s" % (field, message))
        self.field = field


@dataclass(frozen=True)
class Endpoint:
    """One endpoint of an EndpointSlice: its address, the node it runs on, and its conditions."""

    ip: str
    node_name: Optional[str] = None
    ready: bool = True
    serving: bool = True
    terminating: bool = False


def usable_endpoints(endpoints: Sequence[Endpoint]) -> Tuple[Endpoint, ...]:
    """The endpoints kube-proxy sends new connections to (pkg/proxy/topology.go): the ready
    ones; when none is ready, those still serving while terminating, so a Service whose pods
    are all shutting down keeps answering until they stop."""
    ready = tuple(endpoint for endpoint in endpoints if endpoint.ready)
    return ready or tuple(endpoint for endpoint in endpoints if endpoint.serving and endpoint.terminating)


@dataclass(frozen=True)
class Service:
    """One service port, as kube-proxy sees it (a ServicePortName plus its endpoints).

    ``endpoints`` are the addresses of the usable endpoints, the ones every mode programs;
    ``declared_endpoints`` all of them, as given, with their nodes and conditions."""

    namespace: str
    name: str
    port_name: str
    protocol: str
    cluster_ip: str
    port: int
    target_port: int
    session_affinity: str
    session_affinity_timeout: int
    endpoints: Tuple[str, ...]
    declared_endpoints: Tuple[Endpoint, ...] = ()
    type: str = "ClusterIP"
    node_port: int = 0
    external_ips: Tuple[str, ...] = ()
    load_balancer_ips: Tuple[str, ...] = ()
    load_balancer_source_ranges: Tuple[str, ...] = ()
    external_traffic_policy: str = "Cluster"
    internal_traffic_policy: str = "Cluster"
    health_check_node_port: int = 0

    @property
    def port_name_string(self) -> str:
        """kube-proxy's ServicePortName.String(): ``ns/name`` or ``ns/name:port``."""
        base = "%s/%s" % (self.namespace, self.name)
        return "%s:%s" % (base, self.port_name) if self.port_name else base

    @property
    def proto(self) -> str:
        """The protocol as kube-proxy writes it into names and rules: lower case."""
        return self.protocol.lower()

    @property
    def client_ip_affinity(self) -> bool:
        return self.session_affinity == "ClientIP"

    def endpoint_address(self, endpoint_ip: str) -> str:
        return "%s:%d" % (endpoint_ip, self.target_port)

    def local_endpoints(self, node_name: Optional[str]) -> Tuple[str, ...]:
        """The usable endpoints on NODE_NAME (what a Local traffic policy keeps)."""
        return tuple(endpoint.ip for endpoint in usable_endpoints(self.declared_endpoints)
                     if node_name is not None and endpoint.node_name == node_name)

    @property
    def externally_accessible(self) -> bool:
        """Reachable from outside through a NodePort, a load balancer IP or an external IP."""
        return bool(self.node_port or self.load_balancer_ips or self.external_ips)

    @property
    def external_policy_local(self) -> bool:
        return self.externally_accessible and self.external_traffic_policy == "Local"

    @property
    def internal_policy_local(self) -> bool:
        return self.internal_traffic_policy == "Local"

    @property
    def uses_cluster_endpoints(self) -> bool:
        """Some traffic to it may go to any node's endpoint: the internal policy is Cluster, or
        it takes external traffic at all (with the Local policy too, the pods' and the node's
        own traffic to an external address short-circuits to the Cluster endpoints)."""
        return not self.internal_policy_local or self.externally_accessible

    @property
    def uses_local_endpoints(self) -> bool:
        """Some traffic to it may only go to this node's endpoints (a Local policy)."""
        return self.internal_policy_local or self.external_policy_local


@dataclass(frozen=True)
class Endpoints:
    """A Service's endpoints as one node's kube-proxy splits them (pkg/proxy/topology.go,
    CategorizeEndpoints): those a Cluster policy sends to, those a Local policy sends to,
    every one either may reach (the endpoint chains to write), whether the Service has a
    usable endpoint anywhere in the cluster, and whether traffic to its ClusterIP (internal)
    and from outside (external) has one to go to here, under its policies."""

    cluster: Tuple[str, ...]
    local: Tuple[str, ...]
    reachable: Tuple[str, ...]
    any: bool
    has_internal: bool
    has_external: bool


def categorize_endpoints(service: Service, node_name: Optional[str]) -> Endpoints:
    """Cluster endpoints: the ready ones, else the serving terminating ones. Local endpoints:
    this node's ready ones, else its serving terminating ones, each only when a policy of the
    Service uses them. (Topology-aware routing is not modelled: no endpoint has zone hints.)"""
    declared = service.declared_endpoints
    cluster: Tuple[str, ...] = ()
    if service.uses_cluster_endpoints:
        cluster = tuple(endpoint.ip for endpoint in usable_endpoints(declared))
    local: Tuple[str, ...] = ()
    any_usable = bool(cluster)
    if service.uses_local_endpoints:
        mine = [endpoint for endpoint in declared if node_name is not None and endpoint.node_name == node_name]
        local = tuple(endpoint.ip for endpoint in usable_endpoints(mine))
        any_usable = any(endpoint.ready or (endpoint.serving and endpoint.terminating) for endpoint in declared)
    reachable = cluster + tuple(ip for ip in local if ip not in cluster)
    return Endpoints(
        cluster=cluster, local=local, reachable=reachable, any=any_usable,
        has_internal=any_usable and (bool(local) or not service.internal_policy_local),
        has_external=any_usable and (bool(local) or not service.external_policy_local))


@dataclass(frozen=True)
class ProxyConfig:
    """Everything one kube-proxy sync needs besides the live state."""

    mode: str
    cluster_cidr: str
    masquerade_all: bool
    ipvs_scheduler: str
    services: Tuple[Service, ...]
    service_cidr: Optional[str] = None
    node_name: Optional[str] = None
    # The addresses NodePorts answer on (kube-proxy's --nodeport-addresses, resolved); empty:
    # every local address of the node.
    node_ips: Tuple[str, ...] = ()


def validate_netns(value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError("netns", "a network namespace name is required")
    if value in (".", "..") or not _NETNS_NAME.match(value):
        raise ValidationError(
            "netns",
            "%r is not a network namespace name (letters, digits, '_', '.', '-'; "
            "at most 63 characters; no '/')" % value,
        )
    return value


def _choice(field: str, value: Any, choices: Sequence[str]) -> str:
    if value not in choices:
        raise ValidationError(field, "%r is not one of %s" % (value, ", ".join(choices)))
    return value


def _ipv4(field: str, value: Any) -> str:
    try:
        return str(ipaddress.IPv4Address(str(value).strip()))
    except ValueError:
        raise ValidationError(field, "%r is not an IPv4 address" % (value,)) from None


def _cidr(field: str, value: Any) -> str:
    text = str(value).strip()
    try:
        network = ipaddress.IPv4Network(text, strict=False)
    except ValueError:
        raise ValidationError(field, "%r is not an IPv4 CIDR such as 10.0.0.0/24" % (value,)) from None
    if "/" not in text:
        raise ValidationError(field, "%r has no prefix length; write it as %s" % (value, network))
    if str(network) != text:
        raise ValidationError(field, "%r has host bits set; did you mean %s?" % (value, network))
    return text


def _int_in_range(field: str, value: Any, low: int, high: int, what: str) -> int:
    if isinstance(value, bool):
        raise ValidationError(field, "%r is not %s (%d..%d)" % (value, what, low, high))
    try:
        number = int(str(value).strip())
    except ValueError:
        raise ValidationError(field, "%r is not %s (%d..%d)" % (value, what, low, high)) from None
    if not low <= number <= high:
        raise ValidationError(field, "%d is not %s (%d..%d)" % (number, what, low, high))
    return number


def _label(field: str, value: Any, pattern: "re.Pattern[str]", kind: str) -> str:
    if not isinstance(value, str) or not value:
        raise ValidationError(field, "is required")
    if len(value) > _LABEL_MAX or not pattern.match(value):
        raise ValidationError(
            field,
            "%r is not a valid Kubernetes %s (lower-case letters, digits and '-', "
            "at most %d characters%s)"
            % (value, kind, _LABEL_MAX, ", starting with a letter" if pattern is _DNS1035_LABEL else ""),
        )
    return value


ENDPOINT_FIELDS = ("ip", "node_name", "ready", "serving", "terminating")
# A node name is a DNS subdomain (RFC 1123), at most 253 characters.
_DNS1123_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def validate_node_name(value: Any, field: str = "node_name") -> Optional[str]:
    """A node's name (None: not given): a DNS subdomain, as Kubernetes requires of Node objects."""
    if value is not None and (not isinstance(value, str) or len(value) > 253 or not _DNS1123_SUBDOMAIN.match(value)):
        raise ValidationError(field, "must be a node name (a DNS subdomain: lower case, digits, '-', '.'), got %r"
                              % (value,))
    return value


def build_endpoint(where: str, raw: Any) -> Endpoint:
    """An endpoint given as its IPv4 address (ready, on no particular node), or as a mapping
    of EndpointSlice's fields: ip, node_name, ready, serving, terminating."""
    if not isinstance(raw, Mapping):
        return Endpoint(ip=_ipv4(where, raw))
    unknown = sorted(set(raw) - set(ENDPOINT_FIELDS))
    if unknown:
        raise ValidationError("%s.%s" % (where, unknown[0]), "unknown field (known: %s)" % ", ".join(ENDPOINT_FIELDS))
    if "ip" not in raw:
        raise ValidationError(where + ".ip", "is required")
    node_name = validate_node_name(raw.get("node_name"), where + ".node_name")
    conditions = {}
    for condition, default in (("ready", True), ("serving", None), ("terminating", False)):
        value = raw.get(condition, default)
        if value is not None and not isinstance(value, bool):
            raise ValidationError("%s.%s" % (where, condition), "must be true or false, got %r" % (value,))
        conditions[condition] = value
    # EndpointSlice: serving, when unset, is what ready says.
    if conditions["serving"] is None:
        conditions["serving"] = conditions["ready"]
    return Endpoint(ip=_ipv4(where + ".ip", raw["ip"]), node_name=node_name, **conditions)


# The fields that open a Service to traffic from outside, in Kubernetes' own terms.
EXTERNAL_FIELDS = ("type", "node_port", "external_ips", "load_balancer_ips", "load_balancer_source_ranges",
                   "external_traffic_policy", "internal_traffic_policy", "health_check_node_port")
# Every field of a services entry (the modules document each as a suboption).
SERVICE_FIELDS = ("namespace", "name", "port_name", "protocol", "cluster_ip", "port", "target_port",
                  "session_affinity", "session_affinity_timeout", "endpoints") + EXTERNAL_FIELDS


def build_service(index: int, raw: Mapping[str, Any], node_port_range: Tuple[int, int] = NODE_PORT_RANGE) -> Service:
    where = "services[%d]" % index
    if not isinstance(raw, Mapping):
        raise ValidationError(where, "must be a mapping, got %r" % (raw,))
    unknown = sorted(set(raw) - set(SERVICE_FIELDS))
    if unknown:
        raise ValidationError("%s.%s" % (where, unknown[0]), "unknown field (known: %s)" % ", ".join(sorted(SERVICE_FIELDS)))

    def field(name: str) -> str:
        return "%s.%s" % (where, name)

    namespace = _label(field("namespace"), raw.get("namespace", "default"), _DNS1123_LABEL, "namespace name")
    name = _label(field("name"), raw.get("name"), _DNS1035_LABEL, "Service name")
    port_name = raw.get("port_name") or ""
    if port_name:
        _label(field("port_name"), port_name, _DNS1123_LABEL, "port name")
    protocol = _choice(field("protocol"), raw.get("protocol", "TCP"), PROTOCOLS)
    if raw.get("cluster_ip") in (None, ""):
        raise ValidationError(field("cluster_ip"), "is required")
    cluster_ip = _ipv4(field("cluster_ip"), raw["cluster_ip"])
    if raw.get("port") in (None, ""):
        raise ValidationError(field("port"), "is required")
    port = _int_in_range(field("port"), raw["port"], 1, 65535, "a port")
    target_raw = raw.get("target_port")
    target_port = port if target_raw in (None, "") else _int_in_range(
        field("target_port"), target_raw, 1, 65535, "a port")
    affinity = _choice(field("session_affinity"), raw.get("session_affinity") or "None", AFFINITIES)
    timeout_raw = raw.get("session_affinity_timeout")
    timeout = DEFAULT_AFFINITY_TIMEOUT if timeout_raw in (None, "") else _int_in_range(
        field("session_affinity_timeout"), timeout_raw, 1, MAX_AFFINITY_TIMEOUT, "a timeout in seconds")

    endpoints_raw = raw.get("endpoints") or []
    if isinstance(endpoints_raw, (str, bytes)) or not isinstance(endpoints_raw, Sequence):
        raise ValidationError(field("endpoints"), "must be a list of endpoints, got %r" % (endpoints_raw,))
    endpoints: List[Endpoint] = []
    for position, endpoint_raw in enumerate(endpoints_raw):
        endpoint = build_endpoint("%s[%d]" % (field("endpoints"), position), endpoint_raw)
        if endpoint.ip in [other.ip for other in endpoints]:
            raise ValidationError("%s[%d]" % (field("endpoints"), position), "%s is listed twice" % endpoint.ip)
        endpoints.append(endpoint)

    return Service(
        namespace=namespace, name=name, port_name=port_name, protocol=protocol,
        cluster_ip=cluster_ip, port=port, target_port=target_port,
        session_affinity=affinity, session_affinity_timeout=timeout,
        endpoints=tuple(endpoint.ip for endpoint in usable_endpoints(endpoints)),
        declared_endpoints=tuple(endpoints),
        **_external_fields(where, raw, node_port_range),
    )




def _list(field: str, value: Any) -> Sequence[Any]:
    if value in (None, ""):
        return ()
    if isinstance(value, (str, bytes, Mapping)) or not isinstance(value, Sequence):
        raise ValidationError(field, "must be a list, got %r" % (value,))
    return value


def _external_fields(where: str, raw: Mapping[str, Any], node_port_range: Tuple[int, int]) -> Dict[str, Any]:
    """type, node_port, external_ips, load_balancer_ips (status.loadBalancer.ingress),
    load_balancer_source_ranges, the two traffic policies and health_check_node_port, checked
    as the API server checks them (core/v1 validation). This lab allocates nothing: a NodePort
    or LoadBalancer Service names its node_port, a LoadBalancer Service with the Local policy
    its health_check_node_port."""

    def field(name: str) -> str:
        return "%s.%s" % (where, name)

    def node_port_in_range(name: str, value: Any) -> int:
        return _int_in_range(field(name), value, node_port_range[0], node_port_range[1],
                             "a node port (node_port_range)")

    service_type = _choice(field("type"), raw.get("type") or "ClusterIP", SERVICE_TYPES)
    node_port_raw = raw.get("node_port")
    if service_type == "ClusterIP":
        if node_port_raw not in (None, "", 0):
            raise ValidationError(field("node_port"), "may not be set when type is ClusterIP")
        node_port = 0
    elif node_port_raw in (None, "", 0):
        raise ValidationError(field("node_port"), "is required for type %s (%d..%d; this lab allocates none)"
                              % ((service_type,) + tuple(node_port_range)))
    else:
        node_port = node_port_in_range("node_port", node_port_raw)
    external_ips = tuple(_ipv4("%s[%d]" % (field("external_ips"), position), ip)
                         for position, ip in enumerate(_list(field("external_ips"), raw.get("external_ips"))))
    lb_ips_raw = _list(field("load_balancer_ips"), raw.get("load_balancer_ips"))
    ranges_raw = _list(field("load_balancer_source_ranges"), raw.get("load_balancer_source_ranges"))
    for name, given in (("load_balancer_ips", lb_ips_raw), ("load_balancer_source_ranges", ranges_raw)):
        if given and service_type != "LoadBalancer":
            raise ValidationError(field(name), "may only be set when type is LoadBalancer")
    load_balancer_ips = tuple(_ipv4("%s[%d]" % (field("load_balancer_ips"), position), ip)
                              for position, ip in enumerate(lb_ips_raw))
    source_ranges = tuple(_cidr("%s[%d]" % (field("load_balancer_source_ranges"), position), cidr)
                          for position, cidr in enumerate(ranges_raw))
    externally_accessible = service_type != "ClusterIP" or bool(external_ips)
    etp_raw = raw.get("external_traffic_policy")
    if etp_raw not in (None, "") and not externally_accessible:
        raise ValidationError(field("external_traffic_policy"),
                              "may only be set for externally-accessible services (type NodePort or "
                              "LoadBalancer, or external_ips)")
    external_policy = _choice(field("external_traffic_policy"), etp_raw or "Cluster", TRAFFIC_POLICIES)
    internal_policy = _choice(field("internal_traffic_policy"), raw.get("internal_traffic_policy") or "Cluster",
                              TRAFFIC_POLICIES)
    health_raw = raw.get("health_check_node_port")
    needs_health_check = service_type == "LoadBalancer" and external_policy == "Local"
    if not needs_health_check:
        if health_raw not in (None, "", 0):
            raise ValidationError(field("health_check_node_port"),
                                  "may only be set when type is LoadBalancer and external_traffic_policy is Local")
        health_check_node_port = 0
    elif health_raw in (None, "", 0):
        raise ValidationError(field("health_check_node_port"),
                              "is required for a LoadBalancer Service with external_traffic_policy Local "
                              "(%d..%d; this lab allocates none)" % tuple(node_port_range))
    else:
        health_check_node_port = node_port_in_range("health_check_node_port", health_raw)
        if health_check_node_port == node_port:
            raise ValidationError(field("health_check_node_port"), "%d is the node_port too" % node_port)
    return dict(type=service_type, node_port=node_port, external_ips=external_ips,
                load_balancer_ips=load_balancer_ips, load_balancer_source_ranges=source_ranges,
                external_traffic_policy=external_policy, internal_traffic_policy=internal_policy,
                health_check_node_port=health_check_node_port)


def build_config(
    mode: Any,
    cluster_cidr: Any,
    services: Optional[Sequence[Mapping[str, Any]]],
    masquerade_all: bool = False,
    ipvs_scheduler: Any = "rr",
    service_cidr: Any = None,
    node_name: Any = None,
    node_ips: Any = None,
    node_port_range: Any = None,
) -> ProxyConfig:
    """Validate the module's parameters into a ProxyConfig, or raise ValidationError."""
    mode = _choice("mode", mode, MODES)
    cidr = _cidr("cluster_cidr", cluster_cidr)
    services_cidr = None if service_cidr in (None, "") else _cidr("service_cidr", service_cidr)
    node = validate_node_name(node_name)
    addresses = tuple(_ipv4("node_ips[%d]" % position, ip) for position, ip in enumerate(_list("node_ips", node_ips)))
    port_range = _port_range(node_port_range)
    scheduler = _choice("ipvs_scheduler", ipvs_scheduler, IPVS_SCHEDULERS)
    if services is None:
        services = []
    if isinstance(services, (str, bytes, Mapping)) or not isinstance(services, Sequence):
        raise ValidationError("services", "must be a list of services, got %r" % (services,))

    built: List[Service] = []
    by_port_name: Dict[Tuple[str, str], int] = {}
    by_portal: Dict[Tuple[str, str, int], int] = {}
    node_ports: Dict[Tuple[int, str], Tuple[int, str, str]] = {}
    for index, raw in enumerate(services):
        service = build_service(index, raw, port_range)
        key = (service.port_name_string, service.protocol)
        if key in by_port_name:
            raise ValidationError(
                "services[%d]" % index,
                "%s %s is declared twice (also services[%d])" % (key[0], key[1], by_port_name[key]),
            )
        portal = (service.cluster_ip, service.protocol, service.port)
        if portal in by_portal:
            raise ValidationError(
                "services[%d]" % index,
                "%s:%d/%s is already served by services[%d]"
                % (service.cluster_ip, service.port, service.protocol, by_portal[portal]),
            )
        _check_node_ports(index, service, node_ports)
        if mode == "nftables" and service.node_port and not addresses:
            raise ValidationError("node_ips", "mode nftables answers NodePorts (services[%d].node_port) only on "
                                  "the node_ips (kube-proxy's --nodeport-addresses): give the node's addresses" % index)
        by_port_name[key] = index
        by_portal[portal] = index
        built.append(service)

    return ProxyConfig(
        mode=mode, cluster_cidr=cidr, masquerade_all=bool(masquerade_all),
        ipvs_scheduler=scheduler, services=tuple(built), service_cidr=services_cidr,
        node_name=node, node_ips=addresses,
    )


def _port_range(value: Any) -> Tuple[int, int]:
    """The API server's --service-node-port-range, ``LOW-HIGH`` (None: the default)."""
    if value in (None, ""):
        return NODE_PORT_RANGE
    low, dash, high = str(value).strip().partition("-")
    try:
        bounds = (int(low), int(high))
    except ValueError:
        bounds = (0, 0)
    if not dash or not 1 <= bounds[0] <= bounds[1] <= 65535:
        raise ValidationError("node_port_range", "%r is not a port range such as 30000-32767" % (value,))
    return bounds


def _check_node_ports(index: int, service: Service, taken: Dict[Tuple[int, str], Tuple[int, str, str]]) -> None:
    """A node port serves one service port per protocol; a health check node port (TCP) is the
    Service's, shared by its ports, and no other's."""
    owner = "%s/%s" % (service.namespace, service.name)
    wanted = []
    if service.node_port:
        wanted.append(("node_port", service.node_port, service.protocol, None))
    if service.health_check_node_port:
        wanted.append(("health_check_node_port", service.health_check_node_port, "TCP", owner))
    for name, port, protocol, shared_by in wanted:
        key = (port, protocol)
        if key in taken:
            other_index, other_name, other_shared_by = taken[key]
            if shared_by is None or other_shared_by != shared_by or other_name != name:
                raise ValidationError("services[%d].%s" % (index, name), "%d/%s is already services[%d].%s"
                                      % (port, protocol, other_index, other_name))
        else:
            taken[key] = (index, name, shared_by)
