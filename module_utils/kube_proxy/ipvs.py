"""IPVS mode: virtual servers, the kube-ipvs0 dummy device, ipsets and the few iptables rules.

What kube-proxy's IPVS proxier (pkg/proxy/ipvs/proxier.go) keeps for ClusterIP services:
every ClusterIP bound /32 on ``kube-ipvs0`` (IPVS only sees packets for local addresses, in
LOCAL_IN/LOCAL_OUT), one virtual server per service port with real servers in masquerade
mode, and iptables rules that mark or masquerade through two ipsets instead of one chain per
service.
"""

import re
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Optional, Set, Tuple

from .iptables import (
    KUBE_MARK_MASQ,
    KUBE_POSTROUTING,
    KUBE_SERVICES,
    MASQ_MARK,
    IptablesState,
    TableState,
    _comment,
)
from .model import ProxyConfig

DUMMY_DEVICE = "kube-ipvs0"
KUBE_NODE_PORT = "KUBE-NODE-PORT"
KUBE_LOAD_BALANCER = "KUBE-LOAD-BALANCER"
KUBE_FORWARD = "KUBE-FORWARD"
OWNED_SET_PREFIX = "KUBE-"


@dataclass(frozen=True)
class IpsetSpec:
    name: str
    type: str
    comment: str


CLUSTER_IP_SET = IpsetSpec(
    "KUBE-CLUSTER-IP", "hash:ip,port", "Kubernetes service cluster ip + port for masquerade purpose")
LOOP_BACK_SET = IpsetSpec(
    "KUBE-LOOP-BACK", "hash:ip,port,ip", "Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose")
# ipset's defaults as kube-proxy passes them (pkg/proxy/ipvs/ipset: setIPSetDefaults).
IPSET_CREATE_OPTIONS = "family inet hashsize 1024 maxelem 65536"

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


# --------------------------------------------------------------------------- rendering

def render(config: ProxyConfig) -> IpvsState:
    state = IpvsState(ipsets={CLUSTER_IP_SET.name: (CLUSTER_IP_SET.type, set()),
                              LOOP_BACK_SET.name: (LOOP_BACK_SET.type, set())})
    for service in config.services:
        # kube-proxy binds and serves the ClusterIP even without endpoints.
        state.addresses.add(service.cluster_ip + "/32")
        state.ipsets[CLUSTER_IP_SET.name][1].add("%s,%s:%d" % (service.cluster_ip, service.proto, service.port))
        reals = frozenset(RealServer(ip, service.target_port) for ip in service.endpoints)
        server = VirtualServer(
            proto=service.proto,
            address=service.cluster_ip,
            port=service.port,
            scheduler=config.ipvs_scheduler,
            persistence=service.session_affinity_timeout if service.client_ip_affinity else None,
            scheduler_flags=_SCHEDULER_FLAGS.get(config.ipvs_scheduler),
            real_servers=reals,
        )
        state.virtual_servers[server.key] = server
        for ip in service.endpoints:
            # Every endpoint in the lab is local to the node: a pod reaching itself is masqueraded.
            state.ipsets[LOOP_BACK_SET.name][1].add("%s,%s:%d,%s" % (ip, service.proto, service.target_port, ip))
    return state


def render_iptables(config: ProxyConfig) -> IptablesState:
    """The iptables rules of kube-proxy's IPVS mode (writeIptablesRules), ClusterIP part."""
    match_cluster_ip = "-m set --match-set %s dst,dst" % CLUSTER_IP_SET.name
    source = "" if config.masquerade_all else " ! -s " + config.cluster_cidr
    nat = TableState(
        chains={
            KUBE_SERVICES: [
                # Connections to localhost are none of kube-proxy's business.
                "-s 127.0.0.0/8 -j RETURN",
                _comment(CLUSTER_IP_SET.comment) + " " + match_cluster_ip + source + " -j " + KUBE_MARK_MASQ,
                "-m addrtype --dst-type LOCAL -j " + KUBE_NODE_PORT,
                match_cluster_ip + " -j ACCEPT",
            ],
            KUBE_POSTROUTING: [
                _comment(LOOP_BACK_SET.comment) + " -m set --match-set %s dst,dst,src -j MASQUERADE" % LOOP_BACK_SET.name,
                "-m mark ! --mark {0}/{0} -j RETURN".format(MASQ_MARK),
                "-j MARK --xor-mark " + MASQ_MARK,
                _comment("kubernetes service traffic requiring SNAT") + " -j MASQUERADE --random-fully",
            ],
            KUBE_NODE_PORT: [],
            KUBE_LOAD_BALANCER: ["-j " + KUBE_MARK_MASQ],
            KUBE_MARK_MASQ: ["-j MARK --or-mark " + MASQ_MARK],
        },
        jumps={
            "PREROUTING": [_comment("kubernetes service portals") + " -j " + KUBE_SERVICES],
            "OUTPUT": [_comment("kubernetes service portals") + " -j " + KUBE_SERVICES],
            "POSTROUTING": [_comment("kubernetes postrouting rules") + " -j " + KUBE_POSTROUTING],
        },
    )
    filter_ = TableState(
        chains={
            KUBE_FORWARD: [
                _comment("kubernetes forwarding rules") + " -m mark --mark {0}/{0} -j ACCEPT".format(MASQ_MARK),
                _comment("kubernetes forwarding conntrack rule") + " -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT",
            ],
        },
        jumps={"FORWARD": [_comment("kubernetes forwarding rules") + " -j " + KUBE_FORWARD]},
    )
    return {"filter": filter_, "nat": nat}


def ipvsadm_text(state: IpvsState) -> str:
    """The virtual servers as ipvsadm-save -n prints them (also the students' view)."""
    lines = []
    for key in sorted(state.virtual_servers):
        server = state.virtual_servers[key]
        lines.append(" ".join(["-A"] + server.service_args()))
        for real in sorted(server.real_servers, key=lambda r: r.endpoint):
            lines.append(" ".join(["-a"] + server.real_args(real)))
    return "\n".join(lines) + ("\n" if lines else "")


def ipset_text(sets: Dict[str, Tuple[str, Set[str]]]) -> str:
    lines = []
    for name in sorted(sets):
        set_type, entries = sets[name]
        lines.append("create %s %s %s" % (name, set_type, IPSET_CREATE_OPTIONS))
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
            before.append("create %s %s %s" % (name, set_type, IPSET_CREATE_OPTIONS))
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
