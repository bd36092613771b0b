#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Ansible front door of kube-proxy's service health check server: one node's health check
node ports answered, with the node's local endpoint counts (module_utils/kube_proxy/
health_servers.py runs them; the kube_proxy module does the same after each sync when given
health_check_run_dir)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: kube_proxy_health
short_description: Answer a node's health check node ports the way kube-proxy's health check server does
description:
  - kube-proxy opens one HTTP listener per C(healthCheckNodePort) on every node (the API server
    allocates one to a V(LoadBalancer) Service with C(externalTrafficPolicy=Local)) and answers
    it with the number of the Service's ready endpoints on that node, status 200 when there is
    one or more and 503 when there is none, so a cloud load balancer sends the Service's traffic
    only to the nodes that keep it. This module runs that listener in the node's network
    namespace O(netns), for the Services of O(services) (the list the M(kube_proxy) module
    takes), with kube-proxy's headers (C(Content-Type), C(X-Content-Type-Options),
    C(X-Load-Balancing-Endpoint-Weight)) and JSON body.
  - The count is kube-proxy's C(LocalReadyEndpoints), the Service's endpoints whose C(node_name)
    is O(node_name) and that are ready (terminating ones never count), each address once over
    all the Service's ports.
  - Each listener is the lab's server (C(lab_pod_server.py --health-file), Python's standard
    library only), a daemon started with C(ip netns exec NETNS), one per health check node
    port, with its pidfile and log in O(run_dir)C(/health/) (C(lab-node.30081.pid),
    C(lab-node.30081.log)). The counts are in the node's health file there (C(lab-node.json)),
    which the servers read on every request, so a changed count is written, not restarted.
  - A server already running with these settings, in the node's current namespace, is left
    alone; one whose port is gone is ended by its pid (SIGTERM, SIGKILL after 5 seconds); one
    left in a namespace that is no longer the node's (the node deleted and made anew) is ended
    and started again. A new version of the script restarts the node's servers. The files of a
    node whose namespace is gone and whose servers ended (a node scaled away) are deleted; once
    no node has a server or a file left, the script and O(run_dir)C(/health/) go too.
  - With O(state=absent) it ends, by their pidfiles, the health check servers of the node
    O(netns), or of every node when O(netns) is not given, and deletes their files (without
    O(netns), the whole O(run_dir)C(/health/)). Run it before the nodes are deleted, as a
    process keeps a deleted namespace alive, with its links.
  - The result's RV(commands) are the commands it ran (in check mode, would run), one per line.
version_added: "1.2.0"
author:
  - kube-proxy-lab developers
options:
  netns:
    description:
      - The node's network namespace; required with O(state=present). It must exist when a
        health check node port is declared, except in check mode.
    type: str
  node_name:
    description: The node's name, matched against each endpoint's C(node_name); by default O(netns).
    type: str
  services:
    description:
      - The Services, one entry per service port, exactly as the M(kube_proxy) module takes
        them (the same suboptions, validated the same way); only those with
        C(health_check_node_port) set are answered.
    type: list
    elements: dict
    default: []
  node_port_range:
    description: The range node ports are taken from (the API server's C(--service-node-port-range)), C(LOW-HIGH).
    type: str
    default: 30000-32767
  run_dir:
    description: Absolute path of the lab's run directory; this module keeps its files in its subdirectory C(health).
    type: path
    default: /run/kube-proxy-lab
  python:
    description: The Python that runs the servers; by default the one running this module.
    type: str
  state:
    description:
      - V(present) keeps exactly one server per health check node port of O(services) running in
        O(netns), and none for any other port of that node; V(absent) ends them all.
    type: str
    choices: [present, absent]
    default: present
notes:
  - Supports C(--check) (says what it would write, start and end, and changes nothing) and
    C(--diff) (the node's health file and its servers, before and after).
  - The servers listen on every address of the node (kube-proxy's default without
    C(--nodeport-addresses)); the lab's kube-proxy has no C(healthz), so C(serviceProxyHealthy)
    is always true.
requirements:
  - iproute2 (C(ip netns exec)) on the target; Python's standard library only.
"""

EXAMPLES = r"""
- name: Answer lab-node's health check node ports
  kube_proxy_health:
    netns: lab-node
    services:
      - name: app1
        cluster_ip: 10.96.0.10
        port: 80
        target_port: 8080
        type: LoadBalancer
        node_port: 30080
        load_balancer_ips: [192.168.200.10]
        external_traffic_policy: Local
        health_check_node_port: 30081
        endpoints:
          - {ip: 10.0.0.2, node_name: lab-node}
          - {ip: 10.0.1.2, node_name: lab-node2}
  register: health

- name: No health check server left, on any node
  kube_proxy_health:
    state: absent
"""

RETURN = r"""
health_check_node_ports:
  description: Per health check node port the node answers, the Service and its count of local ready endpoints.
  returned: when O(state) is V(present)
  type: dict
  sample: {"30081": {service: default/app1, local_endpoints: 1}}
started:
  description: The ports whose server was started or restarted (would be, in check mode), as C(netns:port).
  returned: always
  type: list
  elements: str
  sample: ["lab-node:30081"]
stopped:
  description: The ports whose server was ended (would be, in check mode), as C(netns:port).
  returned: always
  type: list
  elements: str
  sample: ["lab-node2:30081"]
commands:
  description: The commands run (in check mode, that would run), one per line.
  returned: always
  type: list
  elements: str
  sample:
    - ip netns exec lab-node /usr/bin/python3 /run/kube-proxy-lab/health/lab_pod_server.py start --name lab-node
      --port 30081 --pidfile /run/kube-proxy-lab/health/lab-node.30081.pid --logfile
      /run/kube-proxy-lab/health/lab-node.30081.log --health-file /run/kube-proxy-lab/health/lab-node.json
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.kube_proxy import health_servers, healthcheck
from ansible.module_utils.kube_proxy.argspec import SERVICES
from ansible.module_utils.kube_proxy.model import (NODE_PORT_RANGE, ValidationError, build_config, validate_netns,
                                                   validate_node_name)

ARGUMENT_SPEC = dict(
    netns=dict(type="str"),
    node_name=dict(type="str"),
    services=SERVICES,
    node_port_range=dict(type="str", default="%d-%d" % NODE_PORT_RANGE),
    run_dir=dict(type="path", default="/run/kube-proxy-lab"),
    python=dict(type="str"),
    state=dict(type="str", choices=["present", "absent"], default="present"),
)
REQUIRED_IF = [("state", "present", ["netns"])]


def run_present(module, params):
    try:
        netns = validate_netns(params["netns"])
        node_name = validate_node_name(params["node_name"] or netns)
        config = build_config(mode="iptables", cluster_cidr="0.0.0.0/0", services=params["services"],
                              node_name=node_name, node_port_range=params["node_port_range"])
    except ValidationError as error:
        module.fail_json(msg=str(error), field=error.field)
    result = health_servers.present(module, params["run_dir"], params["python"], netns,
                                    healthcheck.health_checks(config, node_name))
    diff = result.pop("diff")
    if module._diff:
        result["diff"] = diff
    module.exit_json(**result)


def run_absent(module, params):
    netns = params["netns"]
    if netns is not None:
        try:
            validate_netns(netns)
        except ValidationError as error:
            module.fail_json(msg=str(error), field=error.field)
    module.exit_json(**health_servers.absent(module, params["run_dir"], netns))


def run_module(module):
    params = module.params
    if not os.path.isabs(params["run_dir"]):
        module.fail_json(msg="run_dir must be an absolute path (the pidfiles in it identify the servers), got %s"
                             % params["run_dir"], field="run_dir")
    if params["state"] == "absent":
        run_absent(module, params)
    run_present(module, params)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, required_if=REQUIRED_IF, supports_check_mode=True)
    run_module(module)


if __name__ == "__main__":
    main()
