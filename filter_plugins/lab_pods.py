# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""lab_pods: the pod list for ``-e pods=N``, pod1..podN on the bridge's subnet."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import ipaddress

from ansible.errors import AnsibleFilterError


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


class FilterModule(object):
    def filters(self):
        return dict(lab_pods=lab_pods)
