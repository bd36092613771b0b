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

MAX_TRIES = 60
ANSWER = re.compile(r"^pod=(?P<pod>\S+) client=(?P<ip>[0-9.]+):(?P<port>\d+)$")


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


def sources(lab):
    """Every place traffic to a ClusterIP can come from: the node, each pod, the client."""
    return [lab["node_netns"]] + [pod["netns"] for pod in lab["pods"]] + [lab["client_netns"]]


def pytest_generate_tests(metafunc):
    if "source" in metafunc.fixturenames:
        metafunc.parametrize("source", sources(load_lab()))


@pytest.fixture(scope="session")
def lab():
    return load_lab()


def project_env():
    """The environment a student's ansible-playbook runs in: the project's ansible.cfg, plain
    text (molecule forces colour on; the tests read the output's lines)."""
    env = dict(os.environ, ANSIBLE_CONFIG=os.path.join(PROJECT, "ansible.cfg"), ANSIBLE_NOCOLOR="1")
    env.pop("ANSIBLE_FORCE_COLOR", None)
    return env


def ansible_playbook(playbook, *args, extra_vars=None):
    """ansible-playbook PLAYBOOK [ARGS] [-e EXTRA_VARS] in the project, whatever its outcome."""
    command = ["ansible-playbook", playbook, *args] + (["-e", json.dumps(extra_vars)] if extra_vars else [])
    return subprocess.run(command, cwd=PROJECT, env=project_env(), capture_output=True, text=True, check=False)


def play(playbook, *args, **extra_vars):
    """ansible-playbook PLAYBOOK [ARGS] -e EXTRA_VARS; its output. Fails the test on error."""
    result = ansible_playbook(playbook, *args, extra_vars=extra_vars)
    assert result.returncode == 0, "%s failed:\n%s" % (" ".join(result.args), result.stdout[-4000:] + result.stderr[-2000:])
    return result.stdout


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
