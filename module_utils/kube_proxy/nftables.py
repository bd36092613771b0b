"""nftables mode: kube-proxy's ``ip kube-proxy`` table, rendered, read back, edited or replaced.

The renderer writes the layout of kube-proxy's nftables proxier (pkg/proxy/nftables, the
generation whose TestOverallNFTablesRules has the ``*-pre-dnat`` base chains): ClusterIP,
NodePort and LoadBalancer Services, external IPs, both traffic policies (``local-`` and
``external-`` chains) and source ranges (``firewall-`` chains and the firewall-ips map).
Like kube-proxy it always creates the NodePort and firewall sets, maps and rules, so a lab
of ClusterIP Services has them empty, matching nothing, and the table reads like a real
node's. NodePorts answer on the ``nodeport-ips`` set, the node IPs given (kube-proxy's
--nodeport-addresses). ``service_cidr`` is optional: without it the "Drop traffic to
unallocated ClusterIPs" rule is left out.

The module owns the whole table and changes it in one ``nft -f`` transaction. ``script``
writes it whole: a new table, or the live one deleted and written anew. ``update_script``
edits the live one in place, as kube-proxy's partial sync does, when only elements, rules
and chains differ: replacing makes the kernel delete and re-add every chain, so at
thousands of Services a one-endpoint change cost more than a cold sync. The table is still
replaced whole where an edit cannot be trusted: a set, map or base chain declared otherwise
(a ClientIP Service's affinity sets added or removed, a drifted comment or type), anything
``parse_json`` did not understand, or a chain to delete on a kernel before 6.2.

Deciding *whether* anything differs is the hard part. ``nft -j`` prints rules back in its
own form, so ``parse_json`` turns the JSON into canonical rule texts and ``render`` writes
its rules in that same canonical text (which nft also accepts as input). What nft 1.0.6
does to what it is given, and how the two sides still meet:

- ``mark set mark or 0x00004000`` comes back as a mangle of ``meta mark | 16384``; mark
  operands are printed as kube-proxy writes them, ``%#010x``.
- ``ip daddr { 10.96.0.0/12 }`` with one element comes back as the bare prefix, and a /32
  as the bare address: the renderer writes those forms.
- ``reject`` comes back as ``icmp port-unreachable``, its default in an ip table.
- The JSON drops the table's and chains' comments, so those are written but not compared,
  and ``listing`` leaves them out so that equal states list equally.
- It drops the ``dynamic`` flag of a set that a rule updates, and adds a size of 65535: a set
  a rule updates is dynamic whatever was written (nft sets the flag itself), so the flag is
  restored from the rules and that default size ignored.
- The elements of the affinity sets are client addresses learnt from traffic: not compared.
  An edit in place keeps them, as kube-proxy does; replacing the table forgets them, so
  after a sync that replaces it a ClientIP client may land on another endpoint once.

Whatever the printer does not know prints as ``<unknown …>``, which no rendered rule or
element contains, so an unexpected table is always replaced whole rather than reported
unchanged or edited.
"""

import base64
import hashlib
import ipaddress
import itertools
import json
import re
from dataclasses import dataclass, field, replace
from typing import Any, Dict, FrozenSet, List, Optional, Set, Tuple

from .model import ProxyConfig, Service, categorize_endpoints

TABLE_FAMILY = "ip"
TABLE_NAME = "kube-proxy"
TABLE = "%s %s" % (TABLE_FAMILY, TABLE_NAME)
TABLE_COMMENT = "rules for kube-proxy"

# knftables.NameLengthMax (256) less room for the longest prefix kube-proxy puts in front.
CHAIN_NAME_BASE_MAX = 240
MASQ_MARK = 0x4000

SERVICE_CHAIN_PREFIX = "service-"
LOCAL_CHAIN_PREFIX = "local-"
EXTERNAL_CHAIN_PREFIX = "external-"
FIREWALL_CHAIN_PREFIX = "firewall-"
ENDPOINT_CHAIN_PREFIX = "endpoint-"
AFFINITY_SET_PREFIX = "affinity-"

SERVICES = "services"
MARK_FOR_MASQUERADE = "mark-for-masquerade"
MASQUERADING = "masquerading"
REJECT_CHAIN = "reject-chain"
CLUSTER_IPS_CHECK = "cluster-ips-check"
SERVICE_ENDPOINTS_CHECK = "service-endpoints-check"
NODEPORT_ENDPOINTS_CHECK = "nodeport-endpoints-check"
FIREWALL_CHECK = "firewall-check"

CLUSTER_IPS = "cluster-ips"
NODEPORT_IPS = "nodeport-ips"
FIREWALL_IPS = "firewall-ips"
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
NO_ENDPOINT_SERVICES = "no-endpoint-services"
SERVICE_IPS = "service-ips"
SERVICE_NODEPORTS = "service-nodeports"

# How parse_json writes what it cannot read; no rendered rule or element contains it.
UNKNOWN = "<unknown"

# nft gives a set that rules update this size when none was asked for.
DYNAMIC_SET_DEFAULT_SIZE = 65535

# Kernels before 6.2 refuse to delete a chain in the transaction that also removes the rules
# and map elements jumping to it ("Device or resource busy": kubernetes issues 122604 and
# 128829); kube-proxy flushes such a chain and deletes it a sync later.
FIRST_KERNEL_DELETING_UNREFERENCED_CHAINS = (6, 2)


# --------------------------------------------------------------------------- naming

def _hash_and_truncate(name: str) -> str:
    digest = base64.b32encode(hashlib.sha256(name.encode()).digest()).decode()
    name = digest[:8] + "-" + name
    if len(name) > CHAIN_NAME_BASE_MAX:
        name = name[:CHAIN_NAME_BASE_MAX - 3] + "..."
    return name


def service_chain_base(namespace: str, name: str, proto: str, port_name: str) -> str:
    """servicePortChainNameBase: the hash covers the readable ``ns/name/proto/portname``."""
    return _hash_and_truncate("%s/%s/%s/%s" % (namespace, name, proto, port_name))


def endpoint_chain_base(namespace: str, name: str, proto: str, port_name: str, ip: str, port: int) -> str:
    """servicePortEndpointChainNameBase: ``ns/name/proto/portname__IP/port``."""
    return _hash_and_truncate("%s/%s/%s/%s__%s/%s" % (namespace, name, proto, port_name, ip, port))


# --------------------------------------------------------------------------- the model

@dataclass(frozen=True)
class Hook:
    """What makes a chain a base chain."""

    type: str
    hook: str
    priority: int
    policy: str = "accept"

    def spec(self) -> str:
        """As written inside ``add chain … { }``."""
        text = "type %s hook %s priority %s ;" % (self.type, self.hook, self.priority)
        return text if self.policy == "accept" else "%s policy %s ;" % (text, self.policy)


@dataclass
class Chain:
    hook: Optional[Hook] = None
    rules: List[str] = field(default_factory=list)
    # Written by script(), but nft -j does not print it back.
    comment: Optional[str] = field(default=None, compare=False)


@dataclass
class NamedSet:
    """A named set, or a map when ``map`` holds the data type (``verdict``)."""

    type: str
    map: Optional[str] = None
    flags: FrozenSet[str] = frozenset()
    timeout: Optional[int] = None  # seconds
    comment: Optional[str] = None
    elements: Set[str] = field(default_factory=set)


@dataclass
class NftState:
    """The table ``ip kube-proxy``: equal states are tables the kernel holds identically."""

    sets: Dict[str, NamedSet] = field(default_factory=dict)
    chains: Dict[str, Chain] = field(default_factory=dict)
    # What parse_json found that this model cannot hold; never part of a rendered state.
    other: List[str] = field(default_factory=list)
    comment: Optional[str] = field(default=None, compare=False)
    # The service port each of a Service's own chains belongs to (render's; parse_json's
    # state has none): what batched_script keeps together.
    owners: Dict[str, str] = field(default_factory=dict, compare=False)


# --------------------------------------------------------------------------- rendering

_SERVICE_KEY = "ipv4_addr . inet_proto . inet_service"
_NODEPORT_KEY = "inet_proto . inet_service"
_SETS = (
    (CLUSTER_IPS, "ipv4_addr", None, "Active ClusterIPs"),
    (NODEPORT_IPS, "ipv4_addr", None, "IPs that accept NodePort traffic"),
    (FIREWALL_IPS, _SERVICE_KEY, "verdict", "destinations that are subject to LoadBalancerSourceRanges"),
    (NO_ENDPOINT_NODEPORTS, _NODEPORT_KEY, "verdict",
     "vmap to drop or reject packets to service nodeports with no endpoints"),
    (NO_ENDPOINT_SERVICES, _SERVICE_KEY, "verdict", "vmap to drop or reject packets to services with no endpoints"),
    (SERVICE_IPS, _SERVICE_KEY, "verdict", "ClusterIP, ExternalIP and LoadBalancer IP traffic"),
    (SERVICE_NODEPORTS, _NODEPORT_KEY, "verdict", "NodePort traffic"),
)

# The filter chains run before DNAT (firewall) or after it (a priority above nat's -100), and
# the rejects sit in input/forward/output because kernels before 5.9 refuse reject in prerouting.
_BASE_CHAINS = (
    ("filter-prerouting-pre-dnat", Hook("filter", "prerouting", -110)),
    ("filter-output-pre-dnat", Hook("filter", "output", -110)),
    ("filter-forward", Hook("filter", "forward", 0)),
    ("filter-input", Hook("filter", "input", 0)),
    ("filter-output", Hook("filter", "output", 0)),
    ("nat-prerouting", Hook("nat", "prerouting", -100)),
    ("nat-output", Hook("nat", "output", -100)),
    ("nat-postrouting", Hook("nat", "postrouting", 100)),
)
_CT_NEW = "ct state new "
_JUMPS = (
    ("filter-prerouting-pre-dnat", _CT_NEW, FIREWALL_CHECK),
    ("filter-output-pre-dnat", _CT_NEW, FIREWALL_CHECK),
    ("filter-forward", _CT_NEW, SERVICE_ENDPOINTS_CHECK),
    ("filter-forward", _CT_NEW, CLUSTER_IPS_CHECK),
    ("filter-input", _CT_NEW, NODEPORT_ENDPOINTS_CHECK),
    ("filter-input", _CT_NEW, SERVICE_ENDPOINTS_CHECK),
    ("filter-output", _CT_NEW, SERVICE_ENDPOINTS_CHECK),
    ("filter-output", _CT_NEW, CLUSTER_IPS_CHECK),
    ("nat-prerouting", "", SERVICES),
    ("nat-output", "", SERVICES),
    ("nat-postrouting", "", MASQUERADING),
)
_PORTAL = "ip daddr . meta l4proto . th dport"


def _hex_mark(value: int) -> str:
    return "%#010x" % value


def _address_or_prefix(cidr: str) -> str:
    network = ipaddress.IPv4Network(cidr)
    return str(network.network_address) if network.prefixlen == 32 else str(network)


def render(config: ProxyConfig, service_cidr: Optional[str] = None) -> NftState:
    """The whole table as kube-proxy would hold it after one full sync."""
    state = NftState(comment=TABLE_COMMENT)
    for name, key_type, data_type, comment in _SETS:
        state.sets[name] = NamedSet(type=key_type, map=data_type, comment=comment)
    for name, hook in _BASE_CHAINS:
        state.chains[name] = Chain(hook=hook)
    for name in (CLUSTER_IPS_CHECK, FIREWALL_CHECK, MARK_FOR_MASQUERADE, MASQUERADING,
                 NODEPORT_ENDPOINTS_CHECK, SERVICES, SERVICE_ENDPOINTS_CHECK):
        state.chains[name] = Chain()
    state.chains[REJECT_CHAIN] = Chain(
        rules=["reject"], comment="helper for @no-endpoint-services / @no-endpoint-nodeports")

    for source, condition, target in _JUMPS:
        state.chains[source].rules.append("%sjump %s" % (condition, target))
    state.chains[CLUSTER_IPS_CHECK].rules.append(
        'ip daddr @%s reject comment "Reject traffic to invalid ports of ClusterIPs"' % CLUSTER_IPS)
    if service_cidr:
        state.chains[CLUSTER_IPS_CHECK].rules.append(
            'ip daddr %s drop comment "Drop traffic to unallocated ClusterIPs"' % _address_or_prefix(service_cidr))
    state.chains[FIREWALL_CHECK].rules.append("%s vmap @%s" % (_PORTAL, FIREWALL_IPS))
    state.chains[NODEPORT_ENDPOINTS_CHECK].rules.append(
        "ip daddr @%s meta l4proto . th dport vmap @%s" % (NODEPORT_IPS, NO_ENDPOINT_NODEPORTS))
    state.chains[SERVICE_ENDPOINTS_CHECK].rules.append("%s vmap @%s" % (_PORTAL, NO_ENDPOINT_SERVICES))
    state.chains[SERVICES].rules.extend([
        "%s vmap @%s" % (_PORTAL, SERVICE_IPS),
        "ip daddr @%s meta l4proto . th dport vmap @%s" % (NODEPORT_IPS, SERVICE_NODEPORTS),
    ])
    mark = _hex_mark(MASQ_MARK)
    state.chains[MARK_FOR_MASQUERADE].rules.append("mark set mark or " + mark)
    state.chains[MASQUERADING].rules.extend([
        "mark and %s == 0 return" % mark,
        # Clear the mark: a packet re-traversing the stack must not be masqueraded twice.
        "mark set mark xor " + mark,
        "masquerade fully-random",
    ])

    state.sets[NODEPORT_IPS].elements.update(config.node_ips)
    for service in config.services:
        _render_service(state, config, service)
    return state


def _render_service(state: NftState, config: ProxyConfig, service: Service) -> None:
    """One service port, as kube-proxy's nftables syncProxyRules writes it: its map elements
    (service-ips, service-nodeports, firewall-ips, and the no-endpoint verdicts), its chains
    (service, local, external, firewall, endpoint) and its affinity sets."""
    base = service_chain_base(service.namespace, service.name, service.proto, service.port_name)
    cluster_chain, local_policy_chain = SERVICE_CHAIN_PREFIX + base, LOCAL_CHAIN_PREFIX + base
    external_chain, fw_chain = EXTERNAL_CHAIN_PREFIX + base, FIREWALL_CHAIN_PREFIX + base
    split = categorize_endpoints(service, config.node_name)

    internal_chain = local_policy_chain if service.internal_policy_local else cluster_chain
    external_policy_chain = local_policy_chain if service.external_policy_local else cluster_chain
    has_internal, has_external = split.has_internal, split.has_external
    # REJECT when the Service has no endpoint at all, DROP when a Local policy finds none here.
    no_endpoint = "goto " + REJECT_CHAIN if not split.any else "drop"

    # The chains in kube-proxy's order: endpoints first, so they exist before anything jumps there.
    endpoint_chains = {}
    for ip in split.reachable:
        endpoint_base = endpoint_chain_base(service.namespace, service.name, service.proto, service.port_name,
                                            ip, service.target_port)
        chain_name, affinity_set = ENDPOINT_CHAIN_PREFIX + endpoint_base, AFFINITY_SET_PREFIX + endpoint_base
        endpoint_chains[ip] = (chain_name, affinity_set)
        rules = ["ip saddr %s jump %s" % (ip, MARK_FOR_MASQUERADE)]  # a pod reaching itself
        if service.client_ip_affinity:
            state.sets[affinity_set] = NamedSet(
                type="ipv4_addr", flags=frozenset({"dynamic", "timeout"}),
                timeout=service.session_affinity_timeout)
            rules.append("update @%s { ip saddr }" % affinity_set)
        rules.append("meta l4proto %s dnat to %s" % (service.proto, service.endpoint_address(ip)))
        state.chains[chain_name] = Chain(rules=rules)

    if split.cluster and service.uses_cluster_endpoints:
        state.chains[cluster_chain] = Chain()
    if split.local and service.uses_local_endpoints:
        state.chains[local_policy_chain] = Chain()
    if split.any and service.externally_accessible:
        state.chains[external_chain] = Chain()

    def key(address: str) -> str:
        return "%s . %s . %d" % (address, service.proto, service.port)

    def no_endpoint_element(element_key: str) -> str:
        return '%s comment "%s" : %s' % (element_key, service.port_name_string, no_endpoint)

    state.sets[CLUSTER_IPS].elements.add(service.cluster_ip)
    if has_internal:
        state.sets[SERVICE_IPS].elements.add("%s : goto %s" % (key(service.cluster_ip), internal_chain))
    else:
        state.sets[NO_ENDPOINT_SERVICES].elements.add(no_endpoint_element(key(service.cluster_ip)))
    uses_fw = bool(service.load_balancer_ips) and bool(service.load_balancer_source_ranges)
    for address in service.external_ips + service.load_balancer_ips:
        if split.any:
            state.sets[SERVICE_IPS].elements.add("%s : goto %s" % (key(address), external_chain))
        if not has_external:
            state.sets[NO_ENDPOINT_SERVICES].elements.add(no_endpoint_element(key(address)))
    if uses_fw:
        state.sets[FIREWALL_IPS].elements.update("%s : goto %s" % (key(address), fw_chain)
                                                 for address in service.load_balancer_ips)
    if service.node_port:
        node_port = "%s . %d" % (service.proto, service.node_port)
        if split.any:
            state.sets[SERVICE_NODEPORTS].elements.add("%s : goto %s" % (node_port, external_chain))
        if not has_external:
            state.sets[NO_ENDPOINT_NODEPORTS].elements.add(no_endpoint_element(node_port))

    if has_internal:
        # Traffic from outside the cluster CIDR must come back through this node: masquerade it.
        source = "" if config.masquerade_all else " ip saddr != " + _address_or_prefix(config.cluster_cidr)
        state.chains[internal_chain].rules.append(
            "ip daddr %s%s jump %s" % (service.cluster_ip, source, MARK_FOR_MASQUERADE))

    if split.any and service.externally_accessible:
        rules = state.chains[external_chain].rules
        if not service.external_policy_local:
            # The endpoint may be on another node: masquerade, so the reply comes back here.
            rules.append("jump " + MARK_FOR_MASQUERADE)
        else:
            # Pods and the node itself short-circuit to the Cluster endpoints, as if they had
            # gone out to the load balancer and back; the node's own traffic is masqueraded.
            rules.extend([
                'ip saddr %s goto %s comment "short-circuit pod traffic"' % (
                    _address_or_prefix(config.cluster_cidr), cluster_chain),
                'fib saddr type local jump %s comment "masquerade local traffic"' % MARK_FOR_MASQUERADE,
                'fib saddr type local goto %s comment "short-circuit local traffic"' % cluster_chain,
            ])
        if has_external:
            rules.append("goto " + external_policy_chain)

    if uses_fw:
        sources = list(service.load_balancer_source_ranges)
        node_ip = ipaddress.ip_address(config.node_ips[0]) if config.node_ips else None
        if node_ip is not None and any(node_ip in ipaddress.ip_network(cidr) for cidr in sources):
            # A request from the node to a load balancer IP it holds loops back with that IP as its source.
            sources += list(service.load_balancer_ips)
        state.chains[fw_chain] = Chain(rules=["ip saddr != %s drop" % _address_set(sources)])

    if split.cluster and service.uses_cluster_endpoints:
        _balance(state.chains[cluster_chain].rules, service, split.cluster, endpoint_chains)
    if split.local and service.uses_local_endpoints:
        _balance(state.chains[local_policy_chain].rules, service, split.local, endpoint_chains)
    for name in [chain for chain, _affinity in endpoint_chains.values()] + [
            cluster_chain, local_policy_chain, external_chain, fw_chain]:
        if name in state.chains:
            state.owners[name] = service.port_name_string


def _address_set(cidrs: List[str]) -> str:
    """An anonymous set as nft prints it back: one prefix bare, several in braces."""
    items = [_address_or_prefix(cidr) if "/" in cidr else cidr for cidr in cidrs]
    return items[0] if len(items) == 1 else "{ %s }" % ", ".join(sorted(items, key=_natural))


def _balance(rules: List[str], service: Service, ips: Tuple[str, ...],
             endpoint_chains: Dict[str, Tuple[str, str]]) -> None:
    """A policy chain's affinity checks, then its one numgen vmap over its endpoint chains."""
    if service.client_ip_affinity:
        rules.extend("ip saddr @%s goto %s" % (endpoint_chains[ip][1], endpoint_chains[ip][0]) for ip in ips)
    rules.append("numgen random mod %d vmap { %s }" % (
        len(ips), ", ".join("%d : goto %s" % (index, endpoint_chains[ip][0]) for index, ip in enumerate(ips))))


# --------------------------------------------------------------------------- nft -f

def _natural(text: str) -> List[Any]:
    """Sort key putting 10.0.0.9 before 10.0.0.10 and vmap key 2 before 10."""
    return [int(part) if position % 2 else part for position, part in enumerate(re.split(r"(\d+)", text))]


def _set_spec(named: NamedSet) -> str:
    parts = ["type %s%s ;" % (named.type, " : " + named.map if named.map else "")]
    if named.flags:
        parts.append("flags %s ;" % ",".join(sorted(named.flags)))
    if named.timeout is not None:
        parts.append("timeout %ss ;" % named.timeout)
    if named.comment is not None:
        parts.append('comment "%s" ;' % named.comment)
    return " ".join(parts)


def script(desired: NftState, live_exists: bool) -> str:
    """One ``nft -f`` transaction that leaves the table exactly ``desired``.

    Replacing the whole table in one commit means no stale chain, set or element survives
    and no packet ever sees half a table. Every set and chain is declared before any rule or
    element names it.
    """
    sections: List[List[str]] = []
    if live_exists:
        sections.append(["add table " + TABLE, "delete table " + TABLE])
    table_comment = ' { comment "%s" ; }' % desired.comment if desired.comment is not None else ""
    sections.append(["add table " + TABLE + table_comment])
    sections.append([
        "add %s %s %s { %s }" % ("map" if named.map else "set", TABLE, name, _set_spec(named))
        for name, named in desired.sets.items()
    ])
    chains = []
    for name, chain in desired.chains.items():
        spec = []
        if chain.hook is not None:
            spec.append(chain.hook.spec())
        if chain.comment is not None:
            spec.append('comment "%s" ;' % chain.comment)
        chains.append("add chain %s %s%s" % (TABLE, name, " { %s }" % " ".join(spec) if spec else ""))
    sections.append(chains)
    sections.append([
        "add rule %s %s %s" % (TABLE, name, rule) for name, chain in desired.chains.items() for rule in chain.rules
    ])
    sections.append([
        "add element %s %s { %s }" % (TABLE, name, element)
        for name, named in desired.sets.items() for element in sorted(named.elements, key=_natural)
    ])
    return "\n\n".join("\n".join(lines) for lines in sections if lines) + "\n"


# A cold start writing more lines than this goes in several transactions of about this many
# each (batched_scripts; docs/performance.md says what it measured): nft -f costs more per
# line the larger one transaction is.
BATCH_LINES = 5000


def batched_scripts(desired: NftState, batch_lines: int = BATCH_LINES) -> List[str]:
    """script(desired, live_exists=False) for a node without the table, as ``nft -f``
    transactions of about batch_lines lines each, leaving the same table.

    The first creates the table, every set and map, the chains every Service shares and the
    elements that name none of a Service's own chains (cluster-ips, the no-endpoint
    verdicts); each of the others adds a batch of whole Services: their chains, their rules,
    and the map elements that lead to them, which is what makes a Service reachable. So a
    Service is either not reached yet or reached through all of its chains. (Upstream
    kubernetes/kubernetes#139328 proposes a split of kube-proxy's own cold start.)
    """
    lines = sum(len(chain.rules) + 1 for chain in desired.chains.values()) + sum(
        len(named.elements) for named in desired.sets.values())
    if lines <= batch_lines or not desired.owners:
        return [script(desired, live_exists=False)]
    leading: Dict[str, List[Tuple[str, str]]] = {}  # an owned chain -> the elements that lead to it
    shared_sets: Dict[str, NamedSet] = {}
    for name, named in desired.sets.items():
        kept = set()
        for element in sorted(named.elements, key=_natural):
            target = element.rsplit(" ", 1)[-1] if " : goto " in element or " : jump " in element else None
            if target in desired.owners:
                leading.setdefault(target, []).append((name, element))
            else:
                kept.add(element)
        shared_sets[name] = replace(named, elements=kept)
    shared = NftState(sets=shared_sets, comment=desired.comment,
                      chains={name: chain for name, chain in desired.chains.items() if name not in desired.owners})
    scripts = [script(shared, live_exists=False)]
    batch: List[str] = []
    size, owner = 0, None
    for name in desired.chains:
        if name not in desired.owners:
            continue
        # A batch closes only between two Services, never inside one.
        if size >= batch_lines and desired.owners[name] != owner:
            scripts.append(_service_batch(desired, batch, leading))
            batch, size = [], 0
        owner = desired.owners[name]
        batch.append(name)
        size += 1 + len(desired.chains[name].rules) + len(leading.get(name, ()))
    scripts.append(_service_batch(desired, batch, leading))
    return scripts


def _service_batch(desired: NftState, chains: List[str], leading: Dict[str, List[Tuple[str, str]]]) -> str:
    """One transaction of batched_scripts: chains (whole Services'), their rules, and the elements leading to them."""
    lines = ["add chain %s %s" % (TABLE, name) for name in chains]
    lines.extend("add rule %s %s %s" % (TABLE, name, rule) for name in chains for rule in desired.chains[name].rules)
    lines.extend("add element %s %s { %s }" % (TABLE, set_name, element)
                 for name in chains for set_name, element in leading.get(name, []))
    return "\n".join(lines) + "\n"


def _element_key(named: NamedSet, element: str) -> str:
    """An element is deleted by its key alone, without its map value or comment, the way
    kube-proxy's knftables writes a delete."""
    key = element.split(" : ", 1)[0] if named.map else element
    return key.split(' comment "', 1)[0]


def _understood(state: NftState) -> bool:
    """False when parse_json met anything it could not read: such a text can be neither
    compared nor written back (nft cannot parse a ``delete element`` of it)."""
    rules = (rule for chain in state.chains.values() for rule in chain.rules)
    elements = (element for named in state.sets.values() for element in named.elements)
    return not state.other and not any(UNKNOWN in text for text in itertools.chain(rules, elements))


def _declarations(state: NftState) -> Tuple[Dict[str, NamedSet], Dict[str, Hook]]:
    """What an in-place edit leaves as it is: every set and map but its elements, and the base chains."""
    sets = {name: replace(named, elements=set()) for name, named in state.sets.items()}
    return sets, {name: chain.hook for name, chain in state.chains.items() if chain.hook is not None}


def kernel_version(release: str) -> Tuple[int, int]:
    """(major, minor) of a kernel release as ``os.uname().release`` gives it (``6.1.0-18-amd64``);
    (0, 0) when it starts otherwise, so an unreadable release counts as an old kernel."""
    match = re.match(r"(\d+)\.(\d+)", release)
    return (int(match.group(1)), int(match.group(2))) if match else (0, 0)


def update_script(desired: NftState, live: NftState, kernel: Tuple[int, int]) -> Optional[str]:
    """One ``nft -f`` transaction that edits the live table into ``desired`` in place, as
    kube-proxy does on a partial sync; None when only replacing the whole table will do (or,
    when the two are equal, when nothing is to be done).

    Replacing the table makes the kernel delete and re-add every chain: at 2,000 Services a
    one-endpoint change took longer than a cold sync. In place, only what differs is
    written: new chains, changed chains flushed and refilled, elements added and deleted,
    stale chains deleted last (after the rules and elements naming them are gone).
    Replaced whole instead: anything parse_json did not understand in the live table; any
    set or map (but for its elements) or base chain declared otherwise, which an edit would
    leave as it is; and, on ``kernel`` (major, minor) before 6.2, any chain to delete.
    """
    if not _understood(live) or _declarations(desired) != _declarations(live):
        return None

    new = [name for name in desired.chains if name not in live.chains]
    changed = [name for name, chain in desired.chains.items()
               if name in live.chains and live.chains[name].rules != chain.rules]
    stale = [name for name in live.chains if name not in desired.chains]
    if stale and kernel < FIRST_KERNEL_DELETING_UNREFERENCED_CHAINS:
        # Deleting the table takes every reference with it, which these kernels accept.
        return None
    lines: List[str] = []
    for name in new:
        comment = desired.chains[name].comment
        lines.append("add chain %s %s%s" % (TABLE, name, ' { comment "%s" ; }' % comment if comment is not None else ""))
    for name in changed:
        lines.append("flush chain %s %s" % (TABLE, name))
    for name in new + changed:
        lines.extend("add rule %s %s %s" % (TABLE, name, rule) for rule in desired.chains[name].rules)
    for name, named in desired.sets.items():
        have = live.sets[name].elements
        lines.extend("delete element %s %s { %s }" % (TABLE, name, _element_key(named, element))
                     for element in sorted(have - named.elements, key=_natural))
        lines.extend("add element %s %s { %s }" % (TABLE, name, element)
                     for element in sorted(named.elements - have, key=_natural))
    for name in stale:
        # Rules go with it; what named it was flushed or deleted above.
        lines.append("flush chain %s %s" % (TABLE, name))
    lines.extend("delete chain %s %s" % (TABLE, name) for name in stale)
    return "\n".join(lines) + "\n" if lines else None


def delete_script() -> str:
    """Remove the table; adding it first makes this succeed whether or not it exists."""
    return "add table %s\ndelete table %s\n" % (TABLE, TABLE)


# --------------------------------------------------------------------------- reading nft -j

def _unknown(value: Any) -> str:
    return "%s %s>" % (UNKNOWN, json.dumps(value, sort_keys=True))


def _has_only(value: Any, *keys: str) -> bool:
    return isinstance(value, dict) and set(value) <= set(keys)


def _exactly(value: Any, *keys: str) -> bool:
    return isinstance(value, dict) and set(value) == set(keys)


def _single(value: Any) -> Tuple[Optional[str], Any]:
    """An nft JSON object is ``{kind: body}``; for anything else the kind is None."""
    if isinstance(value, dict) and len(value) == 1:
        return next(iter(value.items()))
    return None, None


_VERDICTS = ("accept", "drop", "continue", "return")
_BINOPS = {"&": "and", "|": "or", "^": "xor"}
# Meta keys nft (and kube-proxy) write without the ``meta`` keyword.
_BARE_META = ("mark",)


def _as_list(value: Any) -> List[Any]:
    """nft prints a list of one flag as the bare flag."""
    return value if isinstance(value, list) else [value]


def _is_mark(value: Any) -> bool:
    return value == {"meta": {"key": "mark"}}


def _verdict(value: Any) -> Optional[str]:
    kind, body = _single(value)
    if kind in _VERDICTS and body is None:
        return kind
    if kind in ("jump", "goto") and _exactly(body, "target"):
        return "%s %s" % (kind, body["target"])
    return None


def _expr(value: Any, hex_numbers: bool = False) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        return _hex_mark(value) if hex_numbers else str(value)
    if isinstance(value, list):
        return ",".join(_expr(item) for item in value)
    verdict = _verdict(value)
    if verdict is not None:
        return verdict
    kind, body = _single(value)
    if kind == "payload" and _exactly(body, "protocol", "field"):
        return "%s %s" % (body["protocol"], body["field"])
    if kind == "payload" and _exactly(body, "base", "offset", "len"):
        return "@%s,%s,%s" % (body["base"], body["offset"], body["len"])
    if kind == "meta" and _exactly(body, "key"):
        return body["key"] if body["key"] in _BARE_META else "meta " + body["key"]
    if kind == "ct" and _exactly(body, "key"):
        return "ct " + body["key"]
    if kind == "fib" and _exactly(body, "result", "flags"):
        return "fib %s %s" % (" . ".join(_as_list(body["flags"])), body["result"])
    if kind == "concat" and isinstance(body, list):
        return " . ".join(_expr(item) for item in body)
    if kind == "prefix" and _exactly(body, "addr", "len"):
        return "%s/%s" % (_expr(body["addr"]), body["len"])
    if kind == "range" and isinstance(body, list) and len(body) == 2:
        return "%s-%s" % (_expr(body[0]), _expr(body[1]))
    if kind == "set":
        items = body if isinstance(body, list) else [body]
        return "{ %s }" % ", ".join(sorted((_element(item) for item in items), key=_natural))
    if kind in _BINOPS and isinstance(body, list) and len(body) == 2:
        return "%s %s %s" % (_expr(body[0]), _BINOPS[kind], _expr(body[1], hex_numbers=_is_mark(body[0])))
    if kind == "numgen" and _exactly(body, "mode", "mod", "offset"):
        offset = " offset %s" % body["offset"] if body["offset"] else ""
        return "numgen %s mod %s%s" % (body["mode"], body["mod"], offset)
    if kind == "elem" and _has_only(body, "val", "timeout", "expires", "comment") and "val" in body:
        # "expires" counts down on its own: it is no part of what was configured.
        text = _expr(body["val"])
        if "timeout" in body:
            text += " timeout %ss" % body["timeout"]
        if "comment" in body:
            text += ' comment "%s"' % body["comment"]
        return text
    return _unknown(value)


def _element(item: Any) -> str:
    """A set element, or a ``key : value`` map element (a two-item list in the JSON)."""
    if isinstance(item, list) and len(item) == 2:
        return "%s : %s" % (_expr(item[0]), _expr(item[1]))
    return _expr(item)


def _match(body: Any) -> str:
    if not _exactly(body, "op", "left", "right"):
        return _unknown({"match": body})
    left, op, right = body["left"], body["op"], body["right"]
    text_left, text_right = _expr(left), _expr(right)
    # The operator is left out where nft's own listing leaves it out: a bitmask test, which
    # the JSON calls "in" (ct state new), and "==" on a header field or meta key. After an
    # and/or/xor, or on ct state, "==" is an exact compare and stays visible.
    plain = op == "in" or (op == "==" and _single(left)[0] in ("payload", "meta", "concat", "fib"))
    return "%s %s" % (text_left, text_right) if plain else "%s %s %s" % (text_left, op, text_right)


def _statement(statement: Any) -> Optional[str]:
    """One statement as rendered text; None for counters, which the model ignores."""
    kind, body = _single(statement)
    if kind == "counter":
        return None
    if kind == "match":
        return _match(body)
    verdict = _verdict(statement)
    if verdict is not None:
        return verdict
    if kind == "vmap" and _exactly(body, "key", "data"):
        return "%s vmap %s" % (_expr(body["key"]), _expr(body["data"]))
    if kind == "mangle" and _exactly(body, "key", "value"):
        return "%s set %s" % (_expr(body["key"]), _expr(body["value"], hex_numbers=_is_mark(body["key"])))
    if kind == "set" and _exactly(body, "op", "elem", "set") and body["op"] in ("add", "update"):
        return "%s %s { %s }" % (body["op"], body["set"], _expr(body["elem"]))
    if kind == "dnat" and _has_only(body, "addr", "port") and "addr" in body:
        return "dnat to %s%s" % (_expr(body["addr"]), ":%s" % body["port"] if "port" in body else "")
    if kind == "masquerade" and (body is None or _has_only(body, "flags")):
        flags = (body or {}).get("flags")
        return "masquerade " + _expr(flags) if flags else "masquerade"
    if kind == "reject" and (body is None or _has_only(body, "type", "expr")):
        if body is None or body == {"type": "icmp", "expr": "port-unreachable"}:
            return "reject"
        return "reject with " + " ".join(str(body[key]) for key in ("type", "expr") if key in body)
    return _unknown(statement)


def _rule_text(body: Dict[str, Any]) -> str:
    words = [text for text in (_statement(item) for item in body.get("expr", [])) if text is not None]
    if "comment" in body:
        words.append('comment "%s"' % body["comment"])
    extra = set(body) - {"family", "table", "chain", "handle", "expr", "comment"}
    words.extend(_unknown({key: body[key]}) for key in sorted(extra))
    return " ".join(words)


def _updated_sets(expressions: List[Any]) -> Set[str]:
    names = set()
    for statement in expressions:
        kind, body = _single(statement)
        if kind == "set" and isinstance(body, dict) and isinstance(body.get("set"), str):
            names.add(body["set"].lstrip("@"))
    return names


def _hook(body: Dict[str, Any]) -> Optional[Hook]:
    if "hook" not in body:
        return None
    return Hook(type=body.get("type", ""), hook=body["hook"], priority=body.get("prio", 0),
                policy=body.get("policy", "accept"))


_TABLE_KEYS = {"family", "name", "handle", "comment"}
_CHAIN_KEYS = {"family", "table", "name", "handle", "type", "hook", "prio", "policy", "comment"}
_SET_KEYS = {"family", "table", "name", "handle", "type", "map", "flags", "timeout", "comment", "elem"}


def _owned(kind: Optional[str], body: Any) -> bool:
    if not isinstance(body, dict) or body.get("family") != TABLE_FAMILY:
        return False
    return body.get("name" if kind == "table" else "table") == TABLE_NAME


def parse_json(text: str) -> NftState:
    """Read ``nft -j list table ip kube-proxy`` (or ``list ruleset``) into the model.

    Raises ValueError when the output holds no ``ip kube-proxy`` table.
    """
    state = NftState()
    found = False
    sizes: Dict[str, Any] = {}
    updated: Set[str] = set()
    for item in json.loads(text).get("nftables", []):
        kind, body = _single(item)
        if kind == "metainfo" or not _owned(kind, body):
            continue
        if kind == "table":
            found = True
            state.comment = body.get("comment")
            state.other.extend("table: %s" % _unknown({key: body[key]}) for key in set(body) - _TABLE_KEYS)
        elif kind == "chain":
            chain = state.chains.setdefault(body["name"], Chain())
            chain.hook, chain.comment = _hook(body), body.get("comment")
            state.other.extend("chain %s: %s" % (body["name"], _unknown({key: body[key]}))
                               for key in set(body) - _CHAIN_KEYS)
        elif kind in ("set", "map"):
            key_type = body.get("type", "")
            state.sets[body["name"]] = NamedSet(
                type=" . ".join(key_type) if isinstance(key_type, list) else key_type,
                map=body.get("map"),
                flags=frozenset(_as_list(body.get("flags", []))),
                timeout=body.get("timeout"),
                comment=body.get("comment"),
                elements={_element(element) for element in body.get("elem", [])},
            )
            if "size" in body:
                sizes[body["name"]] = body["size"]
            state.other.extend("%s %s: %s" % (kind, body["name"], _unknown({key: body[key]}))
                               for key in set(body) - _SET_KEYS - {"size"})
        elif kind == "rule":
            state.chains.setdefault(body.get("chain", ""), Chain()).rules.append(_rule_text(body))
            updated |= _updated_sets(body.get("expr", []))
        else:
            state.other.append("%s %s" % (kind, body.get("name", _unknown(body))))
    if not found:
        raise ValueError("no table %s in the nft output" % TABLE)

    for name, named in state.sets.items():
        if name in updated:
            named.flags = named.flags | {"dynamic"}
        if "dynamic" in named.flags:
            named.elements = set()
    for name, size in sizes.items():
        if not ("dynamic" in state.sets[name].flags and size == DYNAMIC_SET_DEFAULT_SIZE):
            state.other.append("set %s: size %s" % (name, size))
    state.other.sort()
    return state


# --------------------------------------------------------------------------- for people

def listing(state: NftState) -> str:
    """The state as a deterministic, nft-list-like text (sets, then chains, by name)."""
    lines = ["table %s {" % TABLE]
    for name in sorted(state.sets):
        named = state.sets[name]
        lines.append("\t%s %s {" % ("map" if named.map else "set", name))
        lines.append("\t\ttype %s%s" % (named.type, " : " + named.map if named.map else ""))
        if named.flags:
            lines.append("\t\tflags %s" % ",".join(sorted(named.flags)))
        if named.timeout is not None:
            lines.append("\t\ttimeout %ss" % named.timeout)
        if named.comment is not None:
            lines.append('\t\tcomment "%s"' % named.comment)
        if named.elements:
            lines.append("\t\telements = {")
            lines.extend("\t\t\t%s," % element for element in sorted(named.elements, key=_natural))
            lines.append("\t\t}")
        lines.append("\t}")
    for name in sorted(state.chains):
        chain = state.chains[name]
        lines.append("\tchain %s {" % name)
        if chain.hook is not None:
            hook = chain.hook
            lines.append("\t\ttype %s hook %s priority %s; policy %s;"
                         % (hook.type, hook.hook, hook.priority, hook.policy))
        lines.extend("\t\t" + rule for rule in chain.rules)
        lines.append("\t}")
    lines.append("}")
    lines.extend("# not understood: " + other for other in state.other)
    return "\n".join(lines) + "\n"
