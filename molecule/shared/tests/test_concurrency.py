"""Runs that overlap or die half-way, and bad requests: what the lab guarantees whatever the
mode, so these run once, in the default scenario (natively, where iptables-nft's slow
restores leave time to interrupt one): every test here is marked mode_independent.

- two kube_proxy runs on one node at once leave exactly one run's state, never a mixture;
- a kube_proxy run killed during the restores of 3,000 Services (a sync that large goes in
  batches) leaves no Service reachable but half-programmed, and a rerun converges;
- a change of 2,000 Services, which goes in batches, never interrupts an existing Service;
- two lab.yml runs at once both succeed, the second after the first, and leave one lab;
- a bad playbook variable is refused by name before anything changes.

The module runs as Ansible runs it (tools/bench_module.py) on Services made by the bench's
own generator, in a scratch namespace of its own, deleted afterwards.
"""

import os
import subprocess
import time

import bench_lib
import pytest
from conftest import PROJECT, finish, module_args, play, playbook_argv, project_env, start_module
from host_snapshot import differences, namespace_snapshot
from kube_proxy import iptables
from kube_proxy.model import build_config
from test_faults import lab_namespaces
from test_modes import data_plane, own_state_missing, residue, unreached

pytestmark = pytest.mark.mode_independent

ROUNDS = 10
# Big enough (about 18,000 rules, so eight restores) that the sync takes seconds on
# iptables-nft, so a kill lands inside it.
KILLED_SERVICES = 3000
RESTORE_WAIT = 60
KILL_AT_RESTORE = 3
# Services added and removed while a client talks to app1 (about 22,000 rules: ten restores).
CONTINUITY_SERVICES = 2000


def matches(host, netns, services):
    """Whether the node holds exactly the state kube-proxy would for ``services``: the
    module's own planner, asked to sync them, finds nothing to change."""
    desired = iptables.render(build_config("iptables", "10.0.0.0/24", services))
    live = iptables.parse_save(host.check_output("ip netns exec %s iptables-save", netns))
    return not iptables.plan(desired, live).changed


def test_two_module_runs_at_once_leave_one_declared_state(host, scratch_node, tmp_path):
    first = bench_lib.services(200, seed=1)
    second = bench_lib.services(150, seed=2)
    first_args = module_args(tmp_path, "first", first)
    second_args = module_args(tmp_path, "second", second)
    outcomes = []
    for round_number in range(1, ROUNDS + 1):
        runs = [start_module(first_args), start_module(second_args)]
        for run in runs:
            finish(run)
        held = [name for name, services in (("first", first), ("second", second))
                if matches(host, scratch_node, services)]
        assert len(held) == 1, "round %d: the node holds %s of the two declared states" % (
            round_number, " and ".join(held) or "neither")
        outcomes.append(held[0])
    print("the state left in each of %d rounds: %s" % (ROUNDS, outcomes))


def restore_process(host, netns):
    """The pid of an iptables-restore running in netns, or None. A restore may end between the
    listing and the read (a batch takes a fraction of a second): a comm that cannot be read
    is a process gone."""
    for pid in host.check_output("ip netns pids %s", netns).split():
        comm = host.run("cat /proc/%s/comm", pid)
        if comm.rc == 0 and comm.stdout.strip() == "iptables-restor":
            return int(pid)
    return None


def programmed(host, netns):
    """Per table, the Services the node holds: filter's rejections, nat's dispatched service
    chains; nat's service chains that nothing dispatches to (yet); and the dispatched service
    chains that jump to an endpoint chain which is missing or has no DNAT rule."""
    saved = host.check_output("ip netns exec %s iptables-save", netns)
    tables = dict(section.split("\n", 1) for section in saved.split("*")[1:])
    nat = tables.get("nat", "").splitlines()
    rules = {}
    for line in nat:
        if line.startswith(":KUBE-"):
            rules.setdefault(line[1:].split()[0], [])
        elif line.startswith("-A KUBE-"):
            rules.setdefault(line.split()[1], []).append(line)
    service_chains = {chain for chain in rules if chain.startswith("KUBE-SVC-")}
    dispatched = service_chains & {line.split("-j ")[-1] for line in rules.get("KUBE-SERVICES", [])}
    broken = {chain for chain in dispatched for line in rules[chain] if "-j KUBE-SEP-" in line
              and not any("-j DNAT" in rule for rule in rules.get(line.split("-j ")[-1], []))}
    rejected = [line for line in tables.get("filter", "").splitlines() if line.startswith("-A KUBE-SERVICES ")]
    return len(rejected), len(dispatched), service_chains - dispatched, broken


def test_a_run_killed_during_its_restore_leaves_no_half_service(host, scratch_node, tmp_path):
    """Each table commits whole (the kernel's part); the module's part is to write a Service's
    own chains in one transaction, its dispatch rule in that one or a later one, and to
    converge afterwards. Half the Services have no endpoints, so filter holds Services too."""
    services = bench_lib.services(KILLED_SERVICES)
    for service in services[::2]:
        service["endpoints"] = []
    args = module_args(tmp_path, "big", services)
    run = start_module(args)
    try:
        # Kill it once its third restore runs: some batches are in, the shared chains not yet.
        deadline = time.monotonic() + RESTORE_WAIT
        seen = []
        while len(seen) < KILL_AT_RESTORE and run.poll() is None and time.monotonic() < deadline:
            pid = restore_process(host, scratch_node)
            if pid is not None and pid not in seen:
                seen.append(pid)
            time.sleep(0.02)
        assert seen, "no iptables-restore to kill: the run ended (rc %s) or never started one" % run.poll()
        run.kill()  # no further restore starts; then the one running now, if any
        running = restore_process(host, scratch_node)
        killed = running is not None and host.run("kill -9 %s", str(running)).rc == 0
    finally:
        run.kill()
        run.communicate()
    rejected, dispatched, waiting, broken = programmed(host, scratch_node)
    assert not broken, "%d dispatched Services jump to a missing endpoint chain" % len(broken)
    assert rejected in (0, KILLED_SERVICES // 2), "filter: %d of %d rejections" % (rejected, KILLED_SERVICES // 2)
    assert dispatched in (0, KILLED_SERVICES // 2), "nat: %d of %d Services" % (dispatched, KILLED_SERVICES // 2)
    assert dispatched == 0 or not waiting, "%d Service chains nothing dispatches to" % len(waiting)
    print("the run killed at its iptables-restore number %d, %s: filter held %d rejections, "
          "nat %d dispatched Services and %d service chains not dispatched yet" % (
              len(seen), "and that restore with it" if killed else "between two restores", rejected, dispatched,
              len(waiting)))
    finish(start_module(args))
    assert matches(host, scratch_node, services)
    assert finish(start_module(args))["changed"] is False


def test_a_large_change_in_batches_never_interrupts_a_service(host, lab, tmp_path):
    """2,000 Services added beside the lab's app1 go in several restores (the module's own
    planner says how many), and back out again; all along, the client's requests to app1 get
    answers, not one failing. lab.yml puts the lab's own state back afterwards."""
    node, app1 = lab["node_netns"], lab["services"][0]
    added = [service for service in bench_lib.services(CONTINUITY_SERVICES + 1, seed=3)
             if service["cluster_ip"] != app1["cluster_ip"]][:CONTINUITY_SERVICES]
    desired = iptables.render(build_config("iptables", "10.0.0.0/24", lab["services"] + added))
    restores = iptables.plan(desired, iptables.parse_save(host.check_output("ip netns exec %s iptables-save", node)))
    assert len(restores.transactions) > 2, "the change would not go in batches"
    url = "http://%s:%s/" % (app1["cluster_ip"], app1["port"])
    log = tmp_path / "prober.log"
    with open(log, "w", encoding="utf-8") as out:
        prober = subprocess.Popen(["ip", "netns", "exec", lab["client_netns"], "bash", "-c",
                                   "while :; do curl -s -o /dev/null -w '%%{http_code}\\n' --max-time 1 %s; done" % url],
                                  stdout=out, stderr=subprocess.DEVNULL)
    try:
        finish(start_module(module_args(tmp_path, "grown", lab["services"] + added, netns=node)))
        finish(start_module(module_args(tmp_path, "back", lab["services"], netns=node)))
    finally:
        prober.kill()
        prober.wait()
        play("lab.yml", "--tags", "lab_proxy", mode=lab["mode"])
    answers = log.read_text().split()
    failed = [answer for answer in answers if answer != "200"]
    print("%d requests to app1 while %d Services came in %d restores and went: %d failed" % (
        len(answers), CONTINUITY_SERVICES, len(restores.transactions), len(failed)))
    assert len(answers) > 10, "the prober hardly ran: %s" % answers
    assert not failed, "%d of %d requests failed: %s" % (len(failed), len(answers), sorted(set(failed)))


def test_two_lab_runs_at_once_both_succeed_and_leave_one_lab(host, lab, tmp_path):
    """The second run waits for the first (the lab_lock callback) and ends in its own mode.
    The first builds the lab in another mode, nftables (this scenario runs natively)."""
    mode = lab["mode"]
    other = "nftables" if mode != "nftables" else "iptables"
    play("lab.yml", state="absent")
    first_log = tmp_path / "first.log"
    with open(first_log, "w", encoding="utf-8") as log:
        first = subprocess.Popen(playbook_argv("lab.yml", mode=other), cwd=PROJECT,
                                 env=project_env(), stdout=log, stderr=subprocess.STDOUT)
    try:
        lock = host.file(os.environ.get("LAB_LOCK_FILE", "/run/lock/kube-proxy-lab.lock"))
        deadline = time.monotonic() + RESTORE_WAIT
        while not (lock.exists and lock.content_string.startswith("pid %d:" % first.pid)):
            assert time.monotonic() < deadline and first.poll() is None, "the first run never took the lab lock"
            time.sleep(0.1)
        second = play("lab.yml", must_succeed=False, mode=mode)
        first.wait(timeout=600)
    finally:
        first.kill()
        first.wait()
    assert first.returncode == 0, "the first run failed:\n" + first_log.read_text()[-3000:]
    assert second.returncode == 0, "the second run failed:\n" + (second.stdout + second.stderr)[-3000:]
    assert "Another lab run holds" in second.stdout, "the second run did not wait:\n" + second.stdout[:2000]
    plane = data_plane(host, lab["node_netns"])
    assert not residue(mode, plane) and not own_state_missing(mode, plane), plane
    assert not unreached(host, lab)


BAD_VARIABLES = [
    ("mode", "userspace", ["mode", "iptables, ipvs, nftables"]),
    ("state", "gone", ["state", "present, absent"]),
    ("pods", "abc", ["pods", "int"]),
    ("pods", "2.5", ["pods", "int"]),
    ("pods", "-1", ["pods must be 0 or more"]),
    ("pods", "300", ["pods=300 put 300 pods on lab-node, which do not fit", "room for 253"]),
    ("nodes", "5", ["nodes", "1, 2, 3, 4"]),
    ("nodes", "two", ["nodes", "int"]),
    ("second_service", "maybe", ["second_service", "bool"]),
    ("service_type", "ExternalName", ["service_type", "ClusterIP, NodePort, LoadBalancer"]),
    ("traffic_policy", "Nearby", ["traffic_policy", "Cluster, Local"]),
]


@pytest.mark.parametrize("variable, value, words", BAD_VARIABLES, ids=["%s=%s" % bad[:2] for bad in BAD_VARIABLES])
def test_a_bad_variable_is_refused_by_name_before_anything_changes(host, lab, variable, value, words):
    before = namespace_snapshot(lab_namespaces(host, lab))
    # -e NAME=VALUE, as typed: the value arrives as a string, as from a student's command line.
    result = play("lab.yml", "-e", "%s=%s" % (variable, value), must_succeed=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0, "-e %s=%s was accepted" % (variable, value)
    for word in words:
        assert word in output, "-e %s=%s: the error does not say %r:\n%s" % (variable, value, word, output[-2000:])
    assert "Check the request" in output and "TASK [lab_node" not in output, "the run got past its checks"
    after = namespace_snapshot(lab_namespaces(host, lab))
    assert not differences(before, after), differences(before, after)


def test_check_of_a_lab_not_built_yet_runs_to_the_end(host, lab):
    """--check on a host without the lab: every namespace reads as empty, nothing is made."""
    names = dict(lab_node_netns="kpl-check-node", lab_client_netns="kpl-check-client", lab_pods_netns_prefix="kpl-check-")
    before = namespace_snapshot(lab_namespaces(host, lab))
    result = play("lab.yml", "--check", "--diff", must_succeed=False, mode="iptables", **names)
    output = result.stdout + result.stderr
    assert result.returncode == 0, "--check failed:\n" + output[-4000:]
    assert "kpl-check-node does not exist yet: planned against an empty node" in output
    # The pods it would start count as ready: each gets its endpoint chain in the diff.
    assert output.count("DNAT --to-destination") == len(lab["pods"]), output[-3000:]
    made = [name for name in host.check_output("ip netns list").split() if name.startswith("kpl-check-")]
    assert not made, "--check created namespaces: %s" % made
    assert not differences(before, namespace_snapshot(lab_namespaces(host, lab)))
