"""Entering a network namespace: the one setns(2) binding of every component.

setns moves the calling thread only, so sockets made after it live in that namespace and keep it; a thread
that must not stay there (an event loop, a worker pool) runs the work in a short-lived thread instead
(`run_in_netns`).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import threading
from collections.abc import Callable
from typing import TypeVar

CLONE_NEWNET = 0x40000000
"""setns(2)'s nstype for a network namespace (linux/sched.h)."""

T = TypeVar("T")
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class SetnsError(OSError):
    """The kernel refused setns(2) (errno: EPERM without CAP_SYS_ADMIN, EINVAL for a non-netns fd...)."""


def enter_netns(path_or_fd: str | int) -> None:
    """Move the calling thread into a network namespace: a path (/var/run/netns/x, /proc/PID/ns/net) or an
    open file descriptor (left open). OSError if the path cannot be opened, SetnsError if setns fails."""
    fd = os.open(path_or_fd, os.O_RDONLY) if isinstance(path_or_fd, str) else path_or_fd
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise SetnsError(err, f"setns({path_or_fd}): {os.strerror(err)}")
    finally:
        if isinstance(path_or_fd, str):
            os.close(fd)


def run_in_netns(path_or_fd: str | int, fn: Callable[[], T]) -> T:
    """Run `fn` in a short-lived thread that has entered the namespace (setns is per thread); its result or
    its exception comes back to the caller."""
    result: list[T] = []
    error: list[BaseException] = []

    def target() -> None:
        try:
            enter_netns(path_or_fd)
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            error.append(exc)

    thread = threading.Thread(target=target, name=f"setns {path_or_fd}", daemon=True)
    thread.start()
    thread.join()
    if error:
        raise error[0]
    return result[0]
