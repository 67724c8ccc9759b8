"""The flow storage schema: field map, migrations, columnar builders and the way back to Skydive's JSON."""

from __future__ import annotations

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from netsonde.common import flowschema as fs
from netsonde.common.bus.flows import (Flow, FlowLayer, FlowMetric, FlowUpdateBatch, ICMPLayer, IPMetric, RawPacket,
                                       TCPMetric)


def make_flow(i: int = 0, **kw: object) -> Flow:
    base = dict(
        UUID=f"u{i}", LayersPath="Ethernet/IPv4/TCP", Application="TCP", TrackingID=f"t{i}", L3TrackingID=f"l{i}",
        NodeTID="tid-1", Start=1_700_000_000_000 + i, Last=1_700_000_001_000 + i,
        Metric=FlowMetric(ABPackets=10, ABBytes=1000, BAPackets=5, BABytes=500, Start=1, Last=2, RTT=3000),
        LastUpdateMetric=FlowMetric(ABPackets=1, ABBytes=100, Start=1, Last=2),
        Link=FlowLayer("ETHERNET", "02:00:00:00:00:01", "02:00:00:00:00:02", 0),
        Network=FlowLayer("IPV4", "10.0.0.1", "10.0.0.2", 0),
        Transport=FlowLayer("TCP", 40000 + i, 80, 0),
    )
    base.update(kw)
    return Flow(**base)  # type: ignore[arg-type]


def test_field_map_covers_skydive_paths() -> None:
    m = fs.FIELD_TO_COLUMN
    assert m["Network.A"] == ("NetworkA",)
    assert m["Transport.B"] == ("TransportB",)
    assert m["Metric.ABBytes"] == ("MetricABBytes",)
    assert m["LastUpdateMetric.Last"] == ("LastUpdateMetricLast",)
    assert m["ICMP.Type"] == ("ICMPType",)
    assert m["Network"] == ("NetworkA", "NetworkB")
    assert m["Link"] == ("LinkA", "LinkB")
    assert m["Transport"] == ("TransportA", "TransportB")
    assert m["TCPMetric.ABSynStart"] == ("TCPMetric['ABSynStart']",)
    for path in ("UUID", "TrackingID", "L3TrackingID", "ParentUUID", "NodeTID", "CaptureID", "LayersPath",
                 "Application", "Start", "Last", "FinishType", "SamplingRate", "NodeID", "ANodeID", "BNodeID",
                 "Host", "Link.Protocol", "Link.ID", "Network.Protocol", "Network.ID", "Transport.Protocol",
                 "Transport.ID", "ICMP.Code", "ICMP.ID", "Metric.RTT", "Metric.Start", "Metric.Last"):
        assert path in m, path
    names = set(fs.FLOW_COLUMN_NAMES)
    for exprs in m.values():
        for e in exprs:
            assert e in names or e.startswith(("TCPMetric[", "IPMetric[")) or \
                e in {x for x, _ in fs.EXTRA_FIELDS.values()}, e


def test_column_types_for_parameters() -> None:
    assert fs.column_type("NodeTID") == "String"
    assert fs.column_type("MetricABBytes") == "UInt64"
    assert fs.column_type("TransportA") == "Int64"
    assert fs.column_type("TCPMetric['ABSynStart']") == "Int64"


def test_migrations_are_ordered_and_ttl_is_configurable() -> None:
    ms = fs.migrations(7)
    assert [m.version for m in ms] == sorted({m.version for m in ms})
    sql = " ".join(s for m in ms for s in m.statements)
    assert "INTERVAL 7 DAY" in sql and "ReplacingMergeTree" in sql and "PARTITION BY toYYYYMMDD" in sql
    assert "{db}.flows " in sql and "{db}.flow_metrics " in sql and "{db}.flow_raw_packets " in sql
    assert "TTL" not in " ".join(s for m in fs.migrations(0) for s in m.statements)
    assert [s for s in fs.ttl_statements("x", 3) if "INTERVAL 3 DAY" in s and "`x`.flows" in s]
    assert all("REMOVE TTL" in s for s in fs.ttl_statements("x", 0))


def test_columns_have_every_column_in_order_and_equal_lengths() -> None:
    flows = [make_flow(i) for i in range(5)] + [make_flow(9, Link=None, Network=None, Transport=None,
                                                           ICMP=ICMPLayer("ECHO", 0, 7))]
    cols = fs.flows_to_columns(flows, "b1")
    assert tuple(cols) == fs.FLOW_COLUMN_NAMES
    assert {len(v) for v in cols.values()} == {6}
    assert cols["NetworkA"][:2] == ["10.0.0.1", "10.0.0.1"]
    assert cols["NetworkA"][5] == "" and cols["TransportA"][5] == 0 and cols["NetworkProtocol"][5] == ""
    assert cols["ICMPType"][5] == "ECHO" and cols["ICMPID"][5] == 7
    assert cols["BatchID"] == ["b1"] * 6
    assert cols["LastUpdateMetricABBytes"][0] == 100 and cols["MetricABBytes"][0] == 1000


def test_batches_to_columns_tags_rows_with_their_batch_and_fills_all_tables() -> None:
    pkt = RawPacket(Timestamp=5, Index=0, Data=b"\x00\x01", LinkType=1)
    b1 = FlowUpdateBatch(host="h", batch_id="b1", ts=1, flows=[make_flow(0), make_flow(1)])
    b2 = FlowUpdateBatch(host="h", batch_id="b2", ts=1,
                         flows=[make_flow(2, LastUpdateMetric=None, LastRawPackets=[pkt])])
    cols = fs.batches_to_columns([b1, b2])
    assert cols.rows == 3
    assert cols.flows["BatchID"] == ["b1", "b1", "b2"]
    assert tuple(cols.metrics) == fs.METRIC_COLUMN_NAMES
    assert cols.metrics["ABBytes"] == [100, 100, 1000]  # no LastUpdateMetric: falls back to Metric
    assert tuple(cols.raw_packets) == fs.RAW_PACKET_COLUMN_NAMES
    assert cols.raw_packets["UUID"] == ["u2"] and cols.raw_packets["Data"] == [b"\x00\x01"]


def test_row_to_flow_gives_skydive_json() -> None:
    f = make_flow(1, TCPMetric=TCPMetric(ABSynStart=11), Extra={"DNS": {"ID": 3}}, NodeID="n1", Host="h1")
    row = {k: v[0] for k, v in fs.flows_to_columns([f]).items()}
    out = fs.row_to_flow(row)
    assert out["Network"] == {"Protocol": "IPV4", "A": "10.0.0.1", "B": "10.0.0.2"}
    assert out["Transport"] == {"Protocol": "TCP", "A": 40001, "B": 80}
    assert out["Metric"]["ABBytes"] == 1000 and out["Metric"]["RTT"] == 3000
    assert out["TCPMetric"]["ABSynStart"] == 11
    assert out["DNS"] == {"ID": 3}
    assert out["NodeID"] == "n1" and out["Host"] == "h1"
    assert "ICMP" not in out and "ParentUUID" not in out
    # a partial row (a query selecting a few columns) gives a partial flow
    assert fs.row_to_flow({"UUID": "u", "NetworkProtocol": "IPV6", "NetworkA": "::1", "NetworkB": "::2",
                           "NetworkID": 0}) == {"UUID": "u", "Network": {"Protocol": "IPV6", "A": "::1", "B": "::2"}}


_text = st.text(alphabet="abcdef0123456789:./", max_size=12)
_u = st.integers(min_value=0, max_value=2**40)
_metric = st.builds(FlowMetric, ABPackets=_u, ABBytes=_u, BAPackets=_u, BABytes=_u, Start=_u, Last=_u, RTT=_u)
_layer_s = st.builds(FlowLayer, Protocol=st.sampled_from(["ETHERNET", "IPV4", "IPV6"]), A=_text, B=_text, ID=_u)
_layer_i = st.builds(FlowLayer, Protocol=st.sampled_from(["TCP", "UDP", "SCTP"]),
                     A=st.integers(0, 65535), B=st.integers(0, 65535), ID=_u)
_flow = st.builds(
    Flow, UUID=_text, LayersPath=_text, Application=_text, TrackingID=_text, L3TrackingID=_text, NodeTID=_text,
    Start=_u, Last=_u, Metric=_metric, LastUpdateMetric=st.none() | _metric, Link=st.none() | _layer_s,
    Network=st.none() | _layer_s, Transport=st.none() | _layer_i,
    ICMP=st.none() | st.builds(ICMPLayer, Type=st.sampled_from(["ECHO", "NEIGHBOR"]), Code=_u, ID=_u),
    TCPMetric=st.none() | st.builds(TCPMetric, ABSynStart=_u, BARstStart=_u),
    IPMetric=st.none() | st.builds(IPMetric, Fragments=_u), ParentUUID=_text, CaptureID=_text,
    FinishType=st.sampled_from(["NOT_FINISHED", "TIMEOUT", "TCP_FIN"]), SamplingRate=st.integers(0, 10_000),
    NodeID=_text, ANodeID=_text, BNodeID=_text, Host=_text)


@settings(max_examples=60, deadline=None)
@given(st.lists(_flow, min_size=1, max_size=5))
def test_columns_then_row_to_flow_round_trips(flows: list[Flow]) -> None:
    cols = fs.flows_to_columns(flows)
    for i, f in enumerate(flows):
        row = {k: v[i] for k, v in cols.items()}
        back = msgspec.convert(fs.row_to_flow(row), Flow)
        expected = msgspec.structs.replace(f, LastUpdateMetric=f.LastUpdateMetric or f.Metric)
        if expected.Link is not None and not expected.Link.Protocol:
            expected = msgspec.structs.replace(expected, Link=None)
        for key in ("TCPMetric", "IPMetric"):  # all-zero counters are stored as an empty map: absent
            value = getattr(expected, key)
            if value is not None and not any(msgspec.structs.astuple(value)):
                expected = msgspec.structs.replace(expected, **{key: None})
        assert back == expected
