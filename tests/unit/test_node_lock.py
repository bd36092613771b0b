"""node_lock: one sync at a time per namespace file, released however its holder ends."""

import subprocess
import sys
import threading
import time

import pytest

from kube_proxy.node_lock import LockTimeout, NamespaceGone, node_lock


def test_a_second_run_waits_for_the_first(tmp_path):
    netns = tmp_path / "lab-node"
    netns.touch()
    order = []
    entered = threading.Event()

    def first():
        with node_lock(str(netns), timeout=5):
            entered.set()
            time.sleep(0.3)
            order.append("first done")

    holder = threading.Thread(target=first)
    holder.start()
    entered.wait(5)
    with node_lock(str(netns), timeout=5):
        order.append("second in")
    holder.join()
    assert order == ["first done", "second in"]


def test_the_wait_is_bounded(tmp_path):
    netns = tmp_path / "lab-node"
    netns.touch()
    with node_lock(str(netns), timeout=5):
        with pytest.raises(LockTimeout):
            with node_lock(str(netns), timeout=0.2):
                pytest.fail("took a lock another run holds")


def test_a_killed_holder_releases_the_lock(tmp_path):
    netns = tmp_path / "lab-node"
    netns.touch()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDONLY); "
         "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)", str(netns)],
        stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockTimeout):
            with node_lock(str(netns), timeout=0.2):
                pytest.fail("took a lock a live process holds")
        holder.kill()
        holder.wait()
        with node_lock(str(netns), timeout=5):
            pass
    finally:
        holder.kill()
        holder.wait()


def test_a_namespace_made_anew_while_waiting_is_locked_afresh(tmp_path):
    """The lock taken on a deleted namespace's file guards nothing: the waiter must lock
    the new file, which a third run then finds held."""
    netns = tmp_path / "lab-node"
    netns.touch()
    inside = threading.Event()
    release = threading.Event()

    def waiter():
        with node_lock(str(netns), timeout=5):
            inside.set()
            release.wait(5)

    with node_lock(str(netns), timeout=5):
        thread = threading.Thread(target=waiter)
        thread.start()
        time.sleep(0.3)
        netns.unlink()
        netns.touch()
    inside.wait(5)
    try:
        with pytest.raises(LockTimeout):
            with node_lock(str(netns), timeout=0.3):
                pytest.fail("the waiter locked the old file, not the new one")
    finally:
        release.set()
        thread.join()


def test_a_deleted_namespace_is_reported(tmp_path):
    with pytest.raises(NamespaceGone):
        with node_lock(str(tmp_path / "gone"), timeout=1):
            pytest.fail("locked a namespace that does not exist")
