"""Network namespace discovery and entering.

Named namespaces are the nsfs bind mounts in /run/netns (and /var/run/netns); they are followed with inotify
(on /run/netns, and on /run so the directory itself may appear later), with short retries because `ip netns
add` creates the file before it bind-mounts the namespace on it. Namespaces that only processes hold are
found by scanning /proc/*/ns/net, which is polled (interval configurable). The root namespace is the probe's
own (/proc/self/ns/net). A namespace is identified by its inode.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import socket
import struct
from dataclasses import dataclass

from netsonde.common.netns import run_in_netns as run_in_netns  # the one setns; imported from here too

NETNS_DIRS: tuple[str, ...] = ("/var/run/netns", "/run/netns")
"""`ip netns` (iproute2) names its namespaces under /var/run/netns: the first directory gives `Path`, as in Skydive."""

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


@dataclass(frozen=True)
class NetNs:
    """One network namespace: `inode` identifies it; `path` opens it; `name` labels it."""

    inode: int
    path: str
    name: str
    kind: str
    """"root", "named" (under /run/netns) or "process" (held only by processes)."""


def ns_inode(path: str) -> tuple[int, int] | None:
    """(st_dev, st_ino) of a namespace file, or None when it cannot be read."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def root_netns() -> NetNs:
    st = os.stat("/proc/self/ns/net")
    return NetNs(st.st_ino, "/proc/self/ns/net", "", "root")


def nsfs_dev() -> int:
    return os.stat("/proc/self/ns/net").st_dev


def scan_named(dirs: tuple[str, ...] = NETNS_DIRS) -> tuple[dict[int, NetNs], list[str]]:
    """Named namespaces by inode, and the names of entries that are not (yet) nsfs mounts."""
    dev = nsfs_dev()
    found: dict[int, NetNs] = {}
    pending: list[str] = []
    seen_dirs: set[str] = set()
    for d in dirs:
        real = os.path.realpath(d)
        if real in seen_dirs:
            continue
        seen_dirs.add(real)
        try:
            names = sorted(os.listdir(d))
        except OSError:
            continue
        for name in names:
            path = os.path.join(d, name)
            ident = ns_inode(path)
            if ident is None:
                continue
            if ident[0] != dev:
                pending.append(path)
                continue
            found.setdefault(ident[1], NetNs(ident[1], path, name, "named"))
    return found, pending


def scan_processes(exclude: set[int]) -> dict[int, NetNs]:
    """Namespaces held by processes (lowest pid per namespace), except the inodes in `exclude`."""
    found: dict[int, NetNs] = {}
    try:
        pids = sorted(int(p) for p in os.listdir("/proc") if p.isdigit())
    except OSError:
        return found
    for pid in pids:
        path = f"/proc/{pid}/ns/net"
        try:
            ino = os.stat(path).st_ino
        except OSError:
            continue
        if ino in exclude or ino in found:
            continue
        try:
            with open(f"/proc/{pid}/comm") as f:
                comm = f.read().strip()
        except OSError:
            comm = "proc"
        found[ino] = NetNs(ino, path, f"{comm}-{pid}", "process")
    return found


def netlink_socket(path: str | None, groups: int, rcvbuf: int) -> socket.socket:
    """A non-blocking NETLINK_ROUTE socket in the namespace at `path` (None: this one), bound to `groups`."""

    def make() -> socket.socket:
        sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, socket.NETLINK_ROUTE)
        try:
            try:
                sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)  # SO_RCVBUFFORCE (needs CAP_NET_ADMIN)
            except OSError:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
            sock.bind((0, groups))
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        return sock

    return make() if path is None else run_in_netns(path, make)


def ioctl_socket(path: str | None) -> socket.socket:
    """An AF_INET datagram socket in the namespace (for ethtool ioctls)."""
    make = lambda: socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # noqa: E731
    return make() if path is None else run_in_netns(path, make)


class Inotify:
    """Minimal inotify (create/delete/move events) for the netns directories; `fileno()` for add_reader."""

    IN_CREATE, IN_DELETE, IN_MOVED_FROM, IN_MOVED_TO = 0x100, 0x200, 0x40, 0x80
    IN_NONBLOCK, IN_CLOEXEC = 0o4000, 0o2000000

    def __init__(self) -> None:
        self.fd = _libc.inotify_init1(self.IN_NONBLOCK | self.IN_CLOEXEC)
        if self.fd < 0:
            err = ctypes.get_errno()
            raise OSError(err, f"inotify_init1: {os.strerror(err)}")
        self.watches: dict[int, str] = {}

    def fileno(self) -> int:
        return self.fd

    def watch(self, path: str) -> bool:
        if path in self.watches.values():
            return True
        mask = self.IN_CREATE | self.IN_DELETE | self.IN_MOVED_FROM | self.IN_MOVED_TO
        wd = _libc.inotify_add_watch(self.fd, path.encode(), mask)
        if wd < 0:
            return False
        self.watches[wd] = path
        return True

    def read(self) -> list[tuple[str, str, int]]:
        """Pending events as (watched dir, entry name, mask)."""
        events = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                break
            offset = 0
            while offset + 16 <= len(data):
                wd, mask, _cookie, length = struct.unpack_from("iIII", data, offset)
                name = data[offset + 16: offset + 16 + length].split(b"\0", 1)[0].decode(errors="replace")
                offset += 16 + length
                directory = self.watches.get(wd, "")
                if mask & 0x8000:  # IN_IGNORED: the watched dir went away
                    self.watches.pop(wd, None)
                events.append((directory, name, mask))
        return events

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
