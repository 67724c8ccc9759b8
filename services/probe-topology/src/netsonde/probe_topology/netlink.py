"""Pure netlink parsing: rtnetlink messages in, Skydive-shaped interface metadata out.

Nothing here touches a socket. The decoder reads the wire format with `struct` and only the attributes the
probe uses (pyroute2's generic decoder costs ~1 ms per link message, which dominated bursts). Unit tests
build messages with pyroute2's message classes (`ifinfmsg`, `ifaddrmsg`), including kinds this kernel cannot
create (bond, vlan, dummy, gre, geneve); `parse_link`/`parse_addr` accept those objects (their wire bytes) as
well as raw bytes.
"""

from __future__ import annotations

import socket
import struct
from typing import Any, Iterator

IFF_FLAGS: tuple[tuple[int, str], ...] = (
    (0x1, "UP"), (0x2, "BROADCAST"), (0x4, "DEBUG"), (0x8, "LOOPBACK"), (0x10, "POINTOPOINT"),
    (0x20, "NOTRAILERS"), (0x40, "RUNNING"), (0x80, "NOARP"), (0x100, "PROMISC"), (0x200, "ALLMULTI"),
    (0x400, "MASTER"), (0x800, "SLAVE"), (0x1000, "MULTICAST"), (0x2000, "PORTSEL"), (0x4000, "AUTOMEDIA"),
    (0x8000, "DYNAMIC"), (0x10000, "LOWER_UP"), (0x20000, "DORMANT"), (0x40000, "ECHO"),
)
"""Kernel IFF_* link flags and their names, in Skydive's `LinkFlags` spelling."""

ENCAP_TYPES: dict[int, str] = {
    1: "ether", 24: "ieee1394", 32: "infiniband", 512: "ppp", 768: "ipip", 769: "tunnel6", 772: "loopback",
    776: "sit", 778: "gre", 823: "ip6gre", 65534: "none", 65535: "void",
}
"""ARPHRD_* (ifinfmsg `ifi_type`) -> Skydive `EncapType`."""

BOND_MODES: dict[int, str] = {
    0: "balance-rr", 1: "active-backup", 2: "balance-xor", 3: "broadcast", 4: "802.3ad", 5: "balance-tlb",
    6: "balance-alb",
}

BOND_SLAVE_STATES = {0: "ACTIVE", 1: "BACKUP"}
BOND_MII_STATUS = {0: "UP", 1: "GOING_DOWN", 2: "DOWN", 3: "GOING_BACK"}

KIND_TYPES: dict[str, str] = {"tuntap": "tun"}
"""IFLA_INFO_KIND values that Skydive names differently; any other kind is its own Type."""

METRIC_KEYS: tuple[tuple[str, str], ...] = (
    ("rx_packets", "RxPackets"), ("tx_packets", "TxPackets"), ("rx_bytes", "RxBytes"), ("tx_bytes", "TxBytes"),
    ("rx_errors", "RxErrors"), ("tx_errors", "TxErrors"), ("rx_dropped", "RxDropped"),
    ("tx_dropped", "TxDropped"), ("multicast", "Multicast"), ("collisions", "Collisions"),
)
"""Kernel link statistics -> Skydive `InterfaceMetric` keys."""

RTM_NEWLINK, RTM_DELLINK, RTM_NEWADDR, RTM_DELADDR = 16, 17, 20, 21
NLMSG_ERROR, NLMSG_DONE = 2, 3
RTM_NEWNSID = 88

IFLA_ADDRESS, IFLA_IFNAME, IFLA_MTU, IFLA_LINK, IFLA_MASTER = 1, 3, 4, 5, 10
IFLA_STATS, IFLA_OPERSTATE, IFLA_LINKINFO, IFLA_STATS64, IFLA_LINK_NETNSID = 7, 16, 18, 23, 37
IFLA_INFO_KIND, IFLA_INFO_DATA, IFLA_INFO_SLAVE_KIND, IFLA_INFO_SLAVE_DATA = 1, 2, 4, 5
OPERSTATES = ("UNKNOWN", "NOTPRESENT", "DOWN", "LOWERLAYERDOWN", "TESTING", "DORMANT", "UP")
MACVLAN_MODES = {1: "private", 2: "vepa", 4: "bridge", 8: "passthru", 16: "source"}

_HDR = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, pid
_IFI = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFA = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefixlen, flags, scope, index
_NLA = struct.Struct("=HH")


def link_flags(flags: int) -> list[str]:
    return [name for bit, name in IFF_FLAGS if flags & bit]


def link_state(operstate: str | None, flags: int) -> str:
    """Skydive's `State`: UP, DOWN or UNKNOWN (the operational state, upper-cased, folded to those three)."""
    op = (operstate or "UNKNOWN").upper()
    if op == "UP":
        return "UP"
    if op in ("DOWN", "LOWERLAYERDOWN", "NOTPRESENT"):
        return "DOWN"
    if not flags & 0x1:
        return "DOWN"
    return "UNKNOWN"


def iter_messages(buf: bytes | bytearray | memoryview) -> Iterator[tuple[int, int, int, int, int]]:
    """(type, flags, seq, payload offset, end offset) of each netlink message in a datagram."""
    off, n = 0, len(buf)
    while off + 16 <= n:
        length, mtype, flags, seq, _pid = _HDR.unpack_from(buf, off)
        if length < 16 or off + length > n:
            return
        yield mtype, flags, seq, off + 16, off + length
        off += (length + 3) & ~3


def attrs(buf: bytes | bytearray | memoryview, off: int, end: int) -> dict[int, tuple[int, int]]:
    """Attribute type (nested flag cleared) -> (value offset, value end), for one level."""
    out: dict[int, tuple[int, int]] = {}
    while off + 4 <= end:
        length, atype = _NLA.unpack_from(buf, off)
        if length < 4 or off + length > end:
            break
        out[atype & 0x3FFF] = (off + 4, off + length)
        off += (length + 3) & ~3
    return out


def _u(buf: Any, span: tuple[int, int] | None, fmt: str) -> int | None:
    if span is None or span[1] - span[0] < struct.calcsize(fmt):
        return None
    return struct.unpack_from(fmt, buf, span[0])[0]


def _str(buf: Any, span: tuple[int, int] | None) -> str | None:
    if span is None:
        return None
    return bytes(buf[span[0]:span[1]]).split(b"\0", 1)[0].decode(errors="replace")


def _ip(buf: Any, span: tuple[int, int] | None) -> str | None:
    if span is None:
        return None
    raw = bytes(buf[span[0]:span[1]])
    if len(raw) == 4:
        return None if raw == b"\0\0\0\0" else socket.inet_ntop(socket.AF_INET, raw)
    if len(raw) == 16:
        return None if raw == b"\0" * 16 else socket.inet_ntop(socket.AF_INET6, raw)
    return None


def _mac(buf: Any, span: tuple[int, int] | None) -> str | None:
    if span is None or span[1] <= span[0]:
        return None
    return ":".join(f"{b:02x}" for b in bytes(buf[span[0]:span[1]]))


def _wire(msg: Any) -> tuple[Any, int, int]:
    """(buffer, payload offset, end) of a raw message or of a pyroute2 message object's wire bytes."""
    if isinstance(msg, (bytes, bytearray, memoryview)):
        buf = msg
        off = 0
    else:
        buf, off = msg.data, getattr(msg, "offset", 0) or 0
    length = _HDR.unpack_from(buf, off)[0]
    return buf, off + 16, off + length


def parse_link(msg: Any) -> dict[str, Any]:
    """An RTM_NEWLINK/RTM_DELLINK message -> interface metadata (without Driver/Speed/IPs/Metric/ids).

    Keys as in Skydive: Name, Type, EncapType, IfIndex, MTU, MAC, State, LinkFlags, MasterIndex, ParentIndex,
    PeerIfIndex, LinkNetNsID, Vlan, BondMode, BondSlave, and tunnel endpoints (LocalIP, RemoteIP, VNI, Key,
    Port). `Kind` keeps the raw IFLA_INFO_KIND for the builder (it is dropped from the published node).
    """
    buf, off, end = _wire(msg)
    return parse_link_at(buf, off, end)[0]


def link_metric(msg: Any) -> dict[str, int] | None:
    """Skydive `InterfaceMetric` counters (without Start/Last) from IFLA_STATS64 (or IFLA_STATS)."""
    buf, off, end = _wire(msg)
    return parse_link_at(buf, off, end)[1]


def link_family(buf: Any, off: int) -> int:
    return buf[off]


def parse_link_at(buf: Any, off: int, end: int) -> tuple[dict[str, Any], dict[str, int] | None]:
    """(metadata, counters) of the ifinfomsg payload at buf[off:end]."""
    _family, ifi_type, index, flags, _change = _IFI.unpack_from(buf, off)
    a = attrs(buf, off + _IFI.size, end)
    operstate = _u(buf, a.get(IFLA_OPERSTATE), "B")
    md: dict[str, Any] = {
        "Name": _str(buf, a.get(IFLA_IFNAME)) or f"if{index}",
        "IfIndex": index,
        "EncapType": ENCAP_TYPES.get(ifi_type, str(ifi_type)),
        "LinkFlags": link_flags(flags),
        "State": link_state(OPERSTATES[operstate] if operstate is not None and operstate < 7 else None, flags),
    }
    mtu = _u(buf, a.get(IFLA_MTU), "I")
    if mtu is not None:
        md["MTU"] = mtu
    mac = _mac(buf, a.get(IFLA_ADDRESS))
    if mac:
        md["MAC"] = mac
    master = _u(buf, a.get(IFLA_MASTER), "I")
    if master:
        md["MasterIndex"] = master
    info = attrs(buf, *a[IFLA_LINKINFO]) if IFLA_LINKINFO in a else {}
    kind = _str(buf, info.get(IFLA_INFO_KIND)) or ""
    data = attrs(buf, *info[IFLA_INFO_DATA]) if IFLA_INFO_DATA in info else {}
    link = _u(buf, a.get(IFLA_LINK), "I")
    netnsid = _u(buf, a.get(IFLA_LINK_NETNSID), "i")
    md["Kind"] = kind
    md["Type"] = KIND_TYPES.get(kind, kind) if kind else "device"

    if kind == "veth":
        if link:
            md["PeerIfIndex"] = link
    elif link and link != index:
        md["ParentIndex"] = link
    if netnsid is not None and netnsid >= 0:
        md["LinkNetNsID"] = netnsid

    if kind == "vlan":
        _put(md, "Vlan", _u(buf, data.get(1), "H"))
        proto = _u(buf, data.get(5), ">H")
        if proto is not None:
            md["VlanProtocol"] = {0x8100: "802.1Q", 0x88A8: "802.1ad"}.get(proto, hex(proto))
    elif kind == "bond":
        mode = _u(buf, data.get(1), "B")
        if mode is not None:
            md["BondMode"] = BOND_MODES.get(mode, str(mode))
    elif kind == "vxlan":
        _put(md, "VNI", _u(buf, data.get(1), "I"))
        _put(md, "RemoteIP", _ip(buf, data.get(2)) or _ip(buf, data.get(16)))
        _put(md, "LocalIP", _ip(buf, data.get(4)) or _ip(buf, data.get(17)))
        _put(md, "Port", _u(buf, data.get(15), ">H"))
        vxlan_link = _u(buf, data.get(3), "I")
        if vxlan_link:
            md["ParentIndex"] = vxlan_link
    elif kind in ("gre", "gretap", "ip6gre", "ip6gretap", "erspan", "ip6erspan"):
        _put(md, "LocalIP", _ip(buf, data.get(6)))
        _put(md, "RemoteIP", _ip(buf, data.get(7)))
        key = _u(buf, data.get(4), ">I")
        if key:
            md["Key"] = key
        tlink = _u(buf, data.get(1), "I")
        if tlink:
            md["ParentIndex"] = tlink
    elif kind in ("ipip", "sit", "ip6tnl"):
        _put(md, "LocalIP", _ip(buf, data.get(2)))
        _put(md, "RemoteIP", _ip(buf, data.get(3)))
        tlink = _u(buf, data.get(1), "I")
        if tlink:
            md["ParentIndex"] = tlink
    elif kind in ("vti", "vti6"):
        _put(md, "LocalIP", _ip(buf, data.get(4)))
        _put(md, "RemoteIP", _ip(buf, data.get(5)))
        key = _u(buf, data.get(2), ">I")
        if key:
            md["Key"] = key
    elif kind == "geneve":
        _put(md, "VNI", _u(buf, data.get(1), "I"))
        _put(md, "RemoteIP", _ip(buf, data.get(2)) or _ip(buf, data.get(7)))
        _put(md, "Port", _u(buf, data.get(5), ">H"))
    elif kind == "tun":
        tun_type = _u(buf, data.get(3), "B")
        if tun_type is not None:
            md["TunType"] = {1: "tun", 2: "tap"}.get(tun_type, str(tun_type))
        else:
            md["TunType"] = "tap" if md["EncapType"] == "ether" else "tun"
    elif kind in ("macvlan", "macvtap"):
        mode = _u(buf, data.get(1), "I")
        if mode is not None:
            md["MacvlanMode"] = MACVLAN_MODES.get(mode, str(mode))

    slave_kind = _str(buf, info.get(IFLA_INFO_SLAVE_KIND))
    if slave_kind == "bond":
        sd = attrs(buf, *info[IFLA_INFO_SLAVE_DATA]) if IFLA_INFO_SLAVE_DATA in info else {}
        slave: dict[str, Any] = {"Type": "bond"}
        state = _u(buf, sd.get(1), "B")
        if state is not None:
            slave["State"] = BOND_SLAVE_STATES.get(state, str(state))
        mii = _u(buf, sd.get(2), "B")
        if mii is not None:
            slave["MiiStatus"] = BOND_MII_STATUS.get(mii, str(mii))
        _put(slave, "LinkFailureCount", _u(buf, sd.get(3), "I"))
        _put(slave, "PermMAC", _mac(buf, sd.get(4)))
        _put(slave, "QueueID", _u(buf, sd.get(5), "H"))
        _put(slave, "AggregatorID", _u(buf, sd.get(6), "H"))
        md["BondSlave"] = slave
    elif slave_kind:
        md["SlaveKind"] = slave_kind

    metric: dict[str, int] | None = None
    span = a.get(IFLA_STATS64)
    if span is not None and span[1] - span[0] >= 80:
        values = struct.unpack_from("=10Q", buf, span[0])
        metric = {key: v for (_n, key), v in zip(METRIC_KEYS, values)}
    else:
        span = a.get(IFLA_STATS)
        if span is not None and span[1] - span[0] >= 40:
            values = struct.unpack_from("=10I", buf, span[0])
            metric = {key: v for (_n, key), v in zip(METRIC_KEYS, values)}
    return md, metric


def parse_addr(msg: Any) -> tuple[int, str, str] | None:
    """An RTM_NEWADDR/RTM_DELADDR message -> (ifindex, "IPV4"|"IPV6", "addr/prefixlen"), or None."""
    buf, off, end = _wire(msg)
    return parse_addr_at(buf, off, end)


def parse_addr_at(buf: Any, off: int, end: int) -> tuple[int, str, str] | None:
    family, prefixlen, _flags, _scope, index = _IFA.unpack_from(buf, off)
    key = {2: "IPV4", 10: "IPV6"}.get(family)
    if key is None:
        return None
    a = attrs(buf, off + _IFA.size, end)
    addr = _ip(buf, a.get(2)) or _ip(buf, a.get(1))  # IFA_LOCAL (ours on point-to-point), else IFA_ADDRESS
    if not addr:
        return None
    return index, key, f"{addr}/{prefixlen}"


def parse_nsid_at(buf: Any, off: int, end: int) -> int | None:
    """NETNSA_NSID of an RTM_NEWNSID payload (rtgenmsg padded to 4 bytes), None if unassigned."""
    nsid = _u(buf, attrs(buf, off + 4, end).get(1), "i")
    return nsid if nsid is not None and nsid >= 0 else None


def _put(md: dict[str, Any], key: str, value: Any) -> None:
    if value is None or value == "":
        return
    md[key] = value
