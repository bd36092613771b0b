# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""lab_proxy: readiness, the part the kubelet and the EndpointSlice controller play between
the pods and kube-proxy.

The role probes every endpoint's server (``ip:targetPort``) from the node, as the kubelet
probes a pod, and hands the kube_proxy module only the endpoints that answered: an
EndpointSlice marks the others ``ready: false``, and kube-proxy leaves them out.

The probe is HTTP, so it asks the TCP service ports only. Readiness belongs to the pod, not to
a port (the kubelet runs one readiness probe per container): an endpoint of a UDP service port
is ready when its pod answered on any TCP one.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError


def _target_port(service):
    return service.get("target_port") or service.get("port")


def _ip(endpoint):
    """An endpoint's address: it is given as one, or as a mapping of EndpointSlice's fields."""
    return endpoint["ip"] if isinstance(endpoint, dict) else endpoint


def _targets(service):
    return ["%s:%s" % (_ip(endpoint), _target_port(service)) for endpoint in service.get("endpoints") or []]


def _probed(service):
    """Whether the HTTP probe can ask this service port's endpoints: a TCP port."""
    return (service.get("protocol") or "TCP") == "TCP"


def lab_proxy_probe_targets(services, assumed_ready=()):
    """Every endpoint's ``ip:targetPort`` once, in the order the Services name them, but those
    whose ip is in ``assumed_ready`` (nothing to ask them)."""
    if not isinstance(services, list):
        raise AnsibleFilterError("lab_proxy_probe_targets: lab_proxy_services must be a list, got %r" % (services,))
    skipped = set(assumed_ready or ())
    targets = [target for service in services if _probed(service)
               for endpoint, target in zip(service.get("endpoints") or [], _targets(service))
               if _ip(endpoint) not in skipped]
    return list(dict.fromkeys(targets))


# curl prints one line per URL, answered or not: the URL as given and the HTTP status (000:
# no answer: refused, unreachable or timed out).
PROBE_WRITE_OUT = "%{url} %{http_code}\n"


def lab_proxy_probe_argv(targets, netns, timeout):
    """One curl, inside the node, that probes every ``ip:port`` in TARGETS at once
    (``--parallel``): a dead endpoint costs the probe timeout once, not once per endpoint."""
    argv = ["ip", "netns", "exec", netns, "curl", "--silent", "--no-progress-meter", "--parallel",
            "--max-time", str(timeout), "--write-out", PROBE_WRITE_OUT]
    for target in targets:
        argv += ["--output", "/dev/null", "http://%s/" % target]
    return argv


def lab_proxy_answered(probe_output):
    """The ``ip:port`` targets that answered, from the output of lab_proxy_probe_argv's curl."""
    answered = []
    for line in (probe_output or "").splitlines():
        url, _space, status = line.rpartition(" ")
        if url.startswith("http://") and status.isdigit() and status != "000":
            answered.append(url[len("http://"):].rstrip("/"))
    return answered


def lab_proxy_ready_services(services, ready_targets, assumed_ready=()):
    """The Services with their endpoints marked as an EndpointSlice marks them: those whose
    ``ip:targetPort`` answered (for a UDP or SCTP port, whose ip answered on any port), or
    whose ip is in ``assumed_ready`` (the pods the kubelet's probe found ready), as they are;
    the others ``ready: false, serving: false``, which kube-proxy leaves out.

    A Service left with none ready keeps its entry, so kube-proxy programs its "has no
    endpoints" rejection instead of forgetting the Service.
    """
    ready, assumed = set(ready_targets or ()), set(assumed_ready or ())
    answered_ips = {target.rpartition(":")[0] for target in ready}

    def marked(service, endpoint, target):
        if (target in ready if _probed(service) else _ip(endpoint) in answered_ips) or _ip(endpoint) in assumed:
            return endpoint
        fields = dict(endpoint) if isinstance(endpoint, dict) else dict(ip=endpoint)
        return dict(fields, ready=False, serving=False)

    return [dict(service, endpoints=[marked(service, endpoint, target)
                                     for endpoint, target in zip(service.get("endpoints") or [], _targets(service))])
            for service in services]


class FilterModule(object):
    def filters(self):
        return dict(lab_proxy_probe_targets=lab_proxy_probe_targets, lab_proxy_probe_argv=lab_proxy_probe_argv,
                    lab_proxy_answered=lab_proxy_answered, lab_proxy_ready_services=lab_proxy_ready_services)
