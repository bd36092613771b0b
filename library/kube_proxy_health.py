#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Ansible front door of kube-proxy's service health check server: one node's health check
node ports answered, with the node's local endpoint counts."""

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

import inspect
import os
import shutil
import sys

from ansible.module_utils import lab_processes as processes
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.kube_proxy import healthcheck
from ansible.module_utils.kube_proxy.argspec import SERVICE_OPTIONS
from ansible.module_utils.kube_proxy.model import (NODE_PORT_RANGE, ValidationError, build_config, validate_netns,
                                                   validate_node_name)
from ansible.module_utils.lab_pods import server

ARGUMENT_SPEC = dict(
    netns=dict(type="str"),
    node_name=dict(type="str"),
    services=dict(type="list", elements="dict", options=SERVICE_OPTIONS, default=[]),
    node_port_range=dict(type="str", default="%d-%d" % NODE_PORT_RANGE),
    run_dir=dict(type="path", default="/run/kube-proxy-lab"),
    python=dict(type="str"),
    state=dict(type="str", choices=["present", "absent"], default="present"),
)
REQUIRED_IF = [("state", "present", ["netns"])]
NETNS_DIR = "/run/netns"
# Inside run_dir: not NAME.pid there, which lab_pod_servers would take for a pod's.
HEALTH_DIR = "health"
# How long a server gets between SIGTERM and SIGKILL (as the server's own stop).
END_GRACE_S = 5.0


def health_dir(params):
    return os.path.join(params["run_dir"], HEALTH_DIR)


def node_file(params, netns, suffix, port=None):
    """A node's health file (json), or a port's pidfile (pid) or log (log)."""
    name = netns if port is None else "%s.%d" % (netns, port)
    return os.path.join(health_dir(params), "%s.%s" % (name, suffix))


def known_files(params, netns=None):
    """{netns: {"ports": {port, ...}, "files": [path, ...]}} for the files in the health
    directory (of netns only, when given), the script left out."""
    try:
        entries = sorted(os.listdir(health_dir(params)))
    except OSError:
        return {}
    nodes = {}
    for entry in entries:
        stem, _dot, suffix = entry.rpartition(".")
        port = None
        if suffix in ("pid", "log"):
            stem, _dot, number = stem.rpartition(".")
            if not number.isdigit():
                continue
            port = int(number)
        elif suffix != "json":
            continue
        if not stem or (netns is not None and stem != netns):
            continue
        node = nodes.setdefault(stem, dict(ports=set(), files=[]))
        node["files"].append(os.path.join(health_dir(params), entry))
        if port is not None:
            node["ports"].add(port)
    return nodes


def in_namespace(pid, netns):
    """Whether pid runs in the network namespace named netns (the same namespace, not one that
    had its name before)."""
    try:
        mine = os.stat("/proc/%d/ns/net" % pid)
        node = os.stat(os.path.join(NETNS_DIR, netns))
    except OSError:
        return False
    return (mine.st_dev, mine.st_ino) == (node.st_dev, node.st_ino)


def start_argv(params, python, netns, port, action):
    return ["ip", "netns", "exec", netns, python, os.path.join(health_dir(params), server.SCRIPT), action,
            "--name", netns, "--port", str(port), "--pidfile", node_file(params, netns, "pid", port),
            "--logfile", node_file(params, netns, "log", port), "--health-file", node_file(params, netns, "json")]


def kill_line(netns, port, pid, pidfile):
    return "kill %d  # the health check server of %s:%d, by %s" % (pid, netns, port, pidfile)


def end_servers(module, servers):
    """End the servers, given as (pid, pidfile), by pid, all at once; fail naming those that outlive SIGKILL."""
    pidfiles = dict(servers)
    _killed, stuck = processes.end_all(list(pidfiles), lambda pid: server.is_server(pid, pidfiles[pid]), END_GRACE_S)
    if stuck:
        module.fail_json(msg="health check server pid(s) %s did not end, even after SIGKILL" % ", ".join(map(str, stuck)))


def read_text(path):
    try:
        with open(path) as handle:
            return handle.read()
    except OSError:
        return None


def remove(path):
    """Delete a file that may be gone already (an ended server deletes its own pidfile)."""
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def remove_empty_health_dir(params):
    """Delete the health directory when it holds nothing but the server script."""
    directory = health_dir(params)
    try:
        if set(os.listdir(directory)) <= {server.SCRIPT}:
            remove(os.path.join(directory, server.SCRIPT))
            os.rmdir(directory)
    except FileNotFoundError:
        pass


def write_atomically(path, text, mode=0o644):
    temporary = path + ".new"
    with open(temporary, "w") as handle:
        handle.write(text)
    os.chmod(temporary, mode)
    os.rename(temporary, path)


def plan_present(params, netns, checks, script_changed):
    """(starts, ends, leftovers): starts are (port, action); ends are (port, pid) of servers to
    end first (their port is gone, or they run in a namespace that is no longer the node's);
    leftovers are the files of the ports gone."""
    known = known_files(params, netns).get(netns, dict(ports=set(), files=[]))
    starts, ends = [], []
    for port in sorted(checks):
        pidfile = node_file(params, netns, "pid", port)
        pid = server.running_pid(pidfile)
        if pid is not None and not in_namespace(pid, netns):
            ends.append((port, pid))
            starts.append((port, "start"))
        elif script_changed:
            starts.append((port, "restart" if pid is not None else "start"))
        elif server.running_with(pidfile, netns, port, node_file(params, netns, "log", port),
                                 node_file(params, netns, "json")) is None:
            starts.append((port, "start"))
    gone = sorted(port for port in known["ports"] if port not in checks)
    for port in gone:
        pid = server.running_pid(node_file(params, netns, "pid", port))
        if pid is not None:
            ends.append((port, pid))
    leftovers = [node_file(params, netns, suffix, port) for port in gone for suffix in ("pid", "log")]
    return starts, ends, [path for path in leftovers if os.path.lexists(path)]


def files_of_vanished_nodes(params, netns):
    """The files of the other nodes whose namespace is gone (a node scaled away, its servers
    ended with it): nothing will ask for them again."""
    files = []
    for other, known in sorted(known_files(params).items()):
        if other == netns or os.path.exists(os.path.join(NETNS_DIR, other)):
            continue
        if not any(server.running_pid(node_file(params, other, "pid", port)) for port in known["ports"]):
            files += known["files"]
    return files


def servers_text(netns, ports):
    return "".join("%s:%d health check server\n" % (netns, port) for port in sorted(ports))


def run_present(module, params):
    try:
        netns = validate_netns(params["netns"])
        node_name = validate_node_name(params["node_name"] or netns)
        config = build_config(mode="iptables", cluster_cidr="0.0.0.0/0", services=params["services"],
                              node_name=node_name, node_port_range=params["node_port_range"])
    except ValidationError as error:
        module.fail_json(msg=str(error), field=error.field)
    checks = healthcheck.health_checks(config, node_name)
    if checks and not os.path.exists(os.path.join(NETNS_DIR, netns)):
        if not module.check_mode:
            module.fail_json(msg="network namespace %s does not exist (ip netns list); create the node first, "
                                 "e.g. with the lab_node role" % netns)
        module.warn("network namespace %s does not exist yet: every health check server would be started" % netns)
    python = params["python"] or sys.executable
    script = os.path.join(health_dir(params), server.SCRIPT)
    source = inspect.getsource(server)
    script_changed = bool(checks) and read_text(script) != source
    health_path = node_file(params, netns, "json")
    have_file = read_text(health_path)
    want_file = healthcheck.health_file(checks) if checks else None
    starts, ends, leftovers = plan_present(params, netns, checks, script_changed)
    if not checks and have_file is not None:
        leftovers.append(health_path)
    leftovers += files_of_vanished_nodes(params, netns)
    commands = [kill_line(netns, port, pid, node_file(params, netns, "pid", port)) for port, pid in ends]
    commands += [" ".join(start_argv(params, python, netns, port, action)) for port, action in starts]
    commands += ["rm %s" % path for path in leftovers]

    if not module.check_mode:
        if script_changed:
            os.makedirs(health_dir(params), mode=0o755, exist_ok=True)
            write_atomically(script, source, 0o755)
        # Before any server starts, so its first answer is already the new count.
        if want_file is not None and want_file != have_file:
            os.makedirs(health_dir(params), mode=0o755, exist_ok=True)
            write_atomically(health_path, want_file)
        end_servers(module, [(pid, node_file(params, netns, "pid", port)) for port, pid in ends])
        for port, action in starts:
            rc, stdout, stderr = module.run_command(start_argv(params, python, netns, port, action))
            if rc != 0:
                module.fail_json(msg="the health check server of %s:%d did not start: %s"
                                     % (netns, port, (stderr or stdout).strip()),
                                 rc=rc, stdout=stdout, stderr=stderr, commands=commands)
        for path in leftovers:
            remove(path)
        if not checks and not known_files(params):
            # No node has a server or a file left: the script goes too, so a lab without health
            # checks has nothing here (and the role can skip this module altogether).
            remove_empty_health_dir(params)

    started = ["%s:%d" % (netns, port) for port, _action in starts]
    stopped = ["%s:%d" % (netns, port) for port, _pid in ends if port not in checks]
    result = dict(changed=bool(script_changed or want_file != have_file or commands),
                  health_check_node_ports=healthcheck.summary(checks), started=started, stopped=stopped,
                  commands=commands)
    if module._diff:
        # The servers answering in the node before: those ended for their port gone, and the
        # declared ones running there as declared (not those in a namespace no longer the node's).
        before_ports = set(port for port, _pid in ends if port not in checks) | set(
            port for port in checks if (port, "start") not in starts)
        result["diff"] = [
            dict(before=have_file or "", after=want_file or "", before_header=health_path + " (before)",
                 after_header=health_path + " (after)"),
            dict(before=servers_text(netns, before_ports), after=servers_text(netns, checks),
                 before_header="%s: health check servers (before)" % netns,
                 after_header="%s: health check servers (after)" % netns),
        ]
    module.exit_json(**result)


def run_absent(module, params):
    netns = params["netns"]
    if netns is not None:
        try:
            validate_netns(netns)
        except ValidationError as error:
            module.fail_json(msg=str(error), field=error.field)
    known = known_files(params, netns)
    running = []
    for node in sorted(known):
        for port in sorted(known[node]["ports"]):
            pidfile = node_file(params, node, "pid", port)
            pid = server.running_pid(pidfile)
            if pid is not None:
                running.append((node, port, pid, pidfile))
    commands = [kill_line(node, port, pid, pidfile) for node, port, pid, pidfile in running]
    directory = health_dir(params)
    if netns is None:
        removed = [directory] if os.path.lexists(directory) else []
        commands += ["rm -r %s" % path for path in removed]
    else:
        removed = [path for node in known.values() for path in node["files"]]
        commands += ["rm %s" % path for path in removed]
    if not module.check_mode:
        end_servers(module, [(pid, pidfile) for _node, _port, pid, pidfile in running])
        for path in removed:
            if os.path.isdir(path) and not os.path.islink(path):
                shutil.rmtree(path)
            else:
                remove(path)
    module.exit_json(changed=bool(commands), started=[],
                     stopped=["%s:%d" % (node, port) for node, port, _pid, _pidfile in running], commands=commands)


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
