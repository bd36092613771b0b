# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""The cluster's nodes for ``-e nodes=N``: their names, node IPs and pod CIDRs, and the
topology (the lab_netns module's ``namespaces``) that wires them to one LAN and routes every
node's pod CIDR, as a routed CNI (flannel host-gw, Calico without overlay) does.

Node k (1-based) is the namespace ``lab-node`` (k = 1) or ``lab-nodeK``, like kind names its
workers; its pod CIDR is the k-th /24 of the cluster CIDR, its bridge (the pods' gateway) has
that CIDR's first address, and its node IP is on its ``eth0``, a port of the LAN's bridge.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress

from ansible.errors import AnsibleFilterError

# The most nodes the lab builds; teardown and scaling down look for this many.
MAX_NODES = 4
NODE_POD_PREFIX = 24


def _count(count):
    try:
        count = int(count)
    except (TypeError, ValueError):
        raise AnsibleFilterError("lab_nodes: nodes must be a whole number from 1 to %d, got %r" % (MAX_NODES, count))
    if not 1 <= count <= MAX_NODES:
        raise AnsibleFilterError("lab_nodes: nodes must be from 1 to %d, got %d" % (MAX_NODES, count))
    return count


def lab_node_netns(first_netns, number):
    """Node NUMBER's namespace: the first is FIRST_NETNS itself, the others FIRST_NETNS + NUMBER."""
    return first_netns if number == 1 else "%s%d" % (first_netns, number)


def _pod_cidrs(cluster_cidr):
    """The pod CIDRs of the nodes the lab can have: the first /24s of CLUSTER_CIDR."""
    cluster = ipaddress.IPv4Network(str(cluster_cidr))
    if cluster.prefixlen > NODE_POD_PREFIX:
        raise AnsibleFilterError("lab_nodes: the cluster CIDR %s is smaller than one node's /%d" % (cluster, NODE_POD_PREFIX))
    pod_cidrs = [subnet for subnet, _number in zip(cluster.subnets(new_prefix=NODE_POD_PREFIX), range(MAX_NODES))]
    if len(pod_cidrs) < MAX_NODES:
        raise AnsibleFilterError("lab_nodes: the cluster CIDR %s holds %d node /%d, not %d"
                                 % (cluster, len(pod_cidrs), NODE_POD_PREFIX, MAX_NODES))
    return pod_cidrs


def lab_nodes(count, first_netns, cluster_cidr, lan, first_host):
    """Nodes 1..COUNT: netns, ip (the node IP, host FIRST_HOST + k - 1 of LAN), lan_prefix_length,
    pod_cidr (the k-th /24 of CLUSTER_CIDR) and bridge_address (its first host, with the prefix)."""
    count = _count(count)
    try:
        pod_cidrs, lan_network, first_host = _pod_cidrs(cluster_cidr), ipaddress.IPv4Network(str(lan)), int(first_host)
    except (TypeError, ValueError) as error:
        raise AnsibleFilterError("lab_nodes: %s" % error)
    lan_hosts = list(lan_network.hosts())
    if first_host < 1 or first_host - 1 + MAX_NODES > len(lan_hosts):
        raise AnsibleFilterError("lab_nodes: the LAN %s has no room for %d node IPs from host %d" % (lan, MAX_NODES, first_host))
    return [dict(netns=lab_node_netns(first_netns, number),
                 ip=str(lan_hosts[first_host - 2 + number]),
                 lan_prefix_length=lan_network.prefixlen,
                 pod_cidr=str(pod_cidrs[number - 1]),
                 bridge_address="%s/%d" % (next(pod_cidrs[number - 1].hosts()), NODE_POD_PREFIX))
            for number in range(1, count + 1)]


def lab_nodes_absent(count, first_netns):
    """The namespaces of the nodes beyond COUNT, up to the most the lab builds (scaling down)."""
    return lab_nodes_every(first_netns)[_count(count):]


def lab_nodes_every(first_netns):
    """The namespaces of every node the lab can have: what a teardown looks in, whatever
    nodes=N built."""
    return [lab_node_netns(first_netns, number) for number in range(1, MAX_NODES + 1)]


def lab_nodes_running(netns_names, first_netns):
    """How many nodes the running lab has: of NETNS_NAMES (the host's network namespaces), the
    nodes from the first on, as far as they go; 0 when there is no lab. What the playbooks that
    act on a running lab (exercise, observe) take ``nodes`` from, so they need not be told."""
    present = set(netns_names)
    running = 0
    for netns in lab_nodes_every(first_netns):
        if netns not in present:
            break
        running += 1
    return running


def lab_nodes_every_netns(first_netns, lan_netns):
    """The lab_netns ``namespaces`` (by name) of every node the lab can have, and the LAN's."""
    return [dict(name=name) for name in lab_nodes_every(first_netns) + [lan_netns]]


def lab_nodes_namespaces(nodes, cluster_cidr, lan_netns, lan_bridge, bridge, service_cidr, sysctls):
    """The lab_netns ``namespaces``: the LAN (a namespace with bridge LAN_BRIDGE, one port per
    node named like the node) and every node: lo, its pod bridge BRIDGE, eth0 on the LAN with
    the node IP (announced: a node scaled away and back has a new MAC, which the others would
    otherwise learn only once their cached one failed, seconds later), the Service route, a
    route to every other node's pod CIDR via that node's IP, and none to the pod CIDRs of the
    nodes beyond NODES (scaled down)."""
    gone = [str(pod_cidr) for pod_cidr in _pod_cidrs(cluster_cidr)[len(nodes):]]
    ports = [dict(name=node["netns"], kind="veth", peer=dict(name="eth0", netns=node["netns"]), master=lan_bridge)
             for node in nodes]
    namespaces = [dict(name=lan_netns, links=[dict(name=lan_bridge, kind="bridge")] + ports)]
    for node in nodes:
        routes = [dict(to=service_cidr, dev=bridge)]
        routes += [dict(to=other["pod_cidr"], via=other["ip"], dev="eth0") for other in nodes if other is not node]
        routes += [dict(to=pod_cidr, state="absent") for pod_cidr in gone]
        namespaces.append(dict(
            name=node["netns"],
            links=[dict(name="lo"),
                   dict(name=bridge, kind="bridge", addresses=[node["bridge_address"]]),
                   dict(name="eth0", addresses=["%s/%s" % (node["ip"], node["lan_prefix_length"])], announce=True)],
            routes=routes,
            sysctls=sysctls))
    return namespaces


class FilterModule(object):
    def filters(self):
        return dict(lab_nodes=lab_nodes, lab_nodes_absent=lab_nodes_absent, lab_nodes_every=lab_nodes_every,
                    lab_nodes_every_netns=lab_nodes_every_netns, lab_nodes_running=lab_nodes_running,
                    lab_nodes_namespaces=lab_nodes_namespaces)
