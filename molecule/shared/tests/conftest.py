"""Shared fixtures for the lab's testinfra tests (run by molecule verify on this machine).

The declared lab comes from lab.json, which molecule create renders from the inventory into
the scenario's ephemeral directory, so the tests follow whatever names and addresses the
lab was built with.
"""

import json
import os
import re
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
PROJECT = os.environ.get("MOLECULE_PROJECT_DIRECTORY", os.getcwd())
# host_snapshot.py; the bench's Service generator (tools/bench_lib.py); the module's own
# logic (module_utils/kube_proxy), for tests that check the kernel with the code's helpers.
sys.path[:0] = [os.path.dirname(HERE), os.path.join(PROJECT, "tools"), os.path.join(PROJECT, "module_utils")]

from kube_proxy.model import build_config  # noqa: E402 - importable once module_utils is on the path

MAX_TRIES = 60
ANSWER = re.compile(r"^pod=(?P<pod>\S+) client=(?P<ip>[0-9.]+):(?P<port>\d+)$")


def endpoint_ips(service):
    """The addresses of a declared Service's usable endpoints, as the kube_proxy module reads
    them (an endpoint may be an address or an EndpointSlice-like mapping)."""
    return list(build_config("iptables", "10.0.0.0/16", [service]).services[0].endpoints)


def ephemeral_dir():
    path = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY")
    if not path:
        pytest.exit("MOLECULE_EPHEMERAL_DIRECTORY is not set: run these tests through molecule", 2)
    return path


def load_lab():
    with open(os.path.join(ephemeral_dir(), "lab.json"), encoding="utf-8") as handle:
        lab = json.load(handle)
    for pod in lab["pods"]:
        pod["netns"] = lab["pods_netns_prefix"] + pod["name"]
    return lab


def infrastructure(lab):
    """The lab's namespaces that are not pods: its nodes, the LAN and the client."""
    return [node["netns"] for node in lab["nodes"]] + [lab["lan_netns"], lab["client_netns"]]


def sources(lab):
    """Every place traffic to a ClusterIP can come from: each node, each pod, the client."""
    return [node["netns"] for node in lab["nodes"]] + [pod["netns"] for pod in lab["pods"]] + [lab["client_netns"]]


def as_cluster(lab):
    """The lab as test_cluster.py builds it (make lab NODES=2 PODS=4): its nodes and pods in
    place of the scenario's, laid out by the lab's own filters (create.yml writes them)."""
    layout = lab["cluster"]
    pods = [dict(pod, netns=lab["pods_netns_prefix"] + pod["name"]) for pod in layout["pods_list"]]
    return dict(lab, nodes=layout["node_list"], pods=pods)


def pytest_configure(config):
    config.addinivalue_line(
        "markers", "mode_independent: proves what holds whatever kube-proxy's mode; runs in scenario default only")


def pytest_generate_tests(metafunc):
    if "source" in metafunc.fixturenames:
        metafunc.parametrize("source", sources(load_lab()))


@pytest.fixture(scope="session")
def lab():
    return load_lab()


@pytest.fixture(scope="module")
def cluster(lab):
    """The lab as a cluster (as_cluster), for a test module that builds layouts of its own; the
    scenario's lab is put back after the module's last test, passed or failed. (test_cluster.py
    has its own, which builds the cluster first.)"""
    try:
        yield as_cluster(lab)
    finally:
        play("lab.yml", mode=lab["mode"])


def project_env():
    """The environment a student's ansible-playbook runs in: the project's ansible.cfg, plain
    text (molecule forces colour on; the tests read the output's lines)."""
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(PROJECT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    env.pop("ANSIBLE_FORCE_COLOR", None)
    return env


def playbook_argv(playbook, *args, **extra_vars):
    """ansible-playbook PLAYBOOK [ARGS] [-e EXTRA_VARS], as a command to run in PROJECT."""
    return ["ansible-playbook", playbook, *args] + (["-e", json.dumps(extra_vars)] if extra_vars else [])


def play(playbook, *args, must_succeed=True, **extra_vars):
    """ansible-playbook PLAYBOOK [ARGS] -e EXTRA_VARS in the project, as a student runs it; the
    finished process. Every test runs its playbooks through here. Unless must_succeed is
    False, a failed run fails the test, with the end of its output."""
    result = subprocess.run(playbook_argv(playbook, *args, **extra_vars), cwd=PROJECT, env=project_env(),
                            capture_output=True, text=True, check=False)
    assert result.returncode == 0 or not must_succeed, "%s failed:\n%s" % (
        " ".join(result.args), result.stdout[-4000:] + result.stderr[-2000:])
    return result


def changed_tasks(output):
    """The tasks an ansible-playbook run reports changed, from its output; None when its recap
    says nothing changed."""
    recap = [line for line in output.splitlines() if "changed=" in line and "ok=" in line]
    if recap and all(" changed=0 " in line for line in recap):
        return None
    changed, task = [], None
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line.split("[", 1)[1].rsplit("]", 1)[0]
        elif line.startswith("changed:") and task not in changed:
            changed.append(task)
    return changed or recap


SCRATCH_NETNS = "kpl-test-sync"
MODULE_RUNNER = os.path.join(PROJECT, "tools", "bench_module.py")


@pytest.fixture
def scratch_node(host):
    """A namespace of the test's own for the kube_proxy module alone (no lab around it), shaped
    like the lab's node: a bridge holding the pod network's gateway address, and the Service
    range routed. IPVS refuses a real server its namespace has no route to ("address not
    unicast"), as it would on a real node."""
    host.check_output("ip netns add %s", SCRATCH_NETNS)
    try:
        for command in ("link set lo up", "link add cni0 type bridge", "address add 10.0.0.1/24 dev cni0",
                        "link set cni0 up", "route add 10.96.0.0/12 dev cni0"):
            host.check_output("ip -n %s %s" % (SCRATCH_NETNS, command))
        yield SCRATCH_NETNS
    finally:
        host.run("ip netns delete %s", SCRATCH_NETNS)


def module_args(tmp_path, name, services, netns=SCRATCH_NETNS, mode="iptables"):
    """A file of kube_proxy arguments, as Ansible hands them to the module."""
    path = tmp_path / (name + ".json")
    path.write_text(json.dumps({"ANSIBLE_MODULE_ARGS": dict(
        netns=netns, mode=mode, cluster_cidr="10.0.0.0/24", services=services)}))
    return str(path)


def start_module(args_path):
    """The kube_proxy module, started as Ansible runs it (tools/bench_module.py), not waited for."""
    return subprocess.Popen([sys.executable, MODULE_RUNNER, args_path],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(process):
    """The module's result, once it has ended; a failed run fails the test."""
    stdout, stderr = process.communicate(timeout=300)
    assert process.returncode == 0, "kube_proxy failed: %s %s" % (stdout[-2000:], stderr[-2000:])
    return json.loads(stdout)


def curl(host, netns, url):
    """One request from inside netns; the parsed answer, or None when it failed."""
    result = host.run("ip netns exec %s curl -s --max-time 2 %s", netns, url)
    match = ANSWER.match(result.stdout.strip()) if result.rc == 0 else None
    return match.groupdict() if match else None


class Answers:
    """Answers from the first Service, per source, collected once per test module: requests
    go out until every pod has answered (so a pod has reached itself and the others too),
    at most MAX_TRIES times. Failed requests are kept as None."""

    def __init__(self, host, lab):
        self.host, self.cache = host, {}
        self.pods = {pod["name"] for pod in lab["pods"]}
        service = lab["services"][0]
        self.url = f"http://{service['cluster_ip']}:{service['port']}/"

    def __call__(self, source):
        if source not in self.cache:
            answers = []
            for _ in range(MAX_TRIES):
                answers.append(curl(self.host, source, self.url))
                if {answer["pod"] for answer in answers if answer} == self.pods:
                    break
            self.cache[source] = answers
        return self.cache[source]


@pytest.fixture(scope="module")
def answers(host, lab):
    return Answers(host, lab)
