"""Skydive's extra layers (the `ExtraLayers` capture option): DNS, DHCPv4 and VRRPv2 fields of a flow.

Skydive fills `Flow.DNS`, `Flow.DHCPv4` and `Flow.VRRPv2` (`flow/layers/*.proto`, `flow/flow.go`) when the
capture's bitmask asks (VRRP=1, DNS=2, DHCPv4=4, all=255). The objects built here have the JSON shape of
Skydive's flows (its protobuf JSON names: `ID`, `QR`, `op_code`, `response_code`, `questions[].name` ...);
they travel in `Flow.Extra` under the layer name and come back at the top of the flow's JSON.

DNS: the last DNS message of the flow (Skydive updates it on every packet), over UDP, or over TCP when the
stream is reassembled (`ReassembleTCP`). DHCPv4 and VRRPv2: the first message of the flow, with the fields
Skydive fills. A message that does not parse is counted by the caller and leaves the flow's field as it was.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

VRRP = 1
DNS = 2
DHCPV4 = 4
ALL = 255
EXTRA_LAYER_NAMES = {"VRRP": VRRP, "DNS": DNS, "DHCPv4": DHCPV4}
"""Skydive's `extraLayersMap`: the names accepted in `ExtraLayers` lists."""

DNS_PORTS = frozenset({53, 5353})
DHCP_PORTS = frozenset({67, 68})
IPPROTO_VRRP = 112


Layer = dict[str, Any]
"""One decoded layer (or record) in Skydive's JSON shape."""


class LayerError(ValueError):
    """An application message that does not parse."""


def parse_extra_layers(value: int | str | list[str]) -> int:
    """The ExtraLayers bitmask from Skydive's forms: an int, or names ("DNS", ["DNS", "VRRP"], "DNS|VRRP")."""
    if isinstance(value, bool):
        raise ValueError(f"ExtraLayers must be a bitmask or layer names, not {value!r}")
    if isinstance(value, int):
        if value < 0 or value > ALL:
            raise ValueError(f"ExtraLayers {value} is not a bitmask of VRRP=1, DNS=2, DHCPv4=4 (or 255)")
        return value
    names = value.replace("|", ",").split(",") if isinstance(value, str) else value
    mask = 0
    for name in (n.strip() for n in names):
        if not name:
            continue
        if name not in EXTRA_LAYER_NAMES:
            raise ValueError(f"unknown extra layer {name!r}: expected {', '.join(EXTRA_LAYER_NAMES)}")
        mask |= EXTRA_LAYER_NAMES[name]
    return mask


# --- DNS -------------------------------------------------------------------------------------------------
_QTYPES = {
    1: "A",
    2: "NS",
    3: "MD",
    4: "MF",
    5: "CNAME",
    6: "SOA",
    7: "MB",
    8: "MG",
    9: "MR",
    10: "NULL",
    11: "WKS",
    12: "PTR",
    13: "HINFO",
    14: "MINFO",
    15: "MX",
    16: "TXT",
    28: "AAAA",
    33: "SRV",
    41: "OPT",
    255: "Unknown",
}
"""gopacket's DNSType names."""
_QCLASSES = {1: "IN", 2: "CS", 3: "CH", 4: "HS", 255: "Any"}
_OPCODES = {0: "Query", 1: "IQuery", 2: "Status", 4: "Notify", 5: "Update"}
_RCODES = {
    0: "No Error",
    1: "Format Error",
    2: "Server Failure",
    3: "Non-Existent Domain",
    4: "Not Implemented",
    5: "Query Refused",
    6: "Name Exists when it should not",
    7: "RR Set Exists when it should not",
    8: "RR Set that should exist does not",
    9: "Server Not Authoritative for zone",
    10: "Name not contained in zone",
}
"""gopacket's DNSResponseCode.String() values (what Skydive stores)."""


def _name(b: bytes, off: int, depth: int = 0) -> tuple[str, int]:
    """A (possibly compressed) domain name at `off`: (name, offset after it in the message)."""
    labels = []
    end = -1
    jumps = 0
    while True:
        if off >= len(b):
            raise LayerError("DNS name runs past the message")
        n = b[off]
        if n == 0:
            off += 1
            break
        if n & 0xC0 == 0xC0:
            if off + 1 >= len(b):
                raise LayerError("DNS name pointer truncated")
            if end < 0:
                end = off + 2
            off = ((n & 0x3F) << 8) | b[off + 1]
            jumps += 1
            if jumps > 32:
                raise LayerError("DNS name pointer loop")
            continue
        if n & 0xC0:
            raise LayerError("DNS label type not supported")
        labels.append(b[off + 1 : off + 1 + n].decode("ascii", "replace"))
        off += 1 + n
    return ".".join(labels), end if end >= 0 else off


def _record(b: bytes, off: int) -> tuple[Layer, int]:
    name, off = _name(b, off)
    if off + 10 > len(b):
        raise LayerError("DNS record truncated")
    typ, cls, ttl, rdlen = struct.unpack_from("!HHIH", b, off)
    off += 10
    rd = off
    if rd + rdlen > len(b):
        raise LayerError("DNS record data truncated")
    rr: Layer = {
        "name": name,
        "type": _QTYPES.get(typ, str(typ)),
        "class": _QCLASSES.get(cls, str(cls)),
        "TTL": ttl,
        "data_length": rdlen,
    }
    if typ == 1 and rdlen == 4:
        rr["IP"] = socket.inet_ntop(socket.AF_INET, b[rd : rd + 4])
    elif typ == 28 and rdlen == 16:
        rr["IP"] = socket.inet_ntop(socket.AF_INET6, b[rd : rd + 16])
    elif typ == 2:
        rr["NS"] = _name(b, rd)[0]
    elif typ == 5:
        rr["c_name"] = _name(b, rd)[0]
    elif typ == 12:
        rr["PTR"] = _name(b, rd)[0]
    elif typ == 15 and rdlen >= 3:
        rr["MX"] = {"preference": struct.unpack_from("!H", b, rd)[0], "name": _name(b, rd + 2)[0]}
    elif typ in (13, 16):
        txts, p = [], rd
        while p < rd + rdlen:
            n = b[p]
            txts.append(b[p + 1 : p + 1 + n].decode("utf-8", "replace"))
            p += 1 + n
        rr["TXTs"] = txts
    elif typ == 6:
        mname, p = _name(b, rd)
        rname, p = _name(b, p)
        if p + 20 > len(b):
            raise LayerError("DNS SOA truncated")
        serial, refresh, retry, expire, minimum = struct.unpack_from("!IIIII", b, p)
        rr["SOA"] = {
            "m_name": mname,
            "r_name": rname,
            "serial": serial,
            "refresh": refresh,
            "retry": retry,
            "expire": expire,
            "minimum": minimum,
        }
    elif typ == 33 and rdlen >= 7:
        prio, weight, port = struct.unpack_from("!HHH", b, rd)
        rr["SRV"] = {"priority": prio, "weight": weight, "port": port, "name": _name(b, rd + 6)[0]}
    else:
        return {}, rd + rdlen  # Skydive keeps only the record types it knows (OPT ... are dropped)
    return rr, rd + rdlen


def parse_dns(b: bytes, ts_ns: int) -> Layer:
    """Skydive's DNS object from one DNS message (UDP payload, or one TCP message without its length)."""
    if len(b) < 12:
        raise LayerError("DNS header truncated")
    ident, flags, qd, an, ns, ar = struct.unpack_from("!HHHHHH", b, 0)
    d: Layer = {
        "ID": ident,
        "QR": bool(flags & 0x8000),
        "op_code": _OPCODES.get((flags >> 11) & 0xF, "Unknown"),
        "AA": bool(flags & 0x0400),
        "TC": bool(flags & 0x0200),
        "RD": bool(flags & 0x0100),
        "RA": bool(flags & 0x0080),
        "z": (flags >> 4) & 0x7,
        "response_code": _RCODES.get(flags & 0xF, "Unknown"),
        "q_d_count": qd,
        "a_n_count": an,
        "n_s_count": ns,
        "a_r_count": ar,
    }
    off = 12
    questions = []
    for _ in range(qd):
        name, off = _name(b, off)
        if off + 4 > len(b):
            raise LayerError("DNS question truncated")
        typ, cls = struct.unpack_from("!HH", b, off)
        off += 4
        questions.append(
            {"name": name, "type": _QTYPES.get(typ, str(typ)), "class": _QCLASSES.get(cls, str(cls))}
        )
    if questions:
        d["questions"] = questions
    for key, count in (("answers", an), ("authorities", ns), ("additionals", ar)):
        rrs = []
        for _ in range(count):
            rr, off = _record(b, off)
            if rr:
                rrs.append(rr)
        if rrs:
            d[key] = rrs
    d["timestamp"] = {"seconds": ts_ns // 1_000_000_000, "nanos": ts_ns % 1_000_000_000}
    return {k: v for k, v in d.items() if v or k in ("ID",)}  # omitempty, as Skydive's JSON


# --- DHCPv4 and VRRPv2 -------------------------------------------------------------------------------------
def parse_dhcpv4(b: bytes) -> Layer:
    """The DHCPv4 fields Skydive fills (File, Flags, HardwareLen, HardwareOpts, ServerName, Secs) and Xid."""
    if len(b) < 236:
        raise LayerError("DHCPv4 message truncated")
    op, htype, hlen, hops, xid, secs, flags = struct.unpack_from("!BBBBIHH", b, 0)
    if op not in (1, 2):
        raise LayerError(f"DHCPv4 op {op} is neither request nor reply")
    d = {
        "hardware_len": hlen,
        "hardware_opts": hops,
        "xid": xid,
        "secs": secs,
        "flags": flags,
        "server_name": b[44:108].rstrip(b"\x00").decode("ascii", "replace"),
        "file": b[108:236].rstrip(b"\x00").decode("ascii", "replace"),
    }
    return {k: v for k, v in d.items() if v}


def parse_vrrpv2(b: bytes) -> Layer:
    """The VRRPv2 fields Skydive fills (Version, VirtualRtrID, Priority, AdverInt), plus CountIPAddr."""
    if len(b) < 8:
        raise LayerError("VRRP header truncated")
    version = b[0] >> 4
    if version != 2 or b[0] & 0x0F != 1:
        raise LayerError(f"not a VRRPv2 advertisement (version {version}, type {b[0] & 0x0F})")
    d = {"version": version, "virtual_rtrID": b[1], "priority": b[2], "count_ipaddr": b[3], "adver_int": b[5]}
    return {k: v for k, v in d.items() if v}
