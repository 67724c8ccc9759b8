"""Driver, bus info and speed of an interface through the ethtool ioctl (works in any namespace's socket)."""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct
from typing import Any

SIOCETHTOOL = 0x8946
ETHTOOL_GSET = 0x1
ETHTOOL_GDRVINFO = 0x3


def _ioctl(sock: socket.socket, ifname: str, buf: Any) -> bool:
    ifr = struct.pack("16sP", ifname.encode()[:15], ctypes.addressof(buf)) + b"\0" * 16
    try:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifr)
    except OSError:
        return False
    return True


def driver_info(sock: socket.socket, ifname: str) -> dict[str, Any]:
    """{"Driver": ..., "BusInfo": ..., "Speed": Mb/s} for what the device reports (missing keys: unknown)."""
    out: dict[str, Any] = {}
    buf = ctypes.create_string_buffer(196)
    struct.pack_into("I", buf, 0, ETHTOOL_GDRVINFO)
    if _ioctl(sock, ifname, buf):
        driver = buf.raw[4:36].split(b"\0", 1)[0].decode(errors="replace")
        bus = buf.raw[100:132].split(b"\0", 1)[0].decode(errors="replace")
        if driver:
            out["Driver"] = driver
        if bus and bus != "N/A":
            out["BusInfo"] = bus
    cmd = ctypes.create_string_buffer(44)
    struct.pack_into("I", cmd, 0, ETHTOOL_GSET)
    if _ioctl(sock, ifname, cmd):
        speed_lo = struct.unpack_from("H", cmd, 12)[0]
        speed_hi = struct.unpack_from("H", cmd, 28)[0]
        speed = speed_lo | (speed_hi << 16)
        if speed not in (0, 0xFFFF, 0xFFFFFFFF):
            out["Speed"] = speed
    return out
