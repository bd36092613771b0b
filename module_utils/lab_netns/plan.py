"""Read a namespace's live state as ``ip -json`` prints it, and plan the commands that bring it
to the declared one.

The plan is ordered the way the kernel needs it: namespaces first (``ip netns add``); then
each namespace's ``ip -batch`` in an order where a veth's creator comes before the namespace
its peer lands in (that peer is configured by its own namespace's batch); within a batch,
links are created, enslaved, given hairpin, addresses, brought up, then routed; then sysctls,
and last the gratuitous ARPs announcing addresses just added (the link must be up).
Only what differs is written: a second run with the same declaration plans nothing.

Like the roles it replaces, the plan only adds and fixes: addresses, routes and links the
declaration does not name are left alone (the kernel adds some itself: connected routes,
IPv6 link-local addresses). What it removes is named: whole namespaces, routes declared
absent, a link in the way of a veth's end (a pod that moved to another node still has the
eth0 of its old node's veth), and the other IPv4 addresses of a link declared with addresses.
"""

import json
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

from .model import Link, Namespace, Route, Topology

# One read per namespace: every link with its details and addresses (not -4: that would leave
# out the links without an IPv4 address), then the main table.
READ_BATCH = "address show\nroute show\n"


@dataclass
class LiveLink:
    name: str
    kind: Optional[str]
    master: Optional[str]
    hairpin: Optional[bool]
    up: bool
    addresses: Tuple[str, ...]


@dataclass
class LiveNamespace:
    links: Dict[str, LiveLink] = field(default_factory=dict)
    routes: List[Route] = field(default_factory=list)
    sysctls: Dict[str, str] = field(default_factory=dict)


def _json_values(text: str) -> List[object]:
    """The JSON arrays ``ip -json -batch`` prints one after another."""
    decoder = json.JSONDecoder()
    values, position = [], 0
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position >= len(text):
            return values
        value, position = decoder.raw_decode(text, position)
        values.append(value)


def parse_namespace(batch_output: str, sysctl_output: str = "") -> LiveNamespace:
    """``ip -json -details -batch`` of READ_BATCH, and ``sysctl KEY...`` (``key = value`` lines)."""
    values = _json_values(batch_output)
    if len(values) != 2:
        raise ValueError("expected two JSON arrays (addresses, routes) from ip -batch, got %d" % len(values))
    addresses, routes = values
    live = LiveNamespace()
    for entry in addresses:
        info = entry.get("linkinfo") or {}
        slave = info.get("info_slave_data") or {}
        live.links[entry["ifname"]] = LiveLink(
            name=entry["ifname"],
            kind=info.get("info_kind"),
            master=entry.get("master"),
            hairpin=slave.get("hairpin") if info.get("info_slave_kind") == "bridge" else None,
            up="UP" in entry.get("flags", []),
            addresses=tuple("%s/%s" % (address["local"], address["prefixlen"])
                            for address in entry.get("addr_info", []) if address.get("family") == "inet"),
        )
    for entry in routes:
        # A host route reads without its prefix length (192.168.200.10), as declared it has it.
        to = entry["dst"] if entry["dst"] == "default" or "/" in entry["dst"] else entry["dst"] + "/32"
        hops = entry.get("nexthops") or []
        devices = set(hop.get("dev") for hop in hops)
        live.routes.append(Route(to=to, via=entry.get("gateway"),
                                 dev=entry.get("dev") if not hops else (devices.pop() if len(devices) == 1 else None),
                                 nexthops=tuple(hop["gateway"] for hop in hops if hop.get("gateway"))))
    for line in sysctl_output.splitlines():
        key, separator, value = line.partition("=")
        if separator:
            live.sysctls[key.strip()] = " ".join(value.split())
    return live


@dataclass
class Batch:
    """What one process applies: ``ip [-n NETNS] -batch -`` with these lines, or a sysctl."""

    netns: Optional[str]          # None: the root namespace's ip, which only adds namespaces
    argv: Tuple[str, ...]
    lines: Tuple[str, ...] = ()

    @property
    def input(self) -> Optional[str]:
        return "".join(line + "\n" for line in self.lines) if self.lines else None

    def shown(self) -> List[str]:
        """The commands as a person types them, one per line."""
        if not self.lines:
            return [" ".join(self.argv)]
        prefix = "ip" if self.netns is None else "ip -n %s" % self.netns
        return ["%s %s" % (prefix, line) for line in self.lines]


def _creation_order(topology: Topology) -> List[Namespace]:
    """Namespaces so that each veth's creator comes before its peer's namespace (a stable sort)."""
    after: Dict[str, set] = {namespace.name: set() for namespace in topology.namespaces}
    for namespace in topology.namespaces:
        for link in namespace.links:
            if link.kind == "veth" and link.peer_netns != namespace.name:
                after[link.peer_netns].add(namespace.name)
    ordered: List[Namespace] = []
    placed: set = set()
    pending = list(topology.namespaces)
    while pending:
        ready = [namespace for namespace in pending if after[namespace.name] <= placed]
        if not ready:
            raise ValueError("veths create each other's ends in a cycle: %s" % ", ".join(n.name for n in pending))
        for namespace in ready:
            ordered.append(namespace)
            placed.add(namespace.name)
        pending = [namespace for namespace in pending if namespace.name not in placed]
    return ordered


def _route_line(route: Route) -> str:
    if not route.present:
        return "route del %s" % route.to
    words = ["route", "replace", route.to]
    if route.nexthops:
        for gateway in route.nexthops:
            words += ["nexthop", "via", gateway] + (["dev", route.dev] if route.dev else [])
        return " ".join(words)
    if route.via:
        words += ["via", route.via]
    if route.dev:
        words += ["dev", route.dev]
    return " ".join(words)


def _route_planned(route: Route, have: Sequence[Route]) -> bool:
    if not route.present:
        return any(existing.to == route.to for existing in have)
    return not _route_matches(route, have)


def _route_matches(want: Route, have: Sequence[Route]) -> bool:
    return any(route.to == want.to and (want.via is None or route.via == want.via)
               and sorted(route.nexthops) == sorted(want.nexthops)
               and (want.dev is None or route.dev == want.dev) for route in have)


def _link_lines(namespace: Namespace, live: LiveNamespace) -> List[str]:
    create, enslave, hairpin, stale, address, up = [], [], [], [], [], []
    for link in namespace.links:
        have = live.links.get(link.name)
        # A link declared with addresses has those only: a pod given another address (moved
        # to another node's subnet) must not keep answering from, and sending with, the old.
        # Deleted first, and then every declared address is added again: deleting a primary
        # address deletes its secondaries, and the routes through the link go with the last
        # address of their subnet, so they are planned anew too.
        gone = [kept for kept in (have.addresses if have is not None and link.addresses else ())
                if kept not in link.addresses]
        stale += ["address del %s dev %s" % (old, link.name) for old in gone]
        if gone:
            live.routes = [route for route in live.routes if route.dev != link.name]
        if have is None and link.kind is not None:
            line = "link add %s type %s" % (link.name, link.kind)
            if link.kind == "veth":
                line += " peer name %s netns %s" % (link.peer_name, link.peer_netns)
            create.append(line)
        if link.master is not None and (have is None or have.master != link.master):
            enslave.append("link set dev %s master %s" % (link.name, link.master))
        if link.hairpin is not None and (have is None or have.hairpin != link.hairpin):
            hairpin.append("link set dev %s type bridge_slave hairpin %s" % (link.name, "on" if link.hairpin else "off"))
        for wanted in link.addresses:
            if have is None or wanted not in have.addresses or gone:
                address.append("address replace %s dev %s" % (wanted, link.name))
        if have is None or not have.up:
            up.append("link set dev %s up" % link.name)
    return create + enslave + hairpin + stale + address + up


def ends_of_other_pairs(topology: Topology, existing: Sequence[str], live: Dict[str, LiveNamespace]) -> Dict[str, List[str]]:
    """Per namespace, the live links named like a veth it declares whose peer's namespace does
    not exist yet: such a link cannot be that pair, its other end is elsewhere (in a namespace
    the kernel is still tearing down, after a pod was removed and comes back under its name)."""
    ends: Dict[str, List[str]] = {}
    for namespace in topology.namespaces:
        have = live.get(namespace.name, LiveNamespace()).links
        names = [link.name for link in namespace.links
                 if link.kind == "veth" and link.peer_netns not in existing and link.name in have]
        if names:
            ends[namespace.name] = names
    return ends


def _links_in_the_way(namespace: Namespace, live: Dict[str, LiveNamespace]) -> List[Batch]:
    """A veth about to be created whose end's name is already taken in the peer's namespace
    (the end of another veth: a pod moved from one node's bridge to another's): that link is
    deleted first, and forgotten from ``live`` so the peer's own batch configures the new end."""
    deletions = []
    for link in namespace.links:
        if link.kind != "veth" or link.name in live.get(namespace.name, LiveNamespace()).links:
            continue
        peer = live.get(link.peer_netns)
        if peer is not None and link.peer_name in peer.links:
            del peer.links[link.peer_name]
            peer.routes = [route for route in peer.routes if route.dev != link.peer_name]
            deletions.append(Batch(link.peer_netns, ("ip", "-n", link.peer_netns, "link", "delete", link.peer_name)))
    return deletions


def plan(topology: Topology, existing: Sequence[str], live: Dict[str, LiveNamespace],
         absent: Sequence[str] = ()) -> List[Batch]:
    """The batches that bring ``live`` (per existing namespace) to ``topology``, in order; the
    namespaces named in ``absent`` are deleted first (they may hold the ends of declared veths)."""
    batches: List[Batch] = plan_absent(absent, existing)
    live = dict((name, LiveNamespace(dict(namespace.links), list(namespace.routes), namespace.sysctls))
                for name, namespace in live.items())
    missing = [namespace.name for namespace in topology.namespaces if namespace.name not in existing]
    if missing:
        batches.append(Batch(None, ("ip", "-batch", "-"), tuple("netns add %s" % name for name in missing)))
    announcements: List[Batch] = []
    for name, links in ends_of_other_pairs(topology, existing, live).items():
        # Deleted, and forgotten from live, so the pair is created anew.
        batches.append(Batch(name, ("ip", "-n", name, "-batch", "-"), tuple("link delete %s" % link for link in links)))
        for link in links:
            del live[name].links[link]
    for namespace in _creation_order(topology):
        batches += _links_in_the_way(namespace, live)
        have = live.get(namespace.name, LiveNamespace())
        lines = _link_lines(namespace, have)
        lines += [_route_line(route) for route in namespace.routes if _route_planned(route, have.routes)]
        if lines:
            batches.append(Batch(namespace.name, ("ip", "-n", namespace.name, "-batch", "-"), tuple(lines)))
        announcements += _announcements(namespace, have)
    for namespace in topology.namespaces:
        have = live.get(namespace.name, LiveNamespace())
        differing = ["%s=%s" % (key, value) for key, value in namespace.sysctls if have.sysctls.get(key) != value]
        if differing:
            batches.append(Batch(namespace.name, ("ip", "netns", "exec", namespace.name, "sysctl", "-w") + tuple(differing)))
    return batches + announcements


def _announcements(namespace: Namespace, live: LiveNamespace) -> List[Batch]:
    """An address given to a new link may have been another's before (a pod removed, then a new
    pod at its address): its neighbours still cache the old MAC and take seconds to find it
    gone. Like the CNI bridge plugin, announce each added address once (unsolicited ARP),
    which every neighbour takes over at once."""
    announcements = []
    for link in namespace.links:
        have = live.links.get(link.name)
        for address in link.addresses:
            if link.announce and (have is None or address not in have.addresses):
                announcements.append(Batch(namespace.name, ("ip", "netns", "exec", namespace.name, "arping", "-U",
                                                            "-c", "1", "-I", link.name, address.split("/")[0])))
    return announcements


def found(live: LiveNamespace) -> List[Dict[str, object]]:
    """A namespace's links as read, for the module's result (``found``), sorted by name."""
    return [dict(name=link.name, kind=link.kind, master=link.master, up=link.up, addresses=list(link.addresses))
            for _name, link in sorted(live.links.items())]


def plugged_peers(ports_json: str, netns_ids_json: str) -> List[str]:
    """The namespaces holding the other end of a bridge's veth ports, from the bridge's namespace
    reading ``ip -json -details link show master BRIDGE`` (each port's ``link_netnsid``) and
    ``ip -json netns list-id`` (which namespace name each id is, seen from there)."""
    names = dict((entry["nsid"], entry.get("name")) for entry in json.loads(netns_ids_json or "[]"))
    peers = [names.get(port.get("link_netnsid")) for port in json.loads(ports_json or "[]")
             if port.get("linkinfo", {}).get("info_kind") == "veth"]
    return list(dict.fromkeys(name for name in peers if name))


def plan_absent(names: Sequence[str], existing: Sequence[str]) -> List[Batch]:
    gone = [name for name in names if name in existing]
    return [Batch(None, ("ip", "-batch", "-"), tuple("netns delete %s" % name for name in gone))] if gone else []


def describe(namespace: Namespace, live: Optional[LiveNamespace]) -> Tuple[str, str]:
    """(before, after) of one namespace's declared parts, for --diff; before is empty when the
    namespace does not exist."""
    def link_line(link: Link, kind, master, hairpin, up, addresses) -> str:
        words = ["link", link.name] + (["type", kind] if kind else []) + (["master", master] if master else [])
        if hairpin is not None:
            words += ["hairpin", "on" if hairpin else "off"]
        return "  " + " ".join(words + ["up" if up else "down"] + sorted(addresses))

    before = [] if live is None else ["netns %s" % namespace.name]
    after = ["netns %s" % namespace.name]
    for link in namespace.links:
        have = live.links.get(link.name) if live is not None else None
        if have is not None:
            before.append(link_line(link, have.kind, have.master, have.hairpin, have.up, have.addresses))
        kept = have.addresses if have is not None and not link.addresses else ()
        after.append(link_line(link, link.kind or (have.kind if have else None),
                               link.master or (have.master if have else None),
                               link.hairpin if link.hairpin is not None else (have.hairpin if have else None),
                               True, set(link.addresses) | set(kept)))
    for route in namespace.routes:
        if not route.present:
            if live is not None and _route_planned(route, live.routes):
                before.append("  route %s" % route.to)
            continue
        line = "  " + _route_line(route).replace("route replace", "route")
        if live is not None and _route_matches(route, live.routes):
            before.append(line)
        after.append(line)
    for key, value in namespace.sysctls:
        if live is not None and key in live.sysctls:
            before.append("  sysctl %s = %s" % (key, live.sysctls[key]))
        after.append("  sysctl %s = %s" % (key, value))
    return "".join(line + "\n" for line in before), "".join(line + "\n" for line in after)
