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


def lab_pods(count, bridge_address):
    """Pods pod1..podN with the addresses that follow the bridge's (10.0.0.1/24 -> .2, .3, ...).

    The bridge address is the node's (the pods' gateway), so the pods take the next ones,
    as a CNI bridge plugin's host-local IPAM hands them out.
    """
    try:
        count = int(count)
    except (TypeError, ValueError):
        raise AnsibleFilterError("lab_pods: pods must be a whole number of pods, 0 or more, got %r" % (count,))
    try:
        interface = ipaddress.ip_interface(str(bridge_address))
    except ValueError as error:
        raise AnsibleFilterError("lab_pods: %s" % error)
    if interface.version != 4:
        raise AnsibleFilterError("lab_pods: %s is not an IPv4 address" % bridge_address)
    if count < 0:
        raise AnsibleFilterError("lab_pods: pods must be 0 or more, got %d" % count)
    hosts = [host for host in interface.network.hosts() if host > interface.ip]
    if count > len(hosts):
        raise AnsibleFilterError(
            "lab_pods: pods=%d do not fit in %s after the bridge's %s (room for %d)"
            % (count, interface.network, interface.ip, len(hosts)))
    return [dict(name="pod%d" % number, ip=str(hosts[number - 1])) for number in range(1, count + 1)]


# The kernel's IFNAMSIZ is 16, with the terminating NUL.
MAX_LINK_NAME = 15


def lab_pods_namespaces(pods, node_netns, bridge, netns_prefix, veth_prefix, prefix_length, gateway, hairpin=True):
    """The lab_netns ``namespaces`` that plug every pod into the node's bridge.

    Per pod, as the CNI bridge plugin wires one: a veth whose node end (VETH_PREFIX+name) is a
    port of the bridge, with hairpin, and whose other end is eth0 in the pod's namespace
    (NETNS_PREFIX+name), with the pod's address (announced, for the address may have been
    another pod's) and a default route via the bridge's address. The node's namespace is
    declared with the bridge the ports join and those ports only: its other links are not
    this filter's business.
    """
    ports, namespaces = [], []
    for pod in pods:
        veth = veth_prefix + pod["name"]
        if len(veth) > MAX_LINK_NAME:
            raise AnsibleFilterError(
                "lab_pods_namespaces: %s (lab_pods_veth_prefix + pod name) is longer than the kernel's %d "
                "characters for a link; shorten the pod names or lab_pods_veth_prefix" % (veth, MAX_LINK_NAME))
        netns = netns_prefix + pod["name"]
        ports.append(dict(name=veth, kind="veth", peer=dict(name="eth0", netns=netns), master=bridge,
                          hairpin=boolean(hairpin, strict=True)))
        namespaces.append(dict(name=netns, links=[
            dict(name="lo"),
            dict(name="eth0", addresses=["%s/%s" % (pod["ip"], prefix_length)], announce=True),
        ], routes=[dict(to="default", via=gateway)]))
    node = dict(name=node_netns, links=[dict(name=bridge, kind="bridge")] + ports)
    return [node] + namespaces


def lab_pods_unplugged(node_links, bridge, veth_prefix, pods):
    """Names of the pods whose veth is still a port of the bridge but which are not in ``pods``
    (scaled down with -e pods=N, or left by an earlier run): NODE_LINKS as the lab_netns
    module's ``found`` lists one namespace's links."""
    declared = set(pod["name"] for pod in pods)
    return sorted(link["name"][len(veth_prefix):] for link in node_links or []
                  if link.get("master") == bridge and link["name"].startswith(veth_prefix)
                  and link["name"][len(veth_prefix):] not in declared)


def lab_pods_netns(names, netns_prefix):
    """The lab_netns ``namespaces`` of the pods NAMES, by name only (what state=absent needs)."""
    return [dict(name=netns_prefix + name) for name in names]


class FilterModule(object):
    def filters(self):
        return dict(lab_pods=lab_pods, lab_pods_namespaces=lab_pods_namespaces, lab_pods_unplugged=lab_pods_unplugged,
                    lab_pods_netns=lab_pods_netns)
