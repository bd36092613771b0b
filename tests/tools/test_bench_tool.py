"""tools/bench's removal of a killed run's leftovers, and the lock that makes it safe: ip(8)
and kill are replaced by fakes, only a file in tmp_path is locked (no namespace, no root)."""

import importlib.machinery
import importlib.util
import os
import subprocess

import pytest

BENCH = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "tools", "bench")


def load_bench():
    loader = importlib.machinery.SourceFileLoader("bench_tool", BENCH)
    spec = importlib.util.spec_from_loader("bench_tool", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


def test_a_second_bench_stops_naming_the_first_while_it_holds_the_lock(tmp_path):
    bench = load_bench()
    path = str(tmp_path / "kpl-bench.lock")
    first = bench.hold_lock(path)
    try:
        with open(path, encoding="ascii") as handle:
            assert handle.read() == "%d\n" % os.getpid()
        with pytest.raises(SystemExit) as stopped:
            bench.hold_lock(path)
        assert "another tools/bench (pid %d) is running" % os.getpid() in str(stopped.value)
    finally:
        first.close()
    # The holder gone (its process exits, here its file closed), the next bench gets the lock.
    bench.hold_lock(path).close()


class FakeNetns:
    """`ip netns list` / `ip netns del` over a set of names; a name in undeletable stays."""

    def __init__(self, names, undeletable=()):
        self.names = list(names)
        self.undeletable = undeletable
        self.deleted = []

    def run(self, argv, check=True, **_kwargs):
        assert argv[:2] == ["ip", "netns"], argv
        if argv[2] == "list":
            return subprocess.CompletedProcess(argv, 0, "".join(name + " (id: 7)\n" for name in self.names), "")
        assert argv[2] == "del" and not check, argv
        if argv[3] in self.undeletable:
            return subprocess.CompletedProcess(argv, 1, "", "Device or resource busy")
        self.deleted.append(argv[3])
        self.names.remove(argv[3])
        return subprocess.CompletedProcess(argv, 0, "", "")


def test_cleanup_removes_only_the_bench_own_namespaces_and_their_processes(monkeypatch):
    bench = load_bench()
    netns = FakeNetns(["lab-node", "kpl-bench-node", "bench-node", "kpl-bench-pod2", "kpl-bench-other"])
    emptied = []
    monkeypatch.setattr(bench, "run", netns.run)
    monkeypatch.setattr(bench, "kill_namespace_processes", emptied.append)
    assert bench.cleanup() == []
    assert netns.deleted == emptied == ["kpl-bench-node", "kpl-bench-pod2"]
    assert netns.names == ["lab-node", "bench-node", "kpl-bench-other"]


def test_cleanup_returns_what_it_could_not_remove(monkeypatch, capsys):
    bench = load_bench()
    netns = FakeNetns(["kpl-bench-client", "kpl-bench-pod1"], undeletable=("kpl-bench-pod1",))
    monkeypatch.setattr(bench, "run", netns.run)
    monkeypatch.setattr(bench, "kill_namespace_processes", lambda name: None)
    assert bench.cleanup() == ["kpl-bench-pod1"]
    assert "could not remove namespace kpl-bench-pod1: Device or resource busy" in capsys.readouterr().out


def test_the_lab_part_refuses_to_touch_a_lab_that_is_up(monkeypatch):
    bench = load_bench()
    ran = []
    monkeypatch.setattr(bench, "existing_namespaces", lambda: ["lab-client", "lab-node"])
    monkeypatch.setattr(bench, "run", lambda argv, **_kwargs: ran.append(argv))
    with pytest.raises(RuntimeError, match="a lab is up .*make teardown"):
        bench.measure_lab("iptables", 1)
    assert ran == []
