"""iptables mode: render kube-proxy's rules, read them back, and plan one restore.

The renderer writes what kube-proxy's iptables proxier writes (pkg/proxy/iptables/proxier.go),
in its iptables-restore syntax. The kernel prints rules back in another form (canonical
option order, ``/32``, ``--set-xmark``, probabilities rounded to 1/2^31), so both sides go
through ``normalise_rule`` before they are compared.
"""

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional, Tuple

from .model import ProxyConfig, Service, categorize_endpoints
from .naming import endpoint_chain, external_chain, firewall_chain, local_chain, service_chain

# kube-proxy formats the mark with %#08x; iptables-save prints it back as 0x4000.
MASQ_MARK = "0x00004000"
# kube-proxy writes filter first, then nat. Each table's COMMIT is atomic, the two are not one
# transaction; no rule in one table refers to a chain of the other, so a restore killed between
# them leaves each table whole on its own.
TABLES = ("filter", "nat")
# Every KUBE-* chain in the node belongs to the module: it plays kube-proxy there, and
# kube-proxy, too, clears the chains another mode left behind.
OWNED_CHAIN_PREFIX = "KUBE-"
BUILTIN_CHAINS = {
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
}

KUBE_SERVICES = "KUBE-SERVICES"
KUBE_NODEPORTS = "KUBE-NODEPORTS"
KUBE_MARK_MASQ = "KUBE-MARK-MASQ"
KUBE_POSTROUTING = "KUBE-POSTROUTING"
KUBE_EXTERNAL_SERVICES = "KUBE-EXTERNAL-SERVICES"
KUBE_PROXY_FIREWALL = "KUBE-PROXY-FIREWALL"

Rule = Tuple[str, ...]


@dataclass
class TableState:
    """The module's share of one table: its own chains, and the jumps into them. owners names
    the service port each of a Service's own chains (SVC, SVL, EXT, FW, SEP) belongs to; the
    chains every Service shares (KUBE-SERVICES, KUBE-MARK-MASQ, ...) have none."""

    chains: Dict[str, List[str]] = field(default_factory=dict)
    jumps: Dict[str, List[str]] = field(default_factory=dict)
    owners: Dict[str, str] = field(default_factory=dict)


IptablesState = Dict[str, TableState]


# --------------------------------------------------------------------------- rendering

_NEEDS_QUOTES = re.compile(r'[\s"\\]')


def _quote(text: str) -> str:
    if text and not _NEEDS_QUOTES.search(text):
        return text
    return '"%s"' % text.replace("\\", "\\\\").replace('"', '\\"')


def _comment(text: str) -> str:
    return "-m comment --comment " + _quote(text)


def _portal_match(service: Service, address: Optional[str] = None) -> str:
    return "-m {p} -p {p} -d {ip} --dport {port}".format(
        p=service.proto, ip=address or service.cluster_ip, port=service.port)


def _probability(index: int, count: int) -> str:
    return "%0.10f" % (1.0 / (count - index))


def _jump(comment: str, chain: str, conntrack_new: bool = True) -> str:
    return ("-m conntrack --ctstate NEW " if conntrack_new else "") + _comment(comment) + " -j " + chain


def render(config: ProxyConfig) -> IptablesState:
    """The whole desired state, as kube-proxy would write it in one sync."""
    nat = TableState(
        chains={KUBE_SERVICES: [], KUBE_NODEPORTS: [], KUBE_POSTROUTING: [], KUBE_MARK_MASQ: []},
        jumps={
            "PREROUTING": [_comment("kubernetes service portals") + " -j " + KUBE_SERVICES],
            "OUTPUT": [_comment("kubernetes service portals") + " -j " + KUBE_SERVICES],
            "POSTROUTING": [_comment("kubernetes postrouting rules") + " -j " + KUBE_POSTROUTING],
        },
    )
    portals = _jump("kubernetes service portals", KUBE_SERVICES)
    filter_ = TableState(chains={KUBE_SERVICES: []}, jumps={"FORWARD": [portals], "OUTPUT": [portals]})
    if any(service.externally_accessible for service in config.services):
        # kube-proxy's filter chains for traffic from outside, and its jumps into them (in the
        # order its prepends leave them). A lab of ClusterIP Services keeps today's filter table.
        filter_.chains.update({KUBE_EXTERNAL_SERVICES: [], KUBE_NODEPORTS: [], KUBE_PROXY_FIREWALL: []})
        external = _jump("kubernetes externally-visible service portals", KUBE_EXTERNAL_SERVICES)
        firewall = _jump("kubernetes load balancer firewall", KUBE_PROXY_FIREWALL)
        filter_.jumps = {
            "INPUT": [firewall, _jump("kubernetes health check service ports", KUBE_NODEPORTS, False), external],
            "FORWARD": [firewall, portals, external],
            "OUTPUT": [firewall, portals],
        }

    nat.chains[KUBE_MARK_MASQ].append("-j MARK --or-mark " + MASQ_MARK)
    nat.chains[KUBE_POSTROUTING].extend([
        "-m mark ! --mark {0}/{0} -j RETURN".format(MASQ_MARK),
        # Clear the mark: a packet re-traversing the stack must not be masqueraded twice.
        "-j MARK --xor-mark " + MASQ_MARK,
        _comment("kubernetes service traffic requiring SNAT") + " -j MASQUERADE --random-fully",
    ])

    for service in config.services:
        _render_service(config, service, nat, filter_)

    # kube-proxy always ends KUBE-SERVICES with the jump to the NodePorts, for every local
    # address, or for each --nodeport-addresses address.
    last = _comment("kubernetes service nodeports; NOTE: this must be the last rule in this chain")
    nat.chains[KUBE_SERVICES].extend(
        ["%s -d %s -j %s" % (last, ip, KUBE_NODEPORTS) for ip in config.node_ips]
        or [last + " -m addrtype --dst-type LOCAL -j " + KUBE_NODEPORTS])
    return {"filter": filter_, "nat": nat}


def _render_service(config: ProxyConfig, service: Service, nat: TableState, filter_: TableState) -> None:
    """One service port, as kube-proxy's syncProxyRules writes it: its dispatch rules, the
    filter rules for whatever has no endpoint to go to, and its chains (EXT, FW, SVC, SVL, SEP)."""
    name = service.port_name_string
    proto = service.proto

    def own(chain: str) -> List[str]:
        """One of the Service's own chains in nat, created at its first rule."""
        nat.owners[chain] = name
        return nat.chains.setdefault(chain, [])

    endpoints = categorize_endpoints(service, config.node_name)
    cluster_chain = service_chain(name, proto)
    local_policy_chain = local_chain(name, proto)
    ext_chain = external_chain(name, proto)
    fw_chain = firewall_chain(name, proto)

    internal_chain = local_policy_chain if service.internal_policy_local else cluster_chain
    external_policy_chain = local_policy_chain if service.external_policy_local else cluster_chain
    has_internal, has_external = endpoints.has_internal, endpoints.has_external
    uses_fw = endpoints.any and bool(service.load_balancer_ips) and bool(service.load_balancer_source_ranges)
    lb_chain = fw_chain if uses_fw else ext_chain

    # What traffic with nowhere to go meets: REJECT when the Service has no endpoint at all, DROP
    # when a Local policy finds none on this node.
    no_endpoints = (_comment("%s has no endpoints" % name), "REJECT")
    no_local = (_comment("%s has no local endpoints" % name), "DROP")
    internal_filter = no_endpoints if not endpoints.any else no_local
    external_filter = no_endpoints if not endpoints.any else no_local

    if has_internal:
        nat.chains[KUBE_SERVICES].append("%s %s -j %s" % (_comment("%s cluster IP" % name), _portal_match(service),
                                                         internal_chain))
    else:
        filter_.chains[KUBE_SERVICES].append("%s %s -j %s" % (internal_filter[0], _portal_match(service),
                                                             internal_filter[1]))
    for address in service.external_ips:
        if endpoints.any:
            nat.chains[KUBE_SERVICES].append("%s %s -j %s" % (
                _comment("%s external IP" % name), _portal_match(service, address), ext_chain))
        if not has_external:
            filter_.chains[KUBE_EXTERNAL_SERVICES].append("%s %s -j %s" % (
                external_filter[0], _portal_match(service, address), external_filter[1]))
    for address in service.load_balancer_ips:
        if endpoints.any:
            nat.chains[KUBE_SERVICES].append("%s %s -j %s" % (
                _comment("%s loadbalancer IP" % name), _portal_match(service, address), lb_chain))
        if uses_fw:
            filter_.chains[KUBE_PROXY_FIREWALL].append("%s %s -j DROP" % (
                _comment("%s traffic not accepted by %s" % (name, fw_chain)), _portal_match(service, address)))
    if not has_external:
        for address in service.load_balancer_ips:
            filter_.chains[KUBE_EXTERNAL_SERVICES].append("%s %s -j %s" % (
                external_filter[0], _portal_match(service, address), external_filter[1]))
    if service.node_port:
        node_port = "-m {p} -p {p} --dport {n}".format(p=proto, n=service.node_port)
        if endpoints.any:
            # kube-proxy's localhost NodePort rule counts with nfacct, which this lab does not
            # load; kube-proxy leaves the rule out then too.
            nat.chains[KUBE_NODEPORTS].append("%s %s -j %s" % (_comment(name), node_port, ext_chain))
        if not has_external:
            filter_.chains[KUBE_EXTERNAL_SERVICES].append("%s -m addrtype --dst-type LOCAL %s -j %s" % (
                external_filter[0], node_port, external_filter[1]))
    if service.health_check_node_port:
        filter_.chains[KUBE_NODEPORTS].append("%s -m tcp -p tcp --dport %d -j ACCEPT" % (
            _comment("%s health check node port" % name), service.health_check_node_port))

    if has_internal:
        # Traffic from outside the cluster CIDR must come back through this node: masquerade it.
        source = "" if config.masquerade_all else " ! -s " + config.cluster_cidr
        own(internal_chain).append("%s %s%s -j %s" % (
            _comment("%s cluster IP" % name), _portal_match(service), source, KUBE_MARK_MASQ))

    if endpoints.any and service.externally_accessible:
        ext_rules = own(ext_chain)
        if not service.external_policy_local:
            # The endpoint may be on another node: masquerade, so the reply comes back here.
            ext_rules.append("%s -j %s" % (_comment("masquerade traffic for %s external destinations" % name),
                                           KUBE_MARK_MASQ))
        else:
            # A pod or the node itself reaching an external address short-circuits to the
            # Cluster endpoints, as if it had gone out to the load balancer and back; the node's
            # own traffic is masqueraded, its source being one of the node's addresses.
            ext_rules.extend([
                "%s -s %s -j %s" % (_comment("pod traffic for %s external destinations" % name),
                                    config.cluster_cidr, cluster_chain),
                "%s -m addrtype --src-type LOCAL -j %s" % (
                    _comment("masquerade LOCAL traffic for %s external destinations" % name), KUBE_MARK_MASQ),
                "%s -m addrtype --src-type LOCAL -j %s" % (
                    _comment("route LOCAL traffic for %s external destinations" % name), cluster_chain),
            ])
        if has_external:
            ext_rules.append("-j " + external_policy_chain)

    if uses_fw:
        fw_comment = _comment("%s loadbalancer IP" % name)
        fw_rules = own(fw_chain)
        fw_rules.extend("%s -s %s -j %s" % (fw_comment, cidr, ext_chain) for cidr in service.load_balancer_source_ranges)
        node_ip = ipaddress.ip_address(config.node_ips[0]) if config.node_ips else None
        if node_ip is not None and any(node_ip in ipaddress.ip_network(cidr) for cidr in service.load_balancer_source_ranges):
            # A request from the node to a load balancer IP it holds loops back with that IP as its source.
            fw_rules.extend("%s -s %s -j %s" % (fw_comment, address, ext_chain) for address in service.load_balancer_ips)
        fw_rules.append(_comment("other traffic to %s will be dropped by KUBE-PROXY-FIREWALL" % name))

    if endpoints.cluster and service.uses_cluster_endpoints:
        _balance(service, own(cluster_chain), endpoints.cluster)
    if endpoints.local and service.uses_local_endpoints:
        _balance(service, own(local_policy_chain), endpoints.local)

    for ip in endpoints.reachable:
        address = service.endpoint_address(ip)
        sep_chain = endpoint_chain(name, proto, address)
        recent = " -m recent --name %s --set" % sep_chain if service.client_ip_affinity else ""
        own(sep_chain)[:] = [
            # A pod reaching itself through the service: masquerade, or it would answer itself directly.
            _comment(name) + " -s " + ip + " -j " + KUBE_MARK_MASQ,
            _comment(name) + recent + " -m {p} -p {p} -j DNAT --to-destination {a}".format(p=proto, a=address),
        ]


def _balance(service: Service, rules: List[str], ips: Tuple[str, ...]) -> None:
    """A policy chain's jumps to its endpoint chains: the affinity checks, then one rule per
    endpoint, each taking 1/(endpoints left) of what reaches it."""
    name = service.port_name_string
    endpoint_chains = [(service.endpoint_address(ip), endpoint_chain(name, service.proto, service.endpoint_address(ip)))
                       for ip in ips]
    if service.client_ip_affinity:
        for address, sep_chain in endpoint_chains:
            rules.append("%s -m recent --name %s --rcheck --seconds %d --reap -j %s"
                         % (_comment("%s -> %s" % (name, address)), sep_chain, service.session_affinity_timeout, sep_chain))
    count = len(endpoint_chains)
    for index, (address, sep_chain) in enumerate(endpoint_chains):
        statistic = ""
        if index < count - 1:
            statistic = " -m statistic --mode random --probability " + _probability(index, count)
        rules.append(_comment("%s -> %s" % (name, address)) + statistic + " -j " + sep_chain)


def absent_state() -> IptablesState:
    return {table: TableState() for table in TABLES}


def restore_text(state: IptablesState) -> str:
    """The state as a complete iptables-restore input, the way kube-proxy writes it."""
    lines: List[str] = []
    for table in TABLES:
        tstate = state[table]
        lines.append("*" + table)
        lines.extend(":%s - [0:0]" % chain for chain in tstate.chains)
        for chain, rules in tstate.jumps.items():
            lines.extend("-A %s %s" % (chain, rule) for rule in rules)
        for chain, rules in tstate.chains.items():
            lines.extend("-A %s %s" % (chain, rule) for rule in rules)
        lines.append("COMMIT")
    return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------- normalising

_TOKEN = re.compile(r'"((?:[^"\\]|\\.)*)"|(\S+)')
_GENERIC = {
    "-s": "-s", "--source": "-s", "--src": "-s",
    "-d": "-d", "--destination": "-d", "--dst": "-d",
    "-i": "-i", "--in-interface": "-i",
    "-o": "-o", "--out-interface": "-o",
    "-p": "-p", "--protocol": "-p",
}
# iptables-save prints the generic matches in this order.
_GENERIC_ORDER = ("-s", "-d", "-i", "-o", "-p")
_IMPLICIT_PROTOCOL_MATCHES = ("tcp", "udp", "sctp")


def tokenize(text: str) -> List[str]:
    tokens = []
    for quoted, bare in _TOKEN.findall(text):
        tokens.append(re.sub(r"\\(.)", r"\1", quoted) if bare == "" else bare)
    return tokens


# A dotted quad in canonical form (no leading zeros): a host, which the kernel prints as /32.
# Most addresses in a big ruleset are these; ipaddress would take ~20x longer per address.
_OCTET = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])"
_PLAIN_HOST = re.compile(r"%s(?:\.%s){3}(?:/32)?\Z" % (_OCTET, _OCTET))


def _address(value: str) -> str:
    if _PLAIN_HOST.match(value):
        return value if value.endswith("/32") else value + "/32"
    try:
        return str(ipaddress.ip_network(value, strict=False))
    except ValueError:
        return value


def _hex(value: str) -> int:
    return int(value, 0)


def _mark_value(value: str, default_mask: int) -> Tuple[int, int]:
    mark, _, mask = value.partition("/")
    return _hex(mark), (_hex(mask) if mask else default_mask)


# An option: (negated, name, values).
Option = Tuple[bool, str, Tuple[str, ...]]


def _normalise_statistic(options: List[Option]) -> List[Option]:
    result = []
    for negated, name, values in options:
        if name == "--probability":
            # The kernel keeps the probability in steps of 1/2^31 (libxt_statistic: lround).
            kept = int(0x80000000 * float(values[0]) + 0.5)
            values = ("%.11f" % (kept / 0x80000000),)
        result.append((negated, name, values))
    return result


def _normalise_recent(options: List[Option]) -> List[Option]:
    """libxt_recent prints: command, --seconds, --reap, --hitcount, --rttl, --name, --mask, side."""
    given = {name: (negated, values) for negated, name, values in options}
    result: List[Option] = []
    for command in ("--set", "--rcheck", "--update", "--remove"):
        if command in given:
            result.append((given[command][0], command, ()))
    for name in ("--seconds", "--reap", "--hitcount", "--rttl"):
        if name in given:
            result.append((False, name, given[name][1]))
    result.append((False, "--name", given.get("--name", (False, ("DEFAULT",)))[1]))
    result.append((False, "--mask", given.get("--mask", (False, ("255.255.255.255",)))[1]))
    result.append((False, "--rdest" if "--rdest" in given else "--rsource", ()))
    return result


def _normalise_mark_target(options: List[Option]) -> List[Option]:
    """MARK's --or-mark/--xor-mark/--set-mark are all saved as --set-xmark value/mask."""
    result = []
    for negated, name, values in options:
        if name == "--or-mark":
            mark = _hex(values[0])
            values, name = ("0x%x/0x%x" % (mark, mark),), "--set-xmark"
        elif name == "--xor-mark":
            values, name = ("0x%x/0x0" % _hex(values[0]),), "--set-xmark"
        elif name == "--and-mark":
            values, name = ("0x0/0x%x" % (~_hex(values[0]) & 0xFFFFFFFF),), "--set-xmark"
        elif name in ("--set-mark", "--set-xmark"):
            mark, mask = _mark_value(values[0], 0xFFFFFFFF)
            values, name = ("0x%x/0x%x" % (mark, mask),), "--set-xmark"
        result.append((negated, name, values))
    return result


def _normalise_mark_match(options: List[Option]) -> List[Option]:
    result = []
    for negated, name, values in options:
        if name == "--mark":
            mark, mask = _mark_value(values[0], 0xFFFFFFFF)
            values = ("0x%x/0x%x" % (mark, mask),) if mask != 0xFFFFFFFF else ("0x%x" % mark,)
        result.append((negated, name, values))
    return result


_IP_PROTOCOL_NUMBERS = {"tcp": "6", "udp": "17", "sctp": "132"}
# libxt_ipvs prints its options in this order, the protocol as its number.
_IPVS_OPTION_ORDER = ("--ipvs", "--vproto", "--vaddr", "--vport", "--vdir", "--vmethod", "--vportctl")


def _normalise_ipvs(options: List[Option]) -> List[Option]:
    result = []
    for negated, name, values in options:
        if name == "--vproto":
            values = (_IP_PROTOCOL_NUMBERS.get(values[0].lower(), values[0]),)
        result.append((negated, name, values))
    return sorted(result, key=lambda option: _IPVS_OPTION_ORDER.index(option[1])
                  if option[1] in _IPVS_OPTION_ORDER else len(_IPVS_OPTION_ORDER))


def _normalise_reject(options: List[Option]) -> List[Option]:
    return options or [(False, "--reject-with", ("icmp-port-unreachable",))]


_MATCH_NORMALISERS = {
    "statistic": _normalise_statistic,
    "recent": _normalise_recent,
    "mark": _normalise_mark_match,
    "ipvs": _normalise_ipvs,
}
_TARGET_NORMALISERS = {
    "MARK": _normalise_mark_target,
    "REJECT": _normalise_reject,
}


def normalise_rule(text: str) -> Rule:
    """A rule's arguments (without ``-A CHAIN``) in the form iptables-save prints them."""
    return _normalise_tokens(tokenize(text), text)


def _normalise_tokens(tokens: List[str], text: str) -> Rule:
    generic: Dict[str, Tuple[bool, str]] = {}
    matches: List[Tuple[str, List[Option]]] = []
    target: Optional[Tuple[str, str, List[Option]]] = None
    options: Optional[List[Option]] = None
    negated = False
    position = 0
    while position < len(tokens):
        token = tokens[position]
        position += 1
        if token == "!":
            negated = True
            continue
        if token in _GENERIC:
            value = tokens[position]
            position += 1
            short = _GENERIC[token]
            generic[short] = (negated, value.lower() if short == "-p" else (
                _address(value) if short in ("-s", "-d") else value))
            negated = False
            continue
        if token in ("-m", "--match"):
            options = []
            matches.append((tokens[position], options))
            position += 1
            continue
        if token in ("-j", "--jump", "-g", "--goto"):
            options = []
            target = ("-g" if token in ("-g", "--goto") else "-j", tokens[position], options)
            position += 1
            continue
        values = []
        while position < len(tokens) and not tokens[position].startswith("-") and tokens[position] != "!":
            values.append(tokens[position])
            position += 1
        if options is None:
            # `-p tcp --dport 80` without `-m tcp`: iptables loads the protocol match itself.
            protocol = generic.get("-p", (False, ""))[1]
            if protocol not in _IMPLICIT_PROTOCOL_MATCHES:
                raise ValueError("option %s outside a match in rule %r" % (token, text))
            options = []
            matches.append((protocol, options))
        options.append((negated, token, tuple(values)))
        negated = False

    result: List[str] = []
    for short in _GENERIC_ORDER:
        if short in generic:
            is_negated, value = generic[short]
            result.extend((["!"] if is_negated else []) + [short, value])
    for name, match_options in matches:
        result.extend(["-m", name])
        result.extend(_flatten(_MATCH_NORMALISERS.get(name, list)(match_options)))
    if target is not None:
        kind, name, target_options = target
        result.extend([kind, name])
        result.extend(_flatten(_TARGET_NORMALISERS.get(name, list)(target_options)))
    return tuple(result)


def _flatten(options: Iterable[Option]) -> List[str]:
    flat: List[str] = []
    for negated, name, values in options:
        flat.extend((["!"] if negated else []) + [name] + list(values))
    return flat


def rule_text(rule: Rule) -> str:
    """A normalised rule as iptables-save prints it (which always quotes comments)."""
    words = []
    for position, token in enumerate(rule):
        always = position > 0 and rule[position - 1] == "--comment"
        words.append(_always_quoted(token) if always else _quote(token))
    return " ".join(words)


# Options whose value the kernel prints back as given, and the ones that hold addresses.
_VERBATIM_VALUES = ("--comment", "--to-destination", "--name", "--dport")
_ADDRESS_OPTIONS = ("-s", "--source", "--src", "-d", "--destination", "--dst")
_JUMPS = ("-j", "--jump", "-g", "--goto")
# Splits a rule into [text, option, value, text, option, value, ..., text] at those values.
_VALUES = re.compile(r'(?<!\S)(%s) ("(?:[^"\\]|\\.)*"|[^\s"]\S*)'
                     % "|".join(re.escape(option) for option in _VERBATIM_VALUES + _ADDRESS_OPTIONS + _JUMPS))
_ESCAPED = re.compile(r"\\(.)")
# A rule's saved form by its shape: the rule with those values taken out (its comment, its
# addresses, the chain it jumps to, ...), as a str.format template. A ruleset of thousands of
# Services has a few dozen shapes, so each is normalised once and each rule only fills in its
# own values.
_SAVED_FORMS: Dict[str, str] = {}


def saved_rule(text: str) -> str:
    """rule_text(normalise_rule(text)): the rule as iptables-save prints it, without ``-A CHAIN``."""
    pieces = _VALUES.split(text)
    shape = [pieces[0]]
    values: List[str] = []
    for position in range(1, len(pieces), 3):
        option, value = pieces[position], pieces[position + 1]
        if value.startswith('"'):
            value = _ESCAPED.sub(r"\1", value[1:-1])
        if option in _JUMPS and not value.startswith(OWNED_CHAIN_PREFIX):
            slot = value  # a target such as MARK or DNAT: what follows it depends on its name
        else:
            slot = "\0%d" % len(values)
            if option == "--comment":
                value = _always_quoted(value)
            else:
                value = _quote(_address(value) if option in _ADDRESS_OPTIONS else value)
            values.append(value)
        shape.extend((option, " ", slot, pieces[position + 2]))
    key = "".join(shape)
    form = _SAVED_FORMS.get(key)
    if form is None:
        form = _SAVED_FORMS[key] = _saved_template(normalise_rule(key))
    return form.format(*values)


def _saved_template(rule: Rule) -> str:
    """rule_text of a rule whose values are slots ("\0N"): a template with {N} in their place."""
    words = []
    for position, token in enumerate(rule):
        if token.startswith("\0"):
            words.append("{%s}" % token[1:])
        else:
            comment = position > 0 and rule[position - 1] == "--comment"
            words.append((_always_quoted(token) if comment else _quote(token)).replace("{", "{{").replace("}", "}}"))
    return " ".join(words)


def _always_quoted(text: str) -> str:
    return '"%s"' % text.replace('"', '\\"')


def jump_target(rule: Rule) -> Optional[str]:
    for position, token in enumerate(rule[:-1]):
        if token in ("-j", "-g"):
            return rule[position + 1]
    return None


# --------------------------------------------------------------------------- live state

@dataclass
class LiveTable:
    """What iptables-save shows of one table, restricted to what the module owns: its chains'
    rules as saved (saved_rule's form, when the kernel printed what the module wrote), and the
    jumps into them, normalised."""

    saved: Dict[str, List[str]] = field(default_factory=dict)
    jumps: Dict[str, List[Rule]] = field(default_factory=dict)

    @property
    def chains(self) -> Dict[str, List[Rule]]:
        """The owned chains' rules, normalised."""
        return {chain: _normalised(rules) for chain, rules in self.saved.items()}


@dataclass
class LiveState:
    tables: Dict[str, LiveTable]
    backend: Optional[str]


def parse_save(text: str) -> LiveState:
    """Read ``iptables-save`` output; keep the KUBE-* chains and the jumps into them."""
    tables = {table: LiveTable() for table in TABLES}
    # iptables-nft-save names its backend in the header; iptables-legacy-save names none.
    header = re.search(r"^# Generated by iptables(?:-\w+)?-save v\S+(?: \((\w+)\))?", text, re.MULTILINE)
    current: Optional[LiveTable] = None
    for line in text.splitlines():
        if line.startswith("*"):
            current = tables.get(line[1:].strip())
        elif current is None or not line or line.startswith("#") or line == "COMMIT":
            continue
        elif line.startswith(":"):
            chain = line[1:].split()[0]
            if chain.startswith(OWNED_CHAIN_PREFIX):
                current.saved.setdefault(chain, [])
        elif line.startswith("-A "):
            _, chain, rest = line.split(" ", 2)
            if chain.startswith(OWNED_CHAIN_PREFIX):
                current.saved.setdefault(chain, []).append(rest)
            else:
                rule = normalise_rule(rest)
                target = jump_target(rule)
                if target and target.startswith(OWNED_CHAIN_PREFIX):
                    current.jumps.setdefault(chain, []).append(rule)
    backend = (header.group(1) or "legacy") if header else None
    return LiveState(tables=tables, backend=backend)


def backend_of(version: str) -> Optional[str]:
    """The backend named by ``iptables --version``: ``iptables v1.8.9 (nf_tables)``."""
    found = re.search(r"\((\w+)\)", version)
    return found.group(1) if found else None


# --------------------------------------------------------------------------- planning

# A sync that writes more rule lines than this goes in several restores of about this many
# each (plan's docstring says how, and docs/performance.md what it measured): iptables-nft's
# --noflush restore costs more per rule the more one transaction holds.
BATCH_RULES = 2500


@dataclass
class Plan:
    """What the ``iptables-restore --noflush`` runs must do (transactions, applied in order),
    and the before/after for --diff.

    before/after are written only when asked for (--diff): at 10,000 Services rendering
    them took longer than the rest of a no-change sync."""

    transactions: List[str]
    desired: IptablesState
    live: LiveState
    changed_chains: List[str]
    deleted_chains: List[str]

    @property
    def changed(self) -> bool:
        return bool(self.transactions)

    @property
    def restore(self) -> str:
        """Every transaction, as one restore input would hold them."""
        return "".join(self.transactions)

    @property
    def before(self) -> str:
        return _saved_form({table: (live.saved, {chain: [rule_text(rule) for rule in rules]
                                                 for chain, rules in live.jumps.items()})
                            for table, live in self.live.tables.items()})

    @property
    def after(self) -> str:
        return _saved_form({table: ({chain: [saved_rule(rule) for rule in rules] for chain, rules in want.chains.items()},
                                    {chain: [saved_rule(rule) for rule in rules] for chain, rules in want.jumps.items()})
                            for table, want in self.desired.items()})


def _normalised(rules: List[str]) -> List[Rule]:
    return [normalise_rule(rule) for rule in rules]


def _same_rules(saved: Optional[List[str]], rules: List[str]) -> bool:
    """Whether a live chain, as iptables-save printed it, holds these rules: its text against
    their saved form, normalising both only where the texts differ (an iptables that prints a
    rule its own way); a chain that is not there holds none, not even an empty list."""
    if saved is None or len(saved) != len(rules):
        return False
    return [saved_rule(rule) for rule in rules] == saved or _normalised(saved) == _normalised(rules)


def _saved_form(tables: Dict[str, Tuple[Dict[str, List[str]], Dict[str, List[str]]]]) -> str:
    """Chains and built-in chains' jumps, rules given as saved, the way iptables-save lists them."""
    lines: List[str] = []
    for table in TABLES:
        chains, jumps = tables[table]
        jumps = {chain: rules for chain, rules in jumps.items() if rules}
        if not chains and not jumps:
            continue
        lines.append("*" + table)
        lines.extend(":%s - [0:0]" % chain for chain in sorted(chains))
        for chain in BUILTIN_CHAINS[table]:
            lines.extend("-A %s %s" % (chain, rule) for rule in jumps.get(chain, []))
        for chain in sorted(chains):
            lines.extend("-A %s %s" % (chain, rule) for rule in chains[chain])
        lines.append("COMMIT")
    return "\n".join(lines) + ("\n" if lines else "")


@dataclass
class _TableEdit:
    """What one table needs: the chains to write whole, those to delete, the built-in chains
    whose jumps differ."""

    table: str
    want: TableState
    have: LiveTable
    rewrite: List[str]
    delete: List[str]
    jump_chains: List[str]


def plan(desired: IptablesState, live: LiveState, batch_rules: int = BATCH_RULES) -> Plan:
    """Rewrite the chains that differ, delete the stale ones, fix the jumps.

    Up to batch_rules rule lines this is one restore, each table one atomic COMMIT, as
    kube-proxy writes it. A larger sync (a cold start, thousands of Services changed) is split
    so that every state in between is one kube-proxy could have written: first the Services'
    own chains, a batch of whole Services per restore (their endpoint, service, external and
    firewall chains together), with the shared chains they jump to created if missing; then
    one restore that writes the shared chains (KUBE-SERVICES, KUBE-NODEPORTS, the filter
    chains, ...) and the jumps into them, which makes the new Services reachable, and deletes
    the stale chains, which nothing refers to any more. Until that last restore every Service
    is reached through the chains it had, rewritten whole or not at all.
    """
    edits: List[_TableEdit] = []
    for table in TABLES:
        want = desired[table]
        have = live.tables[table]
        edit = _TableEdit(
            table, want, have,
            rewrite=[chain for chain, rules in want.chains.items() if not _same_rules(have.saved.get(chain), rules)],
            delete=sorted(chain for chain in have.saved if chain not in want.chains),
            jump_chains=[chain for chain in BUILTIN_CHAINS[table]
                         if have.jumps.get(chain, []) != _normalised(want.jumps.get(chain, []))],
        )
        if edit.rewrite or edit.delete or edit.jump_chains:
            edits.append(edit)

    size = sum(len(edit.want.chains[chain]) for edit in edits for chain in edit.rewrite)
    if size <= batch_rules:
        transactions = [_restore([_block(edit, edit.rewrite, edit.delete, edit.jump_chains) for edit in edits])]
    else:
        transactions = _batched(edits, batch_rules)
    return Plan(
        transactions=[text for text in transactions if text],
        desired=desired,
        live=live,
        changed_chains=["%s/%s" % (edit.table, chain) for edit in edits for chain in edit.rewrite],
        deleted_chains=["%s/%s" % (edit.table, chain) for edit in edits for chain in edit.delete],
    )


def _batched(edits: List[_TableEdit], batch_rules: int) -> List[str]:
    """plan's restores for a large sync: the Services' own chains in batches, then the rest."""
    transactions: List[str] = []
    # Shared chains that do not exist yet, created empty with the first batch: a Service's
    # chains may jump to them (KUBE-MARK-MASQ), and nothing jumps to them yet.
    missing = [[chain for chain in edit.rewrite if chain not in edit.want.owners and chain not in edit.have.saved]
               for edit in edits]
    batch: List[List[str]] = [[] for _ in edits]

    def close_batch() -> None:
        transactions.append(_restore([_block(edits[i], chains, [], [], declare_only=[] if transactions else missing[i])
                                      for i, chains in enumerate(batch)]))

    rules = 0
    for position, edit in enumerate(edits):
        owner = None
        for chain in edit.rewrite:
            if chain not in edit.want.owners:
                continue
            # A batch closes only between two Services, never inside one.
            if rules >= batch_rules and edit.want.owners[chain] != owner:
                close_batch()
                batch, rules = [[] for _ in edits], 0
            owner = edit.want.owners[chain]
            batch[position].append(chain)
            rules += len(edit.want.chains[chain])
    close_batch()
    transactions.append(_restore([
        _block(edit, [chain for chain in edit.rewrite if chain not in edit.want.owners], edit.delete, edit.jump_chains)
        for edit in edits]))
    return transactions


def _block(edit: _TableEdit, rewrite: List[str], delete: List[str], jump_chains: List[str],
           declare_only: Iterable[str] = ()) -> List[str]:
    """One table's part of a restore: the chains in rewrite written whole, those in delete
    deleted, the jumps of the built-in chains in jump_chains put right, the chains in
    declare_only created empty. [] when there is nothing to do."""
    declare = list(declare_only) + rewrite + delete
    if not (declare or jump_chains):
        return []
    lines = ["*" + edit.table]
    # Declaring a chain under --noflush creates it, or flushes it when it exists.
    lines.extend(":%s - [0:0]" % chain for chain in declare)
    for chain in jump_chains:
        lines.extend("-D %s %s" % (chain, rule_text(rule)) for rule in edit.have.jumps.get(chain, []))
    for chain in rewrite:
        lines.extend("-A %s %s" % (chain, rule) for rule in edit.want.chains[chain])
    for chain in jump_chains:
        # kube-proxy puts its jumps first in the built-in chains.
        for position, rule in enumerate(edit.want.jumps.get(chain, []), start=1):
            lines.append("-I %s %d %s" % (chain, position, rule))
    lines.extend("-X %s" % chain for chain in delete)
    lines.append("COMMIT")
    return lines


def _restore(blocks: List[List[str]]) -> str:
    lines = [line for block in blocks for line in block]
    return "\n".join(lines) + "\n" if lines else ""
