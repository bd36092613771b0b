"""callback_plugins/lab_lock.py: one lab run at a time, a waiter says for whom, no silent unlocked run."""

import os
import subprocess
import sys
import time

import pytest
from ansible.plugins.loader import callback_loader

from conftest import REPO

callback_loader.add_directory(str(REPO / "callback_plugins"))


class Said:
    verbosity = 0

    def __init__(self):
        self.lines = []

    def display(self, message, *_args, **_kwargs):
        self.lines.append(message)


def callback(path):
    """The plugin as Ansible loads it (its options from its documentation), saying into a list."""
    plugin = callback_loader.get("lab_lock")
    plugin.set_options(direct={"path": str(path)})
    plugin._display = Said()
    return plugin


def test_the_lock_is_held_and_names_its_holder(tmp_path):
    path = tmp_path / "lab.lock"
    plugin = callback(path)
    plugin.v2_playbook_on_start(None)
    assert path.read_text().startswith("pid %d: " % os.getpid())
    assert subprocess.run(["flock", "-n", str(path), "true"], check=False).returncode == 1


def test_a_second_run_waits_and_says_for_whom(tmp_path):
    path = tmp_path / "lab.lock"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import fcntl, os, sys, time; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
         "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'pid 1: ansible-playbook lab.yml -e mode=nftables'); "
         "print('held', flush=True); time.sleep(0.5)", str(path)],
        stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    waiter = callback(path)
    waiter.v2_playbook_on_start(None)
    holder.wait()
    assert waiter._display.lines == [
        "Another lab run holds %s (pid 1: ansible-playbook lab.yml -e mode=nftables); waiting for it to finish." % path,
        "The other lab run has finished; going on."]
    assert path.read_text().startswith("pid %d: " % os.getpid()), "the holder's line was not replaced whole"


def test_a_lock_that_cannot_be_taken_stops_the_run(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(SystemExit, match="lab_lock: cannot open the lab's lock file"):
        callback(tmp_path / "file" / "lab.lock").v2_playbook_on_start(None)


def test_a_forked_worker_does_not_keep_the_lock(tmp_path):
    path = tmp_path / "lab.lock"
    plugin = callback(path)
    plugin.v2_playbook_on_start(None)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # a worker: its copy is closed at fork, so it cannot unlock or keep the lock
        os.close(read)
        os.write(write, b"closed" if plugin._lock_fd is None else b"open")
        time.sleep(1)
        os._exit(0)
    os.close(write)
    assert os.read(read, 16) == b"closed"
    os.close(read)
    os.close(plugin._lock_fd)  # the controller ends while its worker still runs
    plugin._lock_fd = None
    free = subprocess.run(["flock", "-n", str(path), "true"], check=False).returncode == 0
    os.waitpid(child, 0)
    assert free, "the worker kept the lock after the controller let go"
