"""Netlink parsing on messages built with pyroute2's message classes, encoded to bytes and decoded back,
for device kinds this kernel cannot create (bond, vlan, dummy, gre, geneve) and the ones it can."""

from __future__ import annotations

from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from netsonde.probe_topology.netlink import link_metric, parse_addr, parse_link

IFF_UP, IFF_BROADCAST, IFF_MULTICAST, IFF_LOWER_UP = 0x1, 0x2, 0x1000, 0x10000


def link_msg(index: int, attrs: list, flags: int = IFF_UP | IFF_BROADCAST | IFF_MULTICAST | IFF_LOWER_UP,
             ifi_type: int = 1) -> ifinfmsg:
    msg = ifinfmsg()
    msg["index"], msg["family"], msg["flags"], msg["ifi_type"], msg["change"] = index, 0, flags, ifi_type, 0
    msg["header"]["type"] = 16
    msg["attrs"] = attrs
    msg.encode()
    wire = ifinfmsg(msg.data)  # what a socket would hand us
    wire.decode()
    return wire


def info(kind: str, data: list | None = None, **extra) -> tuple:
    attrs = [("IFLA_INFO_KIND", kind)]
    if data is not None:
        attrs.append(("IFLA_INFO_DATA", {"attrs": data}))
    return ("IFLA_LINKINFO", {"attrs": attrs})


def test_bond_and_its_slave():
    bond = parse_link(link_msg(7, [("IFLA_IFNAME", "bond0"), ("IFLA_OPERSTATE", "UP"), ("IFLA_MTU", 9000),
                                   ("IFLA_ADDRESS", "02:00:00:00:00:07"),
                                   info("bond", [("IFLA_BOND_MODE", 4)])]))
    assert bond["Type"] == "bond" and bond["BondMode"] == "802.3ad"
    assert bond["Name"] == "bond0" and bond["IfIndex"] == 7 and bond["MTU"] == 9000 and bond["State"] == "UP"
    assert bond["LinkFlags"] == ["UP", "BROADCAST", "MULTICAST", "LOWER_UP"] and bond["EncapType"] == "ether"
    slave = parse_link(link_msg(3, [
        ("IFLA_IFNAME", "eth1"), ("IFLA_MASTER", 7), ("IFLA_OPERSTATE", "UP"),
        ("IFLA_LINKINFO", {"attrs": [("IFLA_INFO_SLAVE_KIND", "bond"), ("IFLA_INFO_SLAVE_DATA", {"attrs": [
            ("IFLA_BOND_SLAVE_STATE", 1), ("IFLA_BOND_SLAVE_MII_STATUS", 0),
            ("IFLA_BOND_SLAVE_LINK_FAILURE_COUNT", 2), ("IFLA_BOND_SLAVE_PERM_HWADDR", "02:00:00:00:00:03")]})]})]))
    assert slave["Type"] == "device" and slave["MasterIndex"] == 7
    assert slave["BondSlave"] == {"Type": "bond", "State": "BACKUP", "MiiStatus": "UP", "LinkFailureCount": 2,
                                  "PermMAC": "02:00:00:00:00:03"}


def test_bond_modes():
    names = [parse_link(link_msg(9, [("IFLA_IFNAME", "b"), info("bond", [("IFLA_BOND_MODE", mode)])]))["BondMode"]
             for mode in range(7)]
    assert names == ["balance-rr", "active-backup", "balance-xor", "broadcast", "802.3ad", "balance-tlb",
                     "balance-alb"]


def test_vlan():
    md = parse_link(link_msg(12, [("IFLA_IFNAME", "eth0.100"), ("IFLA_LINK", 4),
                                  info("vlan", [("IFLA_VLAN_ID", 100), ("IFLA_VLAN_PROTOCOL", 0x8100)])]))
    assert md["Type"] == "vlan" and md["Vlan"] == 100 and md["ParentIndex"] == 4 and md["VlanProtocol"] == "802.1Q"
    qinq = parse_link(link_msg(13, [("IFLA_IFNAME", "q"), ("IFLA_LINK", 12),
                                    info("vlan", [("IFLA_VLAN_ID", 7), ("IFLA_VLAN_PROTOCOL", 0x88A8)])]))
    assert qinq["VlanProtocol"] == "802.1ad" and qinq["ParentIndex"] == 12


def test_dummy_down():
    md = parse_link(link_msg(5, [("IFLA_IFNAME", "dummy0"), ("IFLA_OPERSTATE", "DOWN"),
                                 ("IFLA_ADDRESS", "aa:bb:cc:dd:ee:ff"), info("dummy")], flags=IFF_BROADCAST))
    assert md["Type"] == "dummy" and md["State"] == "DOWN" and md["LinkFlags"] == ["BROADCAST"]
    assert md["MAC"] == "aa:bb:cc:dd:ee:ff" and "MasterIndex" not in md and "ParentIndex" not in md


def test_gre_and_gretap():
    md = parse_link(link_msg(20, [("IFLA_IFNAME", "gre1"), info("gre", [
        ("IFLA_GRE_LOCAL", "192.0.2.1"), ("IFLA_GRE_REMOTE", "198.51.100.7"), ("IFLA_GRE_IKEY", 1234)])],
        ifi_type=778))
    assert md["Type"] == "gre" and md["EncapType"] == "gre"
    assert md["LocalIP"] == "192.0.2.1" and md["RemoteIP"] == "198.51.100.7" and md["Key"] == 1234
    tap = parse_link(link_msg(21, [("IFLA_IFNAME", "gt"), info("gretap", [("IFLA_GRE_REMOTE", "10.0.0.9")])]))
    assert tap["Type"] == "gretap" and tap["RemoteIP"] == "10.0.0.9" and tap["EncapType"] == "ether"


def test_geneve_and_vxlan():
    g = parse_link(link_msg(30, [("IFLA_IFNAME", "gnv0"), info("geneve", [
        ("IFLA_GENEVE_ID", 5001), ("IFLA_GENEVE_REMOTE", "203.0.113.5"), ("IFLA_GENEVE_PORT", 6081)])]))
    assert (g["Type"], g["VNI"], g["RemoteIP"], g["Port"]) == ("geneve", 5001, "203.0.113.5", 6081)
    v = parse_link(link_msg(31, [("IFLA_IFNAME", "vx0"), info("vxlan", [
        ("IFLA_VXLAN_ID", 42), ("IFLA_VXLAN_GROUP", "239.1.1.1"), ("IFLA_VXLAN_LOCAL", "10.0.0.1"),
        ("IFLA_VXLAN_PORT", 4789), ("IFLA_VXLAN_LINK", 4)])]))
    assert (v["Type"], v["VNI"], v["RemoteIP"], v["LocalIP"], v["Port"], v["ParentIndex"]) == \
        ("vxlan", 42, "239.1.1.1", "10.0.0.1", 4789, 4)


def test_veth_peer_in_other_namespace():
    md = parse_link(link_msg(40, [("IFLA_IFNAME", "veth0"), ("IFLA_LINK", 2), ("IFLA_LINK_NETNSID", 3),
                                  info("veth")]))
    assert md["Type"] == "veth" and md["PeerIfIndex"] == 2 and md["LinkNetNsID"] == 3 and "ParentIndex" not in md


def test_tun_tap_loopback_and_bridge():
    tap = parse_link(link_msg(50, [("IFLA_IFNAME", "tap0"), info("tun", [("IFLA_TUN_TYPE", 2)])]))
    assert tap["Type"] == "tun" and tap["TunType"] == "tap"
    lo = parse_link(link_msg(1, [("IFLA_IFNAME", "lo"), ("IFLA_OPERSTATE", "UNKNOWN")], flags=0x1 | 0x8 | 0x40,
                             ifi_type=772))
    assert lo["Type"] == "device" and lo["EncapType"] == "loopback" and lo["State"] == "UNKNOWN"
    assert lo["LinkFlags"] == ["UP", "LOOPBACK", "RUNNING"]
    br = parse_link(link_msg(60, [("IFLA_IFNAME", "br0"), info("bridge")]))
    assert br["Type"] == "bridge"
    ovs = parse_link(link_msg(61, [("IFLA_IFNAME", "ovs-system"), info("openvswitch")]))
    assert ovs["Type"] == "openvswitch"


def test_link_stats():
    stats = {"rx_packets": 10, "tx_packets": 20, "rx_bytes": 1000, "tx_bytes": 2000, "rx_errors": 1,
             "tx_errors": 2, "rx_dropped": 3, "tx_dropped": 4, "multicast": 5, "collisions": 6}
    msg = link_msg(70, [("IFLA_IFNAME", "x"), ("IFLA_STATS64", stats)])
    assert link_metric(msg) == {"RxPackets": 10, "TxPackets": 20, "RxBytes": 1000, "TxBytes": 2000, "RxErrors": 1,
                                "TxErrors": 2, "RxDropped": 3, "TxDropped": 4, "Multicast": 5, "Collisions": 6}
    assert link_metric(link_msg(71, [("IFLA_IFNAME", "y")])) is None


def addr_msg(family: int, index: int, prefixlen: int, attrs: list) -> ifaddrmsg:
    msg = ifaddrmsg()
    msg["family"], msg["prefixlen"], msg["index"], msg["flags"], msg["scope"] = family, prefixlen, index, 0, 0
    msg["header"]["type"] = 20
    msg["attrs"] = attrs
    msg.encode()
    wire = ifaddrmsg(msg.data)
    wire.decode()
    return wire


def test_addresses_as_cidr():
    assert parse_addr(addr_msg(2, 4, 24, [("IFA_ADDRESS", "10.0.0.5"), ("IFA_LOCAL", "10.0.0.5")])) == \
        (4, "IPV4", "10.0.0.5/24")
    # point-to-point: IFA_LOCAL is ours, IFA_ADDRESS the peer's
    assert parse_addr(addr_msg(2, 4, 32, [("IFA_ADDRESS", "10.0.0.9"), ("IFA_LOCAL", "10.0.0.8")])) == \
        (4, "IPV4", "10.0.0.8/32")
    assert parse_addr(addr_msg(10, 6, 64, [("IFA_ADDRESS", "fd00::1")])) == (6, "IPV6", "fd00::1/64")
    assert parse_addr(addr_msg(17, 6, 0, [])) is None


def test_raw_datagram_iteration_and_macvlan_mode():
    from netsonde.probe_topology.netlink import iter_messages, parse_addr_at, parse_link_at

    a = link_msg(80, [("IFLA_IFNAME", "mv0"), ("IFLA_LINK", 2),
                      info("macvlan", [("IFLA_MACVLAN_MODE", 4)])])
    b = addr_msg(2, 80, 16, [("IFA_ADDRESS", "172.16.0.1")])
    pad = lambda d: bytes(d) + b"\0" * (-len(d) % 4)  # noqa: E731
    datagram = pad(a.data) + pad(b.data)
    msgs = list(iter_messages(datagram))
    assert [m[0] for m in msgs] == [16, 20]
    md, _ = parse_link_at(datagram, msgs[0][3], msgs[0][4])
    assert md["Type"] == "macvlan" and md["MacvlanMode"] == "bridge" and md["ParentIndex"] == 2
    assert parse_addr_at(datagram, msgs[1][3], msgs[1][4]) == (80, "IPV4", "172.16.0.1/16")
    assert parse_link(bytes(a.data))["Name"] == "mv0"  # raw bytes work as well as message objects
    assert list(iter_messages(datagram[:20])) == []  # a truncated datagram yields nothing, never raises
