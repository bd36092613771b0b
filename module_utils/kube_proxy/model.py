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
IPVS_SCHEDULERS = ("rr", "wrr", "lc", "wlc", "lblc", "lblcr", "sh", "dh", "sed", "nq", "mh")

# Kubernetes' defaults and limits (core/v1 validation).
DEFAULT_AFFINITY_TIMEOUT = 10800
MAX_AFFINITY_TIMEOUT = 86400

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


@dataclass(frozen=True)
class ProxyConfig:
    """Everything one kube-proxy sync needs besides the live state."""

    mode: str
    cluster_cidr: str
    masquerade_all: bool
    ipvs_scheduler: str
    services: Tuple[Service, ...]
    service_cidr: Optional[str] = None


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


def build_service(index: int, raw: Mapping[str, Any]) -> Service:
    where = "services[%d]" % index
    if not isinstance(raw, Mapping):
        raise ValidationError(where, "must be a mapping, got %r" % (raw,))
    known = {
        "namespace", "name", "port_name", "protocol", "cluster_ip", "port", "target_port",
        "session_affinity", "session_affinity_timeout", "endpoints",
    }
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValidationError("%s.%s" % (where, unknown[0]), "unknown field (known: %s)" % ", ".join(sorted(known)))

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
    )


def build_config(
    mode: Any,
    cluster_cidr: Any,
    services: Optional[Sequence[Mapping[str, Any]]],
    masquerade_all: bool = False,
    ipvs_scheduler: Any = "rr",
    service_cidr: Any = None,
) -> ProxyConfig:
    """Validate the module's parameters into a ProxyConfig, or raise ValidationError."""
    mode = _choice("mode", mode, MODES)
    cidr = _cidr("cluster_cidr", cluster_cidr)
    services_cidr = None if service_cidr in (None, "") else _cidr("service_cidr", service_cidr)
    scheduler = _choice("ipvs_scheduler", ipvs_scheduler, IPVS_SCHEDULERS)
    if services is None:
        services = []
    if isinstance(services, (str, bytes, Mapping)) or not isinstance(services, Sequence):
        raise ValidationError("services", "must be a list of services, got %r" % (services,))

    built: List[Service] = []
    by_port_name: Dict[Tuple[str, str], int] = {}
    by_portal: Dict[Tuple[str, str, int], int] = {}
    for index, raw in enumerate(services):
        service = build_service(index, raw)
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
        by_port_name[key] = index
        by_portal[portal] = index
        built.append(service)

    return ProxyConfig(
        mode=mode, cluster_cidr=cidr, masquerade_all=bool(masquerade_all),
        ipvs_scheduler=scheduler, services=tuple(built), service_cidr=services_cidr,
    )
