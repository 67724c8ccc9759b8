"""sFlow v5 datagram decoder (reference implementation, pure Python).

Follows the sFlow v5 specification (sflow.org/sflow_version_5.txt): XDR encoding, big-endian, every
opaque padded to 4 bytes. Decodes the datagram header (IPv4 and IPv6 agent addresses), flow samples and
expanded flow samples, counter samples and expanded counter samples, and these records:

- flow records: raw packet header (1), Ethernet frame data (2), IPv4 data (3), IPv6 data (4), extended
  switch (1001), extended router (1002), extended gateway (1003);
- counter records: generic interface (1), Ethernet interface (2), OpenFlow port (1004), port name (1005).

Any other sample or record type is kept as `UnknownRecord(format, length)` and skipped by its length,
never guessed. Every length and count is checked against the bytes that remain, so a bad datagram raises
`SFlowDecodeError(reason)` (reason is a short metric label) before any allocation proportional to a
claimed count. The hot path of the collector uses the C scanner in `_fastsflow` instead; this module is
the readable reference the tests hold it against, and decodes counter samples (rare) for the service.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass, field

__all__ = [
    "SFlowDecodeError", "Datagram", "FlowSample", "CounterSample", "RawPacketHeader", "EthernetFrameData",
    "IPv4Data", "IPv6Data", "ExtendedSwitch", "ExtendedRouter", "ExtendedGateway", "GenericInterfaceCounters",
    "EthernetInterfaceCounters", "OpenFlowPort", "PortName", "UnknownRecord", "decode_datagram",
    "REASONS",
]

REASONS = ("version", "truncated", "length", "count", "address_type")
"""Every `SFlowDecodeError.reason` value (metric labels)."""

MAX_SAMPLES = 4096
"""A count larger than the datagram could hold is rejected anyway; this is a cap on top (64 KiB / 16 B)."""

_U32 = struct.Struct(">I")
_2U32 = struct.Struct(">II")
_HDR = struct.Struct(">IIII")
_FLOW = struct.Struct(">IIIIIIII")
_XFLOW = struct.Struct(">IIIIIIIIIII")
_CNT = struct.Struct(">III")
_XCNT = struct.Struct(">IIII")
_GENERIC = struct.Struct(">IIQIIQIIIIIIQIIIIII")
_ETHER = struct.Struct(">13I")


class SFlowDecodeError(ValueError):
    """The datagram is malformed; `reason` is one of REASONS."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass(slots=True)
class RawPacketHeader:
    """Flow record 1: the first bytes of the sampled frame."""

    protocol: int
    """1 = Ethernet, 11 = IPv4, 12 = IPv6, ... (header_protocol enum)."""
    frame_length: int
    """Length of the original frame on the wire (before sampling truncated it)."""
    stripped: int
    header: bytes


@dataclass(slots=True)
class EthernetFrameData:
    length: int
    src_mac: str
    dst_mac: str
    type: int


@dataclass(slots=True)
class _IPData:
    """The fields flow records 3 (IPv4 data) and 4 (IPv6 data) share."""

    length: int
    protocol: int
    src_ip: str
    dst_ip: str
    src_port: int
    dst_port: int
    tcp_flags: int


@dataclass(slots=True)
class IPv4Data(_IPData):
    """Flow record 3."""

    tos: int


@dataclass(slots=True)
class IPv6Data(_IPData):
    """Flow record 4."""

    priority: int


@dataclass(slots=True)
class ExtendedSwitch:
    src_vlan: int
    src_priority: int
    dst_vlan: int
    dst_priority: int


@dataclass(slots=True)
class ExtendedRouter:
    next_hop: str
    src_mask_len: int
    dst_mask_len: int


@dataclass(slots=True)
class ExtendedGateway:
    next_hop: str
    as_number: int
    src_as: int
    src_peer_as: int
    as_path: list[tuple[int, list[int]]]
    """(segment type 1=set 2=sequence, AS numbers) per segment."""
    communities: list[int]
    local_pref: int


@dataclass(slots=True)
class GenericInterfaceCounters:
    """Counter record 1 (RFC 2233 ifTable counters)."""

    if_index: int
    if_type: int
    if_speed: int
    if_direction: int
    if_status: int
    in_octets: int
    in_ucast_pkts: int
    in_multicast_pkts: int
    in_broadcast_pkts: int
    in_discards: int
    in_errors: int
    in_unknown_protos: int
    out_octets: int
    out_ucast_pkts: int
    out_multicast_pkts: int
    out_broadcast_pkts: int
    out_discards: int
    out_errors: int
    promiscuous_mode: int


@dataclass(slots=True)
class EthernetInterfaceCounters:
    """Counter record 2 (RFC 2358 dot3Stats)."""

    alignment_errors: int
    fcs_errors: int
    single_collision_frames: int
    multiple_collision_frames: int
    sqe_test_errors: int
    deferred_transmissions: int
    late_collisions: int
    excessive_collisions: int
    internal_mac_transmit_errors: int
    carrier_sense_errors: int
    frame_too_longs: int
    internal_mac_receive_errors: int
    symbol_errors: int


@dataclass(slots=True)
class OpenFlowPort:
    """Counter record 1004: which OpenFlow datapath and port the counters are for (OVS sends it)."""

    datapath_id: int
    port_no: int


@dataclass(slots=True)
class PortName:
    """Counter record 1005: the port's name (OVS sends it)."""

    name: str


@dataclass(slots=True)
class UnknownRecord:
    """A sample or record type this decoder does not know: skipped by its length."""

    enterprise: int
    format: int
    length: int


FlowRecord = RawPacketHeader | EthernetFrameData | IPv4Data | IPv6Data | ExtendedSwitch | ExtendedRouter | \
    ExtendedGateway | UnknownRecord
CounterRecord = GenericInterfaceCounters | EthernetInterfaceCounters | OpenFlowPort | PortName | UnknownRecord


@dataclass(slots=True)
class _SampleHeader:
    """The fields flow and counter samples share (the compact formats normalised to the expanded ones)."""

    expanded: bool
    sequence: int
    source_id_type: int
    source_id_index: int


@dataclass(slots=True)
class FlowSample(_SampleHeader):
    """Flow sample (format 1) or expanded flow sample (format 3)."""

    sampling_rate: int
    sample_pool: int
    drops: int
    input_format: int
    input: int
    """ifIndex of the input interface (0 = unknown); with input_format 0."""
    output_format: int
    output: int
    records: list[FlowRecord] = field(default_factory=list)


@dataclass(slots=True)
class CounterSample(_SampleHeader):
    """Counter sample (format 2) or expanded counter sample (format 4)."""

    records: list[CounterRecord] = field(default_factory=list)


@dataclass(slots=True)
class Datagram:
    version: int
    agent: str
    """Agent address, as text (IPv4 or IPv6)."""
    sub_agent_id: int
    sequence: int
    uptime_ms: int
    samples: list[FlowSample | CounterSample | UnknownRecord]


def _mac(b: bytes) -> str:
    return b.hex(":")


def _need(off: int, n: int, end: int, what: str) -> None:
    if off + n > end:
        raise SFlowDecodeError("truncated", what)


def _address(buf: bytes, off: int, end: int) -> tuple[str, int]:
    if off + 4 > end:
        raise SFlowDecodeError("truncated", "address type")
    (atype,) = _U32.unpack_from(buf, off)
    off += 4
    if atype == 1:
        if off + 4 > end:
            raise SFlowDecodeError("truncated", "IPv4 address")
        return str(ipaddress.IPv4Address(buf[off:off + 4])), off + 4
    if atype == 2:
        if off + 16 > end:
            raise SFlowDecodeError("truncated", "IPv6 address")
        return str(ipaddress.IPv6Address(buf[off:off + 16])), off + 16
    if atype == 0:
        return "", off
    raise SFlowDecodeError("address_type", str(atype))


def _ip_data(cls: type[IPv4Data] | type[IPv6Data], addr: type[ipaddress.IPv4Address] | type[ipaddress.IPv6Address],
             n: int, buf: bytes, off: int, end: int, what: str) -> IPv4Data | IPv6Data:
    """Flow records 3 and 4: length, protocol, two `n`-byte addresses, ports, TCP flags, TOS/priority."""
    _need(off, 8 + 2 * n + 16, end, what)
    ln, proto = _2U32.unpack_from(buf, off)
    src, dst, ports = off + 8, off + 8 + n, off + 8 + 2 * n
    sp, dp, flags, last = _HDR.unpack_from(buf, ports)
    return cls(ln, proto, str(addr(buf[src:dst])), str(addr(buf[dst:ports])), sp, dp, flags, last)


def _count(n: int, min_size: int, off: int, end: int, what: str) -> None:
    """A claimed count must fit in the bytes left (each item at least `min_size` bytes)."""
    if n > MAX_SAMPLES or n * min_size > end - off:
        raise SFlowDecodeError("count", f"{what} {n}")


def _flow_record(fmt: int, buf: bytes, off: int, end: int) -> FlowRecord:
    enterprise, format_ = fmt >> 12, fmt & 0xFFF
    length = end - off
    if enterprise == 0:
        if format_ == 1:
            _need(off, 16, end, "raw header")
            proto, frame_length, stripped, hlen = _HDR.unpack_from(buf, off)
            if hlen > length - 16:
                raise SFlowDecodeError("length", "raw header length")
            return RawPacketHeader(proto, frame_length, stripped, bytes(buf[off + 16:off + 16 + hlen]))
        if format_ == 2:
            _need(off, 24, end, "ethernet frame data")
            (flen,) = _U32.unpack_from(buf, off)
            (etype,) = _U32.unpack_from(buf, off + 20)
            return EthernetFrameData(flen, _mac(buf[off + 4:off + 10]), _mac(buf[off + 12:off + 18]), etype)
        if format_ == 3:
            return _ip_data(IPv4Data, ipaddress.IPv4Address, 4, buf, off, end, "ipv4 data")
        if format_ == 4:
            return _ip_data(IPv6Data, ipaddress.IPv6Address, 16, buf, off, end, "ipv6 data")
        if format_ == 1001:
            _need(off, 16, end, "extended switch")
            return ExtendedSwitch(*_HDR.unpack_from(buf, off))
        if format_ == 1002:
            nh, p = _address(buf, off, end)
            _need(p, 8, end, "extended router")
            return ExtendedRouter(nh, *_2U32.unpack_from(buf, p))
        if format_ == 1003:
            nh, p = _address(buf, off, end)
            _need(p, 16, end, "extended gateway")
            as_number, src_as, src_peer_as, nseg = _HDR.unpack_from(buf, p)
            p += 16
            _count(nseg, 8, p, end, "as path segments")
            path: list[tuple[int, list[int]]] = []
            for _ in range(nseg):
                _need(p, 8, end, "as path segment")
                stype, n = _2U32.unpack_from(buf, p)
                p += 8
                _count(n, 4, p, end, "as path length")
                path.append((stype, list(struct.unpack_from(f">{n}I", buf, p))))
                p += 4 * n
            _need(p, 4, end, "communities")
            (ncomm,) = _U32.unpack_from(buf, p)
            p += 4
            _count(ncomm, 4, p, end, "communities")
            comms = list(struct.unpack_from(f">{ncomm}I", buf, p))
            p += 4 * ncomm
            _need(p, 4, end, "local pref")
            (local_pref,) = _U32.unpack_from(buf, p)
            return ExtendedGateway(nh, as_number, src_as, src_peer_as, path, comms, local_pref)
    return UnknownRecord(enterprise, format_, length)


def _counter_record(fmt: int, buf: bytes, off: int, end: int) -> CounterRecord:
    enterprise, format_ = fmt >> 12, fmt & 0xFFF
    if enterprise == 0:
        if format_ == 1:
            _need(off, _GENERIC.size, end, "generic counters")
            return GenericInterfaceCounters(*_GENERIC.unpack_from(buf, off))
        if format_ == 2:
            _need(off, _ETHER.size, end, "ethernet counters")
            return EthernetInterfaceCounters(*_ETHER.unpack_from(buf, off))
        if format_ == 1004:
            _need(off, 12, end, "openflow port")
            hi, lo, port = _CNT.unpack_from(buf, off)
            return OpenFlowPort(hi << 32 | lo, port)
        if format_ == 1005:
            _need(off, 4, end, "port name")
            (n,) = _U32.unpack_from(buf, off)
            if n > end - off - 4:
                raise SFlowDecodeError("length", "port name")
            return PortName(bytes(buf[off + 4:off + 4 + n]).decode("utf-8", "replace"))
    return UnknownRecord(enterprise, format_, end - off)


def _records(buf: bytes, off: int, end: int, n: int, flow: bool) -> list:  # type: ignore[type-arg]
    _count(n, 8, off, end, "records")
    out = []
    for _ in range(n):
        _need(off, 8, end, "record header")
        fmt, length = _2U32.unpack_from(buf, off)
        off += 8
        if length > end - off:
            raise SFlowDecodeError("length", "record length past the sample")
        rec_end = off + length
        out.append(_flow_record(fmt, buf, off, rec_end) if flow else _counter_record(fmt, buf, off, rec_end))
        off = rec_end
    return out


def decode_datagram(data: bytes) -> Datagram:
    """Decode one sFlow v5 datagram completely. Raises SFlowDecodeError on any malformation."""
    buf = bytes(data)
    end = len(buf)
    _need(0, 8, end, "datagram header")
    (version,) = _U32.unpack_from(buf, 0)
    if version != 5:
        raise SFlowDecodeError("version", str(version))
    agent, off = _address(buf, 4, end)
    _need(off, 16, end, "datagram header")
    sub_agent, seq, uptime, nsamples = _HDR.unpack_from(buf, off)
    off += 16
    _count(nsamples, 8, off, end, "samples")
    samples: list[FlowSample | CounterSample | UnknownRecord] = []
    for _ in range(nsamples):
        _need(off, 8, end, "sample header")
        fmt, length = _2U32.unpack_from(buf, off)
        off += 8
        if length > end - off:
            raise SFlowDecodeError("length", "sample length past the datagram")
        s_end = off + length
        enterprise, format_ = fmt >> 12, fmt & 0xFFF
        if enterprise == 0 and format_ == 1:
            _need(off, _FLOW.size, s_end, "flow sample")
            sq, src, rate, pool, drops, inp, outp, nrec = _FLOW.unpack_from(buf, off)
            # compact form: top 2 bits = format (0 ifIndex, 1 discarded, 2 multiple), rest = value
            samples.append(FlowSample(False, sq, src >> 24, src & 0xFFFFFF, rate, pool, drops,
                                      inp >> 30, inp & 0x3FFFFFFF, outp >> 30, outp & 0x3FFFFFFF,
                                      _records(buf, off + _FLOW.size, s_end, nrec, True)))
        elif enterprise == 0 and format_ == 3:
            _need(off, _XFLOW.size, s_end, "expanded flow sample")
            sq, st, si, rate, pool, drops, inf, inv, outf, outv, nrec = _XFLOW.unpack_from(buf, off)
            samples.append(FlowSample(True, sq, st, si, rate, pool, drops, inf, inv, outf, outv,
                                      _records(buf, off + _XFLOW.size, s_end, nrec, True)))
        elif enterprise == 0 and format_ == 2:
            _need(off, _CNT.size, s_end, "counter sample")
            sq, src, nrec = _CNT.unpack_from(buf, off)
            samples.append(CounterSample(False, sq, src >> 24, src & 0xFFFFFF,
                                         _records(buf, off + _CNT.size, s_end, nrec, False)))
        elif enterprise == 0 and format_ == 4:
            _need(off, _XCNT.size, s_end, "expanded counter sample")
            sq, st, si, nrec = _XCNT.unpack_from(buf, off)
            samples.append(CounterSample(True, sq, st, si, _records(buf, off + _XCNT.size, s_end, nrec, False)))
        else:
            samples.append(UnknownRecord(enterprise, format_, length))
        off = s_end
    return Datagram(version, agent, sub_agent, seq, uptime, samples)
