"""One sync, like kube-proxy's syncProxyRules: desired state for the mode, diffed against the
live state of everything the module owns, as an ordered list of steps to apply.

Entering a mode also removes what the other modes left behind, so switching modes in a
node never leaves a second data plane half in place.
"""

from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional, Tuple, Union

from . import iptables, ipvs, nftables
from .model import ProxyConfig

Command = Tuple[Tuple[str, ...], Optional[str]]


@dataclass
class Live:
    """What the readers printed inside the node; None where there is nothing to read."""

    iptables_save: str
    ipset_save: Optional[str] = None        # None: no ipset tool, so no sets either
    ipvsadm_save: Optional[str] = None      # None: the kernel has no IPVS loaded
    ipvs_device: Optional[str] = None       # None: no kube-ipvs0; else `ip -o -4 addr show dev kube-ipvs0`
    # `ip -o -4 addr show`, read where kube-proxy would need it (ipvs mode, a Service reachable
    # from outside): the node's own addresses, for NodePorts and for what kube-ipvs0 must not take.
    local_addresses: str = ""
    sysctls: Dict[str, str] = field(default_factory=dict)
    nft_table: Optional[str] = None         # None: no table ip kube-proxy; else `nft -j list table ip kube-proxy`
    kernel_release: str = ""                # os.uname().release; "" counts as an old kernel


Text = Union[str, Callable[[], str]]


@dataclass
class Step:
    """One part of the node's state: how it reads before and after, and the commands between.

    before/after may be given as functions, called only when read (--diff): writing them
    out costs seconds at thousands of Services, and most runs never show them."""

    name: str
    before_text: Text
    after_text: Text
    commands: List[Command]

    def __init__(self, name: str, before: Text, after: Text, commands: List[Command]):
        self.name = name
        self.before_text = before
        self.after_text = after
        self.commands = commands

    @property
    def before(self) -> str:
        return self.before_text() if callable(self.before_text) else self.before_text

    @property
    def after(self) -> str:
        return self.after_text() if callable(self.after_text) else self.after_text


@dataclass
class SyncPlan:
    steps: List[Step]
    rules: str
    iptables_backend: Optional[str]
    changed_chains: List[str]
    deleted_chains: List[str]

    @property
    def changed(self) -> bool:
        return any(step.commands for step in self.steps)


def running_mode(live: Live) -> Optional[str]:
    """The mode whose state the node holds, told by what only that mode leaves: the nftables
    table, the IPVS dummy device kube-ipvs0, or (the iptables mode's) KUBE-SERVICES chain
    in nat without either. None: kube-proxy has programmed nothing here."""
    if live.nft_table is not None:
        return "nftables"
    if live.ipvs_device is not None:
        return "ipvs"
    if iptables.KUBE_SERVICES in iptables.parse_save(live.iptables_save).tables["nat"].saved:
        return "iptables"
    return None


def lines(items: List[str]) -> str:
    """ITEMS as text, one per line."""
    return "\n".join(items) + ("\n" if items else "")


def plan(config: ProxyConfig, present: bool, live: Live) -> SyncPlan:
    use_ipvs = present and config.mode == "ipvs"
    use_nftables = present and config.mode == "nftables"
    wanted_ipvs = ipvs.render(config, ipvs.parse_local_addresses(live.local_addresses)) if use_ipvs else ipvs.IpvsState()
    if not present or use_nftables:
        wanted_rules = iptables.absent_state()
    elif use_ipvs:
        wanted_rules = ipvs.render_iptables(config, wanted_ipvs)
    else:
        wanted_rules = iptables.render(config)

    live_rules = iptables.parse_save(live.iptables_save)
    rules_plan = iptables.plan(wanted_rules, live_rules)
    live_sets = ipvs.parse_ipset_save(live.ipset_save or "")
    live_servers = ipvs.parse_ipvsadm_save(live.ipvsadm_save or "")
    live_addresses = ipvs.parse_addresses(live.ipvs_device) if live.ipvs_device is not None else None

    steps: List[Step] = []
    if use_ipvs:
        wanted_sysctls = dict(ipvs.SYSCTLS)
        differing = ["%s=%s" % (key, value) for key, value in ipvs.SYSCTLS if live.sysctls.get(key) != value]
        steps.append(Step(
            "sysctls",
            before=lines(["%s = %s" % (key, live.sysctls.get(key, "(unset)")) for key in wanted_sysctls]),
            after=lines(["%s = %s" % item for item in ipvs.SYSCTLS]),
            commands=[(("sysctl", "-w") + tuple(differing), None)] if differing else [],
        ))

    sets_before, sets_after = ipvs.plan_ipsets(wanted_ipvs.ipsets, live_sets)
    sets_diff = dict(before=lambda: ipvs.ipset_text(live_sets), after=lambda: ipvs.ipset_text(wanted_ipvs.ipsets))
    # Sets must exist before the iptables rules that match on them ...
    steps.append(Step("ipset", commands=[(("ipset", "restore", "-exist"), lines(sets_before))] if sets_before else [],
                      **sets_diff))
    steps.append(Step(
        "iptables", before=lambda: rules_plan.before, after=lambda: rules_plan.after,
        commands=[(("iptables-restore", "--noflush"), text) for text in rules_plan.transactions],
    ))
    # ... and can only be destroyed once no rule refers to them.
    if sets_after:
        steps.append(Step("ipset", commands=[(("ipset", "restore"), lines(sets_after))], **sets_diff))

    server_lines = ipvs.plan_virtual_servers(wanted_ipvs.virtual_servers, live_servers)
    steps.append(Step(
        "ipvs",
        before=lambda: ipvs.ipvsadm_text(ipvs.IpvsState(virtual_servers=live_servers)),
        after=lambda: ipvs.ipvsadm_text(wanted_ipvs),
        # `ipvsadm -R`, not ipvsadm-restore: that script clears every virtual server first,
        # which would cut every connection and make the -D/-E/-d/-e edits fail.
        commands=[(("ipvsadm", "-R"), lines(server_lines))] if server_lines else [],
    ))
    address_lines = ipvs.plan_addresses(wanted_ipvs.addresses, live_addresses)
    steps.append(Step(
        ipvs.DUMMY_DEVICE,
        before=lines(sorted(live_addresses)) if live_addresses is not None else "",
        after=lines(sorted(wanted_ipvs.addresses)),
        commands=[(("ip", "-batch", "-"), lines(address_lines))] if address_lines else [],
    ))

    wanted_table = nftables.render(config, config.service_cidr) if use_nftables else None
    live_table = nftables.parse_json(live.nft_table) if live.nft_table is not None else None
    if wanted_table != live_table:
        if not wanted_table:
            nft_inputs = [nftables.delete_script()]
        elif live_table is None:
            # A node without the table: in batches of whole Services when it is large.
            nft_inputs = nftables.batched_scripts(wanted_table)
        else:
            # In place when update_script can trust an edit (kube-proxy's partial sync); whole otherwise.
            kernel = nftables.kernel_version(live.kernel_release)
            nft_inputs = [nftables.update_script(wanted_table, live_table, kernel) or nftables.script(wanted_table, True)]
        steps.append(Step(
            "nftables",
            before=lambda: nftables.listing(live_table) if live_table else "",
            after=lambda: nftables.listing(wanted_table) if wanted_table else "",
            commands=[(("nft", "-f", "-"), text) for text in nft_inputs],
        ))

    return SyncPlan(
        steps=steps,
        rules=rendered_rules(config, wanted_rules, wanted_ipvs, wanted_table) if present else "",
        iptables_backend=live_rules.backend,
        changed_chains=rules_plan.changed_chains,
        deleted_chains=rules_plan.deleted_chains,
    )


def rendered_rules(
    config: ProxyConfig,
    wanted_rules: iptables.IptablesState,
    wanted_ipvs: ipvs.IpvsState,
    wanted_table: Optional[nftables.NftState],
) -> str:
    """What kube-proxy would write, for students: the mode's own input text."""
    if wanted_table is not None:
        return nftables.script(wanted_table, live_exists=False)
    restore = iptables.restore_text(wanted_rules)
    if config.mode != "ipvs":
        return restore
    return "".join([
        "# ipvsadm-save -n\n", ipvs.ipvsadm_text(wanted_ipvs),
        "# ip -4 addr show dev %s\n" % ipvs.DUMMY_DEVICE,
        lines(["inet %s" % address for address in sorted(wanted_ipvs.addresses)]),
        "# ipset save\n", ipvs.ipset_text(wanted_ipvs.ipsets),
        "# iptables-restore --noflush\n", restore,
    ])
