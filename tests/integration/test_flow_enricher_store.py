"""The flow tables on a real ClickHouse (the embedded store, or NETSONDE_CLICKHOUSE_URL): migrations, columnar
inserts through FlowWriter, idempotency of redelivered batches, and rows back to Skydive's JSON."""

from __future__ import annotations

import time
from typing import Iterator

import pytest

from netsonde.common import flowschema as fs
from netsonde.common.bus.flows import Flow, FlowLayer, FlowMetric, FlowUpdateBatch, RawPacket, TCPMetric
from netsonde.common.clickhouse import connect
from netsonde.flow_enricher.writer import FlowWriter

T0 = (int(time.time()) - 3600) * 1000  # recent: rows older than the TTL are dropped at insert


def make_flow(i: int, tid: str = "tid-1", **kw: object) -> Flow:
    base = dict(
        UUID=f"{i:016x}", LayersPath="Ethernet/IPv4/TCP", Application="TCP", TrackingID=f"t{i % 7}",
        L3TrackingID=f"l{i}", NodeTID=tid, Start=T0 + i, Last=T0 + 1000 + i,
        Metric=FlowMetric(ABPackets=10, ABBytes=1000, BAPackets=5, BABytes=500, Start=T0 + i, Last=T0 + 1000 + i),
        LastUpdateMetric=FlowMetric(ABPackets=2, ABBytes=200, BAPackets=1, BABytes=100, Start=T0 + i,
                                    Last=T0 + 1000 + i),
        Link=FlowLayer("ETHERNET", "02:00:00:00:00:01", "02:00:00:00:00:02"),
        Network=FlowLayer("IPV4", f"10.0.0.{i % 250}", "10.0.1.1"),
        Transport=FlowLayer("TCP", 40000 + i, 80),
    )
    base.update(kw)
    return Flow(**base)  # type: ignore[arg-type]


@pytest.fixture
def writer(clickhouse_url: str, unique: str) -> Iterator[FlowWriter]:
    w = FlowWriter(clickhouse_url, f"fe_{unique}")
    assert w.migrate(ttl_days=3) == len(fs.MIGRATIONS)
    yield w
    client = connect(clickhouse_url, "default")
    client.command(f"DROP DATABASE IF EXISTS `fe_{unique}`")
    client.close()
    w.close()


def query(w: FlowWriter, sql: str, **params: object) -> list[dict[str, object]]:
    client = connect(w.url, w.database)
    try:
        res = client.query(sql, parameters=params)
        return [dict(zip(res.column_names, row)) for row in res.result_rows]
    finally:
        client.close()


def test_migrations_create_tables_with_keys_partitions_and_ttl(writer: FlowWriter) -> None:
    assert writer.migrate(ttl_days=3) == 0  # recorded: a second start applies nothing
    rows = query(writer, "SELECT name, engine, sorting_key, partition_key FROM system.tables "
                         "WHERE database = {db:String} ORDER BY name", db=writer.database)
    by = {r["name"]: r for r in rows}
    assert set(by) >= {"flows", "flow_metrics", "flow_raw_packets", "schema_migrations"}
    assert by["flows"]["engine"] == "ReplacingMergeTree"
    assert str(by["flows"]["sorting_key"]).startswith("NodeTID")
    assert "toYYYYMMDD" in str(by["flows"]["partition_key"])
    create = query(writer, "SHOW CREATE TABLE flows")[0]
    assert "toIntervalDay(3)" in str(next(iter(create.values())))


def test_insert_and_read_back_as_skydive_flows(writer: FlowWriter) -> None:
    pkt = RawPacket(Timestamp=T0 + 5, Index=0, Data=b"\x01\x02\x03", LinkType=1)
    flows = [make_flow(i) for i in range(20)]
    flows[0] = make_flow(0, TCPMetric=TCPMetric(ABSynStart=T0), Extra={"DNS": {"ID": 7}}, LastRawPackets=[pkt],
                         NodeID="node-1", ANodeID="node-a", BNodeID="node-b", Host="h1")
    batch = FlowUpdateBatch(host="h1", batch_id="b-1", ts=T0, flows=flows)
    assert writer.insert(fs.batches_to_columns([batch])) == 20
    rows = query(writer, f"SELECT * FROM flows FINAL WHERE UUID = {{u:String}} {fs.LATEST_BY_UUID}",
                 u=flows[0].UUID)
    assert len(rows) == 1
    out = fs.row_to_flow(rows[0])
    assert out["Network"] == {"Protocol": "IPV4", "A": "10.0.0.0", "B": "10.0.1.1"}
    assert out["Transport"] == {"Protocol": "TCP", "A": 40000, "B": 80}
    assert out["Metric"]["ABBytes"] == 1000 and out["LastUpdateMetric"]["ABBytes"] == 200
    assert out["TCPMetric"]["ABSynStart"] == T0 and out["DNS"] == {"ID": 7}
    assert (out["NodeID"], out["ANodeID"], out["BNodeID"], out["Host"]) == ("node-1", "node-a", "node-b", "h1")
    # Network alone means A or B, as in Skydive: served by FIELD_TO_COLUMN
    a, b = fs.FIELD_TO_COLUMN["Network"]
    hits = query(writer, f"SELECT count() AS n FROM flows FINAL WHERE {a} = {{ip:String}} OR {b} = {{ip:String}}",
                 ip="10.0.1.1")
    assert hits[0]["n"] == 20
    raw = query(writer, "SELECT UUID, Data FROM flow_raw_packets FINAL")
    assert len(raw) == 1 and raw[0]["UUID"] == flows[0].UUID
    assert raw[0]["Data"] in (b"\x01\x02\x03", "\x01\x02\x03")  # String: bytes or str per client settings
    m = query(writer, "SELECT sum(ABBytes) AS ab, count() AS n FROM flow_metrics FINAL")
    assert m[0] == {"ab": 200 * 20, "n": 20}


def test_redelivered_batches_do_not_double_count(writer: FlowWriter) -> None:
    """A batch stored, then redelivered (lost ack) and stored again, grouped with other batches differently:
    the counts and sums read through FINAL are those of one copy."""
    b1 = FlowUpdateBatch(host="h1", batch_id="b-1", ts=T0, flows=[make_flow(i) for i in range(100)])
    b2 = FlowUpdateBatch(host="h1", batch_id="b-2", ts=T0, flows=[make_flow(i) for i in range(100, 150)])
    # the next update of the first 10 flows (same UUIDs, later Last): a new row each, not a replacement
    b3 = FlowUpdateBatch(host="h1", batch_id="b-3", ts=T0 + 2000,
                         flows=[make_flow(i, Last=T0 + 2000 + i, LastUpdateMetric=FlowMetric(
                             ABPackets=2, ABBytes=200, Start=T0 + 1000 + i, Last=T0 + 2000 + i)) for i in range(10)])
    writer.insert(fs.batches_to_columns([b1]))
    writer.insert(fs.batches_to_columns([b2, b1]))  # b1 redelivered, in another insert
    writer.insert(fs.batches_to_columns([b3]))
    writer.insert(fs.batches_to_columns([b3, b2]))
    totals = query(writer, "SELECT count() AS n, sum(LastUpdateMetricABBytes) AS ab, uniqExact(UUID) AS u "
                           "FROM flows FINAL")[0]
    assert totals == {"n": 160, "ab": 160 * 200, "u": 150}
    raw_count = query(writer, "SELECT count() AS n FROM flows")[0]["n"]
    assert raw_count >= 160  # duplicates may still sit in unmerged parts: FINAL is what hides them
    m = query(writer, "SELECT count() AS n, sum(ABPackets) AS p FROM flow_metrics FINAL")[0]
    assert m == {"n": 160, "p": 160 * 2}
    latest = query(writer, f"SELECT UUID, Last FROM flows FINAL WHERE UUID = {{u:String}} {fs.LATEST_BY_UUID}",
                   u=make_flow(3).UUID)
    assert latest == [{"UUID": make_flow(3).UUID, "Last": T0 + 2003}]
    # after a forced merge the duplicates are physically gone too
    client = connect(writer.url, writer.database)
    client.command("OPTIMIZE TABLE flows FINAL")
    client.close()
    assert query(writer, "SELECT count() AS n FROM flows")[0]["n"] == 160


def test_c_path_rows_equal_python_path_rows(clickhouse_url: str, unique: str) -> None:
    """The same messages through the C hot path (Native blocks) and the Python path (columns) give the same
    rows in every table."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).parents[1] / "unit"))
    from test_flow_enricher_pipeline import graph, varied_messages

    from netsonde.flow_enricher import pipeline
    from netsonde.flow_enricher.lookup import EndpointLookup

    lk = EndpointLookup()
    lk.load(graph())
    msgs = varied_messages()
    writers = [FlowWriter(clickhouse_url, f"fe_{unique}_{kind}") for kind in ("c", "py")]
    try:
        for w, fast in zip(writers, (True, False)):
            w.migrate(ttl_days=0)  # the varied flows carry tiny timestamps: no TTL here
            assert w.insert_processed(pipeline.process(msgs, lk, fast=fast)) == 23
        for table, key in (("flows", "UUID, Last, BatchID"), ("flow_metrics", "UUID, Start, Last"),
                           ("flow_raw_packets", "UUID, Timestamp, Index")):
            # StoredAt is the server's insert time (DEFAULT now()), not a value either path writes
            c_rows, py_rows = ([{k: v for k, v in r.items() if k != "StoredAt"} for r in
                                query(w, f"SELECT * FROM {table} FINAL ORDER BY {key}")] for w in writers)
            assert c_rows == py_rows, table
            assert c_rows
        row = query(writers[0], "SELECT * FROM flows FINAL WHERE ICMPType = 'ECHO'")[0]
        assert row["TCPMetric"] == {"ABSynStart": 5, "BARstStart": 2**40}
        assert row["MetricABBytes"] == 2**63 + 5 and row["SamplingRate"] == 512 and row["NodeID"] == "lo-2"
        assert fs.row_to_flow(row)["DNS"]["Questions"] == ["é.example", 'q"uote']
    finally:
        client = connect(clickhouse_url, "default")
        for w in writers:
            client.command(f"DROP DATABASE IF EXISTS `{w.database}`")
            w.close()
        client.close()
