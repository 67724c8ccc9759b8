"""Fuzzing the sFlow path beyond test_sflow_decode.py's byte-level fuzz (random bytes and damaged real OVS
datagrams, where the Python reference and the C scanner must agree): here hypothesis builds *well-formed*
sFlow v5 structure with random contents (samples of every kind, records of every known format and unknown ones,
raw headers of random or real frames, lengths sometimes lying), so the decoders are driven deep, and the whole
collector (scan, per-sender accounting, flow tables, interface counters) runs on it.

The contract: both decoders agree; `feed` never raises, returns False exactly for the datagrams it counts as
errors of their sender; `process`, `updates` and `counters` never raise; memory stays bounded under spoofed
senders, agents and interfaces.
"""

from __future__ import annotations

import tracemalloc
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netsonde.flow.sflow.collector import MAX_SENDERS, SFlowCollector
from tests.unit.test_sflow_decode import (
    DATAGRAMS, ETH_ICMP, address, assert_agree, counter_sample, datagram, flow_sample, generic_counters, opaque,
    record, u32, u64,
)

FUZZ = settings(max_examples=200, deadline=None, database=None, suppress_health_check=list(HealthCheck))
CASES: dict[str, int] = {}


@pytest.fixture(scope="module", autouse=True)
def _print_cases() -> Iterator[None]:
    yield
    print("\nfuzz cases (sflow): " + ", ".join(f"{k}={v}" for k, v in sorted(CASES.items())))


words = st.integers(0, 2**32 - 1)
small = st.integers(0, 70)
frames = st.sampled_from([ETH_ICMP, b"", ETH_ICMP[:20]]) | st.binary(max_size=128)


@st.composite
def flow_records(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 5))
    if kind == 0:  # raw packet header: protocol (1 Ethernet, 11 IPv4, 12 IPv6 or any), frame length, stripped
        frame = draw(frames)
        proto = draw(st.sampled_from([1, 11, 12]) | words)
        return record(1, u32(proto, draw(st.integers(0, 9000)), draw(small), len(frame)) + opaque(frame)[4:]
                      if draw(st.booleans()) else u32(proto, len(frame) + 4, 4) + opaque(frame))
    if kind == 1:  # extended switch
        return record(1001, u32(*draw(st.lists(words, min_size=4, max_size=4))))
    if kind == 2:  # extended router: next hop, masks
        return record(1002, address(draw(st.sampled_from(["10.0.0.1", "fd00::1"]))) + u32(draw(small), draw(small)))
    if kind == 3:  # extended gateway with an AS path of random length (the count may lie)
        return record(1003, address("10.0.0.2") + u32(1, 2, 3, draw(st.integers(0, 5)))
                      + u32(*draw(st.lists(words, max_size=6))))
    if kind == 4:  # IPv4 / IPv6 data records
        return record(draw(st.sampled_from([3, 4])), draw(st.binary(max_size=60)))
    return record(draw(words), draw(st.binary(max_size=40)))  # unknown enterprise/format


@st.composite
def counter_records(draw: st.DrawFn) -> bytes:
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return generic_counters(draw(words), draw(words), draw(words))
    if kind == 1:
        return record(2, u32(*draw(st.lists(words, min_size=13, max_size=13))))
    if kind == 2:  # port name, OpenFlow port
        name = draw(st.binary(max_size=40))
        return record(1005, opaque(name)) if draw(st.booleans()) else record(1004, u64(draw(words)) + u32(draw(words)))
    return record(draw(words), draw(st.binary(max_size=40)))


@st.composite
def datagrams(draw: st.DrawFn) -> bytes:
    samples = []
    for _ in range(draw(st.integers(0, 4))):
        expanded = draw(st.booleans())
        if draw(st.booleans()):
            recs = draw(st.lists(flow_records(), max_size=4))
            samples.append(flow_sample(recs, rate=draw(words), inp=draw(words), outp=draw(words), expanded=expanded))
        else:
            samples.append(counter_sample(draw(st.lists(counter_records(), max_size=4)), index=draw(words),
                                          expanded=expanded))
    if draw(st.integers(0, 9)) == 0:  # an unknown sample kind
        samples.append(record(draw(words), draw(st.binary(max_size=30))))
    agent = draw(st.sampled_from(["10.0.0.1", "192.168.1.1", "fd00::5"]))
    data = datagram(agent, samples, seq=draw(words), sub_agent=draw(words))
    cut = draw(st.integers(0, 12))
    return data[: len(data) - cut] if cut < 4 else data


def feed_checked(c: SFlowCollector, data: bytes, sender: str) -> bool:
    before = sum(sum(s.errors.values()) for s in c.stats.values())
    ok = c.feed(data, sender, 1000)
    after = sum(sum(s.errors.values()) for s in c.stats.values())
    assert after == before + (0 if ok else 1)
    return ok


@FUZZ
@given(datagrams())
def test_structured_datagrams_decode_alike_and_feed_the_collector(data: bytes) -> None:
    CASES["structured"] = CASES.get("structured", 0) + 1
    dg = assert_agree(data)
    c = SFlowCollector()
    ok = feed_checked(c, data, "10.9.9.9")
    assert ok == (dg is not None)
    CASES["structured_valid"] = CASES.get("structured_valid", 0) + ok
    c.process(2000)
    c.updates(3000)
    c.counters()


@FUZZ
@given(st.lists(st.tuples(st.sampled_from(DATAGRAMS[:20]), st.integers(0, 2000), st.integers(0, 255)),
                min_size=1, max_size=8))
def test_damaged_real_datagrams_through_the_collector(items: list[tuple[bytes, int, int]]) -> None:
    """A stream of real OVS datagrams, each with one byte overwritten: counted, flows built, nothing raised."""
    CASES["collector_stream"] = CASES.get("collector_stream", 0) + 1
    c = SFlowCollector()
    for i, (data, pos, val) in enumerate(items):
        buf = bytearray(data)
        buf[pos % len(buf)] = val
        feed_checked(c, bytes(buf), f"10.0.0.{i % 3}")
        c.process(1000 + i)
    c.updates(10_000)
    assert sum(s.datagrams for s in c.stats.values()) == len(items)


def test_structured_generator_reaches_valid_datagrams() -> None:
    """Most generated datagrams are well-formed, so the fuzz drives the record decoders, not only the header."""
    assert CASES.get("structured_valid", 0) > CASES.get("structured", 0) // 3


def test_memory_stays_bounded_under_spoofed_senders_and_garbage() -> None:
    """20 000 datagrams from 20 000 source addresses, a third of them malformed: per-sender state is capped."""
    import random

    rnd = random.Random(8)
    c = SFlowCollector(max_tables=64)
    tracemalloc.start()
    try:
        for i in range(20_000):
            data = bytearray(rnd.choice(DATAGRAMS))
            if i % 3 == 0:
                data[rnd.randrange(len(data))] = rnd.randrange(256)
            c.feed(bytes(data), f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}", i)
            if i % 500 == 0:
                c.process(i)
                c.updates(i)
                c.counters()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    CASES["memory_datagrams"] = 20_000
    print(f"\nsflow fuzz memory: peak {peak / 1e6:.1f} MB for 20 000 datagrams, {len(c.stats)} senders tracked")
    assert len(c.stats) <= MAX_SENDERS + 1 and len(c.tables) <= 64
    assert peak < 60e6, peak
