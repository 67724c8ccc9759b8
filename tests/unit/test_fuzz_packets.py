"""Fuzzing the packet parser: the Python decoder, the C fast path (`_fastpath`, frames and TPACKET_V3 ring
blocks) and the pcap/pcapng reader, with hypothesis.

Inputs are random bytes and real frames (every encapsulation the decoder knows, built with scapy) with bytes
overwritten and tails cut. The contract: nothing raises out of the flow table (a bad frame is counted in
`decode_errors`), every frame is either a packet or a bad packet, the C fold and the reference decoder count
the same packets and bytes, a malformed ring block cannot make the C walker read outside it or loop, and the
memory the fuzz allocates stays bounded. Each test prints how many cases it ran.
"""

from __future__ import annotations

import struct
import time
import tracemalloc
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from scapy.all import GRE, ICMP, IP, TCP, UDP, Dot1Q, Ether, ICMPv6EchoRequest, IPv6, fragment, raw
from scapy.contrib.geneve import GENEVE
from scapy.contrib.mpls import MPLS
from scapy.layers.vxlan import VXLAN

from netsonde.flow import _fastpath
from netsonde.flow.decode import DecodeError, decode_ethernet, decode_ip
from netsonde.flow.pcap import PcapError, read_pcap
from netsonde.flow.table import FlowTable

FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
CASES: dict[str, int] = {}
"""Cases run per fuzz test, printed at the end of the module."""


def _count(name: str) -> None:
    CASES[name] = CASES.get(name, 0) + 1


@pytest.fixture(scope="module", autouse=True)
def _print_cases() -> Iterator[None]:
    yield
    print("\nfuzz cases (packets): " + ", ".join(f"{k}={v}" for k, v in sorted(CASES.items())))


def _seeds() -> list[bytes]:
    e = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    inner = Ether() / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(id=7)
    frames = [
        e / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(id=7),
        e / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1000, dport=80, flags="S"),
        e / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1000, dport=53) / b"dns?",
        e / Dot1Q(vlan=5) / Dot1Q(vlan=6) / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(),
        e / IPv6(src="fd00::1", dst="fd00::2") / ICMPv6EchoRequest(id=4),
        e / IP(src="192.168.0.1", dst="192.168.0.2") / UDP(dport=4789) / VXLAN(vni=9) / inner,
        e / IP(src="192.168.0.1", dst="192.168.0.2") / UDP(dport=6081) / GENEVE(vni=3, proto=0x6558) / inner,
        e / IP(src="192.168.0.1", dst="192.168.0.2") / GRE(key_present=1, key=5) / IP(dst="10.0.0.9") / UDP(),
        e / IP(src="192.168.0.1", dst="192.168.0.2") / GRE(proto=0x6558) / inner,
        e / MPLS(label=16, s=0) / MPLS(label=17) / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(),
    ]
    frags = fragment(IP(src="10.0.0.1", dst="10.0.0.2", id=77) / UDP() / (b"x" * 1200), fragsize=500)
    return [raw(f) for f in frames] + [raw(e / f) for f in frags]


SEEDS = _seeds()


@st.composite
def frames(draw: st.DrawFn) -> bytes:
    """A real frame with a few bytes overwritten and its tail cut, or random bytes."""
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=200))
    buf = bytearray(draw(st.sampled_from(SEEDS)))
    for pos, val in draw(st.lists(st.tuples(st.integers(0, 1500), st.integers(0, 255)), max_size=6)):
        buf[pos % len(buf)] = val
    return bytes(buf[: len(buf) - draw(st.integers(0, len(buf)))])


@FUZZ
@given(frames())
def test_decoder_raises_only_decode_errors_the_table_counts(frame: bytes) -> None:
    _count("decode")
    for decode in (decode_ethernet, decode_ip):
        try:
            segs = decode(frame)
        except (DecodeError, IndexError, struct.error):  # what FlowTable catches and counts
            continue
        assert segs and all(s.length >= 0 for s in segs)
    table = FlowTable("n")
    ok = table.process_frame(frame, 1)
    assert ok == (table.stats.bad_packets == 0)  # False exactly when counted as a bad packet
    table.process_ip_packet(frame, 1)
    assert sum(table.stats.decode_errors.values()) == table.stats.bad_packets <= 2
    table.updates(2)
    table.flush()


@FUZZ
@given(st.lists(frames(), min_size=1, max_size=30))
def test_c_fold_counts_like_the_reference_decoder(batch: list[bytes]) -> None:
    """The C fast path (per-header folding) and the full decoder see the same packets, bytes and errors."""
    _count("c_fold")
    items = [(f, 1_700_000_000_000_000_000 + i * 1000, len(f)) for i, f in enumerate(batch)]
    ref = FlowTable("n")
    ref.process_frames_reference(items)
    fast = FlowTable("n")
    fast.process_frames(items)
    fast.updates(1)
    ref.updates(1)
    assert (fast.stats.packets, fast.stats.bytes) == (ref.stats.packets, ref.stats.bytes)
    assert fast.stats.decode_errors == ref.stats.decode_errors
    assert ref.stats.packets + ref.stats.bad_packets == len(batch)
    aggs, slow, n = _fastpath.fold_frames(items)  # the stateless fold: every frame accounted once
    assert n == len(batch) and len(slow) <= len(batch)


def _block(frames_: list[bytes]) -> bytes:
    """A TPACKET_V3 block as the kernel writes it (block header, then 48-byte packet headers + frames)."""
    body = b""
    off = 48
    for i, f in enumerate(frames_):
        size = (48 + len(f) + 15) & ~15
        nxt = size if i < len(frames_) - 1 else 0
        hdr = struct.pack("=IIIIIIHHIIHH", nxt, 1_700_000_000, i, len(f), len(f), 0, 48, 0, 0, 0, 0, 0)
        body += (hdr + f).ljust(size, b"\0")
    return struct.pack("=IIIII", 2, 48, 0, len(frames_), off).ljust(48, b"\0") + body


@FUZZ
@given(st.lists(st.sampled_from(SEEDS), min_size=1, max_size=6),
       st.lists(st.tuples(st.integers(0, 8000), st.integers(0, 255)), max_size=10),
       st.integers(0, 8000), st.booleans())
def test_c_ring_walker_survives_malformed_blocks(seeds: list[bytes], flips: list[tuple[int, int]], cut: int,
                                                 wild_header: bool) -> None:
    """Header fields pointing anywhere (offsets, lengths, counts): no read outside the block, no endless walk."""
    _count("ring_block")
    buf = bytearray(_block(seeds))
    if wild_header:  # first-packet offset and packet count at their extremes
        struct.pack_into("=II", buf, 12, 0xFFFFFFFF, 0xFFFFFFF0 if flips else 48)
    for pos, val in flips:
        buf[pos % len(buf)] = val
    block = bytes(buf[: max(0, len(buf) - cut % (len(buf) + 1))])
    started = time.monotonic()
    for fold in (_fastpath.fold_block, _fastpath.Accumulator().fold_block):
        try:
            _aggs, slow, n = fold(block)
        except ValueError as exc:  # shorter than a block header
            assert len(block) < 48 and "too short" in str(exc)
            continue
        assert n <= len(block) // 48 and len(slow) <= n
        for frame, _ts, _wire, _vlan in slow:
            assert len(frame) <= len(block)
    assert time.monotonic() - started < 1.0


@st.composite
def pcaps(draw: st.DrawFn) -> bytes:
    """A pcap file of real frames, then damaged (or random bytes after a pcap/pcapng magic)."""
    if draw(st.booleans()):
        magic = draw(st.sampled_from([b"\xd4\xc3\xb2\xa1", b"\x0a\x0d\x0d\x0a", b"\xa1\xb2\xc3\xd4"]))
        return magic + draw(st.binary(max_size=300))
    records = b"".join(struct.pack("<IIII", 1, 2, len(f), len(f)) + f
                       for f in draw(st.lists(st.sampled_from(SEEDS), max_size=5)))
    buf = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1) + records)
    for pos, val in draw(st.lists(st.tuples(st.integers(0, 3000), st.integers(0, 255)), max_size=4)):
        buf[pos % len(buf)] = val
    return bytes(buf[: len(buf) - draw(st.integers(0, 40)) % (len(buf) + 1)])


@FUZZ
@given(pcaps())
def test_pcap_reader_rejects_with_pcap_error(data: bytes) -> None:
    """POST /api/pcap's parser: a damaged file is a PcapError (the API's 400) or its readable packets."""
    _count("pcap")
    table = FlowTable("n")
    try:
        for _ts_s, _ts_frac, wire, frame in read_pcap(data):
            assert len(frame) <= len(data)
            table.process_frame(frame, 1, wire)
    except PcapError:
        pass


def test_decoding_memory_stays_bounded() -> None:
    """20 000 damaged frames through one bounded flow table: the peak of new allocations stays small."""
    import random

    rnd = random.Random(12)
    table = FlowTable("n", max_entries=2000)
    held = 0
    tracemalloc.start()
    try:
        for i in range(20_000):
            buf = bytearray(rnd.choice(SEEDS))
            for _ in range(rnd.randint(1, 4)):
                buf[rnd.randrange(len(buf))] = rnd.randrange(256)
            table.process_frame(bytes(buf[: rnd.randint(0, len(buf))]), i)
            held = max(held, len(table.flows))
            if i % 5000 == 4999:
                table.expire(i + 10_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    CASES["memory_frames"] = 20_000
    print(f"\npacket fuzz memory: peak {peak / 1e6:.1f} MB for 20 000 frames, at most {held} flows held")
    assert 100 < held <= 2000
    assert peak < 10e6, peak
