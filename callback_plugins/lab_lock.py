# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import absolute_import, division, print_function

__metaclass__ = type

DOCUMENTATION = r"""
name: lab_lock
type: aggregate
short_description: One lab run at a time on this machine
description:
  - Every playbook run with the lab's ansible.cfg takes an exclusive lock (flock) on
    C(/run/lock/kube-proxy-lab.lock) before its first play and holds it until it exits.
    A second run started meanwhile (C(lab.yml -e mode=iptables) next to
    C(lab.yml -e mode=nftables)) says which run holds the lab and waits for it, instead of
    racing it to create the same namespaces.
  - The kernel drops the lock when its holder exits, also when it is killed (Ansible's forked
    workers close their copy of it), so a stale lock cannot block the lab. The lock file holds
    the holder's pid and command line, for people; it stays in /run/lock (a tmpfs, emptied at
    boot), because unlinking a lock file races with the next run that opens it.
  - A run that cannot take the lock (the file cannot be opened) stops at once, because a lab
    run that went on unlocked would be the race the lock is there to prevent.
  - Ansible runs the callbacks named in C(callbacks_enabled); setting
    E(ANSIBLE_CALLBACKS_ENABLED) replaces the lab's list, and with it this lock.
  - The lock lives on the machine running ansible-playbook, which is the lab's host for the
    inventory's localhost; two controllers building one remote host are not serialised.
options:
  path:
    description: The lock file.
    type: path
    default: /run/lock/kube-proxy-lab.lock
    env:
      - name: LAB_LOCK_FILE
"""

import fcntl
import os
import sys

from ansible.plugins.callback import CallbackBase


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "lab_lock"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._lock_fd = None

    def v2_playbook_on_start(self, playbook):
        if self._lock_fd is not None:
            return  # several playbooks in one ansible-playbook run: the lock is held already
        path = self.get_option("path")
        try:
            os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as error:
            # Ansible turns an exception in a callback into a warning and goes on: exit instead.
            raise SystemExit("ERROR: lab_lock: cannot open the lab's lock file %s: %s" % (path, error))
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 4096, 0).decode("utf-8", "replace").strip() or "a run that has not said who it is"
            self._display.display("Another lab run holds %s (%s); waiting for it to finish." % (path, holder))
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._display.display("The other lab run has finished; going on.")
        command = " ".join([os.path.basename(sys.argv[0])] + sys.argv[1:])
        holder = ("pid %d: %s\n" % (os.getpid(), command)).encode()
        # Written before the old text is cut, so a waiter never reads an empty file.
        os.pwrite(fd, holder, 0)
        os.ftruncate(fd, len(holder))
        self._lock_fd = fd
        # A worker forked for a task must not keep the lock alive when the run is killed.
        os.register_at_fork(after_in_child=self._close_in_child)

    def _close_in_child(self):
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None
