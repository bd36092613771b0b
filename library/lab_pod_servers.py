#!/usr/bin/python
# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Ansible front door of the pods' HTTP servers: installed, and running in their namespaces."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
---
module: lab_pod_servers
short_description: Keep each pod's HTTP server installed and running inside the pod's namespace
description:
  - Installs the pod server (C(lab_pod_server.py), Python's standard library only) in
    O(run_dir), and makes sure every pod in O(pods) that is not held down runs one, inside its
    network namespace (O(netns_prefix) + the pod's name), on O(port), with its pidfile and log
    in O(run_dir) (C(pod1.pid), C(pod1.log)).
  - A pod is held down while O(run_dir) holds C(NAME.stopped) (C(playbooks/pod.yml -e server=stop)
    writes it) and its server is neither started nor stopped here.
  - A server already running with these settings (its pidfile names a live process whose command
    line is this server with the same name, ports and log) is left alone, so a run where everything
    runs starts no process. A server with other settings is replaced; a new version of the script
    restarts every server.
  - With O(probe), it then probes every serving pod's server from the node, as the kubelet runs a
    pod's readiness probe, all at once (one C(curl --parallel) inside O(probe.netns)), and returns the
    pods that answered as RV(ready).
  - With O(state=absent) it ends every server it knows of, those of O(pods) and those with a
    pidfile in O(run_dir), each by the pid in its pidfile (SIGTERM, SIGKILL after 5 seconds), and
    deletes O(run_dir) with everything in it.
  - The result's RV(commands) are the commands it ran (in check mode, would run), one per line.
version_added: "1.1.0"
author:
  - kube-proxy-lab developers
options:
  pods:
    description: The pods' names.
    type: list
    elements: str
    required: true
  netns_prefix:
    description: A pod's network namespace is this prefix followed by its name.
    type: str
    default: lab-
  port:
    description: The port every server listens on (the Service's targetPort).
    type: int
    default: 8080
  udp_port:
    description:
      - A UDP port every server also answers on, one datagram per datagram (the targetPort of
        the lab's UDP Service); unset, none.
    type: int
  run_dir:
    description: Absolute path of the directory for the script, the pidfiles, the logs and the hold markers.
    type: path
    default: /run/kube-proxy-lab
  python:
    description: The Python that runs the servers; by default the one running this module.
    type: str
  probe:
    description:
      - Probe the servers once they run (with O(state=present)); unset, nothing is probed.
    type: dict
    suboptions:
      netns:
        description: The namespace the probe runs in (the node, where the kubelet runs).
        type: str
        required: true
      addresses:
        description: Each pod's address, by name; a serving pod without one counts as not ready.
        type: dict
        required: true
      timeout:
        description: Seconds a server may take to answer before its pod counts as not ready.
        type: int
        default: 1
  state:
    description:
      - V(present) keeps the servers running (all but those held down); V(absent) ends them all
        and deletes O(run_dir).
    type: str
    choices: [present, absent]
    default: present
notes:
  - Supports C(--check) (says what it would install and start; RV(serving) is right in check mode
    too; RV(ready) is every serving pod there, unprobed, as the run would start what does not run).
requirements:
  - iproute2 (C(ip netns exec)) on the target, curl for O(probe); Python's standard library only.
"""

EXAMPLES = r"""
- name: A server in each pod, except those held down
  lab_pod_servers:
    pods: [pod1, pod2, pod3]
    netns_prefix: lab-
    port: 8080
    udp_port: 8053
    run_dir: /run/kube-proxy-lab
    probe:
      netns: lab-node
      addresses: {pod1: 10.0.0.2, pod2: 10.0.0.3, pod3: 10.0.0.4}
  register: servers

- name: The pods that serve
  ansible.builtin.debug:
    msg: "{{ servers.serving }}"

- name: No server running, no run directory
  lab_pod_servers:
    state: absent
    pods: [pod1, pod2, pod3]
    run_dir: /run/kube-proxy-lab
"""

RETURN = r"""
serving:
  description: The pods whose server runs after this run (would, in check mode), all but those held down.
  returned: when O(state) is V(present)
  type: list
  elements: str
  sample: [pod1, pod3]
ready:
  description: The serving pods whose server answered the probe (in check mode, every serving pod).
  returned: when O(probe) is set and O(state) is V(present)
  type: list
  elements: str
  sample: [pod1, pod3]
held:
  description: The pods held down (C(NAME.stopped) in O(run_dir)).
  returned: when O(state) is V(present)
  type: list
  elements: str
  sample: [pod2]
started:
  description: The pods whose server was started or restarted (would be, in check mode).
  returned: when O(state) is V(present)
  type: list
  elements: str
  sample: [pod1]
stopped:
  description: The pods whose server was ended (would be, in check mode).
  returned: when O(state) is V(absent)
  type: list
  elements: str
  sample: [pod1, pod2]
found:
  description:
    - The pods O(run_dir) held a pidfile, log or hold marker of, as read before any change
      (with O(pods), every pod a teardown has to look for; with O(state=present), those left by
      a lab scaled down, whose node may be gone with their veth).
  returned: always
  type: list
  elements: str
  sample: [pod1, pod2, pod3, pod4]
commands:
  description: The commands run (in check mode, that would run), one per line.
  returned: always
  type: list
  elements: str
  sample:
    - ip netns exec lab-pod1 /usr/bin/python3 /run/kube-proxy-lab/lab_pod_server.py start --name pod1 --port 8080
      --pidfile /run/kube-proxy-lab/pod1.pid --logfile /run/kube-proxy-lab/pod1.log
"""

import inspect
import os
import shutil
import sys

from ansible.module_utils import lab_processes as processes
from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.lab_pods import server

ARGUMENT_SPEC = dict(
    pods=dict(type="list", elements="str", required=True),
    netns_prefix=dict(type="str", default="lab-"),
    port=dict(type="int", default=8080),
    udp_port=dict(type="int"),
    run_dir=dict(type="path", default="/run/kube-proxy-lab"),
    python=dict(type="str"),
    probe=dict(type="dict", options=dict(netns=dict(type="str", required=True),
                                         addresses=dict(type="dict", required=True),
                                         timeout=dict(type="int", default=1))),
    state=dict(type="str", choices=["present", "absent"], default="present"),
)
# curl prints one line per URL, answered or not: the URL and the HTTP status (000: no answer).
PROBE_WRITE_OUT = "%{url} %{http_code}\n"
# How long a server gets between SIGTERM and SIGKILL (as the server's own stop).
END_GRACE_S = 5.0
# The files a pod has in the run directory (pod_file's suffixes).
POD_FILE_SUFFIXES = ("pid", "log", "stopped")


def pod_file(run_dir, name, suffix):
    """A pod's pidfile (pid), log (log) or hold marker (stopped) in the run directory."""
    return os.path.join(run_dir, "%s.%s" % (name, suffix))


def start_argv(params, python, script, name, action):
    run_dir = params["run_dir"]
    return ["ip", "netns", "exec", params["netns_prefix"] + name, python, script, action, "--name", name,
            "--port", str(params["port"])] + (["--udp-port", str(params["udp_port"])] if params["udp_port"] else []) + [
            "--pidfile", pod_file(run_dir, name, "pid"), "--logfile", pod_file(run_dir, name, "log")]


def plan(params, script_changed):
    """(held, serving, starts): starts are (name, action) for each server to (re)start."""
    run_dir = params["run_dir"]
    held = [name for name in params["pods"] if os.path.exists(pod_file(run_dir, name, "stopped"))]
    serving = [name for name in params["pods"] if name not in held]
    starts = []
    for name in serving:
        pidfile = pod_file(run_dir, name, "pid")
        if script_changed:
            starts.append((name, "restart" if server.running_pid(pidfile) else "start"))
        elif server.running_with(pidfile, name, params["port"], pod_file(run_dir, name, "log"),
                                 udp_port=params["udp_port"] or None) is None:
            starts.append((name, "start"))
    return held, serving, starts


def probe_argv(probe, names):
    """One curl inside probe's namespace asking every pod's server at once, so that a dead one
    costs the timeout once."""
    argv = ["ip", "netns", "exec", probe["netns"], "curl", "--silent", "--parallel",
            "--max-time", str(probe["timeout"]), "--write-out", PROBE_WRITE_OUT]
    for name in names:
        argv += ["--output", os.devnull, probe_url(probe, name)]
    return argv


def probe_url(probe, name):
    return "http://%s:%s/" % (probe["addresses"][name], probe["port"])


def ready_pods(module, probe, serving):
    """The serving pods whose server answers. In check mode every serving pod counts as ready:
    the run would start what does not run, and the node to probe from may not exist yet."""
    if module.check_mode:
        return list(serving)
    asked = [name for name in serving if name in probe["addresses"]]
    answered = set()
    if asked:
        rc, stdout, stderr = module.run_command(probe_argv(probe, asked))
        if rc != 0 and not stdout.strip():
            # curl answers every URL with a line, also a refused one: no line at all is the
            # probe itself failing (no curl, no node namespace), not the servers.
            module.warn("the readiness probe did not run (%s): no pod counts as ready"
                        % ((stderr or "exit %d" % rc).strip().splitlines() or ["?"])[0])
        for line in stdout.splitlines():
            url, _space, status = line.rpartition(" ")
            if status.isdigit() and status != "000":
                answered.add(url)
    return [name for name in asked if probe_url(probe, name) in answered]


def pods_in_run_dir(run_dir):
    """The pods the run directory holds a pidfile, log or hold marker of."""
    try:
        entries = os.listdir(run_dir)
    except OSError:
        return []
    return sorted(set(name for name, _dot, suffix in (entry.rpartition(".") for entry in entries)
                      if name and suffix in POD_FILE_SUFFIXES))


def stop_all(servers, grace=END_GRACE_S):
    """End the servers, given as (pid, pidfile), all at once, SIGKILL after grace seconds;
    return the pids still up grace seconds after that."""
    pidfiles = dict(servers)
    _killed, stuck = processes.end_all(list(pidfiles), lambda pid: server.is_server(pid, pidfiles[pid]), grace)
    return stuck


def remove_all(module, params):
    """state=absent: every known server ended by its pidfile, then the run directory deleted."""
    run_dir = params["run_dir"]
    found = pods_in_run_dir(run_dir)
    running = [(name, server.running_pid(pod_file(run_dir, name, "pid")))
               for name in sorted(set(params["pods"]) | set(found))]
    running = [(name, pid) for name, pid in running if pid is not None]
    commands = ["kill %d  # the server of pod %s, by %s" % (pid, name, pod_file(run_dir, name, "pid"))
                for name, pid in running]
    if os.path.lexists(run_dir):
        commands.append("rm -r %s" % run_dir)
    if not module.check_mode:
        stuck = stop_all([(pid, pod_file(run_dir, name, "pid")) for name, pid in running])
        if stuck:
            module.fail_json(msg="pod server pid(s) %s did not end, even after SIGKILL; the run directory is kept"
                                 % ", ".join(map(str, stuck)), commands=commands)
        if os.path.isdir(run_dir) and not os.path.islink(run_dir):
            shutil.rmtree(run_dir)
        elif os.path.lexists(run_dir):
            os.unlink(run_dir)
    module.exit_json(changed=bool(commands), stopped=[name for name, _pid in running], found=found, commands=commands)


def run_module(module):
    params = module.params
    run_dir = params["run_dir"]
    if not os.path.isabs(run_dir):
        module.fail_json(msg="run_dir must be an absolute path (the pidfiles in it identify the servers), got %s" % run_dir,
                         field="run_dir")
    bad = [name for name in params["pods"] if not name or "/" in name]
    if bad:
        module.fail_json(msg="pods: %r is not a pod name" % bad[0], field="pods")
    if params["probe"] and params["probe"]["timeout"] < 1:
        module.fail_json(msg="probe.timeout must be 1 second or more, got %d" % params["probe"]["timeout"],
                         field="probe.timeout")
    if params["state"] == "absent":
        remove_all(module, params)
    python = params["python"] or sys.executable
    script = os.path.join(run_dir, server.SCRIPT)
    source = inspect.getsource(server)
    try:
        with open(script) as handle:
            script_changed = handle.read() != source
    except OSError:
        script_changed = True
    found = pods_in_run_dir(run_dir)
    held, serving, starts = plan(params, script_changed)
    commands = [" ".join(start_argv(params, python, script, name, action)) for name, action in starts]

    if not module.check_mode:
        if script_changed:
            os.makedirs(run_dir, mode=0o755, exist_ok=True)
            temporary = script + ".new"
            with open(temporary, "w") as handle:
                handle.write(source)
            os.chmod(temporary, 0o755)
            os.rename(temporary, script)
        for name, action in starts:
            rc, stdout, stderr = module.run_command(start_argv(params, python, script, name, action))
            if rc != 0:
                module.fail_json(msg="the server of pod %s did not start: %s" % (name, (stderr or stdout).strip()),
                                 rc=rc, stdout=stdout, stderr=stderr, commands=commands)

    result = dict(changed=bool(script_changed or starts), serving=serving, held=held,
                  started=[name for name, _action in starts], found=found, commands=commands)
    if params["probe"]:
        probe = dict(params["probe"], port=params["port"])
        result["ready"] = ready_pods(module, probe, serving)
    module.exit_json(**result)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run_module(module)


if __name__ == "__main__":
    main()
