"""kube-proxy's service health check server (pkg/proxy/healthcheck/service_health.go), the
pure part: which health check node ports a node answers, for which Service, with how many
local endpoints.

kube-proxy opens one HTTP listener per ``healthCheckNodePort`` (the API server allocates one
to a LoadBalancer Service with ``externalTrafficPolicy: Local``) on every node, and answers
it with the number of the Service's ready endpoints on that node
(``EndpointsMap.LocalReadyEndpoints``): 200 when there is one or more, 503 when there is
none, so that the cloud load balancer sends the Service's traffic only to nodes that keep it
(the Local policy never forwards it to another node). The answer itself (status, headers,
body) is the lab's health check server's: ``lab_pods/server.py``'s ``health_answer``, the
daemon that answers it on the node; this module writes the file that daemon reads.
"""

import json
from dataclasses import dataclass
from typing import Dict, Optional, Set, Tuple

from .model import ProxyConfig

# The health file's keys for one health check node port (the daemon, lab_pods/server.py, reads them).
FILE_KEYS = ("namespace", "name", "local_endpoints")


@dataclass(frozen=True)
class HealthCheck:
    """One health check node port on one node: the Service it answers for, and its count."""

    port: int
    namespace: str
    name: str
    local_endpoints: int

    @property
    def service(self) -> str:
        return "%s/%s" % (self.namespace, self.name)


def health_checks(config: ProxyConfig, node_name: Optional[str]) -> Dict[int, HealthCheck]:
    """The health check node ports NODE_NAME answers, each with its Service and the number of
    that Service's ready endpoints on NODE_NAME. Like LocalReadyEndpoints, the endpoints of all
    the Service's ports are counted once per address (10.0.0.2:80 and 10.0.0.2:443 are one),
    only ready ones count (a node left with only terminating endpoints fails the check, so the
    load balancer drains it), and an endpoint on no node is no node's."""
    owners: Dict[int, Tuple[str, str]] = {}
    local: Dict[Tuple[str, str], Set[str]] = {}
    for service in config.services:
        if not service.health_check_node_port:
            continue
        key = (service.namespace, service.name)
        owners.setdefault(service.health_check_node_port, key)
        mine = local.setdefault(key, set())
        mine.update(endpoint.ip for endpoint in service.declared_endpoints
                    if endpoint.ready and node_name is not None and endpoint.node_name == node_name)
    return dict((port, HealthCheck(port=port, namespace=key[0], name=key[1], local_endpoints=len(local[key])))
                for port, key in sorted(owners.items()))


def health_file(checks: Dict[int, HealthCheck]) -> str:
    """The node's health file, which its health check servers read on every request:
    ``{"30081": {"namespace": "default", "name": "app1", "local_endpoints": 2}}``."""
    return json.dumps(dict((str(port), dict(zip(FILE_KEYS, (check.namespace, check.name, check.local_endpoints))))
                           for port, check in sorted(checks.items())), indent=2, sort_keys=True) + "\n"


def summary(checks: Dict[int, HealthCheck]) -> Dict[str, Dict[str, object]]:
    """The module's result: ``{"30081": {"service": "default/app1", "local_endpoints": 2}}``."""
    return dict((str(port), dict(service=check.service, local_endpoints=check.local_endpoints))
                for port, check in sorted(checks.items()))
