"""One sync at a time per node, as kube-proxy runs one sync loop per node.

The lock is an exclusive flock(2) on the namespace's own file (``/run/netns/NAME``): it
needs no file of its own to create or clean up, it is released by the kernel when the
holder exits however it exits, and it can only ever name the namespace it guards.
"""

import errno
import fcntl
import os
import time
from contextlib import contextmanager
from typing import Callable, Iterator

POLL_SECONDS = 0.1


class LockTimeout(Exception):
    pass


class NamespaceGone(Exception):
    """The namespace's file is gone: deleted before or while this run waited for it."""


def _same_file(fd: int, path: str) -> bool:
    try:
        here, there = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


@contextmanager
def node_lock(path: str, timeout: float, clock: Callable[[], float] = time.monotonic,
              sleep: Callable[[float], None] = time.sleep) -> Iterator[None]:
    """Hold the lock on ``path`` for the body; wait at most ``timeout`` seconds for it.

    A namespace deleted and created anew while this run waited is another file: the lock
    taken on the old one guards nothing, so it is dropped and taken on the new one.
    Raises NamespaceGone when ``path`` is gone, LockTimeout when the wait runs out.
    """
    deadline = clock() + timeout
    while True:
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise NamespaceGone(path)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except OSError as error:
                    if error.errno not in (errno.EAGAIN, errno.EACCES):
                        raise
                if clock() >= deadline:
                    raise LockTimeout(path)
                sleep(POLL_SECONDS)
            if _same_file(fd, path):
                break
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    try:
        yield
    finally:
        os.close(fd)
