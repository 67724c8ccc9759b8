"""Driver, bus info, speed, duplex and feature flags of an interface through the ethtool ioctl (works with a
socket of any namespace). Feature names are the kernel's (`ethtool -k` spelling: `highdma`, `rx-gro`, ...)."""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct
from typing import Any

SIOCETHTOOL = 0x8946
ETHTOOL_GSET = 0x1
ETHTOOL_GDRVINFO = 0x3
ETHTOOL_GSTRINGS = 0x1B
ETHTOOL_GSSET_INFO = 0x37
ETHTOOL_GFEATURES = 0x3A
ETH_SS_FEATURES = 4
ETH_GSTRING_LEN = 32
DUPLEX = {0: "half", 1: "full"}

_feature_names: list[str] | None = None
"""The kernel's feature names (the same for every device): read once."""
_features_by_mask: dict[tuple[int, ...], dict[str, bool]] = {}
"""Active-feature bitmask -> its `Features` map, shared by every interface with that mask (most interfaces of
one driver have the same): built once, cheap to compare. Callers must not modify it."""


def _ioctl(sock: socket.socket, ifname: str, buf: Any) -> bool:
    ifr = struct.pack("16sP", ifname.encode()[:15], ctypes.addressof(buf)) + b"\0" * 16
    try:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifr)
    except OSError:
        return False
    return True


def driver_info(sock: socket.socket, ifname: str) -> dict[str, Any]:
    """{"Driver": ..., "BusInfo": ...} for what the device reports (missing keys: unknown)."""
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
    return out


def link_settings(sock: socket.socket, ifname: str) -> dict[str, Any]:
    """{"Speed": Mb/s, "Duplex": "full"|"half"} where the device knows them; {} otherwise."""
    out: dict[str, Any] = {}
    cmd = ctypes.create_string_buffer(44)
    struct.pack_into("I", cmd, 0, ETHTOOL_GSET)
    if _ioctl(sock, ifname, cmd):
        speed_lo = struct.unpack_from("H", cmd, 12)[0]
        speed_hi = struct.unpack_from("H", cmd, 28)[0]
        speed = speed_lo | (speed_hi << 16)
        if speed not in (0, 0xFFFF, 0xFFFFFFFF):
            out["Speed"] = speed
            duplex = DUPLEX.get(cmd.raw[14])
            if duplex:
                out["Duplex"] = duplex
    return out


def feature_names(sock: socket.socket, ifname: str) -> list[str]:
    """The kernel's feature names, by bit (ETHTOOL_GSSET_INFO then ETHTOOL_GSTRINGS); [] if unsupported."""
    global _feature_names
    if _feature_names is not None:
        return _feature_names
    info = ctypes.create_string_buffer(20)
    struct.pack_into("IIQ", info, 0, ETHTOOL_GSSET_INFO, 0, 1 << ETH_SS_FEATURES)
    if not _ioctl(sock, ifname, info):
        return []
    count = struct.unpack_from("I", info, 16)[0] if struct.unpack_from("Q", info, 8)[0] else 0
    if not count:
        return []
    strings = ctypes.create_string_buffer(12 + count * ETH_GSTRING_LEN)
    struct.pack_into("III", strings, 0, ETHTOOL_GSTRINGS, ETH_SS_FEATURES, count)
    if not _ioctl(sock, ifname, strings):
        return []
    raw = strings.raw
    _feature_names = [raw[12 + i * ETH_GSTRING_LEN:12 + (i + 1) * ETH_GSTRING_LEN].split(b"\0", 1)[0].decode()
                      for i in range(count)]
    return _feature_names


def features(sock: socket.socket, ifname: str) -> dict[str, bool]:
    """Skydive `Features`: every named feature -> whether it is active (ETHTOOL_GFEATURES); {} if unsupported.
    The map is shared (see `_features_by_mask`): do not modify it."""
    names = feature_names(sock, ifname)
    if not names:
        return {}
    blocks = (len(names) + 31) // 32
    buf = ctypes.create_string_buffer(8 + blocks * 16)
    struct.pack_into("II", buf, 0, ETHTOOL_GFEATURES, blocks)
    if not _ioctl(sock, ifname, buf):
        return {}
    active = tuple(struct.unpack_from("I", buf, 8 + b * 16 + 8)[0] for b in range(blocks))
    known = _features_by_mask.get(active)
    if known is None:
        if len(_features_by_mask) >= 1024:
            _features_by_mask.clear()
        known = {name: bool(active[i >> 5] >> (i & 31) & 1) for i, name in enumerate(names) if name}
        _features_by_mask[active] = known
    return known
