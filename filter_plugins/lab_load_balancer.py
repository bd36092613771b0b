# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""lab_load_balancer: the cloud load balancer's health checker, outside the cluster.

It asks every node's health check node port at once (one ``curl --parallel`` from the
client's namespace) and takes a node as a backend when it answers 200, as a cloud load
balancer (or MetalLB's speaker) follows kube-proxy's health check server.
"""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

from ansible.errors import AnsibleFilterError

# One line per URL, answered or not: the URL as given and the HTTP status (000: no answer).
CHECK_WRITE_OUT = "%{url} %{http_code}\n"


def _url(node_ip, port):
    return "http://%s:%d/" % (node_ip, int(port))


def lab_load_balancer_check_argv(nodes, port, netns, timeout):
    """One curl inside NETNS asking every node IP's health check node PORT at once."""
    if not isinstance(nodes, list) or not nodes:
        raise AnsibleFilterError("lab_load_balancer_check_argv: lab_load_balancer_nodes must be a non-empty list, got %r"
                                 % (nodes,))
    argv = ["ip", "netns", "exec", netns, "curl", "--silent", "--no-progress-meter", "--parallel",
            "--max-time", str(timeout), "--write-out", CHECK_WRITE_OUT]
    for node_ip in nodes:
        argv += ["--output", "/dev/null", _url(node_ip, port)]
    return argv


def lab_load_balancer_healthy(check_output, nodes, port):
    """The node IPs, in the order of NODES, whose health check answered 200 in the output of
    lab_load_balancer_check_argv's curl (503, no answer or no line: not healthy)."""
    answers = {}
    for line in (check_output or "").splitlines():
        url, _space, status = line.rpartition(" ")
        answers[url] = status
    return [node_ip for node_ip in nodes if answers.get(_url(node_ip, port)) == "200"]


class FilterModule(object):
    def filters(self):
        return dict(lab_load_balancer_check_argv=lab_load_balancer_check_argv,
                    lab_load_balancer_healthy=lab_load_balancer_healthy)
