"""The C SampleFold (the collector's hot path) against its readable reference (`fold.SampleFold`) and the
dict form of the scanner: same keys in the same order, same counts, headers, fields and timestamps."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netsonde.flow.sflow import _fastsflow
from netsonde.flow.sflow import collector as collector_mod
from netsonde.flow.sflow.collector import SFlowCollector
from netsonde.flow.sflow.decode import FlowSample, RawPacketHeader, decode_datagram
from netsonde.flow.sflow.fold import SampleFold

from tests.unit.test_sflow_decode import DATAGRAMS, ETH_ICMP, datagram, flow_sample, record, u32

TS = 1_700_000_000_000


def reference_rows(datagrams: list[bytes], first_ts_ns: int) -> list[tuple]:  # type: ignore[type-arg]
    """The Python fold fed with the keys the scanner's dict form gives each datagram (datagram i at ts+i)."""
    ref = SampleFold()
    for i, data in enumerate(datagrams):
        one: dict[bytes, list] = {}  # type: ignore[type-arg]
        assert _fastsflow.scan(data, one)[0] is None
        for key, (n, header, rate, frame_len, inp, out, agent, src, stripped, proto) in one.items():
            for _ in range(n):
                ref.add(key, header, rate, frame_len, inp, out, agent, src, stripped, proto, first_ts_ns + i)
    return ref.drain()


def test_c_fold_equals_the_reference_fold_and_the_dict_form() -> None:
    fold = _fastsflow.SampleFold()
    agg: dict[bytes, list] = {}  # type: ignore[type-arg]
    for i, data in enumerate(DATAGRAMS):
        assert _fastsflow.scan(data, fold, TS + i) == _fastsflow.scan(data, agg)
    assert len(fold) == len(agg) > 20
    rows = fold.drain()
    assert len(fold) == 0 and fold.drain() == []
    assert rows == reference_rows(DATAGRAMS, TS)
    assert [r[0] for r in rows] == list(agg)
    assert [list(r[1:11]) for r in rows] == list(agg.values())
    samples = sum(
        isinstance(s, FlowSample) and any(isinstance(r, RawPacketHeader) for r in s.records)
        for d in DATAGRAMS
        for s in decode_datagram(d).samples
    )
    assert sum(r[1] for r in rows) == samples
    # reused after a drain: the same rows again
    for i, data in enumerate(DATAGRAMS):
        _fastsflow.scan(data, fold, TS + i)
    assert fold.drain() == rows


def test_first_and_last_times_of_a_key() -> None:
    fold = _fastsflow.SampleFold()
    ping = datagram("10.0.0.1", [flow_sample([record(1, u32(1, 102, 4, len(ETH_ICMP)) + ETH_ICMP)])])
    for ts in (5_000, 3_000, 9_000):  # out of order: first is the first fed, last the latest
        assert _fastsflow.scan(ping, fold, ts)[0] is None
    (row,) = fold.drain()
    assert row[1] == 3 and row[2] == ETH_ICMP and row[3:7] == (100, 102, 5, 6) and row[11:] == (5_000, 9_000)


def test_flows_start_and_last_are_the_feed_times() -> None:
    c = SFlowCollector()
    ping = datagram("10.0.0.1", [flow_sample([record(1, u32(1, 102, 4, len(ETH_ICMP)) + ETH_ICMP)])])
    assert c.feed(ping, "127.0.0.1", TS) and c.feed(ping, "127.0.0.1", TS + 700)
    c.process(TS + 900)
    (flow,) = c.updates(TS + 1000)
    assert (flow.Start, flow.Last, flow.Metric.ABPackets) == (TS, TS + 700, 200)


def test_a_flood_of_keys_runs_the_flow_tables_early(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(collector_mod, "MAX_FOLD_KEYS", 8)
    small, ref = SFlowCollector(), SFlowCollector()
    for data in DATAGRAMS:
        small.feed(data, "127.0.0.1", TS)
        assert len(small._fold) < 8
        ref.feed(data, "127.0.0.1", TS)
    small.process(TS)
    monkeypatch.setattr(collector_mod, "MAX_FOLD_KEYS", 10**9)
    ref.process(TS)
    key = lambda f: (f.UUID, f.Metric.ABPackets, f.Metric.BAPackets, f.Metric.ABBytes, f.Metric.BABytes)  # noqa: E731
    assert sorted(map(key, small.updates(TS + 1))) == sorted(map(key, ref.updates(TS + 1)))


def test_scan_refuses_another_sink() -> None:
    for bad in ([], "x", SampleFold()):
        try:
            _fastsflow.scan(DATAGRAMS[0], bad, 0)
        except TypeError as e:
            assert "SampleFold" in str(e)
        else:
            raise AssertionError(f"{bad!r} accepted")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.sampled_from(DATAGRAMS[:40]),
    st.lists(st.tuples(st.integers(0, 2000), st.integers(0, 255)), max_size=6),
    st.integers(0, 2000),
)
def test_fuzz_mutated_datagrams_fold_like_the_dict(
    data: bytes, flips: list[tuple[int, int]], cut: int
) -> None:
    buf = bytearray(data)
    for pos, val in flips:
        if buf:
            buf[pos % len(buf)] = val
    mutated = bytes(buf[: len(buf) - cut % (len(buf) + 1)])
    fold = _fastsflow.SampleFold()
    agg: dict[bytes, list] = {}  # type: ignore[type-arg]
    assert _fastsflow.scan(mutated, fold, 7) == _fastsflow.scan(mutated, agg)
    assert [(r[0], list(r[1:11])) for r in fold.drain()] == list(agg.items())
