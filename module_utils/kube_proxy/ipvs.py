"""IPVS mode: virtual servers, the kube-ipvs0 dummy device, ipsets and the few iptables rules.

What kube-proxy's IPVS proxier (pkg/proxy/ipvs/proxier.go) keeps: every ClusterIP, external IP
and load balancer IP bound /32 on ``kube-ipvs0`` (IPVS only sees packets for local addresses,
in LOCAL_IN/LOCAL_OUT), one virtual server per service port and address (the ClusterIP, each
external and load balancer IP, each node address for a NodePort) with real servers in
masquerade mode, and iptables rules that mark, masquerade, accept or drop through ipsets
instead of one chain per service.

A lab of ClusterIP Services gets the part of kube-proxy's sets and chains that ClusterIP
traffic uses; once a Service is reachable from outside, every set and chain kube-proxy keeps.
"""

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, Iterable, List, Optional, Set, Tuple

from .iptables import (
    KUBE_MARK_MASQ,
    KUBE_POSTROUTING,
    KUBE_PROXY_FIREWALL,
    KUBE_SERVICES,
    MASQ_MARK,
    IptablesState,
    TableState,
    _comment,
)
from .model import ProxyConfig, Service, categorize_endpoints

DUMMY_DEVICE = "kube-ipvs0"
KUBE_NODE_PORT = "KUBE-NODE-PORT"
KUBE_LOAD_BALANCER = "KUBE-LOAD-BALANCER"
KUBE_FORWARD = "KUBE-FORWARD"
KUBE_SOURCE_RANGES_FIREWALL = "KUBE-SOURCE-RANGES-FIREWALL"
KUBE_IPVS_FILTER = "KUBE-IPVS-FILTER"
KUBE_IPVS_OUT_FILTER = "KUBE-IPVS-OUT-FILTER"
OWNED_SET_PREFIX = "KUBE-"


@dataclass(frozen=True)
class IpsetSpec:
    name: str
    type: str
    comment: str


def _spec(name: str, set_type: str, comment: str) -> IpsetSpec:
    return IpsetSpec(name, set_type, comment)


# kube-proxy's sets (pkg/proxy/ipvs/ipset.go, ipsetInfo), in its order.
LOOP_BACK_SET = _spec("KUBE-LOOP-BACK", "hash:ip,port,ip",
                      "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose")
CLUSTER_IP_SET = _spec("KUBE-CLUSTER-IP", "hash:ip,port", "Kubernetes service cluster ip + port for masquerade purpose")
EXTERNAL_IP_SET = _spec("KUBE-EXTERNAL-IP", "hash:ip,port",
                        "Kubernetes service external ip + port for masquerade and filter purpose")
EXTERNAL_IP_LOCAL_SET = _spec("KUBE-EXTERNAL-IP-LOCAL", "hash:ip,port",
                              "Kubernetes service external ip + port with externalTrafficPolicy=local")
LOAD_BALANCER_SET = _spec("KUBE-LOAD-BALANCER", "hash:ip,port", "Kubernetes service lb portal")
LOAD_BALANCER_FW_SET = _spec("KUBE-LOAD-BALANCER-FW", "hash:ip,port",
                             "Kubernetes service load balancer ip + port for load balancer with sourceRange")
LOAD_BALANCER_LOCAL_SET = _spec("KUBE-LOAD-BALANCER-LOCAL", "hash:ip,port",
                                "Kubernetes service load balancer ip + port with externalTrafficPolicy=local")
LOAD_BALANCER_SOURCE_IP_SET = _spec("KUBE-LOAD-BALANCER-SOURCE-IP", "hash:ip,port,ip",
                                    "Kubernetes service load balancer ip + port + source IP for packet filter purpose")
LOAD_BALANCER_SOURCE_CIDR_SET = _spec("KUBE-LOAD-BALANCER-SOURCE-CIDR", "hash:ip,port,net",
                                      "Kubernetes service load balancer ip + port + source cidr for packet filter purpose")
NODE_PORT_SETS = {
    # protocol: (the node ports to masquerade, those with the Local policy, which are not)
    "tcp": (_spec("KUBE-NODE-PORT-TCP", "bitmap:port", "Kubernetes nodeport TCP port for masquerade purpose"),
            _spec("KUBE-NODE-PORT-LOCAL-TCP", "bitmap:port", "Kubernetes nodeport TCP port with externalTrafficPolicy=local")),
    "udp": (_spec("KUBE-NODE-PORT-UDP", "bitmap:port", "Kubernetes nodeport UDP port for masquerade purpose"),
            _spec("KUBE-NODE-PORT-LOCAL-UDP", "bitmap:port", "Kubernetes nodeport UDP port with externalTrafficPolicy=local")),
    # A bitmap holds ports only, and SCTP shares port numbers with TCP: kube-proxy hashes node IP and port.
    "sctp": (_spec("KUBE-NODE-PORT-SCTP-HASH", "hash:ip,port",
                   "Kubernetes nodeport SCTP port for masquerade purpose with type 'hash ip:port'"),
             _spec("KUBE-NODE-PORT-LOCAL-SCTP-HASH", "hash:ip,port",
                   "Kubernetes nodeport SCTP port with externalTrafficPolicy=local with type 'hash ip:port'")),
}
HEALTH_CHECK_NODE_PORT_SET = _spec("KUBE-HEALTH-CHECK-NODE-PORT", "bitmap:port", "Kubernetes health check node port")
IPVS_SET = _spec("KUBE-IPVS-IPS", "hash:ip", "Addresses on the ipvs interface")

EXTERNAL_SETS = (
    EXTERNAL_IP_SET, EXTERNAL_IP_LOCAL_SET, LOAD_BALANCER_SET, LOAD_BALANCER_FW_SET, LOAD_BALANCER_LOCAL_SET,
    LOAD_BALANCER_SOURCE_IP_SET, LOAD_BALANCER_SOURCE_CIDR_SET,
    *(spec for pair in NODE_PORT_SETS.values() for spec in pair), HEALTH_CHECK_NODE_PORT_SET, IPVS_SET,
)
SET_TYPES = {spec.name: spec.type for spec in (LOOP_BACK_SET, CLUSTER_IP_SET) + EXTERNAL_SETS}

# ipset's defaults as kube-proxy passes them (pkg/proxy/ipvs/ipset: setIPSetDefaults, createSet).
HASH_CREATE_OPTIONS = "family inet hashsize 1024 maxelem 65536"
BITMAP_CREATE_OPTIONS = "range 0-65535"

# What kube-proxy's IPVS proxier sets (NewProxier): without vs/conntrack netfilter never sees
# IPVS's connections, so nothing could masquerade them.
SYSCTLS = (
    ("net.ipv4.vs.conntrack", "1"),
    ("net.ipv4.vs.expire_nodest_conn", "1"),
    ("net.ipv4.vs.expire_quiescent_template", "1"),
    ("net.ipv4.ip_forward", "1"),
)

_PROTOCOL_FLAGS = {"tcp": "-t", "udp": "-u", "sctp": "--sctp-service"}
_FLAG_PROTOCOLS = {flag: proto for proto, flag in _PROTOCOL_FLAGS.items()}
# IP_VS_SVC_F_SCHED2: kube-proxy sets FlagSourceHash for mh, hashing source port too.
_SCHEDULER_FLAGS = {"mh": "mh-port"}


@dataclass(frozen=True)
class RealServer:
    address: str
    port: int
    weight: int = 1
    forwarding: str = "-m"  # masquerading (NAT): the only IPVS method that can map 80 -> 8080

    @property
    def endpoint(self) -> str:
        return "%s:%d" % (self.address, self.port)


@dataclass(frozen=True)
class VirtualServer:
    proto: str
    address: str
    port: int
    scheduler: str
    persistence: Optional[int] = None
    scheduler_flags: Optional[str] = None
    real_servers: FrozenSet[RealServer] = frozenset()

    @property
    def key(self) -> Tuple[str, str]:
        return (_PROTOCOL_FLAGS[self.proto], "%s:%d" % (self.address, self.port))

    def service_args(self) -> List[str]:
        args = list(self.key) + ["-s", self.scheduler]
        if self.scheduler_flags:
            args += ["-b", self.scheduler_flags]
        if self.persistence is not None:
            args += ["-p", str(self.persistence)]
        return args

    def real_args(self, real: RealServer) -> List[str]:
        return list(self.key) + ["-r", real.endpoint, real.forwarding, "-w", str(real.weight)]


@dataclass
class IpvsState:
    virtual_servers: Dict[Tuple[str, str], VirtualServer] = field(default_factory=dict)
    addresses: Set[str] = field(default_factory=set)
    ipsets: Dict[str, Tuple[str, Set[str]]] = field(default_factory=dict)
    # Load balancer IP:port pairs the node itself may not reach (source ranges that leave the
    # node out): kube-proxy drops them in KUBE-IPVS-OUT-FILTER.
    no_node_access: List[Tuple[str, str, int]] = field(default_factory=list)

    def entries(self, spec: IpsetSpec) -> Set[str]:
        return self.ipsets.get(spec.name, ("", set()))[1]


# --------------------------------------------------------------------------- rendering

def node_addresses(config: ProxyConfig, local_addresses: Iterable[str]) -> Tuple[str, ...]:
    """The addresses a NodePort gets a virtual server on: the node_ips (kube-proxy's
    --nodeport-addresses) or, without them, every local address but kube-ipvs0's; never a
    loopback address (the netlink handle's isValidForSet)."""
    chosen = config.node_ips or tuple(local_addresses)
    return tuple(sorted(address for address in set(chosen) if not address.startswith("127.")))


def render(config: ProxyConfig, local_addresses: Iterable[str] = ()) -> IpvsState:
    """The virtual servers, the addresses to bind and the set entries of one sync, as
    kube-proxy's syncProxyRules computes them. local_addresses: the node's addresses on its
    other devices (what kube-proxy reads with GetAllLocalAddressesExcept(kube-ipvs0))."""
    local_addresses = tuple(local_addresses)
    specs = (LOOP_BACK_SET, CLUSTER_IP_SET)
    if any(service.externally_accessible for service in config.services):
        specs += EXTERNAL_SETS
    state = IpvsState(ipsets={spec.name: (spec.type, set()) for spec in specs})
    nodes = node_addresses(config, local_addresses) if any(s.node_port for s in config.services) else ()
    for service in config.services:
        _render_service(config, service, state, nodes, set(local_addresses))
    if IPVS_SET.name in state.ipsets:
        state.entries(IPVS_SET).update(address[:-3] for address in state.addresses)
    return state


def _render_service(config: ProxyConfig, service: Service, state: IpvsState,
                    nodes: Tuple[str, ...], local_addresses: Set[str]) -> None:
    proto, port = service.proto, service.port
    categorized = categorize_endpoints(service, config.node_name)

    def real_servers(only_local: bool) -> FrozenSet[RealServer]:
        # syncEndpoint: a Local policy takes this node's endpoints, and the others when it has
        # none (kube-proxy#97081: the node's own pods still reach the Service; traffic from
        # outside then goes out unmasqueraded, and its replies miss the client).
        ips = categorized.local if only_local and categorized.local else categorized.cluster
        return frozenset(RealServer(ip, service.target_port) for ip in ips)

    def virtual_server(address: str, at_port: int, only_local: bool, bind: bool) -> None:
        server = VirtualServer(
            proto=proto, address=address, port=at_port, scheduler=config.ipvs_scheduler,
            persistence=service.session_affinity_timeout if service.client_ip_affinity else None,
            scheduler_flags=_SCHEDULER_FLAGS.get(config.ipvs_scheduler),
            real_servers=real_servers(only_local),
        )
        state.virtual_servers[server.key] = server
        # An address another device of the node holds stays there (kube-proxy: shouldBind).
        if bind and address not in local_addresses:
            state.addresses.add(address + "/32")

    for endpoint in service.declared_endpoints:
        # A pod reaching itself through the Service is masqueraded, or it would answer itself
        # directly. kube-proxy lists every endpoint of this node, ready or not (an endpoint of
        # a one-node lab names no node).
        if endpoint.node_name in (None, config.node_name):
            state.entries(LOOP_BACK_SET).add("%s,%s:%d,%s" % (endpoint.ip, proto, service.target_port, endpoint.ip))

    # kube-proxy binds and serves the ClusterIP even without endpoints.
    state.entries(CLUSTER_IP_SET).add("%s,%s:%d" % (service.cluster_ip, proto, port))
    virtual_server(service.cluster_ip, port, service.internal_policy_local, bind=True)

    external_local = service.external_policy_local
    for address in service.external_ips:
        state.entries(EXTERNAL_IP_LOCAL_SET if external_local else EXTERNAL_IP_SET).add("%s,%s:%d" % (address, proto, port))
        virtual_server(address, port, external_local, bind=True)

    for address in service.load_balancer_ips:
        entry = "%s,%s:%d" % (address, proto, port)
        state.entries(LOAD_BALANCER_SET).add(entry)
        if external_local:
            state.entries(LOAD_BALANCER_LOCAL_SET).add(entry)
        if service.load_balancer_source_ranges:
            state.entries(LOAD_BALANCER_FW_SET).add(entry)
            state.entries(LOAD_BALANCER_SOURCE_CIDR_SET).update(
                "%s,%s" % (entry, cidr) for cidr in service.load_balancer_source_ranges)
            if _covers(service.load_balancer_source_ranges, config.node_ips[:1]):
                # A request from the node to a load balancer IP it holds has that IP as its source.
                state.entries(LOAD_BALANCER_SOURCE_IP_SET).add("%s,%s" % (entry, address))
            else:
                state.no_node_access.append((address, proto, port))
        virtual_server(address, port, external_local, bind=True)

    if service.node_port and nodes:
        masquerade_set, local_set = NODE_PORT_SETS[proto]
        if proto == "sctp":
            entries = {"%s,%s:%d" % (address, proto, service.node_port) for address in nodes}
        else:
            entries = {str(service.node_port)}
        state.entries(masquerade_set).update(entries)
        if external_local:
            state.entries(local_set).update(entries)
        for address in nodes:
            virtual_server(address, service.node_port, external_local, bind=False)

    if service.health_check_node_port:
        state.entries(HEALTH_CHECK_NODE_PORT_SET).add(str(service.health_check_node_port))


def _covers(cidrs: Tuple[str, ...], addresses: Tuple[str, ...]) -> bool:
    return any(ipaddress.ip_address(address) in ipaddress.ip_network(cidr, strict=False)
               for cidr in cidrs for address in addresses)


def _match_set(spec: IpsetSpec, match: str) -> str:
    return "-m set --match-set %s %s" % (spec.name, match)


# kube-proxy's ipsetWithIptablesChain: (set, table, chain, match, target, protocol), each rule
# written only when its set has entries. The Local node port sets come before the others:
# their RETURN keeps the client's address.
_SET_RULES = (
    (LOOP_BACK_SET, "nat", KUBE_POSTROUTING, "dst,dst,src", "MASQUERADE", None),
    (LOAD_BALANCER_SET, "nat", KUBE_SERVICES, "dst,dst", KUBE_LOAD_BALANCER, None),
    (LOAD_BALANCER_LOCAL_SET, "nat", KUBE_LOAD_BALANCER, "dst,dst", "RETURN", None),
    *((spec, "nat", KUBE_NODE_PORT, "dst,dst" if proto == "sctp" else "dst", target, proto)
      for proto, (masquerade, local) in NODE_PORT_SETS.items()
      for spec, target in ((local, "RETURN"), (masquerade, KUBE_MARK_MASQ))),
    (LOAD_BALANCER_FW_SET, "filter", KUBE_PROXY_FIREWALL, "dst,dst", KUBE_SOURCE_RANGES_FIREWALL, None),
    (LOAD_BALANCER_SOURCE_CIDR_SET, "filter", KUBE_SOURCE_RANGES_FIREWALL, "dst,dst,src", "RETURN", None),
    (LOAD_BALANCER_SOURCE_IP_SET, "filter", KUBE_SOURCE_RANGES_FIREWALL, "dst,dst,src", "RETURN", None),
)


def render_iptables(config: ProxyConfig, state: IpvsState) -> IptablesState:
    """The iptables rules of kube-proxy's IPVS mode (writeIptablesRules) for the sets of STATE."""
    external = EXTERNAL_IP_SET.name in state.ipsets
    nat = TableState(
        chains={KUBE_SERVICES: ["-s 127.0.0.0/8 -j RETURN"], KUBE_POSTROUTING: [], KUBE_NODE_PORT: [],
                KUBE_LOAD_BALANCER: [], KUBE_MARK_MASQ: []},
        jumps={
            "PREROUTING": [_comment("kubernetes service portals") + " -j " + KUBE_SERVICES],
            "OUTPUT": [_comment("kubernetes service portals") + " -j " + KUBE_SERVICES],
            "POSTROUTING": [_comment("kubernetes postrouting rules") + " -j " + KUBE_POSTROUTING],
        },
    )
    forward_jump = _comment("kubernetes forwarding rules") + " -j " + KUBE_FORWARD
    filter_ = TableState(chains={KUBE_FORWARD: []}, jumps={"FORWARD": [forward_jump]})
    if external:
        # The chains kube-proxy keeps for traffic from outside, and its jumps into them in the
        # order its prepends leave them.
        filter_.chains.update({KUBE_NODE_PORT: [], KUBE_PROXY_FIREWALL: [], KUBE_SOURCE_RANGES_FIREWALL: [],
                               KUBE_IPVS_FILTER: [], KUBE_IPVS_OUT_FILTER: []})
        firewall_jump = _comment("kube-proxy firewall rules") + " -j " + KUBE_PROXY_FIREWALL
        filter_.jumps = {
            "INPUT": [_comment("kubernetes ipvs access filter") + " -j " + KUBE_IPVS_FILTER, firewall_jump,
                      _comment("kubernetes health check rules") + " -j " + KUBE_NODE_PORT],
            "FORWARD": [firewall_jump, forward_jump],
            "OUTPUT": [_comment("kubernetes ipvs access filter") + " -j " + KUBE_IPVS_OUT_FILTER],
        }
    tables = {"filter": filter_, "nat": nat}

    for spec, table, chain, match, target, proto in _SET_RULES:
        if state.entries(spec):
            protocol = "-p %s " % proto if proto else ""
            tables[table].chains[chain].append(
                "%s%s %s -j %s" % (protocol, _comment(spec.comment), _match_set(spec, match), target))

    services = nat.chains[KUBE_SERVICES]
    if state.entries(CLUSTER_IP_SET):
        source = "" if config.masquerade_all else " ! -s " + config.cluster_cidr
        services.append("%s %s%s -j %s" % (_comment(CLUSTER_IP_SET.comment), _match_set(CLUSTER_IP_SET, "dst,dst"),
                                          source, KUBE_MARK_MASQ))
    for spec, masquerade in ((EXTERNAL_IP_SET, True), (EXTERNAL_IP_LOCAL_SET, False)):
        if state.entries(spec):
            matched = "%s %s" % (_comment(spec.comment), _match_set(spec, "dst,dst"))
            if masquerade:
                services.append(matched + " -j " + KUBE_MARK_MASQ)
            services.extend([
                # Traffic from off the machine (not from a bridge port, not from a local address) ...
                matched + " -m physdev ! --physdev-is-in -m addrtype ! --src-type LOCAL -j ACCEPT",
                # ... and to an external IP the node holds itself (a cloud's load balancer IP).
                matched + " -m addrtype --dst-type LOCAL -j ACCEPT",
            ])
    services.append("-m addrtype --dst-type LOCAL -j " + KUBE_NODE_PORT)
    nat.chains[KUBE_LOAD_BALANCER].append("-j " + KUBE_MARK_MASQ)
    if external:
        filter_.chains[KUBE_SOURCE_RANGES_FIREWALL].append("-j DROP")
        filter_.chains[KUBE_IPVS_OUT_FILTER].extend(
            "-s %s -m ipvs --vaddr %s --vproto %s --vport %d -j DROP" % (address, address, proto, port)
            for address, proto, port in state.no_node_access)
    # Accept what IPVS serves, whatever later rules of the table would do with it.
    services.extend(_match_set(spec, "dst,dst") + " -j ACCEPT"
                    for spec in (CLUSTER_IP_SET, LOAD_BALANCER_SET) if state.entries(spec))

    filter_.chains[KUBE_FORWARD].extend([
        _comment("kubernetes forwarding rules") + " -m mark --mark {0}/{0} -j ACCEPT".format(MASQ_MARK),
        _comment("kubernetes forwarding conntrack rule") + " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
    ])
    if external:
        filter_.chains[KUBE_NODE_PORT].append("%s %s -j ACCEPT" % (
            _comment(HEALTH_CHECK_NODE_PORT_SET.comment), _match_set(HEALTH_CHECK_NODE_PORT_SET, "dst")))
        # No connection to another port of an address on kube-ipvs0 (kubernetes#72236): it would
        # reach whatever listens on the node there.
        filter_.chains[KUBE_IPVS_FILTER].extend(
            [_match_set(spec, "dst,dst") + " -j RETURN"
             for spec in (LOAD_BALANCER_SET, CLUSTER_IP_SET, EXTERNAL_IP_SET, EXTERNAL_IP_LOCAL_SET)]
            + [_match_set(HEALTH_CHECK_NODE_PORT_SET, "dst") + " -j RETURN",
               "-m conntrack --ctstate NEW " + _match_set(IPVS_SET, "dst") + " -j REJECT"])

    nat.chains[KUBE_POSTROUTING].extend([
        "-m mark ! --mark {0}/{0} -j RETURN".format(MASQ_MARK),
        "-j MARK --xor-mark " + MASQ_MARK,
        _comment("kubernetes service traffic requiring SNAT") + " -j MASQUERADE --random-fully",
    ])
    nat.chains[KUBE_MARK_MASQ].append("-j MARK --or-mark " + MASQ_MARK)
    return tables


def ipvsadm_text(state: IpvsState) -> str:
    """The virtual servers as ipvsadm-save -n prints them (also the students' view)."""
    lines = []
    for key in sorted(state.virtual_servers):
        server = state.virtual_servers[key]
        lines.append(" ".join(["-A"] + server.service_args()))
        for real in sorted(server.real_servers, key=lambda r: r.endpoint):
            lines.append(" ".join(["-a"] + server.real_args(real)))
    return "\n".join(lines) + ("\n" if lines else "")


def create_line(name: str, set_type: str) -> str:
    options = BITMAP_CREATE_OPTIONS if set_type.startswith("bitmap:") else HASH_CREATE_OPTIONS
    return "create %s %s %s" % (name, set_type, options)


def ipset_text(sets: Dict[str, Tuple[str, Set[str]]]) -> str:
    lines = []
    for name in sorted(sets):
        set_type, entries = sets[name]
        lines.append(create_line(name, set_type))
        lines.extend("add %s %s" % (name, entry) for entry in sorted(entries))
    return "\n".join(lines) + ("\n" if lines else "")


# --------------------------------------------------------------------------- live state

def parse_ipvsadm_save(text: str) -> Dict[Tuple[str, str], VirtualServer]:
    """Read ``ipvsadm-save -n``: ``-A -t VIP:port -s rr [-p T]`` and ``-a -t … -r IP:port -m -w 1``."""
    services: Dict[Tuple[str, str], dict] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) < 3 or words[0] not in ("-A", "-a") or words[1] not in _FLAG_PROTOCOLS:
            continue
        key = (words[1], words[2])
        options = _options(words[3:])
        if words[0] == "-A":
            address, port = words[2].rsplit(":", 1)
            services[key] = dict(
                proto=_FLAG_PROTOCOLS[words[1]], address=address, port=int(port),
                scheduler=options.get("-s", "wlc"),
                persistence=int(options["-p"]) if "-p" in options else None,
                scheduler_flags=options.get("-b"),
                reals=set(),
            )
        elif key in services:
            address, port = options["-r"].rsplit(":", 1)
            forwarding = next((flag for flag in ("-m", "-g", "-i") if flag in options), "-g")
            services[key]["reals"].add(RealServer(address, int(port), int(options.get("-w", "1")), forwarding))
    return {
        key: VirtualServer(
            proto=raw["proto"], address=raw["address"], port=raw["port"], scheduler=raw["scheduler"],
            persistence=raw["persistence"], scheduler_flags=raw["scheduler_flags"],
            real_servers=frozenset(raw["reals"]),
        )
        for key, raw in services.items()
    }


def _options(words: List[str]) -> Dict[str, str]:
    options: Dict[str, str] = {}
    position = 0
    while position < len(words):
        word = words[position]
        has_value = position + 1 < len(words) and not words[position + 1].startswith("-")
        options[word] = words[position + 1] if has_value else ""
        position += 2 if has_value else 1
    return options


def parse_ipset_save(text: str) -> Dict[str, Tuple[str, Set[str]]]:
    """Read ``ipset save``; keep the KUBE-* sets."""
    sets: Dict[str, Tuple[str, Set[str]]] = {}
    for line in text.splitlines():
        words = line.split()
        if len(words) >= 3 and words[1].startswith(OWNED_SET_PREFIX):
            if words[0] == "create":
                sets[words[1]] = (words[2], set())
            elif words[0] == "add" and words[1] in sets:
                sets[words[1]][1].add(words[2])
    return sets


def parse_addresses(text: str) -> Set[str]:
    """IPv4 addresses from ``ip -o -4 addr show dev kube-ipvs0``."""
    return set(re.findall(r"\binet (\S+)", text))


def parse_local_addresses(text: str) -> Set[str]:
    """The node's IPv4 addresses on every device but kube-ipvs0, from ``ip -o -4 addr show``
    (one line per address: ``2: eth0    inet 192.168.100.11/24 brd … scope global eth0``)."""
    return {address for device, address in re.findall(r"^\d+:\s+(\S+)\s+inet\s+([0-9.]+)/", text, re.MULTILINE)
            if device != DUMMY_DEVICE}


# --------------------------------------------------------------------------- planning

def plan_virtual_servers(
    desired: Dict[Tuple[str, str], VirtualServer], live: Dict[Tuple[str, str], VirtualServer]
) -> List[str]:
    """``ipvsadm -R`` lines turning ``live`` into ``desired``; untouched servers keep their connections."""
    lines: List[str] = []
    for key in sorted(live):
        if key not in desired:
            lines.append(" ".join(["-D"] + list(key)))
    for key in sorted(desired):
        want = desired[key]
        have = live.get(key)
        if have is None:
            lines.append(" ".join(["-A"] + want.service_args()))
            have_reals: Dict[str, RealServer] = {}
        else:
            if want.service_args() != have.service_args():
                lines.append(" ".join(["-E"] + want.service_args()))
            have_reals = {real.endpoint: real for real in have.real_servers}
        want_reals = {real.endpoint: real for real in want.real_servers}
        for endpoint in sorted(set(have_reals) - set(want_reals)):
            lines.append(" ".join(["-d"] + list(key) + ["-r", endpoint]))
        for endpoint in sorted(want_reals):
            if endpoint not in have_reals:
                lines.append(" ".join(["-a"] + want.real_args(want_reals[endpoint])))
            elif have_reals[endpoint] != want_reals[endpoint]:
                lines.append(" ".join(["-e"] + want.real_args(want_reals[endpoint])))
    return lines


def plan_ipsets(
    desired: Dict[str, Tuple[str, Set[str]]], live: Dict[str, Tuple[str, Set[str]]]
) -> Tuple[List[str], List[str]]:
    """``ipset restore`` lines to run before iptables (create, add, del) and after it (destroy).

    A set still referenced by an iptables rule cannot be destroyed, so destroying waits until
    the rules that match on it are gone.
    """
    before: List[str] = []
    for name in sorted(desired):
        set_type, entries = desired[name]
        have_type, have_entries = live.get(name, (None, set()))
        if have_type is None:
            before.append(create_line(name, set_type))
        before.extend("del %s %s" % (name, entry) for entry in sorted(have_entries - entries))
        before.extend("add %s %s" % (name, entry) for entry in sorted(entries - have_entries))
    after = ["destroy %s" % name for name in sorted(live) if name not in desired]
    return before, after


def plan_addresses(desired: Set[str], live: Optional[Set[str]]) -> List[str]:
    """``ip -batch`` lines for kube-ipvs0; ``live`` is None when the device does not exist."""
    if not desired:
        return [] if live is None else ["link del %s" % DUMMY_DEVICE]
    lines = []
    if live is None:
        # Left down like kube-proxy leaves it: a dummy device's addresses are local either way.
        lines.append("link add %s type dummy" % DUMMY_DEVICE)
        live = set()
    lines.extend("address del %s dev %s" % (address, DUMMY_DEVICE) for address in sorted(live - desired))
    lines.extend("address add %s dev %s" % (address, DUMMY_DEVICE) for address in sorted(desired - live))
    return lines
