#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Ansible front door of the lab's kube-proxy: parameters in, kernel state out."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: kube_proxy
short_description: Program a network namespace the way kube-proxy programs a node
description:
  - Computes, from declared Kubernetes Services, exactly the state kube-proxy would install
    on a node, and installs it in the network namespace O(netns).
  - In V(iptables) mode that is kube-proxy's NAT chains (C(KUBE-SERVICES), C(KUBE-SVC-*),
    C(KUBE-SEP-*), C(KUBE-MARK-MASQ), C(KUBE-POSTROUTING)) with its chain names, comments,
    probabilities and marks, applied in one C(iptables-restore --noflush). A sync that writes
    more than 2,500 rules (a cold start of a large cluster) is split into several, each a
    batch of whole Services, then one for the shared chains, because iptables-nft's --noflush
    restore costs more per rule the larger one transaction is (at 5,000 Services 50 s as one, a
    few seconds as batches).
  - In V(ipvs) mode it is one IPVS virtual server per service port and address (the ClusterIP,
    each external and load balancer IP, and for a NodePort each node address), real servers in
    masquerade mode, every ClusterIP, external and load balancer IP on the dummy device
    C(kube-ipvs0), the ipsets C(KUBE-CLUSTER-IP) and C(KUBE-LOOP-BACK) (and, once a Service is
    reachable from outside, every other set kube-proxy keeps, C(KUBE-NODE-PORT-*),
    C(KUBE-LOAD-BALANCER*), C(KUBE-EXTERNAL-IP*), C(KUBE-HEALTH-CHECK-NODE-PORT),
    C(KUBE-IPVS-IPS)), the iptables rules that use them, and the C(net.ipv4.vs.*) sysctls.
  - In V(nftables) mode it is the table C(ip kube-proxy), changed in one C(nft -f) transaction.
    An existing table is edited in place, as kube-proxy's partial sync does, when only map and
    set elements, rules and chains differ (on a kernel older than 6.2, only when no chain has
    to be deleted, which those kernels refuse alongside the rules that jump to it). Otherwise
    it is replaced whole, for example when a ClientIP Service's affinity sets are added or
    removed, when a set or map is declared otherwise, or when the table holds anything the
    module does not understand. A node without the table gets it in one transaction too,
    unless it is large (more than 5,000 lines, a cold start of thousands of Services), then
    in several, the first with the table, its sets and maps and the shared chains, each of
    the others a batch of whole Services with the map elements that lead to them.
  - The module owns, in the namespace, every C(KUBE-*) chain and the jumps into them, the
    C(KUBE-*) ipsets, the IPVS virtual servers, C(kube-ipvs0) and the table C(ip kube-proxy);
    it never touches anything else. Entering a mode removes what the other modes left.
    A second run with the same input changes nothing.
  - Uses the system's C(iptables) (nf_tables or legacy backend, whichever C(iptables) is);
    the result says which.
version_added: "1.0.0"
author:
  - kube-proxy-lab developers
options:
  netns:
    description:
      - Network namespace of the node, as listed by C(ip netns list). It must exist unless
        O(state=absent), or in check mode, which then plans against an empty node.
    type: str
    required: true
  node_name:
    description:
      - The name of the node this kube-proxy runs on (C(--hostname-override)), matched against
        each endpoint's C(node_name) to tell the node's own endpoints (RV(local_endpoints)).
    type: str
  node_ips:
    description:
      - The node's addresses NodePorts answer on (kube-proxy's C(--nodeport-addresses), resolved
        to this node's addresses). Empty, every local address of the node does, as kube-proxy
        does without C(--nodeport-addresses).
    type: list
    elements: str
    default: []
  node_port_range:
    description:
      - The range node ports are taken from (the API server's C(--service-node-port-range)),
        C(LOW-HIGH); O(services[].node_port) and O(services[].health_check_node_port) must lie in it.
    type: str
    default: 30000-32767
  mode:
    description:
      - Data plane to program, as kube-proxy's C(--proxy-mode).
      - V(ipvs) needs a kernel that can load C(ip_vs); where it cannot, the module fails at once
        and names the way out (the lab's user-mode-linux node).
      - V(nftables) needs nf_tables in the kernel (5.13 or newer for kube-proxy) and nft 1.0.1 or newer.
    type: str
    choices: [iptables, ipvs, nftables]
    default: iptables
  cluster_cidr:
    description:
      - The pod network (kube-proxy's C(--cluster-cidr)). Traffic to a ClusterIP from a source
        outside it is marked for masquerade, so replies come back through this node.
    type: str
    default: 10.0.0.0/24
  service_cidr:
    description:
      - The Service network (kube-proxy's C(--service-cluster-ip-range)). In V(nftables) mode
        traffic to an address in it that is no ClusterIP is dropped, as kube-proxy does.
    type: str
  masquerade_all:
    description:
      - Masquerade all traffic sent to a ClusterIP (kube-proxy's C(--masquerade-all)),
        not only traffic from outside O(cluster_cidr).
    type: bool
    default: false
  ipvs_scheduler:
    description:
      - IPVS scheduler for every virtual server, used by O(mode=ipvs).
    type: str
    choices: [rr, wrr, lc, wlc, lblc, lblcr, sh, dh, sed, nq, mh]
    default: rr
  state:
    description:
      - V(present) installs the rendered state; V(absent) removes everything the module owns
        in the namespace, whatever the mode; V(query) changes nothing and returns the mode
        the node runs (RV(running_mode)).
    type: str
    choices: [present, absent, query]
    default: present
  services:
    description:
      - The Services, one entry per service port.
    type: list
    elements: dict
    default: []
    suboptions:
      namespace:
        description: Kubernetes namespace of the Service (an RFC 1123 label).
        type: str
        default: default
      name:
        description: Name of the Service (an RFC 1035 label).
        type: str
        required: true
      port_name:
        description:
          - Name of the service port; part of kube-proxy's servicePortName C(ns/name:port_name),
            and so of every chain name. Empty for an unnamed port.
        type: str
        default: ""
      protocol:
        description: Protocol of the service port.
        type: str
        choices: [TCP, UDP, SCTP]
        default: TCP
      cluster_ip:
        description: The Service's ClusterIP (IPv4).
        type: str
        required: true
      port:
        description: The service port on the ClusterIP, 1..65535.
        type: int
        required: true
      target_port:
        description: The port on each endpoint, 1..65535. Defaults to O(services[].port).
        type: int
      session_affinity:
        description: V(ClientIP) keeps each client on one endpoint for O(services[].session_affinity_timeout) seconds.
        type: str
        choices: [None, ClientIP]
        default: None
      session_affinity_timeout:
        description: Seconds a ClientIP affinity lasts, 1..86400.
        type: int
        default: 10800
      endpoints:
        description:
          - The Service's endpoints, each an IPv4 address (a ready endpoint) or a mapping of
            EndpointSlice's fields, C(ip), C(node_name), C(ready) (default true), C(serving)
            (default what C(ready) says), C(terminating) (default false).
          - As kube-proxy does, the ready endpoints are programmed; when none is ready, those
            serving while terminating. No usable endpoint makes the Service reject connections.
        type: list
        elements: raw
        default: []
      type:
        description:
          - The Service's C(spec.type). V(NodePort) opens O(services[].node_port) on the node;
            V(LoadBalancer) also takes traffic for O(services[].load_balancer_ips).
          - V(nftables) mode answers NodePorts on O(node_ips) only, which it then needs; V(ipvs)
            mode puts a virtual server on each of O(node_ips), or without them on every address of
            the node but those of C(kube-ipvs0) and loopback.
        type: str
        choices: [ClusterIP, NodePort, LoadBalancer]
        default: ClusterIP
      node_port:
        description:
          - The service port's C(nodePort), 30000..32767, required for V(NodePort) and
            V(LoadBalancer) (this module allocates none), unique per protocol.
        type: int
      external_ips:
        description: The Service's C(spec.externalIPs) (IPv4); traffic to them on O(services[].port) is served.
        type: list
        elements: str
        default: []
      load_balancer_ips:
        description: The load balancer's ingress IPs (C(status.loadBalancer.ingress[].ip)), for V(LoadBalancer).
        type: list
        elements: str
        default: []
      load_balancer_source_ranges:
        description:
          - C(spec.loadBalancerSourceRanges), CIDRs, for V(LoadBalancer). Traffic to a load
            balancer IP from elsewhere is dropped (the C(KUBE-FW-*) chain and C(KUBE-PROXY-FIREWALL)).
        type: list
        elements: str
        default: []
      external_traffic_policy:
        description:
          - C(spec.externalTrafficPolicy), for a Service reachable from outside (V(NodePort),
            V(LoadBalancer), or O(services[].external_ips)); default V(Cluster).
          - V(Local) sends external traffic only to endpoints whose C(node_name) is O(node_name),
            without masquerading it, and drops it on a node that has none.
        type: str
        choices: [Cluster, Local]
      internal_traffic_policy:
        description:
          - C(spec.internalTrafficPolicy). V(Local) sends traffic to the ClusterIP only to this
            node's endpoints, and drops it on a node that has none.
        type: str
        choices: [Cluster, Local]
        default: Cluster
      health_check_node_port:
        description:
          - C(spec.healthCheckNodePort), required for a V(LoadBalancer) Service with
            O(services[].external_traffic_policy=Local), and only there. The module accepts
            TCP to it (C(KUBE-NODEPORTS) in filter); the lab's health check server answers it.
        type: int
  lock_timeout:
    description:
      - Seconds to wait while another run of this module syncs the same namespace.
      - Runs on one node are serialised, as kube-proxy runs one sync loop per node. Each holds
        an exclusive C(flock) on the namespace's file C(/run/netns/NETNS) from reading the live
        state to the end of its apply, so two runs at once leave exactly the later one's state,
        never a mixture. The kernel releases the lock when its holder exits, killed or not.
    type: int
    default: 600
  conntrack_cleanup:
    description:
      - "After each sync, delete the node's conntrack entries of UDP flows that the new rules would
        no longer send where they went, as kube-proxy does (pkg/proxy/conntrack): each entry whose
        original destination is a UDP service port (a ClusterIP, load balancer or external IP and
        the port, or a NodePort on any address) and whose reply source, the address it was DNATed
        to, is not a serving endpoint of that service port. One C(conntrack -D) with exact filters
        (C(--orig-dst), C(--orig-port-dst), C(--reply-src)) per stale pair, never a flush. Without it
        a client that keeps sending from one port keeps reaching a removed pod until its entry
        times out (C(net.netfilter.nf_conntrack_udp_timeout[_stream]))."
      - In check mode the entries are found and reported, not deleted. Runs only when a UDP
        service port is declared. V(false) leaves every entry alone (the lab's C(udp_stale) exercise).
    type: bool
    default: true
  health_check_run_dir:
    description:
      - Also be the node's service health check server, as kube-proxy is. After each sync, keep
        one HTTP listener per C(healthCheckNodePort) of O(services) running in O(netns),
        answering the node's count of the Service's ready endpoints (200, or 503 with none),
        and end those of ports no longer declared; with O(state=absent), end them all. The
        servers, their pidfiles, logs and the node's counts live in this directory's
        C(health/), exactly as the M(kube_proxy_health) module keeps them (see there). Absolute
        path; without it no health check server is started or ended.
    type: path
  health_check_python:
    description: The Python that runs the health check servers; by default the one running this module.
    type: str
notes:
  - Every command runs as C(ip netns exec NETNS ...); nothing is changed outside the namespace.
  - "What is atomic: only each table's C(COMMIT) in an C(iptables-restore) and each C(nft -f)
    transaction apply as a whole or not at all. C(ipset restore), C(ipvsadm -R) and
    C(ip -batch) apply their input line by line, and a sync is these steps in turn. So a run
    killed part-way can leave an IPVS virtual server with only some of its real servers, or
    filter's rules committed and nat's not. What the order guarantees: a Service's own
    iptables chains commit together, and its dispatch rule with them or (in a split sync)
    after them, so it is reached through whole chains or not at all; no rule refers to a chain
    or an ipset that does not exist yet (chains and sets are created before the rules that
    jump to or match them, and deleted after the last of those rules). A rerun converges from
    any such point."
requirements:
  - iproute2 (C(ip netns))
  - iptables (C(iptables-save), C(iptables-restore))
  - ipset, ipvsadm and kmod (C(modprobe)) for V(ipvs) mode
  - nftables (C(nft)) for V(nftables) mode
  - conntrack (C(conntrack)), when a UDP service port is declared and O(conntrack_cleanup) is on
"""

EXAMPLES = r"""
- name: Program the lab node like kube-proxy in iptables mode
  kube_proxy:
    netns: lab-node
    mode: iptables
    cluster_cidr: 10.0.0.0/24
    services:
      - namespace: default
        name: app1
        cluster_ip: 10.96.0.10
        port: 80
        target_port: 8080
        endpoints: [10.0.0.2, 10.0.0.3, 10.0.0.4]

- name: Keep each client on one pod for an hour
  kube_proxy:
    netns: lab-node
    services:
      - name: app1
        cluster_ip: 10.96.0.10
        port: 80
        target_port: 8080
        session_affinity: ClientIP
        session_affinity_timeout: 3600
        endpoints: [10.0.0.2, 10.0.0.3]

- name: Remove everything the module installed in the node
  kube_proxy:
    netns: lab-node
    state: absent
"""

RETURN = r"""
mode:
  description: The mode that was programmed.
  returned: always
  type: str
  sample: iptables
local_endpoints:
  description: Per service port (C(namespace/name[:port])), the usable endpoints on O(node_name).
  returned: when O(node_name) is given
  type: dict
  sample: {default/app1: [10.0.0.2, 10.0.0.4]}
running_mode:
  description:
    - With O(state=query), the mode whose state the node holds, told by what only that mode
      leaves (table ip kube-proxy, the kube-ipvs0 device, KUBE-SERVICES in nat without either);
      null when kube-proxy has programmed nothing there or the namespace does not exist.
  returned: when O(state=query)
  type: str
  sample: ipvs
netns:
  description: The node's network namespace.
  returned: always
  type: str
  sample: lab-node
rules:
  description:
    - The rendered state, as kube-proxy would write it. V(iptables) mode, an C(iptables-restore)
      input; V(ipvs) mode, the virtual servers, addresses and ipsets followed by that input;
      V(nftables) mode, the C(nft -f) transaction. Empty when O(state=absent).
  returned: always
  type: str
  sample: |
    *nat
    :KUBE-SERVICES - [0:0]
    -A KUBE-SERVICES -m comment --comment "default/app1 cluster IP" -m tcp -p tcp -d 10.96.0.10 --dport 80 -j KUBE-SVC-VNHUBUYDIJ4EODDB
iptables_backend:
  description: Backend of the node's C(iptables) command, C(nf_tables) or C(legacy).
  returned: when known
  type: str
  sample: nf_tables
changed_chains:
  description: Chains created or rewritten, as C(table/chain).
  returned: always
  type: list
  elements: str
  sample: [nat/KUBE-SERVICES, nat/KUBE-SVC-VNHUBUYDIJ4EODDB]
deleted_chains:
  description: Chains deleted, as C(table/chain).
  returned: always
  type: list
  elements: str
  sample: [nat/KUBE-SEP-3PSCXV3XRLGCZ5L4]
conntrack_deleted:
  description:
    - The stale UDP conntrack entries the cleanup deleted (in check mode, would delete), as
      C(conntrack -L) prints them; see O(conntrack_cleanup).
  returned: when the cleanup ran (a UDP service port declared, O(state=present), O(conntrack_cleanup) on)
  type: list
  elements: str
  sample:
    - udp 17 29 src=192.168.100.2 dst=10.96.0.53 sport=40000 dport=53 src=10.0.0.3 dst=192.168.100.2 sport=8053 dport=40000 mark=0 use=1
health_check:
  description:
    - The node's health check servers (O(health_check_run_dir)), as the M(kube_proxy_health)
      module returns them, C(health_check_node_ports) (with O(state=present)), C(started),
      C(stopped) and C(commands); --diff adds the node's health file and servers, before and after.
  returned: when O(health_check_run_dir) is given
  type: dict
  sample: {health_check_node_ports: {"30081": {service: default/app1, local_endpoints: 1}}, started: ["lab-node:30081"],
           stopped: [], commands: []}
"""

import os
import subprocess

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.kube_proxy import conntrack, health_servers, healthcheck, iptables, ipvs, nftables, sync
from ansible.module_utils.kube_proxy.argspec import SERVICES
from ansible.module_utils.kube_proxy.model import (
    IPVS_SCHEDULERS,
    MODES,
    NODE_PORT_RANGE,
    STATES,
    ValidationError,
    build_config,
    validate_netns,
    validate_node_name,
)
from ansible.module_utils.kube_proxy.node_lock import LockTimeout, NamespaceGone, node_lock

NETNS_DIR = "/run/netns"
# Seconds a run waits for another run on the same node: long enough for one cold sync of
# 10,000 Services with iptables-nft's --noflush restore (519 s measured, docs/performance.md).
DEFAULT_LOCK_TIMEOUT = 600
# Present while the kernel has IPVS loaded (as a module or built in); without it no
# namespace can hold a virtual server, so there is nothing to read or clean.
IP_VS_LOADED = "/sys/module/ip_vs"

ARGUMENT_SPEC = dict(
    netns=dict(type="str", required=True),
    node_name=dict(type="str"),
    node_ips=dict(type="list", elements="str", default=[]),
    node_port_range=dict(type="str", default="%d-%d" % NODE_PORT_RANGE),
    mode=dict(type="str", choices=list(MODES), default="iptables"),
    cluster_cidr=dict(type="str", default="10.0.0.0/24"),
    service_cidr=dict(type="str"),
    masquerade_all=dict(type="bool", default=False),
    ipvs_scheduler=dict(type="str", choices=list(IPVS_SCHEDULERS), default="rr"),
    state=dict(type="str", choices=list(STATES), default="present"),
    services=SERVICES,
    lock_timeout=dict(type="int", default=DEFAULT_LOCK_TIMEOUT),
    conntrack_cleanup=dict(type="bool", default=True),
    health_check_run_dir=dict(type="path"),
    health_check_python=dict(type="str"),
)

NO_IPVS = (
    "mode=ipvs needs IPVS (IP_VS) in the kernel, and this kernel cannot load it (%s). "
    "Run the lab inside the user-mode-linux node, whose kernel has it: make lab-shell MODE=ipvs"
)
NO_NFTABLES = (
    "mode=nftables needs nf_tables with the ip family in the kernel, and this one cannot add "
    "an ip table (nft: %s). Use mode=iptables or mode=ipvs here, or a kernel of 5.13 or newer "
    "with nf_tables (the user-mode-linux node's kernel has none)"
)


def run_reader(argv):
    """(rc, stdout, stderr) of a command that prints the node's state, read whole.

    Not through run_command, which joins a command's output chunk by chunk, at a cost that
    grows with the square of its size: at 10,000 Services `nft -j list table` prints 32 MB,
    which took run_command 9 s to collect and takes this a few milliseconds."""
    process = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, check=False)
    return (process.returncode, process.stdout.decode("utf-8", "surrogateescape"),
            process.stderr.decode("utf-8", "surrogateescape"))


class Node:
    """Runs argv lists inside the node's network namespace."""

    def __init__(self, module, netns):
        self.module = module
        self.netns = netns

    def probe(self, *argv, data=None):
        command = ["ip", "netns", "exec", self.netns] + list(argv)
        return self.module.run_command(command, data=data, binary_data=True)

    def read(self, *argv, missing_ok=False):
        """What a state reader prints (iptables-save, nft -j list, ...): megabytes at thousands
        of Services, so read by run_reader. A failure fails the module, unless missing_ok,
        where it means there is nothing of the kind to read: None."""
        command = ["ip", "netns", "exec", self.netns] + list(argv)
        rc, stdout, stderr = run_reader(command)
        if rc != 0 and missing_ok:
            return None
        return self._checked(argv, rc, stdout, stderr)

    def run(self, *argv, data=None):
        """Like probe, but a failure fails the module, naming the command and the namespace."""
        return self._checked(argv, *self.probe(*argv, data=data))

    def _checked(self, argv, rc, stdout, stderr):
        if rc != 0:
            self.module.fail_json(
                msg="%s failed in network namespace %s: %s" % (argv[0], self.netns, (stderr or stdout).strip()),
                cmd=["ip", "netns", "exec", self.netns] + list(argv), rc=rc, stdout=stdout, stderr=stderr,
            )
        return stdout


def load_ipvs(module, scheduler):
    """Load IPVS, the scheduler and the dummy device driver, as kube-proxy requires them.

    In check mode only ask modprobe whether it could (--dry-run), so --check tells the truth
    on a kernel without IPVS and changes nothing on one with it.
    """
    dry_run = ["--dry-run"] if module.check_mode else []
    rc, _stdout, stderr = module.run_command(["modprobe"] + dry_run + ["ip_vs"])
    if rc != 0 or not (module.check_mode or os.path.exists(IP_VS_LOADED)):
        module.fail_json(msg=NO_IPVS % ("modprobe ip_vs: %s" % (stderr.strip() or "loaded nothing")))
    for kernel_module in ("ip_vs_" + scheduler, "dummy"):
        rc, _stdout, stderr = module.run_command(["modprobe"] + dry_run + [kernel_module])
        if rc != 0:
            module.fail_json(msg="modprobe %s failed: %s" % (kernel_module, stderr.strip()))


def check_nftables(node):
    """Fail at once where the kernel cannot hold an ip nf_tables table (-c: checked, not committed)."""
    rc, stdout, stderr = node.probe("nft", "-c", "add", "table", nftables.TABLE_FAMILY, nftables.TABLE_NAME)
    if rc != 0:
        node.module.fail_json(msg=NO_NFTABLES % ((stderr or stdout).strip().splitlines() or ["nft failed"])[0])


def read_live(module, node, config, present):
    # The namespace shares the host's kernel, so this process's kernel is the node's.
    live = sync.Live(iptables_save=node.read("iptables-save"), kernel_release=os.uname().release)
    if module.get_bin_path("ipset"):
        live.ipset_save = node.read("ipset", "save")
    if os.path.exists(IP_VS_LOADED):
        live.ipvsadm_save = node.read("ipvsadm-save", "-n")
    rc, stdout, _stderr = node.probe("ip", "-o", "-4", "address", "show", "dev", ipvs.DUMMY_DEVICE)
    live.ipvs_device = stdout if rc == 0 else None
    if present and config.mode == "ipvs" and any(service.externally_accessible for service in config.services):
        live.local_addresses = node.run("ip", "-o", "-4", "address", "show")
    if module.get_bin_path("nft"):
        live.nft_table = node.read("nft", "-j", "list", "table", nftables.TABLE_FAMILY, nftables.TABLE_NAME,
                                   missing_ok=True)
    if present and config.mode == "ipvs":
        _rc, stdout, _stderr = node.probe("sysctl", "-e", *[key for key, _value in ipvs.SYSCTLS])
        live.sysctls = dict(
            (key.strip(), value.strip()) for key, _sep, value in
            (line.partition("=") for line in stdout.splitlines()) if _sep
        )
    return live


def apply(node, steps):
    for step in steps:
        for argv, data in step.commands:
            node.run(*argv, data=data)


def clean_conntrack(module, node, config):
    """kube-proxy's conntrack cleanup once the rules are in: delete the UDP flows still DNATed
    to an address that no longer serves their service port (in check mode only find them).
    Returns the step, for the result and --diff: the stale entries, and the deletes."""
    entries = conntrack.parse_entries(node.read(*conntrack.LIST_ARGV))
    stale, filters = conntrack.find_stale(config.services, entries)
    for item in filters if not module.check_mode else ():
        rc, stdout, stderr = node.probe(*item.argv)
        # conntrack exits 1 when nothing matched: a flow that ended since the listing.
        if rc != 0 and not conntrack.NOTHING_DELETED.search(stderr or ""):
            module.fail_json(msg="conntrack -D failed in network namespace %s: %s" % (node.netns, (stderr or stdout).strip()),
                             cmd=list(item.argv), rc=rc, stdout=stdout, stderr=stderr)
    return sync.Step("conntrack", before=sync.lines([entry.text for entry in stale]), after="",
                     commands=[(item.argv, None) for item in filters])


def run_module(module):
    params = module.params
    present = params["state"] == "present"
    try:
        netns = validate_netns(params["netns"])
        node_name = validate_node_name(params["node_name"])
        config = build_config(
            mode=params["mode"],
            cluster_cidr=params["cluster_cidr"],
            services=params["services"],
            masquerade_all=params["masquerade_all"],
            ipvs_scheduler=params["ipvs_scheduler"],
            service_cidr=params["service_cidr"],
            node_name=node_name,
            node_ips=params["node_ips"],
            node_port_range=params["node_port_range"],
        )
    except ValidationError as error:
        module.fail_json(msg=str(error), field=error.field)
    if params["lock_timeout"] < 0:
        module.fail_json(msg="lock_timeout must be 0 or more seconds, got %d" % params["lock_timeout"], field="lock_timeout")
    if params["health_check_run_dir"] is not None and not os.path.isabs(params["health_check_run_dir"]):
        module.fail_json(msg="health_check_run_dir must be an absolute path (the pidfiles in it identify the servers), "
                             "got %s" % params["health_check_run_dir"], field="health_check_run_dir")

    result = dict(changed=False, mode=config.mode, netns=netns, rules="", changed_chains=[], deleted_chains=[])
    if node_name is not None:
        result["local_endpoints"] = dict((service.port_name_string, list(service.local_endpoints(node_name)))
                                         for service in config.services)
    netns_path = os.path.join(NETNS_DIR, netns)
    node_exists = os.path.exists(netns_path)
    if params["state"] == "query":
        return query(module, result, netns_path if node_exists else None, netns)
    if not node_exists and not present:
        result["changed"] = health_check(module, result, config, netns, node_name, present)[0]
        module.exit_json(**result)
    if not node_exists and not module.check_mode:
        module.fail_json(
            msg="network namespace %s does not exist (ip netns list); create the node first, "
                "e.g. with the lab_node role" % netns, **result)
    if present and config.mode == "ipvs":
        load_ipvs(module, config.ipvs_scheduler)
    if not node_exists:
        # --check before the node exists (a lab not built yet): say what a run on the new,
        # empty node would install, after what can be checked without it.
        plan = sync.plan(config, present, sync.Live(iptables_save="", kernel_release=os.uname().release))
        module.warn("network namespace %s does not exist yet: planned against an empty node" % netns)
        if config.mode == "nftables":
            module.warn("whether this kernel can hold table ip kube-proxy is checked only once the node exists")
        backend = iptables.backend_of(module.run_command(["iptables", "--version"])[1])
        if backend:
            result["iptables_backend"] = backend
        return exit_with_plan(module, result, plan, netns, health_check(module, result, config, netns, node_name, present))

    node = Node(module, netns)
    if present and config.mode == "nftables":
        check_nftables(node)
    try:
        # From reading the live state to the end of the apply: another run's apply in
        # between would make this plan wrong, and the two would leave a mixture.
        with node_lock(netns_path, params["lock_timeout"]):
            plan = sync.plan(config, present, read_live(module, node, config, present))
            if not module.check_mode:
                apply(node, plan.steps)
            if present and params["conntrack_cleanup"] and conntrack.needs_cleanup(config.services):
                cleanup = clean_conntrack(module, node, config)
                plan.steps.append(cleanup)
                result["conntrack_deleted"] = cleanup.before.splitlines()
    except LockTimeout:
        module.fail_json(msg="another kube_proxy run held network namespace %s for more than lock_timeout=%d s; "
                             "nothing was changed" % (netns, params["lock_timeout"]), **result)
    except NamespaceGone:
        module.fail_json(msg="network namespace %s was deleted while this run waited for it" % netns, **result)

    backend = plan.iptables_backend
    if backend is None and present:
        # An empty node's iptables-save prints no header to tell the backend by.
        backend = iptables.backend_of(node.run("iptables", "--version"))
    if backend:
        result["iptables_backend"] = backend
    exit_with_plan(module, result, plan, netns, health_check(module, result, config, netns, node_name, present))


def health_check(module, result, config, netns, node_name, present):
    """kube-proxy's service health check server for the node, once its rules are in (with
    health_check_run_dir), reported in result["health_check"]: (changed, its --diff entries)."""
    run_dir = module.params["health_check_run_dir"]
    if run_dir is None:
        return False, []
    if present:
        health = health_servers.present(module, run_dir, module.params["health_check_python"], netns,
                                        healthcheck.health_checks(config, node_name or netns))
    else:
        health = health_servers.absent(module, run_dir, netns)
    diff = health.pop("diff", [])
    changed = health.pop("changed")
    result["health_check"] = health
    return changed, diff if changed else []


def query(module, result, netns_path, netns):
    """state=query: the mode the node runs, read under the lock (never halfway through a sync)."""
    running = None
    if netns_path is not None:
        node = Node(module, netns)
        try:
            with node_lock(netns_path, module.params["lock_timeout"]):
                live = read_live(module, node, None, False)
            running = sync.running_mode(live)
            result["iptables_backend"] = (iptables.parse_save(live.iptables_save).backend
                                          or iptables.backend_of(node.run("iptables", "--version")))
        except LockTimeout:
            module.fail_json(msg="another kube_proxy run held network namespace %s for more than lock_timeout=%d s"
                                 % (netns, module.params["lock_timeout"]), **result)
        except NamespaceGone:
            pass  # deleted while this run waited: it runs nothing
    module.exit_json(running_mode=running, **result)


def exit_with_plan(module, result, plan, netns, health=(False, [])):
    health_changed, health_diff = health
    result.update(
        changed=plan.changed or health_changed,
        rules=plan.rules,
        changed_chains=plan.changed_chains,
        deleted_chains=plan.deleted_chains,
    )
    if module._diff:
        result["diff"] = [
            dict(before=step.before, after=step.after,
                 before_header="%s: %s (before)" % (netns, step.name),
                 after_header="%s: %s (after)" % (netns, step.name))
            for step in plan.steps if step.commands
        ] + health_diff
    module.exit_json(**result)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run_module(module)


if __name__ == "__main__":
    main()
