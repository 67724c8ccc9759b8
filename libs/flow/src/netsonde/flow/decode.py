"""Packet decoding into Skydive-style packet sequences.

`decode_ethernet(frame, wire_len)` returns a list of `Segment`: one per encapsulation level, outermost first,
split like Skydive's `PacketSeqFromGoPacket` at GRE (or at MPLS when GRE carries MPLS), VXLAN, GENEVE and
MPLS. Each segment holds what the flow table needs (layer names, link/network/transport endpoints, ICMP,
TCP flags, fragment state, length). Malformed input raises `DecodeError(kind)`; the caller counts it.

Layer names follow gopacket's (`Ethernet`, `Dot1Q`, `IPv4`, `ICMPv4`, `UDP`, `DNS`, `VXLAN`, `Geneve` ...),
so `LayersPath` and `Application` read like Skydive's.
"""

from __future__ import annotations

import struct

_U16 = struct.Struct("!H")
_U16x2 = struct.Struct("!HH")
_U32 = struct.Struct("!I")

ETH_IPV4 = 0x0800
ETH_IPV6 = 0x86DD
ETH_ARP = 0x0806
ETH_VLAN = 0x8100
ETH_QINQ = 0x88A8
ETH_QINQ_OLD = 0x9100
ETH_MPLS = 0x8847
ETH_MPLS_MC = 0x8848
ETH_TEB = 0x6558

PORT_VXLAN = 4789
PORT_GENEVE = 6081
PORT_MPLS_UDP = 6635

# TCP flag bits
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10

ICMP4_TYPES = {0: "ECHO", 8: "ECHO", 3: "DESTINATION_UNREACHABLE", 4: "SOURCE_QUENCH", 5: "REDIRECT",
               9: "ROUTER", 10: "ROUTER", 11: "TIME_EXCEEDED", 12: "PARAMETER_PROBLEM",
               13: "TIMESTAMP", 14: "TIMESTAMP"}
ICMP6_TYPES = {1: "DESTINATION_UNREACHABLE", 2: "PACKET_TOO_BIG", 3: "TIME_EXCEEDED", 4: "PARAMETER_PROBLEM",
               128: "ECHO", 129: "ECHO", 133: "ROUTER", 134: "ROUTER", 135: "NEIGHBOR", 136: "NEIGHBOR",
               137: "REDIRECT"}
ICMP6_LAYER = {128: "ICMPv6Echo", 129: "ICMPv6Echo", 133: "ICMPv6RouterSolicitation",
               134: "ICMPv6RouterAdvertisement", 135: "ICMPv6NeighborSolicitation",
               136: "ICMPv6NeighborAdvertisement", 137: "ICMPv6Redirect"}
ICMP_REQUESTS = {8, 13, 128, 133, 135}
"""ICMP types that open an exchange (used for A/B orientation and RTT)."""

UDP_APPS = {53: "DNS", 5353: "DNS", 67: "DHCPv4", 68: "DHCPv4", 546: "DHCPv6", 547: "DHCPv6", 123: "NTP",
            6343: "SFlow", 4789: "VXLAN", 6081: "Geneve", 161: "SNMP", 162: "SNMP", 514: "Syslog"}
TCP_APPS = {53: "DNS"}

IP_PROTO_NAMES = {1: "ICMPv4", 2: "IGMP", 6: "TCP", 17: "UDP", 47: "GRE", 58: "ICMPv6", 132: "SCTP",
                  112: "VRRPv2", 50: "IPSecESP", 51: "IPSecAH", 4: "IPv4", 41: "IPv6", 89: "OSPF"}


class DecodeError(Exception):
    """A frame that cannot be decoded; `kind` names the problem (`truncated`, `malformed` ...)."""

    def __init__(self, kind: str) -> None:
        super().__init__(kind)
        self.kind = kind


class Segment:
    """One level of a packet sequence: the layers from one (re)start of decoding up to a tunnel or payload."""

    __slots__ = ("layers", "mac_src", "mac_dst", "vlan", "net_proto", "ip_src", "ip_dst", "net_id",
                 "tr_proto", "sport", "dport", "tr_id", "tunnel", "icmp_type", "icmp_code", "icmp_id",
                 "icmp_raw_type", "tcp_flags", "ttl", "fragment", "frag_error", "length", "ip_proto",
                 "app_port", "ndpi", "ip_id", "ip_off", "ip_len", "pay_off", "tcp_seq")

    def __init__(self) -> None:
        self.layers: list[str] = []
        self.mac_src = self.mac_dst = b""
        self.vlan = 0
        self.net_proto = ""
        self.ip_src = self.ip_dst = b""
        self.net_id = 0
        self.tr_proto = ""
        self.sport = self.dport = 0
        self.tr_id = 0
        self.tunnel = False  # transport is a tunnel's UDP (VXLAN/Geneve/MPLS-UDP): key on ID + dport
        self.icmp_type = ""
        self.icmp_code = 0
        self.icmp_id = 0
        self.icmp_raw_type = -1
        self.tcp_flags = -1
        self.ttl = 0
        self.fragment = False
        self.frag_error = False
        self.length = 0
        self.ip_proto = -1
        self.app_port = 0
        self.ndpi = ""
        self.ip_id = -1
        self.ip_off = -1
        self.ip_len = 0
        """IP length the header declares (header included); 0 when unknown."""
        self.pay_off = -1
        """Offset of the TCP/UDP/VRRP payload in the frame (-1: none), for the capture options."""
        self.tcp_seq = 0

    @property
    def layers_path(self) -> str:
        return "/".join(self.layers)

    @property
    def application(self) -> str:
        return self.layers[-1] if self.layers else ""

    def __repr__(self) -> str:
        return (f"Segment({self.layers_path} {self.mac_src.hex()}>{self.mac_dst.hex()} vlan={self.vlan} "
                f"{self.ip_src.hex()}>{self.ip_dst.hex()} id={self.net_id} {self.tr_proto} {self.sport}>"
                f"{self.dport} icmp={self.icmp_type}/{self.icmp_code}/{self.icmp_id} len={self.length})")


def decode_ethernet(frame: bytes, wire_len: int | None = None) -> list[Segment]:
    """Decode an Ethernet frame into its packet sequence (outer first)."""
    segs: list[Segment] = []
    _ethernet(frame, 0, wire_len if wire_len is not None else len(frame), segs)
    return segs


def decode_ip(packet: bytes, wire_len: int | None = None) -> list[Segment]:
    """Decode a raw IP packet (pcap LINKTYPE_RAW) into its packet sequence."""
    segs: list[Segment] = []
    seg = Segment()
    seg.length = wire_len if wire_len is not None else len(packet)
    segs.append(seg)
    _ip_by_version(packet, 0, seg, segs)
    return segs


def _new_seg(segs: list[Segment], total: int) -> Segment:
    seg = Segment()
    seg.length = total
    segs.append(seg)
    return seg


def _ethernet(b: bytes, off: int, wire_len: int, segs: list[Segment]) -> None:
    seg = _new_seg(segs, wire_len - off)
    if len(b) - off < 14:
        raise DecodeError("truncated")
    seg.mac_dst = b[off:off + 6]
    seg.mac_src = b[off + 6:off + 12]
    seg.layers.append("Ethernet")
    etype = (b[off + 12] << 8) | b[off + 13]
    off += 14
    if etype < 0x0600:  # 802.3 length field: LLC, not decoded further
        seg.layers.append("LLC")
        return
    vlans = 0
    while etype in (ETH_VLAN, ETH_QINQ, ETH_QINQ_OLD):
        if len(b) - off < 4:
            raise DecodeError("truncated")
        tci, etype = _U16x2.unpack_from(b, off)
        vlans = (vlans << 12) | (tci & 0x0FFF)
        seg.layers.append("Dot1Q")
        off += 4
    seg.vlan = vlans
    _ethertype(b, off, etype, seg, segs)


def _ethertype(b: bytes, off: int, etype: int, seg: Segment, segs: list[Segment]) -> None:
    if etype == ETH_IPV4:
        _ipv4(b, off, seg, segs)
    elif etype == ETH_IPV6:
        _ipv6(b, off, seg, segs)
    elif etype == ETH_ARP:
        _arp(b, off, seg)
    elif etype in (ETH_MPLS, ETH_MPLS_MC):
        _mpls(b, off, seg, segs)
    else:
        seg.layers.append(_ETHERTYPE_NAMES.get(etype, "Unknown"))


_ETHERTYPE_NAMES = {0x88CC: "LinkLayerDiscovery", 0x8809: "EthernetCTP", 0x88E5: "MACsec", 0x8863: "PPPoEDiscovery",
                    0x8864: "PPPoE", 0x8035: "RARP", 0x88F7: "PTP", 0x888E: "EAPOL", 0x8906: "FCoE"}


def _arp(b: bytes, off: int, seg: Segment) -> None:
    if len(b) - off < 28:
        raise DecodeError("truncated")
    seg.layers.append("ARP")


def _ip_by_version(b: bytes, off: int, seg: Segment, segs: list[Segment]) -> None:
    if len(b) - off < 1:
        raise DecodeError("truncated")
    v = b[off] >> 4
    if v == 4:
        _ipv4(b, off, seg, segs)
    elif v == 6:
        _ipv6(b, off, seg, segs)
    else:
        raise DecodeError("malformed")


def _ipv4(b: bytes, off: int, seg: Segment, segs: list[Segment]) -> None:
    if len(b) - off < 20:
        raise DecodeError("truncated")
    vihl = b[off]
    ihl = (vihl & 0x0F) * 4
    if vihl >> 4 != 4 or ihl < 20:
        raise DecodeError("malformed")
    if len(b) - off < ihl:
        raise DecodeError("truncated")
    total = (b[off + 2] << 8) | b[off + 3]
    frag = (b[off + 6] << 8) | b[off + 7]
    seg.ttl = b[off + 8]
    proto = b[off + 9]
    seg.ip_off = off
    seg.layers.append("IPv4")
    seg.net_proto = "IPV4"
    seg.ip_src = b[off + 12:off + 16]
    seg.ip_dst = b[off + 16:off + 20]
    seg.ip_proto = proto
    end = len(b)
    if total >= ihl:
        seg.ip_len = total
    if ihl <= total < end - off:
        end = off + total  # strip Ethernet padding
    elif total < ihl:
        seg.frag_error = total != 0
    offset = frag & 0x1FFF
    if frag & 0x2000 or offset:
        seg.fragment = True
        seg.ip_id = (b[off + 4] << 8) | b[off + 5]
        if offset:
            seg.layers.append("Fragment")
            return
    _ip_payload(b, off + ihl, end, proto, seg, segs)


_V6_EXT = {0, 43, 60, 51}


def _ipv6(b: bytes, off: int, seg: Segment, segs: list[Segment]) -> None:
    if len(b) - off < 40:
        raise DecodeError("truncated")
    if b[off] >> 4 != 6:
        raise DecodeError("malformed")
    plen = (b[off + 4] << 8) | b[off + 5]
    nh = b[off + 6]
    seg.ttl = b[off + 7]
    seg.ip_off = off
    seg.layers.append("IPv6")
    seg.net_proto = "IPV6"
    seg.ip_src = b[off + 8:off + 24]
    seg.ip_dst = b[off + 24:off + 40]
    end = len(b)
    if plen:
        seg.ip_len = 40 + plen
    if 0 < plen and off + 40 + plen < end:
        end = off + 40 + plen
    off += 40
    while nh in _V6_EXT or nh == 44:
        if end - off < 8:
            raise DecodeError("truncated")
        if nh == 44:  # fragment header
            seg.fragment = True
            seg.ip_id = _U32.unpack_from(b, off + 4)[0]
            fo = ((b[off + 2] << 8) | b[off + 3]) >> 3
            seg.layers.append("IPv6Fragment")
            if fo:
                return
            nh = b[off]
            off += 8
            continue
        seg.layers.append({0: "IPv6HopByHop", 43: "IPv6Routing", 60: "IPv6Destination", 51: "IPSecAH"}[nh])
        hlen = (b[off + 1] + 2) * 4 if nh == 51 else (b[off + 1] + 1) * 8
        nh = b[off]
        off += hlen
    seg.ip_proto = nh
    _ip_payload(b, off, end, nh, seg, segs)


def _ip_payload(b: bytes, off: int, end: int, proto: int, seg: Segment, segs: list[Segment]) -> None:
    if proto == 6:
        _ports(b, off, end, seg, "TCP", 20)
        seg.tcp_flags = b[off + 13]
        seg.tcp_seq = _U32.unpack_from(b, off + 4)[0]
        app = TCP_APPS.get(seg.dport) or TCP_APPS.get(seg.sport)
        doff = (b[off + 12] >> 4) * 4
        seg.pay_off = off + doff
        if app and end - off > doff:
            seg.layers.append(app)
    elif proto == 17:
        sport, dport = _ports(b, off, end, seg, "UDP", 8)
        off += 8
        seg.pay_off = off
        if dport == PORT_VXLAN:
            _vxlan(b, off, end, seg, segs)
        elif dport == PORT_GENEVE:
            _geneve(b, off, end, seg, segs)
        elif dport == PORT_MPLS_UDP:
            seg.tunnel = True
            _mpls(b, off, seg, segs)
        else:
            app = UDP_APPS.get(dport) or UDP_APPS.get(sport)
            if app and end > off:
                seg.layers.append(app)
    elif proto == 1:
        _icmp(b, off, end, seg, "ICMPv4", 8, ICMP4_TYPES, _ICMP4_WITH_ID)
    elif proto == 58:
        sub = ICMP6_LAYER.get(_icmp(b, off, end, seg, "ICMPv6", 4, ICMP6_TYPES, _ICMP6_WITH_ID))
        if sub:
            seg.layers.append(sub)
    elif proto == 47:
        _gre(b, off, end, seg, segs)
    elif proto == 132:
        _ports(b, off, end, seg, "SCTP", 12)
    elif proto == 4:  # IP in IP: not split by Skydive, decoded as nested layers of the same flow
        seg.layers.append("IPv4")
    elif proto == 41:
        seg.layers.append("IPv6")
    else:
        seg.layers.append(IP_PROTO_NAMES.get(proto, "Unknown"))
        seg.pay_off = off


def _ports(b: bytes, off: int, end: int, seg: Segment, proto: str, min_len: int) -> tuple[int, int]:
    """The start of a TCP / UDP / SCTP header (`min_len` bytes at least): the layer and its ports."""
    if end - off < min_len:
        raise DecodeError("truncated")
    seg.layers.append(proto)
    seg.tr_proto = proto
    sport, dport = seg.sport, seg.dport = _U16x2.unpack_from(b, off)
    return sport, dport


_ICMP4_WITH_ID = frozenset((0, 8, 13, 14))
_ICMP6_WITH_ID = frozenset((128, 129))
"""ICMP types that carry an identifier (echo, timestamp): it is part of the flow key."""


def _icmp(b: bytes, off: int, end: int, seg: Segment, layer: str, min_len: int, types: dict[int, str],
          with_id: frozenset[int]) -> int:
    """The ICMPv4 / ICMPv6 header: type, code and (echo, timestamp) identifier. Returns the type."""
    if end - off < min_len:
        raise DecodeError("truncated")
    t = b[off]
    seg.layers.append(layer)
    seg.icmp_raw_type = t
    seg.icmp_type = types.get(t, "UNKNOWN")
    seg.icmp_code = b[off + 1]
    if t in with_id:
        if end - off < 8:
            raise DecodeError("truncated")
        seg.icmp_id = _U16.unpack_from(b, off + 4)[0]
    return t


def _vxlan(b: bytes, off: int, end: int, seg: Segment, segs: list[Segment]) -> None:
    if end - off < 8:
        raise DecodeError("truncated")
    seg.layers.append("VXLAN")
    seg.tunnel = True
    vni = (b[off + 4] << 16) | (b[off + 5] << 8) | b[off + 6]
    seg.net_id = vni
    _ethernet(b, off + 8, _total_of(segs), segs)


def _geneve(b: bytes, off: int, end: int, seg: Segment, segs: list[Segment]) -> None:
    if end - off < 8:
        raise DecodeError("truncated")
    optlen = (b[off] & 0x3F) * 4
    ptype = _U16.unpack_from(b, off + 2)[0]
    seg.net_id = (b[off + 4] << 16) | (b[off + 5] << 8) | b[off + 6]
    seg.layers.append("Geneve")
    seg.tunnel = True
    inner = off + 8 + optlen
    if end - inner < 1:
        raise DecodeError("truncated")
    _tunnel_payload(b, inner, ptype, seg, segs)


def _gre(b: bytes, off: int, end: int, seg: Segment, segs: list[Segment]) -> None:
    if end - off < 4:
        raise DecodeError("truncated")
    flags, ptype = _U16x2.unpack_from(b, off)
    seg.layers.append("GRE")
    hlen = 4
    if flags & 0x8000:  # checksum
        hlen += 4
    if flags & 0x2000:  # key
        if end - off < hlen + 4:
            raise DecodeError("truncated")
        seg.net_id = _U32.unpack_from(b, off + hlen)[0]
        hlen += 4
    if flags & 0x1000:  # sequence
        hlen += 4
    inner = off + hlen
    if end - inner < 1:
        raise DecodeError("truncated")
    if ptype in (ETH_MPLS, ETH_MPLS_MC):  # GRE followed by MPLS: split at MPLS (Skydive)
        _mpls(b, inner, seg, segs)
        return
    _tunnel_payload(b, inner, ptype, seg, segs)


def _tunnel_payload(b: bytes, inner: int, ptype: int, seg: Segment, segs: list[Segment]) -> None:
    if ptype == ETH_TEB:
        _ethernet(b, inner, _total_of(segs), segs)
    elif ptype in (ETH_IPV4, ETH_IPV6):
        child = _new_seg(segs, _total_of(segs) - inner)
        _ethertype(b, inner, ptype, child, segs)
    elif ptype in (ETH_MPLS, ETH_MPLS_MC):
        _mpls(b, inner, seg, segs)
    else:
        child = _new_seg(segs, _total_of(segs) - inner)
        child.layers.append("Unknown")


def _total_of(segs: list[Segment]) -> int:
    """Wire length of the whole frame (the first segment starts at offset 0)."""
    return segs[0].length


def _mpls(b: bytes, off: int, seg: Segment, segs: list[Segment]) -> None:
    seg.layers.append("MPLS")
    while True:
        if len(b) - off < 4:
            raise DecodeError("truncated")
        lse = _U32.unpack_from(b, off)[0]
        off += 4
        if seg.net_id == 0 and not seg.net_proto:
            seg.net_id = lse >> 12
        if lse & 0x100:  # bottom of stack
            break
    if len(b) - off < 1:
        raise DecodeError("truncated")
    child = _new_seg(segs, _total_of(segs) - off)
    v = b[off] >> 4
    if v == 4:
        _ipv4(b, off, child, segs)
    elif v == 6:
        _ipv6(b, off, child, segs)
    else:  # Ethernet over MPLS (pseudo-wire, control word 0)
        segs.pop()
        start = off + 4 if v == 0 else off
        _ethernet(b, start, _total_of(segs), segs)
