"""tools/run-scenarios' orchestration, with stand-ins for Molecule and the user-mode-linux node.

The script is copied into a scratch tree beside fake tools/uml-run, tools/private-run and
tools/kernel-has-ipvs (this kernel "has no IP_VS", so ipvs* scenarios go to "nodes"), and a
fake `molecule` is first in PATH. What is tested is the script's own logic: every scenario's
lines are out before the verdict, a failure anywhere fails the run and is named last, a
failure stops the nodes but lets the scenarios on this kernel finish, and only the first of
those runs without a private /run. The real thing runs in `make test`.
"""

import os
import shutil
import stat
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# A node writes many lines just before it exits: what a slow prefixing filter would still be
# printing when a `wait` that does not wait for it returns.
FAKE_UML_RUN = r'''#!/usr/bin/env bash
scenario=${@: -1}
echo "node for $scenario on CPU $UML_RUN_CPU"
sleeper=
trap 'kill $sleeper 2>/dev/null; echo "node $scenario stopped"; exit 143' TERM
touch "node-$scenario-listening"
if [ -n "${FAKE_NODE_SLEEP:-}" ]; then sleep "$FAKE_NODE_SLEEP" & sleeper=$!; wait $sleeper; fi
seq -f "$scenario line %g" 1 20000
echo "$scenario LAST LINE"
mkdir -p results
if [ "${FAKE_NODE_FAILS:-}" = "$scenario" ]; then
  printf '<testsuites><testsuite><testcase classname="test_x" name="test_in_node"><failure message="node said no"/></testcase></testsuite></testsuites>' > "results/molecule-$scenario.xml"
  exit 3
fi
exit 0
'''

FAKE_PRIVATE_RUN = r'''#!/usr/bin/env bash
echo "private /run for ${@: -1}"
exec "$@"
'''

FAKE_MOLECULE = r'''#!/usr/bin/env bash
scenario=${@: -1}
if [ -n "${FAKE_NATIVE_SLEEP:-}" ] && [ "${FAKE_NATIVE_FAILS:-}" != "$scenario" ]; then
  sleep "$FAKE_NATIVE_SLEEP"
fi
echo "molecule ran $scenario"
if [ "${FAKE_NATIVE_FAILS:-}" = "$scenario" ]; then
  # Fail only once the node listens for TERM: a node killed before its trap is set dies
  # silently, and the test would then be measuring how fast bash starts, not the script.
  for _ in $(seq 100); do [ -e "node-$FAKE_NODE_LISTENING-listening" ] && break; sleep 0.1; done
  mkdir -p results
  printf '<testsuites><testsuite><testcase classname="test_y" name="test_native"><failure message="native said no"/></testcase></testsuite></testsuites>' > "results/molecule-$scenario.xml"
  exit 1
fi
exit 0
'''


def _executable(path, text):
    with open(path, 'w', encoding='utf-8') as handle:
        handle.write(text)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)


@pytest.fixture(name='tree')
def fixture_tree(tmp_path):
    tools = tmp_path / 'tools'
    tools.mkdir()
    shutil.copy(os.path.join(REPO, 'tools', 'run-scenarios'), tools / 'run-scenarios')
    _executable(tools / 'uml-run', FAKE_UML_RUN)
    _executable(tools / 'private-run', FAKE_PRIVATE_RUN)
    _executable(tools / 'kernel-has-ipvs', '#!/bin/sh\nexit 1\n')
    bin_dir = tmp_path / 'bin'
    bin_dir.mkdir()
    _executable(bin_dir / 'molecule', FAKE_MOLECULE)
    return tmp_path


def run(tree, *scenarios, **env):
    full_env = dict(os.environ, PATH='%s:%s' % (tree / 'bin', os.environ['PATH']), **env)
    # stdout and stderr in one pipe, so the order of lines is the order a reader sees.
    return subprocess.run([str(tree / 'tools' / 'run-scenarios'), *scenarios], env=full_env,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=60,
                          check=False)


def test_every_node_line_is_printed_before_the_verdict(tree):
    result = run(tree, 'default', 'ipvs', 'ipvs-classroom')
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout[-2000:]
    assert lines[-1] == 'run-scenarios: passed: default ipvs ipvs-classroom'
    for scenario in ('ipvs', 'ipvs-classroom'):
        assert '[%s] %s LAST LINE' % (scenario, scenario) in lines
        assert sum(line.startswith('[%s] ' % scenario) for line in lines) == 20002
    assert '[default] molecule ran default' in lines


def test_a_failed_node_fails_the_run_and_its_tests_are_named_last(tree):
    result = run(tree, 'default', 'ipvs', 'ipvs-classroom', FAKE_NODE_FAILS='ipvs-classroom')
    lines = result.stdout.splitlines()
    assert result.returncode == 1
    assert '[ipvs-classroom] ipvs-classroom LAST LINE' in lines
    assert lines[-2:] == [
        'run-scenarios: ipvs-classroom: FAILURE test_x::test_in_node',
        '    node said no',
    ]
    assert not any('passed' in line for line in lines if not line.startswith('['))


def test_a_native_failure_stops_the_nodes_and_is_named_last(tree):
    result = run(tree, 'default', 'ipvs', FAKE_NATIVE_FAILS='default', FAKE_NODE_SLEEP='30',
                    FAKE_NODE_LISTENING='ipvs')
    lines = result.stdout.splitlines()
    assert result.returncode == 1
    assert 'run-scenarios: molecule test -s default FAILED (status 1)' in lines
    assert '[ipvs] node ipvs stopped' in lines
    assert '[ipvs] ipvs LAST LINE' not in lines
    assert lines[-2:] == ['run-scenarios: default: FAILURE test_y::test_native', '    native said no']


def test_the_nodes_get_the_last_cpus_one_each(tree):
    result = run(tree, 'ipvs', 'ipvs-classroom')
    cpus = sorted(os.sched_getaffinity(0), reverse=True)
    assert result.returncode == 0, result.stdout[-2000:]
    assert '[ipvs] node for ipvs on CPU %d' % cpus[0] in result.stdout.splitlines()
    assert '[ipvs-classroom] node for ipvs-classroom on CPU %d' % cpus[1 % len(cpus)] \
        in result.stdout.splitlines()



def test_only_the_first_scenario_here_runs_without_a_private_run(tree):
    result = run(tree, 'default', 'nftables', 'ipvs')
    lines = result.stdout.splitlines()
    assert result.returncode == 0, result.stdout[-2000:]
    assert '[nftables] private /run for nftables' in lines
    assert '[nftables] molecule ran nftables' in lines
    assert not any(line.startswith('[default] private') for line in lines)
    assert '[default] molecule ran default' in lines


def test_a_native_failure_lets_the_other_native_scenario_finish(tree):
    result = run(tree, 'default', 'nftables', 'ipvs', FAKE_NATIVE_FAILS='default',
                 FAKE_NATIVE_SLEEP='2', FAKE_NODE_SLEEP='30', FAKE_NODE_LISTENING='ipvs')
    lines = result.stdout.splitlines()
    assert result.returncode == 1
    assert '[ipvs] node ipvs stopped' in lines
    assert '[nftables] molecule ran nftables' in lines
    assert lines.index('[nftables] molecule ran nftables') > lines.index(
        'run-scenarios: molecule test -s default FAILED (status 1)')
    assert lines[-2:] == ['run-scenarios: default: FAILURE test_y::test_native', '    native said no']
