"""Kernel drop fields in the flow store (capture option DropReasons) on a real ClickHouse: migration 6 adds
the columns to tables created before it, both insert paths (flowschema's columns and the enricher's C
encoder) write them, and the rows come back as Skydive JSON with Metric.ABDrops/BADrops and DropReasons
(absent when zero)."""

from __future__ import annotations

from collections.abc import Iterator

import msgspec
import pytest

from netsonde.common import flowschema as fs
from netsonde.common.bus.flows import Flow, FlowMetric, FlowUpdateBatch
from netsonde.common.clickhouse import connect, run_migrations
from netsonde.flow_enricher import pipeline
from netsonde.flow_enricher.lookup import EndpointLookup
from netsonde.flow_enricher.writer import FlowWriter
from tests.integration.test_flow_enricher_store import T0, make_flow, query

DROP_COLUMNS = (
    "MetricABDrops",
    "MetricBADrops",
    "LastUpdateMetricABDrops",
    "LastUpdateMetricBADrops",
    "DropReasons",
)


@pytest.fixture
def old_tables(clickhouse_url: str, unique: str) -> Iterator[FlowWriter]:
    """Flow tables as migrations 1-5 left them before the drop columns existed."""
    db = f"fd_{unique}"
    run_migrations(clickhouse_url, db, fs.COMPONENT, fs.migrations(3)[:5])
    client = connect(clickhouse_url, db)
    for col in DROP_COLUMNS:
        client.command(f"ALTER TABLE flows DROP COLUMN {col}")
    for col in ("ABDrops", "BADrops"):
        client.command(f"ALTER TABLE flow_metrics DROP COLUMN {col}")
    client.close()
    w = FlowWriter(clickhouse_url, db)
    yield w
    client = connect(clickhouse_url, "default")
    client.command(f"DROP DATABASE IF EXISTS `{db}`")
    client.close()
    w.close()


def dropped_flow(i: int) -> Flow:
    return make_flow(
        i,
        Metric=FlowMetric(ABPackets=3, ABBytes=186, ABDrops=3, Start=T0, Last=T0 + 10),
        LastUpdateMetric=FlowMetric(ABPackets=1, ABBytes=62, ABDrops=1, Start=T0, Last=T0 + 10),
        DropReasons={"NO_SOCKET": 2, "NETFILTER_DROP": 1},
    )


def test_migration_6_adds_the_columns_and_both_paths_write_them(old_tables: FlowWriter) -> None:
    w = old_tables
    assert w.migrate(ttl_days=3) == 1  # only migration 6
    cols = {
        r["name"]: r["type"]
        for r in query(
            w,
            "SELECT name, type FROM system.columns WHERE database = {db:String} AND table = 'flows'",
            db=w.database,
        )
    }
    assert cols["DropReasons"] == "Map(LowCardinality(String), Int64)" and cols["MetricABDrops"] == "UInt64"
    plain = make_flow(2)
    batch = FlowUpdateBatch(host="h1", batch_id="b-py", ts=T0, flows=[dropped_flow(1), plain])
    assert w.insert(fs.batches_to_columns([batch])) == 2  # flowschema's column builders
    # the enricher's C encoder (msgpack -> Native blocks), as the service inserts
    c_batch = FlowUpdateBatch(host="h1", batch_id="b-c", ts=T0, flows=[dropped_flow(3), make_flow(4)])
    done = pipeline.process([msgspec.msgpack.encode(c_batch)], EndpointLookup(), fast=True)
    assert done.native and done.columns is None
    assert w.insert_processed(done) == 2
    rows = {r["UUID"]: fs.row_to_flow(r) for r in query(w, f"SELECT * FROM flows FINAL {fs.LATEST_BY_UUID}")}
    for with_drops, without in ((dropped_flow(1), plain), (dropped_flow(3), make_flow(4))):
        got = rows[with_drops.UUID]
        assert got["Metric"]["ABDrops"] == 3 and "BADrops" not in got["Metric"]
        assert got["LastUpdateMetric"]["ABDrops"] == 1
        assert got["DropReasons"] == {"NO_SOCKET": 2, "NETFILTER_DROP": 1}
        assert "DropReasons" not in rows[without.UUID] and "ABDrops" not in rows[without.UUID]["Metric"]
    metrics = query(w, "SELECT UUID, ABDrops, BADrops FROM flow_metrics FINAL ORDER BY UUID")
    assert [(m["UUID"], m["ABDrops"], m["BADrops"]) for m in metrics] == [
        (f"{i:016x}", 1 if i in (1, 3) else 0, 0) for i in range(1, 5)
    ]
    # on the bus a flow without drops carries neither field (omit_defaults): old consumers see no change
    assert set(msgspec.msgpack.decode(msgspec.msgpack.encode(plain), type=dict)) & {"DropReasons"} == set()
    assert "ABDrops" not in msgspec.msgpack.decode(msgspec.msgpack.encode(plain.Metric), type=dict)
