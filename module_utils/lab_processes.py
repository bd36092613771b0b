# -*- coding: utf-8 -*-
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

"""Ending processes by pid, all at once: what a teardown needs from the lab_netns module (the
processes in a namespace) and from lab_pod_servers (the servers by their pidfiles)."""

from __future__ import absolute_import, division, print_function

__metaclass__ = type

import os
import signal
import time


def send(pids, signum):
    """Send signum to every pid; one that ended in between is no error."""
    for pid in pids:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass


def end_all(pids, running, grace):
    """SIGTERM every pid at once, SIGKILL those running(pid) still after grace seconds.
    Return (killed, stuck): the pids that needed SIGKILL, and those still running grace
    seconds after it (a process stuck in the kernel). One after the other, a teardown would
    wait for each in turn."""
    send(pids, signal.SIGTERM)
    up = _wait(pids, running, grace)
    if not up:
        return [], []
    send(up, signal.SIGKILL)
    return up, _wait(up, running, grace)


def _wait(pids, running, grace):
    deadline = time.monotonic() + grace
    while True:
        up = [pid for pid in pids if running(pid)]
        if not up or time.monotonic() > deadline:
            return up
        time.sleep(0.05)
