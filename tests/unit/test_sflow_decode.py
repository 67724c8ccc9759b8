"""sFlow v5 decoding: real OVS datagrams, crafted datagrams for every record kind, bad input and a fuzz test.

The reference decoder (`decode.decode_datagram`) and the C scanner (`_fastsflow.scan`) must agree on every
input: both accept it, or both reject it with the same reason.
"""

from __future__ import annotations

import gzip
import ipaddress
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netsonde.flow.sflow import _fastsflow
from netsonde.flow.sflow.decode import (
    REASONS, CounterSample, Datagram, EthernetFrameData, EthernetInterfaceCounters, ExtendedGateway,
    ExtendedRouter, ExtendedSwitch, FlowSample, GenericInterfaceCounters, IPv4Data, IPv6Data, OpenFlowPort,
    PortName, RawPacketHeader, SFlowDecodeError, UnknownRecord, decode_datagram,
)

SLICE = Path(__file__).resolve().parents[1] / "data" / "sflow-ovs-slice.bin.gz"


def load_slice() -> list[bytes]:
    data = gzip.decompress(SLICE.read_bytes())
    out, off = [], 0
    while off < len(data):
        (n,) = struct.unpack_from(">I", data, off)
        out.append(data[off + 4:off + 4 + n])
        off += 4 + n
    return out


DATAGRAMS = load_slice()


# --- a small XDR builder for crafted datagrams ---------------------------------------------------------
def u32(*v: int) -> bytes:
    return struct.pack(f">{len(v)}I", *v)


def u64(v: int) -> bytes:
    return struct.pack(">Q", v)


def opaque(b: bytes) -> bytes:
    return u32(len(b)) + b + b"\0" * (-len(b) % 4)


def address(ip: str) -> bytes:
    a = ipaddress.ip_address(ip)
    return u32(1 if a.version == 4 else 2) + a.packed


def record(fmt: int, body: bytes) -> bytes:
    return u32(fmt, len(body)) + body


def datagram(agent: str, samples: list[bytes], seq: int = 7, sub_agent: int = 3, uptime: int = 1234) -> bytes:
    return u32(5) + address(agent) + u32(sub_agent, seq, uptime, len(samples)) + b"".join(samples)


def flow_sample(records: list[bytes], rate: int = 100, inp: int = 5, outp: int = 6, expanded: bool = False) -> bytes:
    if expanded:
        body = u32(11, 0, 42, rate, 1000, 2, 0, inp, 0, outp, len(records))
        return record(3, body + b"".join(records))
    body = u32(11, (0 << 24) | 42, rate, 1000, 2, inp, outp, len(records))
    return record(1, body + b"".join(records))


def counter_sample(records: list[bytes], index: int = 5, expanded: bool = False) -> bytes:
    if expanded:
        return record(4, u32(9, 0, index, len(records)) + b"".join(records))
    return record(2, u32(9, index, len(records)) + b"".join(records))


ETH_ICMP = bytes.fromhex("0a0000000002" "0a0000000001" "0800" "450000540001400040010000" "0a620001" "0a620002"
                         "0800f7ff00010001") + b"x" * 20


def generic_counters(if_index: int = 5, in_octets: int = 1000, out_octets: int = 2000) -> bytes:
    return record(1, u32(if_index, 6) + u64(10_000_000_000) + u32(1, 3) + u64(in_octets) + u32(10, 1, 2, 0, 0, 0)
                  + u64(out_octets) + u32(20, 3, 4, 0, 0, 1))


def assert_agree(data: bytes) -> Datagram | None:
    """Both decoders accept or reject `data` alike; returns the decoded datagram or None."""
    reason, nflow, ncounter, agent = _fastsflow.scan(data)
    try:
        dg = decode_datagram(data)
    except SFlowDecodeError as e:
        assert e.reason in REASONS
        assert reason == e.reason, (reason, e.reason)
        return None
    assert reason is None
    assert nflow == sum(isinstance(s, FlowSample) for s in dg.samples)
    assert ncounter == sum(isinstance(s, CounterSample) for s in dg.samples)
    assert (str(ipaddress.ip_address(agent)) if agent else "") == dg.agent
    return dg


# --- real datagrams ------------------------------------------------------------------------------------
def test_real_ovs_datagrams_decode() -> None:
    assert len(DATAGRAMS) == 263
    flow = counter = headers = 0
    for data in DATAGRAMS:
        dg = assert_agree(data)
        assert dg is not None and dg.version == 5 and dg.agent == "127.0.0.1"
        for s in dg.samples:
            if isinstance(s, FlowSample):
                flow += 1
                assert s.sampling_rate == 1 and s.input > 0
                kinds = {type(r) for r in s.records}
                assert kinds == {RawPacketHeader, ExtendedSwitch}
                raw = next(r for r in s.records if isinstance(r, RawPacketHeader))
                assert raw.protocol == 1 and raw.stripped == 4 and 0 < len(raw.header) <= 128
                assert raw.frame_length >= len(raw.header)
                headers += 1
            elif isinstance(s, CounterSample):
                counter += 1
    assert flow == headers > 1000
    assert counter >= 9


def test_first_real_datagram_fields() -> None:
    dg = decode_datagram(DATAGRAMS[0])
    s = dg.samples[0]
    assert isinstance(s, FlowSample)
    assert (dg.sequence, s.sequence, s.input, s.output_format, s.output) == (1, 1, 195, 2, 2)
    raw = s.records[1]
    assert isinstance(raw, RawPacketHeader)
    assert raw.frame_length == 74 and raw.header[:6] == bytes.fromhex("333300000002")


def test_real_counter_samples() -> None:
    seen = 0
    for data in DATAGRAMS:
        for s in decode_datagram(data).samples:
            if isinstance(s, CounterSample) and any(isinstance(r, GenericInterfaceCounters) for r in s.records):
                g = next(r for r in s.records if isinstance(r, GenericInterfaceCounters))
                e = next(r for r in s.records if isinstance(r, EthernetInterfaceCounters))
                of = next(r for r in s.records if isinstance(r, OpenFlowPort))
                name = next(r for r in s.records if isinstance(r, PortName))
                assert g.if_index == s.source_id_index and g.in_ucast_pkts >= 0 and e.fcs_errors >= 0
                assert of.port_no > 0 and name.name
                seen += 1
    assert seen >= 9


# --- crafted datagrams: every record kind ---------------------------------------------------------------
def test_ipv6_agent_expanded_samples_and_all_flow_records() -> None:
    records = [
        record(1, u32(1, 102, 4, len(ETH_ICMP)) + ETH_ICMP + b"\0" * (-len(ETH_ICMP) % 4)),
        record(2, u32(98) + bytes.fromhex("0a0000000001") + b"\0\0" + bytes.fromhex("0a0000000002") + b"\0\0"
               + u32(0x0800)),
        record(3, u32(84, 1) + ipaddress.ip_address("10.98.0.1").packed + ipaddress.ip_address("10.98.0.2").packed
               + u32(0, 0, 0, 0)),
        record(4, u32(104, 58) + ipaddress.ip_address("fd00::1").packed + ipaddress.ip_address("fd00::2").packed
               + u32(0, 0, 0, 3)),
        record(1001, u32(10, 1, 20, 2)),
        record(1002, address("fe80::1") + u32(24, 16)),
        record(1003, address("192.0.2.1") + u32(65000, 65001, 65002, 2) + u32(2, 2, 65010, 65011) + u32(1, 1, 65020)
               + u32(2, 0x10001, 0x10002) + u32(100)),
        record((9 << 12) | 1, b"vendor"[:4]),
    ]
    data = datagram("2001:db8::7", [flow_sample(records, rate=256, inp=5, outp=0x40000000 | 7, expanded=True)])
    dg = assert_agree(data)
    assert dg is not None
    assert (dg.agent, dg.sub_agent_id, dg.sequence, dg.uptime_ms) == ("2001:db8::7", 3, 7, 1234)
    s = dg.samples[0]
    assert isinstance(s, FlowSample) and s.expanded
    assert (s.sampling_rate, s.sample_pool, s.drops, s.input, s.source_id_index) == (256, 1000, 2, 5, 42)
    raw, eth, v4, v6, sw, rt, gw, unk = s.records
    assert raw == RawPacketHeader(1, 102, 4, ETH_ICMP)
    assert eth == EthernetFrameData(98, "0a:00:00:00:00:01", "0a:00:00:00:00:02", 0x0800)
    assert v4 == IPv4Data(84, 1, "10.98.0.1", "10.98.0.2", 0, 0, 0, 0)
    assert v6 == IPv6Data(104, 58, "fd00::1", "fd00::2", 0, 0, 0, 3)
    assert sw == ExtendedSwitch(10, 1, 20, 2)
    assert rt == ExtendedRouter("fe80::1", 24, 16)
    assert gw == ExtendedGateway("192.0.2.1", 65000, 65001, 65002, [(2, [65010, 65011]), (1, [65020])],
                                 [0x10001, 0x10002], 100)
    assert unk == UnknownRecord(9, 1, 4)


def test_compact_sample_interface_formats_and_counters() -> None:
    data = datagram("192.0.2.9", [
        flow_sample([record(1, u32(1, 102, 4, len(ETH_ICMP)) + ETH_ICMP + b"\0" * (-len(ETH_ICMP) % 4))],
                    rate=10, inp=3, outp=0x80000002),
        counter_sample([generic_counters(3), record(2, u32(*range(13))), record(1004, u64(0xABCD) + u32(4)),
                        record(1005, opaque(b"port-x"))], index=3),
        counter_sample([generic_counters(4)], index=4, expanded=True),
        record(7, b"\0" * 12),  # unknown sample format: skipped by its length
    ])
    dg = assert_agree(data)
    assert dg is not None
    fs, cs, xcs, unk = dg.samples
    assert isinstance(fs, FlowSample) and not fs.expanded
    assert (fs.input_format, fs.input, fs.output_format, fs.output) == (0, 3, 2, 2)
    assert isinstance(cs, CounterSample) and isinstance(xcs, CounterSample) and xcs.expanded
    g, e, of, name = cs.records
    assert isinstance(g, GenericInterfaceCounters)
    assert (g.if_index, g.if_speed, g.if_status, g.in_octets, g.in_ucast_pkts, g.out_octets, g.out_ucast_pkts,
            g.promiscuous_mode) == (3, 10_000_000_000, 3, 1000, 10, 2000, 20, 1)
    assert e == EthernetInterfaceCounters(*range(13))
    assert of == OpenFlowPort(0xABCD, 4) and name == PortName("port-x")
    assert unk == UnknownRecord(0, 7, 12)


# --- bad input ------------------------------------------------------------------------------------------
def test_every_truncation_of_a_real_datagram_is_rejected_cleanly() -> None:
    data = DATAGRAMS[0]
    for n in range(len(data)):
        with pytest.raises(SFlowDecodeError) as exc:
            decode_datagram(data[:n])
        assert exc.value.reason in ("truncated", "length", "count")
        assert _fastsflow.scan(data[:n])[0] == exc.value.reason


@pytest.mark.parametrize("data,reason", [
    (u32(4) + address("10.0.0.1") + u32(0, 1, 2, 0), "version"),
    (u32(5, 9) + b"\0" * 40, "address_type"),
    (u32(5) + address("10.0.0.1") + u32(0, 1, 2, 0xFFFFFFFF), "count"),
    (u32(5) + address("10.0.0.1") + u32(0, 1, 2, 1) + u32(1, 0xFFFFFFF0), "length"),
    (datagram("10.0.0.1", [record(1, u32(1, 2, 3, 4, 5, 6, 7, 0x7FFFFFFF))]), "count"),
    (datagram("10.0.0.1", [record(1, u32(1, 2, 3, 4, 5, 6, 7, 1) + u32(1, 16) + u32(1, 100, 4, 1000))]), "length"),
    (datagram("10.0.0.1", [record(2, u32(1, 2, 1) + u32(1, 8) + u32(0, 0))]), "truncated"),
    (datagram("10.0.0.1", [flow_sample([record(1003, address("10.0.0.2") + u32(1, 2, 3, 0x10000000))])]), "count"),
    (b"", "truncated"),
])
def test_bad_datagrams(data: bytes, reason: str) -> None:
    with pytest.raises(SFlowDecodeError) as exc:
        decode_datagram(data)
    assert exc.value.reason == reason
    assert _fastsflow.scan(data, {})[0] == reason


def test_scanner_aggregates_nothing_from_a_bad_datagram() -> None:
    good = DATAGRAMS[0]
    bad = good[:-3]  # the last sample is cut: the whole datagram is dropped, earlier samples included
    agg: dict[bytes, list] = {}  # type: ignore[type-arg]
    assert _fastsflow.scan(bad, agg)[0] is not None
    assert agg == {}
    assert _fastsflow.scan(good, agg)[0] is None and agg


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_random_bytes(data: bytes) -> None:
    assert_agree(u32(5) + data)
    assert_agree(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(DATAGRAMS[:40]), st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=6),
       st.integers(0, 2000))
def test_fuzz_mutated_real_datagrams(data: bytes, flips: list[tuple[int, int]], cut: int) -> None:
    buf = bytearray(data)
    for pos, val in flips:
        if buf:
            buf[pos % len(buf)] = val
    mutated = bytes(buf[:len(buf) - cut % (len(buf) + 1)])
    assert_agree(mutated)
    agg: dict[bytes, list] = {}  # type: ignore[type-arg]
    _fastsflow.scan(mutated, agg)
    for v in agg.values():
        assert v[0] >= 1 and len(v[1]) <= len(mutated)
