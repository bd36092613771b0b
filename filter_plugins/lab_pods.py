# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The pods: the list for ``-e pods=N`` (pod1..podN on the bridge's subnet), the topology that
wires them to the node (the lab_netns module's ``namespaces``), and the pods a node still has
plugged in that are no longer declared."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress

from ansible.errors import AnsibleFilterError
from ansible.module_utils.parsing.convert_bool import boolean


def lab_pods(count, nodes):
    """Pods pod1..podN spread round-robin over NODES (lab_nodes' list): pod1 on the first node,
    pod2 on the second, ..., each at the next address after its node's bridge address, as a CNI
    bridge plugin's host-local IPAM hands them out (one node: 10.0.0.1/24 -> .2, .3, ...).
    Each pod: name, ip, node (its node's namespace), gateway and prefix_length (its bridge's)."""
    try:
        count = int(count)
    except (TypeError, ValueError):
        raise AnsibleFilterError("lab_pods: pods must be a whole number of pods, 0 or more, got %r" % (count,))
    if count < 0:
        raise AnsibleFilterError("lab_pods: pods must be 0 or more, got %d" % count)
    if not nodes:
        raise AnsibleFilterError("lab_pods: there is no node to put the pods on")
    free = []
    for node in nodes:
        try:
            interface = ipaddress.ip_interface(str(node["bridge_address"]))
        except ValueError as error:
            raise AnsibleFilterError("lab_pods: %s" % error)
        if interface.version != 4:
            raise AnsibleFilterError("lab_pods: %s is not an IPv4 address" % node["bridge_address"])
        free.append((interface, [host for host in interface.network.hosts() if host > interface.ip]))
    on_node = [len(range(index, count, len(nodes))) for index in range(len(nodes))]
    for node, (interface, hosts), wanted in zip(nodes, free, on_node):
        if wanted > len(hosts):
            raise AnsibleFilterError(
                "lab_pods: pods=%d put %d pods on %s, which do not fit in %s after the bridge's %s (room for %d)"
                % (count, wanted, node["netns"], interface.network, interface.ip, len(hosts)))
    pods = []
    for number in range(1, count + 1):
        index = (number - 1) % len(nodes)
        interface, hosts = free[index]
        pods.append(dict(name="pod%d" % number, ip=str(hosts[(number - 1) // len(nodes)]), node=nodes[index]["netns"],
                         gateway=str(interface.ip), prefix_length=interface.network.prefixlen))
    return pods


# The kernel's IFNAMSIZ is 16, with the terminating NUL.
MAX_LINK_NAME = 15


def lab_pods_namespaces(pods, node_netns, bridge, netns_prefix, veth_prefix, prefix_length, gateway, hairpin=True):
    """The lab_netns ``namespaces`` that plug every pod into its node's bridge.

    Per pod, as the CNI bridge plugin wires one: a veth whose node end (VETH_PREFIX+name) is a
    port of the bridge, with hairpin, and whose other end is eth0 in the pod's namespace
    (NETNS_PREFIX+name), with the pod's address (announced, for the address may have been
    another pod's) and a default route via the bridge's address. A pod's node, gateway and
    prefix length are its own (lab_pods' list), else NODE_NETNS, GATEWAY and PREFIX_LENGTH.
    Each node's namespace is declared with the bridge the ports join and those ports only:
    its other links are not this filter's business.
    """
    ports, namespaces = {}, []
    for pod in pods:
        veth = veth_prefix + pod["name"]
        if len(veth) > MAX_LINK_NAME:
            raise AnsibleFilterError(
                "lab_pods_namespaces: %s (lab_pods_veth_prefix + pod name) is longer than the kernel's %d "
                "characters for a link; shorten the pod names or lab_pods_veth_prefix" % (veth, MAX_LINK_NAME))
        netns = netns_prefix + pod["name"]
        ports.setdefault(pod.get("node", node_netns), []).append(
            dict(name=veth, kind="veth", peer=dict(name="eth0", netns=netns), master=bridge,
                 hairpin=boolean(hairpin, strict=True)))
        namespaces.append(dict(name=netns, links=[
            dict(name="lo"),
            dict(name="eth0", addresses=["%s/%s" % (pod["ip"], pod.get("prefix_length", prefix_length))], announce=True),
        ], routes=[dict(to="default", via=pod.get("gateway", gateway))]))
    nodes = [dict(name=node, links=[dict(name=bridge, kind="bridge")] + node_ports) for node, node_ports in ports.items()]
    return (nodes or [dict(name=node_netns, links=[dict(name=bridge, kind="bridge")])]) + namespaces


def lab_pods_unplugged(found, bridge, veth_prefix, pods, known=()):
    """Names of the pods no longer in ``pods`` (scaled down with -e pods=N, or left by an
    earlier run) that a node still has plugged into its bridge, or that KNOWN names (the run
    directory's): FOUND as the lab_netns module returns it, each namespace's links."""
    declared = set(pod["name"] for pod in pods)
    plugged = set(link["name"][len(veth_prefix):] for links in (found or {}).values() for link in links
                  if link.get("master") == bridge and link["name"].startswith(veth_prefix))
    return sorted((plugged | set(known or ())) - declared)


def lab_pods_endpoints(pods):
    """The pods as a Service's endpoints, EndpointSlice's way: each one's ip and node_name
    (its node's namespace is the node's name)."""
    return [dict(ip=pod["ip"], node_name=pod["node"]) if pod.get("node") else pod["ip"] for pod in pods]


def lab_pods_bridges(nodes, bridge):
    """The lab_netns ``plugged_into`` of the pods: the bridge BRIDGE in each of NODES."""
    return [dict(netns=node, bridge=bridge) for node in nodes]


def lab_pods_netns(names, netns_prefix):
    """The lab_netns ``namespaces`` of the pods NAMES, by name only (what state=absent needs)."""
    return [dict(name=netns_prefix + name) for name in names]


def lab_pods_running(netns_names, netns_prefix):
    """How many pods the running lab has, as ``-e pods=N`` names them: of NETNS_NAMES (the host's
    network namespaces), NETNS_PREFIX + pod1, pod2, ... as far as they go."""
    present = set(netns_names)
    running = 0
    while "%spod%d" % (netns_prefix, running + 1) in present:
        running += 1
    return running


class FilterModule(object):
    def filters(self):
        return dict(lab_pods=lab_pods, lab_pods_namespaces=lab_pods_namespaces, lab_pods_unplugged=lab_pods_unplugged,
                    lab_pods_endpoints=lab_pods_endpoints, lab_pods_bridges=lab_pods_bridges, lab_pods_netns=lab_pods_netns,
                    lab_pods_running=lab_pods_running)
