# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""lab_proxy: readiness, the endpoints controller's part between the pods and kube-proxy.

The role probes every endpoint's server (``ip:targetPort``) from the node and hands the
kube_proxy module only the endpoints that answered, as the EndpointSlice controller
publishes only ready endpoints.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError


def _target_port(service):
    return service.get("target_port") or service.get("port")


def _targets(service):
    return ["%s:%s" % (ip, _target_port(service)) for ip in service.get("endpoints") or []]


def lab_proxy_probe_targets(services):
    """Every endpoint's ``ip:targetPort`` once, in the order the Services name them."""
    if not isinstance(services, list):
        raise AnsibleFilterError("lab_proxy_probe_targets: lab_proxy_services must be a list, got %r" % (services,))
    targets = []
    for service in services:
        targets.extend(target for target in _targets(service) if target not in targets)
    return targets


def lab_proxy_ready_services(services, ready_targets, assumed_ready=()):
    """The Services with only the endpoints whose ``ip:targetPort`` answered, or whose ip is
    in ``assumed_ready`` (in --check, the pods the run would start), left in.

    A Service left with none keeps its entry, so kube-proxy programs its "has no endpoints"
    rejection instead of forgetting the Service.
    """
    ready, assumed = set(ready_targets or ()), set(assumed_ready or ())
    return [
        dict(service, endpoints=[ip for ip, target in zip(service.get("endpoints") or [], _targets(service))
                                 if target in ready or ip in assumed])
        for service in services
    ]


class FilterModule(object):
    def filters(self):
        return dict(lab_proxy_probe_targets=lab_proxy_probe_targets, lab_proxy_ready_services=lab_proxy_ready_services)
