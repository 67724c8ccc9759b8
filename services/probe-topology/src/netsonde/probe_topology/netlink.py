"""Pure netlink parsing: one rtnetlink message in, Skydive-shaped interface metadata out.

Nothing here touches a socket, so unit tests feed messages built in memory with pyroute2's message classes
(`ifinfmsg`, `ifaddrmsg`), including kinds this kernel cannot create (bond, vlan, dummy, gre, geneve).
"""

from __future__ import annotations

from typing import Any

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


def _attrs(nla: Any) -> dict[str, Any]:
    """The attributes of a decoded nla (pyroute2 object or the plain dict form) as a name -> value map."""
    if nla is None:
        return {}
    items = nla.get("attrs", []) if isinstance(nla, dict) or hasattr(nla, "get") else []
    out: dict[str, Any] = {}
    for item in items:
        name, value = item[0], item[1]
        out[name] = value
    return out


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


def link_metric(msg: Any) -> dict[str, int] | None:
    """Skydive `InterfaceMetric` counters (without Start/Last) from IFLA_STATS64 (or IFLA_STATS)."""
    stats = msg.get_attr("IFLA_STATS64") or msg.get_attr("IFLA_STATS")
    if stats is None:
        return None
    return {key: int(stats.get(name) or 0) for name, key in METRIC_KEYS}


def parse_link(msg: Any) -> dict[str, Any]:
    """An RTM_NEWLINK/RTM_DELLINK message -> interface metadata (without Driver/Speed/IPs/Metric/ids).

    Keys as in Skydive: Name, Type, EncapType, IfIndex, MTU, MAC, State, LinkFlags, MasterIndex, ParentIndex,
    PeerIfIndex, LinkNetNsID, Vlan, BondMode, BondSlave, and tunnel endpoints (LocalIP, RemoteIP, VNI, Key,
    Port). `Kind` keeps the raw IFLA_INFO_KIND for the builder (it is dropped from the published node).
    """
    index = int(msg["index"])
    flags = int(msg["flags"] or 0)
    md: dict[str, Any] = {
        "Name": msg.get_attr("IFLA_IFNAME") or f"if{index}",
        "IfIndex": index,
        "EncapType": ENCAP_TYPES.get(int(msg["ifi_type"] or 0), str(msg["ifi_type"])),
        "LinkFlags": link_flags(flags),
        "State": link_state(msg.get_attr("IFLA_OPERSTATE"), flags),
    }
    mtu = msg.get_attr("IFLA_MTU")
    if mtu is not None:
        md["MTU"] = int(mtu)
    mac = msg.get_attr("IFLA_ADDRESS")
    if mac:
        md["MAC"] = mac
    master = msg.get_attr("IFLA_MASTER")
    if master:
        md["MasterIndex"] = int(master)
    info = _attrs(msg.get_attr("IFLA_LINKINFO"))
    kind = info.get("IFLA_INFO_KIND")
    data = _attrs(info.get("IFLA_INFO_DATA"))
    link = msg.get_attr("IFLA_LINK")
    netnsid = msg.get_attr("IFLA_LINK_NETNSID")
    md["Kind"] = kind or ""
    md["Type"] = KIND_TYPES.get(kind, kind) if kind else "device"

    if kind == "veth":
        if link:
            md["PeerIfIndex"] = int(link)
    elif link and int(link) != index:
        md["ParentIndex"] = int(link)
    if netnsid is not None and int(netnsid) >= 0:
        md["LinkNetNsID"] = int(netnsid)

    if kind == "vlan":
        vid = data.get("IFLA_VLAN_ID")
        if vid is not None:
            md["Vlan"] = int(vid)
        proto = data.get("IFLA_VLAN_PROTOCOL")
        if proto is not None:
            md["VlanProtocol"] = {0x8100: "802.1Q", 0x88A8: "802.1ad"}.get(int(proto), hex(int(proto)))
    elif kind == "bond":
        mode = data.get("IFLA_BOND_MODE")
        if mode is not None:
            md["BondMode"] = BOND_MODES.get(int(mode), str(mode))
    elif kind == "vxlan":
        _put(md, "VNI", data.get("IFLA_VXLAN_ID"), int)
        _put(md, "RemoteIP", data.get("IFLA_VXLAN_GROUP") or data.get("IFLA_VXLAN_GROUP6"))
        _put(md, "LocalIP", data.get("IFLA_VXLAN_LOCAL") or data.get("IFLA_VXLAN_LOCAL6"))
        _put(md, "Port", data.get("IFLA_VXLAN_PORT"), int)
        vxlan_link = data.get("IFLA_VXLAN_LINK")
        if vxlan_link:
            md["ParentIndex"] = int(vxlan_link)
    elif kind in ("gre", "gretap", "ip6gre", "ip6gretap", "ipip", "sit", "ip6tnl", "vti", "vti6"):
        prefix = {"ipip": "IFLA_IPTUN", "sit": "IFLA_IPTUN", "ip6tnl": "IFLA_IPTUN",
                  "vti": "IFLA_VTI", "vti6": "IFLA_VTI"}.get(kind, "IFLA_GRE")
        _put(md, "LocalIP", data.get(f"{prefix}_LOCAL"))
        _put(md, "RemoteIP", data.get(f"{prefix}_REMOTE"))
        key = data.get(f"{prefix}_IKEY")
        if key:
            md["Key"] = int(key)
        tlink = data.get(f"{prefix}_LINK")
        if tlink:
            md["ParentIndex"] = int(tlink)
    elif kind == "geneve":
        _put(md, "VNI", data.get("IFLA_GENEVE_ID"), int)
        _put(md, "RemoteIP", data.get("IFLA_GENEVE_REMOTE") or data.get("IFLA_GENEVE_REMOTE6"))
        _put(md, "Port", data.get("IFLA_GENEVE_PORT"), int)
    elif kind == "tun":
        tun_type = data.get("IFLA_TUN_TYPE")
        if tun_type is not None:
            md["TunType"] = {1: "tun", 2: "tap"}.get(int(tun_type), str(tun_type))
        else:
            md["TunType"] = "tap" if md["EncapType"] == "ether" else "tun"
    elif kind in ("macvlan", "macvtap"):
        mode = data.get("IFLA_MACVLAN_MODE")
        if isinstance(mode, str):
            md["MacvlanMode"] = mode.replace("macvlan_mode_", "")

    slave_kind = info.get("IFLA_INFO_SLAVE_KIND")
    if slave_kind == "bond":
        sd = _attrs(info.get("IFLA_INFO_SLAVE_DATA"))
        slave: dict[str, Any] = {"Type": "bond"}
        if "IFLA_BOND_SLAVE_STATE" in sd:
            slave["State"] = BOND_SLAVE_STATES.get(int(sd["IFLA_BOND_SLAVE_STATE"]), str(sd["IFLA_BOND_SLAVE_STATE"]))
        if "IFLA_BOND_SLAVE_MII_STATUS" in sd:
            slave["MiiStatus"] = BOND_MII_STATUS.get(int(sd["IFLA_BOND_SLAVE_MII_STATUS"]),
                                                     str(sd["IFLA_BOND_SLAVE_MII_STATUS"]))
        _put(slave, "LinkFailureCount", sd.get("IFLA_BOND_SLAVE_LINK_FAILURE_COUNT"), int)
        _put(slave, "PermMAC", sd.get("IFLA_BOND_SLAVE_PERM_HWADDR"))
        _put(slave, "QueueID", sd.get("IFLA_BOND_SLAVE_QUEUE_ID"), int)
        _put(slave, "AggregatorID", sd.get("IFLA_BOND_SLAVE_AD_AGGREGATOR_ID"), int)
        md["BondSlave"] = slave
    elif slave_kind:
        md["SlaveKind"] = slave_kind
    return md


def parse_addr(msg: Any) -> tuple[int, str, str] | None:
    """An RTM_NEWADDR/RTM_DELADDR message -> (ifindex, "IPV4"|"IPV6", "addr/prefixlen"), or None."""
    family = int(msg["family"])
    key = {2: "IPV4", 10: "IPV6"}.get(family)
    if key is None:
        return None
    addr = msg.get_attr("IFA_LOCAL") or msg.get_attr("IFA_ADDRESS")
    if not addr:
        return None
    return int(msg["index"]), key, f"{addr}/{int(msg['prefixlen'])}"


def _put(md: dict[str, Any], key: str, value: Any, cast: Any = None) -> None:
    if value is None or value == "":
        return
    md[key] = cast(value) if cast else value
