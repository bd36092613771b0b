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
    line is this server with the same name, port and log) is left alone, so a run where everything
    runs starts no process. A server with other settings is replaced; a new version of the script
    restarts every server.
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
  run_dir:
    description: Absolute path of the directory for the script, the pidfiles, the logs and the hold markers.
    type: path
    default: /run/kube-proxy-lab
  python:
    description: The Python that runs the servers; by default the one running this module.
    type: str
notes:
  - Supports C(--check) (says what it would install and start; RV(serving) is right in check mode too).
requirements:
  - iproute2 (C(ip netns exec)) on the target; Python's standard library only.
"""

EXAMPLES = r"""
- name: A server in each pod, except those held down
  lab_pod_servers:
    pods: [pod1, pod2, pod3]
    netns_prefix: lab-
    port: 8080
    run_dir: /run/kube-proxy-lab
  register: servers

- name: The pods that serve
  ansible.builtin.debug:
    msg: "{{ servers.serving }}"
"""

RETURN = r"""
serving:
  description: The pods whose server runs after this run (would, in check mode), all but those held down.
  returned: always
  type: list
  elements: str
  sample: [pod1, pod3]
held:
  description: The pods held down (C(NAME.stopped) in O(run_dir)).
  returned: always
  type: list
  elements: str
  sample: [pod2]
started:
  description: The pods whose server was started or restarted (would be, in check mode).
  returned: always
  type: list
  elements: str
  sample: [pod1]
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
import sys

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.lab_pods import server

ARGUMENT_SPEC = dict(
    pods=dict(type="list", elements="str", required=True),
    netns_prefix=dict(type="str", default="lab-"),
    port=dict(type="int", default=8080),
    run_dir=dict(type="path", default="/run/kube-proxy-lab"),
    python=dict(type="str"),
)


def pod_file(run_dir, name, suffix):
    """A pod's pidfile (pid), log (log) or hold marker (stopped) in the run directory."""
    return os.path.join(run_dir, "%s.%s" % (name, suffix))


def start_argv(params, python, script, name, action):
    run_dir = params["run_dir"]
    return ["ip", "netns", "exec", params["netns_prefix"] + name, python, script, action, "--name", name,
            "--port", str(params["port"]), "--pidfile", pod_file(run_dir, name, "pid"),
            "--logfile", pod_file(run_dir, name, "log")]


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
        elif server.running_with(pidfile, name, params["port"], pod_file(run_dir, name, "log")) is None:
            starts.append((name, "start"))
    return held, serving, starts


def run_module(module):
    params = module.params
    run_dir = params["run_dir"]
    if not os.path.isabs(run_dir):
        module.fail_json(msg="run_dir must be an absolute path (the pidfiles in it identify the servers), got %s" % run_dir,
                         field="run_dir")
    bad = [name for name in params["pods"] if not name or "/" in name]
    if bad:
        module.fail_json(msg="pods: %r is not a pod name" % bad[0], field="pods")
    python = params["python"] or sys.executable
    script = os.path.join(run_dir, server.SCRIPT)
    source = inspect.getsource(server)
    try:
        with open(script) as handle:
            script_changed = handle.read() != source
    except OSError:
        script_changed = True
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
                  started=[name for name, _action in starts], commands=commands)
    module.exit_json(**result)


def main():
    module = AnsibleModule(argument_spec=ARGUMENT_SPEC, supports_check_mode=True)
    run_module(module)


if __name__ == "__main__":
    main()
