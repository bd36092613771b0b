#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Ansible front door of the lab's topology: namespaces, links, addresses, routes, sysctls."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: lab_netns
short_description: Build network namespaces and the links, addresses, routes and sysctls in them
description:
  - Brings a set of network namespaces to a declared state in one call, the way a CNI plugin
    wires a node and its pods. It reads each namespace once (C(ip -json -batch)), plans the
    difference, and applies it with one C(ip -batch) per namespace that needs a change, plus
    one C(sysctl -w) per namespace whose sysctls differ.
  - It adds and fixes. Routes and links the declaration does not name are left alone (the
    kernel adds some of its own), and so are the addresses of a link declared without any;
    with O(state=absent) it deletes whole namespaces, and their links go with them.
  - Every command runs inside a declared namespace (C(ip -n NETNS), C(ip netns exec NETNS));
    in the root namespace it only adds and deletes namespaces (C(ip netns add/delete)); beyond
    them it only loads the kernel modules of O(kernel_modules).
  - The result's RV(commands) are the exact commands it ran, or in check mode would run, one
    line each as a person would type them, so a student sees how a node is built.
version_added: "1.1.0"
author:
  - kube-proxy-lab developers
options:
  namespaces:
    description:
      - The namespaces, in any order. A namespace holding a veth is wired before the namespace
        its peer lands in.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The namespace's name, as C(ip netns list) shows it.
        type: str
        required: true
      links:
        description:
          - Its links. Every declared link is brought up. A link without O(namespaces[].links[].kind)
            is C(lo) or the peer of a veth declared in another namespace (or this one).
        type: list
        elements: dict
        default: []
        suboptions:
          name:
            description: The link's name, at most 15 characters.
            type: str
            required: true
          kind:
            description: Create the link as this kind when it is missing.
            type: str
            choices: [bridge, veth, dummy]
          peer:
            description: A veth's other end, created in its namespace with the veth.
            type: dict
            suboptions:
              name:
                description: The other end's name.
                type: str
                required: true
              netns:
                description: The declared namespace the other end is created in.
                type: str
                required: true
          master:
            description: A bridge declared in the same namespace to enslave the link to.
            type: str
          hairpin:
            description:
              - Hairpin mode of the bridge port, so a frame may leave by the port it came in on
                (a pod reaching itself through a Service). Unset leaves it as it is.
            type: bool
          addresses:
            description:
              - IPv4 addresses with their prefix length (V(10.0.0.1/24)). When given, they are
                the link's only IPv4 addresses (others are deleted, as when a pod moves to
                another subnet); a link declared without addresses keeps the ones it has.
            type: list
            elements: str
            default: []
          announce:
            description:
              - Announce each address this run adds with one unsolicited ARP (C(arping -U)), as
                the CNI bridge plugin does for a new pod, so neighbours that cached another MAC
                for the address (a pod removed before) take the new one at once.
            type: bool
            default: false
      routes:
        description: Routes in the main table, each replaced when missing or different.
        type: list
        elements: dict
        default: []
        suboptions:
          to:
            description: V(default) or an IPv4 network.
            type: str
            required: true
          via:
            description: The gateway.
            type: str
          nexthops:
            description:
              - Two or more gateways, instead of O(namespaces[].routes[].via), for one multipath (ECMP)
                route (C(ip route replace TO nexthop via A nexthop via B)); the kernel spreads flows
                over them by C(net.ipv4.fib_multipath_hash_policy). One gateway is a plain route via it.
            type: list
            elements: str
          dev:
            description: The link to route through, declared in the same namespace.
            type: str
          state:
            description:
              - V(absent) deletes the route to O(namespaces[].routes[].to) when there is one
                (a removed node's pod CIDR); it is then named by its destination only.
            type: str
            choices: [present, absent]
            default: present
      sysctls:
        description: Sysctls set inside the namespace (C(net.ipv4.ip_forward=1)).
        type: dict
        default: {}
  state:
    description:
      - V(present) builds the namespaces as declared; V(absent) deletes the declared namespaces
        that exist; V(query) changes nothing and returns what it read (RV(found)).
    type: str
    choices: [present, absent, query]
    default: present
  kernel_modules:
    description:
      - Kernel modules loaded (C(modprobe NAME)) before anything else, each only when its
        O(kernel_modules[].present_if) path is missing (a module built in or already loaded is
        left alone). Some sysctls exist only once their module is loaded (C(net.bridge.*) comes
        with C(br_netfilter)). Loading a module is the one change outside the namespaces.
      - Only with O(state=present) (refused with another); in check mode they are listed in
        RV(commands), not loaded.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: The module's name, as modprobe takes it.
        type: str
        required: true
      present_if:
        description: An absolute path that exists once the module is loaded or built in.
        type: str
        required: true
  absent_namespaces:
    description:
      - With O(state=present), namespaces deleted (those that exist) before the declared ones
        are built (the nodes of a lab scaled down). Their links go with them, so do the far
        ends of their veths. Refused with another O(state), and for a name also declared.
    type: list
    elements: str
    default: []
  plugged_into:
    description:
      - With O(state=absent), also delete every namespace that holds the other end of a veth
        plugged into one of these bridges (the pods of the nodes, also those no declaration
        names any more, found by the kernel's namespace ids, not by their names). A bridge
        whose namespace or which itself does not exist finds nothing; a name that stands for
        the host's own namespace is never deleted. Refused with another O(state).
    type: list
    elements: dict
    default: []
    suboptions:
      netns:
        description: The namespace of the bridge.
        type: str
        required: true
      bridge:
        description: The bridge whose veth ports lead to the namespaces to delete.
        type: str
        required: true
  end_processes:
    description:
      - With O(state=absent), first end every process still running in a namespace to delete,
        by pid (C(ip netns pids)) with SIGTERM, and SIGKILL to any still there after 5 seconds;
        with O(state=present), in each namespace of O(absent_namespaces) that exists.
        A namespace deleted with processes in it lives on, unnamed, as long as they do.
    type: bool
    default: false
notes:
  - Supports C(--check) (reports the commands it would run; a namespace that does not exist
    yet reads as empty) and C(--diff) (each namespace's declared parts before and after).
requirements:
  - iproute2 (C(ip)) and procps (C(sysctl)) on the target, iputils-arping for O(namespaces[].links[].announce);
    Python's standard library only.
"""

EXAMPLES = r"""
- name: A node with a bridge, and one pod plugged into it
  lab_netns:
    namespaces:
      - name: lab-node
        sysctls: {net.ipv4.ip_forward: 1}
        links:
          - {name: lo}
          - {name: cni0, kind: bridge, addresses: [10.0.0.1/24]}
          - {name: veth-pod1, kind: veth, peer: {name: eth0, netns: lab-pod1}, master: cni0, hairpin: true}
        routes:
          - {to: 10.96.0.0/12, dev: cni0}
      - name: lab-pod1
        links:
          - {name: lo}
          - {name: eth0, addresses: [10.0.0.2/24]}
        routes:
          - {to: default, via: 10.0.0.1}

- name: br_netfilter loaded unless built in, then the node with its bridge sysctls
  lab_netns:
    kernel_modules:
      - {name: br_netfilter, present_if: /proc/sys/net/bridge/bridge-nf-call-iptables}
    namespaces:
      - name: lab-node
        sysctls: {net.bridge.bridge-nf-call-iptables: 1}

- name: Read the node's links (which veths are ports of the bridge)
  lab_netns:
    state: query
    namespaces:
      - name: lab-node
  register: node

- name: Delete the pod's namespace (its veth goes with it), ending its server first
  lab_netns:
    state: absent
    end_processes: true
    namespaces:
      - name: lab-pod1

- name: Delete every pod plugged into the node's bridge
  lab_netns:
    state: absent
    end_processes: true
    plugged_into:
      - {netns: lab-node, bridge: cni0}
"""

RETURN = r"""
commands:
  description: The commands run (in check mode, that would run), in order, one per line.
  returned: always
  type: list
  elements: str
  sample:
    - modprobe br_netfilter
    - ip netns add lab-pod1
    - ip -n lab-node link add veth-pod1 type veth peer name eth0 netns lab-pod1
    - ip -n lab-node link set dev veth-pod1 master cni0
    - ip -n lab-pod1 address replace 10.0.0.2/24 dev eth0
created:
  description: The namespaces created (in check mode, that would be).
  returned: always
  type: list
  elements: str
  sample: [lab-pod1]
deleted:
  description: The namespaces deleted (in check mode, that would be), those found by O(plugged_into) included.
  returned: always
  type: list
  elements: str
  sample: []
found:
  description:
    - The links of each declared namespace that existed, as read before any change; a
      namespace that did not exist is left out.
  returned: when O(state) is V(present) or V(query)
  type: dict
  sample:
    lab-node:
      - {name: cni0, kind: bridge, master: null, up: true, addresses: [10.0.0.1/24]}
      - {name: lo, kind: null, master: null, up: true, addresses: [127.0.0.1/8]}
      - {name: veth-pod1, kind: veth, master: cni0, up: true, addresses: []}
"""

import json
import os
import time

from ansible.module_utils import lab_processes as processes
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.lab_netns.model import ValidationError, build_topology, validate_link_name, validate_netns_name
from ansible.module_utils.lab_netns.plan import (READ_BATCH, describe, ends_of_other_pairs, found, parse_namespace,
                                                 plan, plan_absent, plugged_peers)

LINK_OPTIONS = dict(
    name=dict(type="str", required=True),
    kind=dict(type="str", choices=["bridge", "veth", "dummy"]),
    peer=dict(type="dict", options=dict(name=dict(type="str", required=True), netns=dict(type="str", required=True))),
    master=dict(type="str"),
    hairpin=dict(type="bool"),
    addresses=dict(type="list", elements="str", default=[]),
    announce=dict(type="bool", default=False),
)
ROUTE_OPTIONS = dict(to=dict(type="str", required=True), via=dict(type="str"), dev=dict(type="str"),
                     nexthops=dict(type="list", elements="str"),
                     state=dict(type="str", choices=["present", "absent"], default="present"))
NAMESPACE_OPTIONS = dict(
    name=dict(type="str", required=True),
    links=dict(type="list", elements="dict", options=LINK_OPTIONS, default=[]),
    routes=dict(type="list", elements="dict", options=ROUTE_OPTIONS, default=[]),
    sysctls=dict(type="dict", default={}),
)
KERNEL_MODULE_OPTIONS = dict(name=dict(type="str", required=True), present_if=dict(type="str", required=True))
ARGUMENT_SPEC = dict(
    namespaces=dict(type="list", elements="dict", options=NAMESPACE_OPTIONS, default=[]),
    kernel_modules=dict(type="list", elements="dict", options=KERNEL_MODULE_OPTIONS, default=[]),
    absent_namespaces=dict(type="list", elements="str", default=[]),
    plugged_into=dict(type="list", elements="dict", default=[],
                      options=dict(netns=dict(type="str", required=True), bridge=dict(type="str", required=True))),
    state=dict(type="str", choices=["present", "absent", "query"], default="present"),
    end_processes=dict(type="bool", default=False),
)
# How long processes get between SIGTERM and SIGKILL (the pod server's own stop waits as long).
END_GRACE_S = 5.0
# How long a run gives a namespace deleted just before it to take its veths' other ends along.
DYING_END_WAIT_S = 3.0
DYING_END_POLL_S = 0.1


def _drop_unset(value):
    """AnsibleModule fills every undeclared suboption with None; the model reads only what is set."""
    if isinstance(value, dict):
        return dict((key, _drop_unset(item)) for key, item in value.items() if item is not None)
    if isinstance(value, list):
        return [_drop_unset(item) for item in value]
    return value


def run(module, argv, data=None):
    rc, stdout, stderr = module.run_command(list(argv), data=data, binary_data=True)
    if rc != 0:
        module.fail_json(msg="%s failed: %s" % (" ".join(argv), (stderr or stdout).strip()),
                         cmd=list(argv), stdin=data, rc=rc, stdout=stdout, stderr=stderr)
    return stdout


def load_kernel_modules(module, kernel_modules):
    """modprobe each module whose present_if path is missing; return the commands that do it."""
    for index, kernel_module in enumerate(kernel_modules):
        if not kernel_module["name"] or kernel_module["name"].startswith("-"):
            module.fail_json(msg="kernel_modules[%d].name: %r is not a module name" % (index, kernel_module["name"]),
                             field="kernel_modules[%d].name" % index)
        if not os.path.isabs(kernel_module["present_if"]):
            module.fail_json(msg="kernel_modules[%d].present_if must be an absolute path, got %r"
                                 % (index, kernel_module["present_if"]), field="kernel_modules[%d].present_if" % index)
    missing = [kernel_module["name"] for kernel_module in kernel_modules if not os.path.exists(kernel_module["present_if"])]
    if not module.check_mode:
        for name in missing:
            run(module, ("modprobe", name))
    return ["modprobe %s" % name for name in missing]


def plugged_namespaces(module, plugged_into, existing):
    """The namespaces at the far end of the veths plugged into plugged_into's bridge (none when
    the namespace or the bridge is missing: a half-built lab is torn down too)."""
    netns, bridge = plugged_into["netns"], plugged_into["bridge"]
    if netns not in existing:
        return []
    rc, ports, stderr = module.run_command(["ip", "-n", netns, "-json", "-details", "link", "show", "master", bridge])
    if rc != 0 and "does not exist" in stderr:
        return []
    if rc != 0:
        module.fail_json(msg="reading the ports of %s in %s failed: %s" % (bridge, netns, stderr.strip()),
                         field="plugged_into")
    peers = plugged_peers(ports, run(module, ("ip", "-n", netns, "-json", "netns", "list-id")))
    # A name that stands for the host's own namespace (ip netns attach NAME 1) is never a pod's.
    return [name for name in peers if not _is_root_namespace(name)]


def _is_root_namespace(name):
    try:
        named, root = os.stat(os.path.join("/run/netns", name)), os.stat("/proc/1/ns/net")
    except OSError:
        return False
    return (named.st_dev, named.st_ino) == (root.st_dev, root.st_ino)


def existing_namespaces(module):
    rc, stdout, _stderr = module.run_command(["ip", "-json", "netns", "list"])
    if rc != 0 or not stdout.strip():
        return []
    return [entry["name"] for entry in json.loads(stdout)]


def read_namespace(module, namespace):
    batch = run(module, ("ip", "-n", namespace.name, "-json", "-details", "-batch", "-"), data=READ_BATCH)
    sysctls = ""
    if namespace.sysctls:
        # A key the kernel does not have yet (net.bridge.* before br_netfilter) is reported on
        # stderr; the others still print, and the plan sets what differs.
        _rc, sysctls, _stderr = module.run_command(
            ["ip", "netns", "exec", namespace.name, "sysctl"] + [key for key, _value in namespace.sysctls])
    return parse_namespace(batch, sysctls)


def await_dying_ends(module, topology, existing, live):
    """A namespace deleted a moment ago (a pod scaled away) is torn down by the kernel
    asynchronously, and until then its veths' other ends stay in the node: the end of a pair
    about to be created again under the same names. Re-read such a namespace until they are
    gone, for up to DYING_END_WAIT_S; what is still there then, the plan deletes."""
    deadline = time.monotonic() + DYING_END_WAIT_S
    waiting = ends_of_other_pairs(topology, existing, live)
    while waiting and time.monotonic() < deadline and not module.check_mode:
        time.sleep(DYING_END_POLL_S)
        for namespace in topology.namespaces:
            if namespace.name in waiting:
                live[namespace.name] = read_namespace(module, namespace)
        waiting = ends_of_other_pairs(topology, existing, live)
    return live


def _alive(pid):
    """Whether pid still runs (a zombie has ended: only its parent's wait is missing)."""
    try:
        with open("/proc/%d/stat" % pid) as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def end_processes(module, names):
    """End, by pid, the processes running in each namespace; return the commands that do it."""
    commands = []
    for name in names:
        pids = [int(pid) for pid in run(module, ("ip", "netns", "pids", name)).split()]
        if not pids:
            continue
        commands.append("kill %s  # the processes in %s" % (" ".join(map(str, pids)), name))
        if module.check_mode:
            continue
        stubborn, _stuck = processes.end_all(pids, _alive, END_GRACE_S)
        if stubborn:
            commands.append("kill -KILL %s  # still in %s after %g s" % (" ".join(map(str, stubborn)), name, END_GRACE_S))
    return commands


def run_module(module):
    try:
        topology = build_topology(_drop_unset(module.params["namespaces"]))
        for index, name in enumerate(module.params["absent_namespaces"]):
            validate_netns_name("absent_namespaces[%d]" % index, name)
            if name in [namespace.name for namespace in topology.namespaces]:
                raise ValidationError("absent_namespaces[%d]" % index, "%s is also declared in namespaces" % name)
        for index, bridge in enumerate(module.params["plugged_into"]):
            validate_netns_name("plugged_into[%d].netns" % index, bridge["netns"])
            validate_link_name("plugged_into[%d].bridge" % index, bridge["bridge"])
    except ValidationError as error:
        module.fail_json(msg=str(error), field=error.field)
    for option, only in (("kernel_modules", "present"), ("absent_namespaces", "present"), ("plugged_into", "absent")):
        if module.params[option] and module.params["state"] != only:
            module.fail_json(msg="%s is for state=%s only (state=%s)" % (option, only, module.params["state"]),
                             field=option)
    state = module.params["state"]
    present = state == "present"
    # Before the namespaces are read: a module's sysctls exist only once it is loaded.
    loaded = load_kernel_modules(module, module.params["kernel_modules"]) if present else []
    commands = list(loaded)
    existing = existing_namespaces(module)
    names = [namespace.name for namespace in topology.namespaces]
    live = {}
    if state in ("present", "query"):
        live = dict((namespace.name, read_namespace(module, namespace))
                    for namespace in topology.namespaces if namespace.name in existing)
    if present:
        live = await_dying_ends(module, topology, existing, live)
        try:
            batches = plan(topology, existing, live, module.params["absent_namespaces"])
        except ValueError as error:
            module.fail_json(msg=str(error))
        if module.params["end_processes"]:
            commands += end_processes(module, [name for name in module.params["absent_namespaces"] if name in existing])
    elif state == "absent":
        for bridge in module.params["plugged_into"]:
            plugged = plugged_namespaces(module, bridge, existing)
            names += [name for name in plugged if name not in names]
        batches = plan_absent(names, existing)
        if module.params["end_processes"]:
            commands += end_processes(module, [name for name in names if name in existing])
    else:
        batches = []

    if not module.check_mode:
        for batch in batches:
            run(module, batch.argv, data=batch.input)

    result = dict(
        changed=bool(batches or commands),
        commands=commands + [line for batch in batches for line in batch.shown()],
        created=[name for name in names if present and name not in existing],
        deleted=[name for name in (names if state == "absent" else module.params["absent_namespaces"])
                 if name in existing],
    )
    if state != "absent":
        result["found"] = dict((name, found(namespace)) for name, namespace in live.items())
    if module._diff and state != "query":
        result["diff"] = []
        if present:
            changes = [(namespace.name,) + describe(namespace, live.get(namespace.name) if namespace.name in existing else None)
                       for namespace in topology.namespaces]
            changes += [(name, "netns %s\n" % name, "") for name in module.params["absent_namespaces"] if name in existing]
        else:
            changes = [(name, "netns %s\n" % name, "") for name in names if name in existing]
        if loaded:
            changes.insert(0, ("kernel modules", "", "".join(line + "\n" for line in loaded)))
        for name, before, after in changes:
            if before != after:
                result["diff"].append(dict(before=before, after=after, before_header=name + " (before)",
                                           after_header=name + " (after)"))
    module.exit_json(**result)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run_module(module)


if __name__ == "__main__":
    main()
