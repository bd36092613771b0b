"""The declared topology: network namespaces, their links, addresses, routes and sysctls.

Validated into plain dataclasses before anything is read or changed, so every error names the
field it is about (``namespaces[1].links[2].peer.netns``), as the kube_proxy module does.
"""

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

# Link kinds the lab creates; a link without a kind is lo or the peer of a declared veth.
# Every declared link is brought up.
KINDS = ("bridge", "veth", "dummy")
# Every namespace has it; it is only brought up.
LOOPBACK = "lo"
# The kernel's IFNAMSIZ is 16, with the terminating NUL.
MAX_LINK_NAME = 15
_NETNS_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,254}$")
_LINK_NAME = re.compile(r"^[^\s/:]{1,%d}$" % MAX_LINK_NAME)
_SYSCTL_KEY = re.compile(r"^[a-z0-9_-]+(\.[A-Za-z0-9_-]+)+$")


class ValidationError(Exception):
    def __init__(self, field: str, message: str):
        super().__init__("%s: %s" % (field, message))
        self.field = field


@dataclass(frozen=True)
class Link:
    name: str
    kind: Optional[str] = None
    peer_name: Optional[str] = None      # veth: the other end's name ...
    peer_netns: Optional[str] = None     # ... and the namespace it is created in
    master: Optional[str] = None         # a bridge in the same namespace
    hairpin: Optional[bool] = None       # bridge port's hairpin mode; None leaves it as it is
    addresses: Tuple[str, ...] = ()      # "ip/prefix", IPv4
    announce: bool = False               # gratuitous ARP for each address a run adds


@dataclass(frozen=True)
class Route:
    to: str                               # "default" or a network, IPv4
    via: Optional[str] = None
    dev: Optional[str] = None
    present: bool = True                  # False: no route to ``to`` (a removed node's pod CIDR)
    nexthops: Tuple[str, ...] = ()        # two or more gateways: one multipath (ECMP) route, instead of via


@dataclass(frozen=True)
class Namespace:
    name: str
    links: Tuple[Link, ...] = ()
    routes: Tuple[Route, ...] = ()
    sysctls: Tuple[Tuple[str, str], ...] = ()


@dataclass(frozen=True)
class Topology:
    namespaces: Tuple[Namespace, ...] = field(default_factory=tuple)


def _mapping(where: str, raw: Any) -> Mapping[str, Any]:
    if not isinstance(raw, Mapping):
        raise ValidationError(where, "must be a mapping, got %r" % (raw,))
    return raw


def _list(where: str, raw: Any) -> Sequence[Any]:
    if raw is None:
        return []
    if isinstance(raw, (str, bytes, Mapping)) or not isinstance(raw, Sequence):
        raise ValidationError(where, "must be a list, got %r" % (raw,))
    return raw


def _known(where: str, raw: Mapping[str, Any], allowed: Sequence[str]) -> None:
    unknown = sorted(set(raw) - set(allowed))
    if unknown:
        raise ValidationError("%s.%s" % (where, unknown[0]), "unknown field; known: %s" % ", ".join(allowed))


def validate_netns_name(where: str, value: Any) -> str:
    if not isinstance(value, str) or not _NETNS_NAME.match(value):
        raise ValidationError(where, "must be a network namespace name (letters, digits, . _ -), got %r" % (value,))
    return value


def validate_link_name(where: str, value: Any) -> str:
    if not isinstance(value, str) or not _LINK_NAME.match(value):
        raise ValidationError(where, "must be a link name of 1 to %d characters without spaces, / or :, got %r"
                              % (MAX_LINK_NAME, value))
    return value


def _interface(where: str, value: Any) -> str:
    try:
        interface = ipaddress.ip_interface(str(value))
    except ValueError:
        raise ValidationError(where, "must be an IPv4 address with its prefix length (10.0.0.1/24), got %r" % (value,))
    if interface.version != 4 or "/" not in str(value):
        raise ValidationError(where, "must be an IPv4 address with its prefix length (10.0.0.1/24), got %r" % (value,))
    return str(interface)


def _route(where: str, raw: Any) -> Route:
    raw = _mapping(where, raw)
    _known(where, raw, ("to", "via", "nexthops", "dev", "state"))
    state = raw.get("state", "present")
    if state not in ("present", "absent"):
        raise ValidationError(where + ".state", "must be present or absent, got %r" % (state,))
    to = raw.get("to")
    if to != "default":
        try:
            to = str(ipaddress.ip_network(str(to)))
        except ValueError:
            raise ValidationError(where + ".to", "must be default or an IPv4 network, got %r" % (to,))
    via = raw.get("via")
    if via is not None:
        try:
            via = str(ipaddress.IPv4Address(str(via)))
        except ValueError:
            raise ValidationError(where + ".via", "must be an IPv4 address, got %r" % (via,))
    nexthops: List[str] = []
    for index, gateway in enumerate(_list(where + ".nexthops", raw.get("nexthops"))):
        try:
            gateway = str(ipaddress.IPv4Address(str(gateway)))
        except ValueError:
            raise ValidationError("%s.nexthops[%d]" % (where, index), "must be an IPv4 address, got %r" % (gateway,))
        if gateway in nexthops:
            raise ValidationError("%s.nexthops[%d]" % (where, index), "%s is listed twice" % gateway)
        nexthops.append(gateway)
    if nexthops and via is not None:
        raise ValidationError(where + ".nexthops", "a route has via or nexthops, not both")
    if len(nexthops) == 1:
        # The kernel keeps a multipath route with one next hop as a plain one: so does the declaration.
        via, nexthops = nexthops[0], []
    dev = validate_link_name(where + ".dev", raw["dev"]) if raw.get("dev") is not None else None
    if state == "absent":
        if via is not None or dev is not None or raw.get("nexthops") not in (None, []):
            raise ValidationError(where, "a route with state=absent is named by its destination only")
        return Route(to=to, present=False)
    if via is None and dev is None and not nexthops:
        raise ValidationError(where, "needs via, nexthops, dev or both")
    return Route(to=to, via=via, dev=dev, nexthops=tuple(nexthops))


def _link(where: str, raw: Any) -> Link:
    raw = _mapping(where, raw)
    _known(where, raw, ("name", "kind", "peer", "master", "hairpin", "addresses", "announce"))
    name = validate_link_name(where + ".name", raw.get("name"))
    kind = raw.get("kind")
    if kind is not None and kind not in KINDS:
        raise ValidationError(where + ".kind", "must be one of %s, got %r" % (", ".join(KINDS), kind))
    peer_name = peer_netns = None
    if kind == "veth":
        peer = _mapping(where + ".peer", raw.get("peer"))
        _known(where + ".peer", peer, ("name", "netns"))
        peer_name = validate_link_name(where + ".peer.name", peer.get("name"))
        peer_netns = validate_netns_name(where + ".peer.netns", peer.get("netns"))
    elif raw.get("peer") is not None:
        raise ValidationError(where + ".peer", "only a veth has a peer")
    master = validate_link_name(where + ".master", raw["master"]) if raw.get("master") is not None else None
    hairpin = raw.get("hairpin")
    if hairpin is not None and not isinstance(hairpin, bool):
        raise ValidationError(where + ".hairpin", "must be true or false, got %r" % (hairpin,))
    if hairpin is not None and master is None:
        raise ValidationError(where + ".hairpin", "is a bridge port's setting: give the link a master")
    addresses = tuple(_interface("%s.addresses[%d]" % (where, index), address)
                      for index, address in enumerate(_list(where + ".addresses", raw.get("addresses"))))
    announce = raw.get("announce", False)
    if not isinstance(announce, bool):
        raise ValidationError(where + ".announce", "must be true or false, got %r" % (announce,))
    return Link(name=name, kind=kind, peer_name=peer_name, peer_netns=peer_netns, master=master,
                hairpin=hairpin, addresses=addresses, announce=announce)


def _namespace(where: str, raw: Any) -> Namespace:
    raw = _mapping(where, raw)
    _known(where, raw, ("name", "links", "routes", "sysctls"))
    name = validate_netns_name(where + ".name", raw.get("name"))
    links: List[Link] = []
    for index, link_raw in enumerate(_list(where + ".links", raw.get("links"))):
        link = _link("%s.links[%d]" % (where, index), link_raw)
        if any(other.name == link.name for other in links):
            raise ValidationError("%s.links[%d].name" % (where, index), "%s is declared twice" % link.name)
        links.append(link)
    names = {link.name for link in links}
    for index, link in enumerate(links):
        if link.master is not None:
            bridge = next((other for other in links if other.name == link.master), None)
            if bridge is None or bridge.kind != "bridge":
                raise ValidationError("%s.links[%d].master" % (where, index),
                                      "%s is not a bridge declared in %s" % (link.master, name))
    routes = tuple(_route("%s.routes[%d]" % (where, index), route)
                   for index, route in enumerate(_list(where + ".routes", raw.get("routes"))))
    for index, route in enumerate(routes):
        if route.dev is not None and route.dev not in names:
            raise ValidationError("%s.routes[%d].dev" % (where, index), "%s is not a link declared in %s" % (route.dev, name))
    sysctls_raw = raw.get("sysctls") or {}
    sysctls_raw = _mapping(where + ".sysctls", sysctls_raw)
    sysctls = []
    for key, value in sysctls_raw.items():
        if not isinstance(key, str) or not _SYSCTL_KEY.match(key):
            raise ValidationError("%s.sysctls" % where, "%r is not a sysctl name (net.ipv4.ip_forward)" % (key,))
        if isinstance(value, bool) or not isinstance(value, (str, int)):
            raise ValidationError("%s.sysctls.%s" % (where, key), "must be a number or a string, got %r" % (value,))
        sysctls.append((key, " ".join(str(value).split())))
    return Namespace(name=name, links=tuple(links), routes=routes, sysctls=tuple(sysctls))


def build_topology(raw_namespaces: Any) -> Topology:
    """Validate the module's ``namespaces`` into a Topology, or raise ValidationError."""
    namespaces: List[Namespace] = []
    for index, raw in enumerate(_list("namespaces", raw_namespaces)):
        namespace = _namespace("namespaces[%d]" % index, raw)
        if any(other.name == namespace.name for other in namespaces):
            raise ValidationError("namespaces[%d].name" % index, "%s is declared twice" % namespace.name)
        namespaces.append(namespace)
    by_name: Dict[str, Namespace] = {namespace.name: namespace for namespace in namespaces}
    peers = set()
    for index, namespace in enumerate(namespaces):
        for link_index, link in enumerate(namespace.links):
            if link.kind != "veth":
                continue
            where = "namespaces[%d].links[%d].peer" % (index, link_index)
            if link.peer_netns not in by_name:
                raise ValidationError(where + ".netns", "%s is not a declared namespace" % link.peer_netns)
            if (link.peer_netns, link.peer_name) in peers:
                raise ValidationError(where, "%s in %s is the peer of two veths" % (link.peer_name, link.peer_netns))
            peers.add((link.peer_netns, link.peer_name))
    for index, namespace in enumerate(namespaces):
        for link_index, link in enumerate(namespace.links):
            if link.kind is None and link.name != LOOPBACK and (namespace.name, link.name) not in peers:
                raise ValidationError(
                    "namespaces[%d].links[%d]" % (index, link_index),
                    "%s has no kind and is no veth's peer: give it a kind, or declare a veth with peer "
                    "{name: %s, netns: %s}" % (link.name, link.name, namespace.name))
    return Topology(namespaces=tuple(namespaces))
