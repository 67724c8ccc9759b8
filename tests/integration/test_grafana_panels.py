"""Every ClickHouse panel of the Grafana dashboard, run on a real ClickHouse engine (the embedded store) over flows
and graph revisions written by Netsonde's own writers: the rows must be exactly those the data implies.

Grafana's macros are expanded as the ClickHouse data source expands them (`$__timeFilter(c)` ->
`c >= toDateTime(s) AND c <= toDateTime(s)`, `$__fromTime_ms` -> `fromUnixTimestamp64Milli(ms)`,
`$__timeInterval(c)` -> `toStartOfInterval(toDateTime(c), INTERVAL n second)`)."""

from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from netsonde.cli import grafana
from netsonde.common import flowschema as fs
from netsonde.common.bus.flows import Flow, FlowLayer, FlowMetric, FlowUpdateBatch
from netsonde.common.bus.graph import GraphElement
from netsonde.common.clickhouse import connect, run_migrations
from netsonde.flow_enricher.writer import FlowWriter
from netsonde.graph_builder.builder import Revision
from netsonde.graph_builder.history import RevisionWriter
from netsonde.graph_builder.schema import MIGRATIONS as GRAPH_MIGRATIONS

ROOT = Path(__file__).resolve().parents[2]
T0 = (int(time.time()) // 60 - 120) * 60 * 1000  # two hours ago, on a minute: the interval buckets start at T0
FROM_MS, TO_MS, INTERVAL_S = T0 - 60_000, T0 + 600_000, 60


def expand_macros(sql: str) -> str:
    """The ClickHouse data source's macro expansion, for the dashboard range [FROM_MS, TO_MS]."""
    sql = re.sub(r"\$__timeFilter\(([^()]*)\)",
                 lambda m: f"{m[1]} >= toDateTime({FROM_MS // 1000}) AND {m[1]} <= toDateTime({TO_MS // 1000})", sql)
    sql = re.sub(r"\$__timeInterval\(((?:[^()]|\([^()]*\))*)\)",
                 lambda m: f"toStartOfInterval(toDateTime({m[1]}), INTERVAL {INTERVAL_S} second)", sql)
    sql = sql.replace("$__fromTime_ms", f"fromUnixTimestamp64Milli({FROM_MS})")
    sql = sql.replace("$__toTime_ms", f"fromUnixTimestamp64Milli({TO_MS})")
    assert "$__" not in sql, f"a macro the test does not expand: {sql}"
    return sql


def metric(ab_p: int, ab_b: int, ba_p: int, ba_b: int, start: int, last: int) -> FlowMetric:
    return FlowMetric(ABPackets=ab_p, ABBytes=ab_b, BAPackets=ba_p, BABytes=ba_b, Start=start, Last=last)


def flow(uuid: str, tid: str, app: str, a: str, b: str, transport: FlowLayer | None, total: FlowMetric,
         delta: FlowMetric) -> Flow:
    return Flow(UUID=uuid, LayersPath="Ethernet/IPv4", Application=app, TrackingID=f"t-{uuid}",
                L3TrackingID=f"l-{uuid}", NodeTID=tid, Start=total.Start, Last=total.Last, Metric=total,
                LastUpdateMetric=delta, Link=FlowLayer("ETHERNET", "02:00:00:00:00:01", "02:00:00:00:00:02"),
                Network=FlowLayer("IPV4", a, b), Transport=transport)


def node(ident: str, rev: int, created: int, updated: int, meta: dict[str, Any], deleted: int | None = None
         ) -> Revision:
    return Revision("node", GraphElement(ID=ident, Metadata=meta, Host="h1", Origin="probe-topology",
                                         CreatedAt=created, UpdatedAt=updated, Revision=rev, DeletedAt=deleted))


@pytest.fixture
def database(clickhouse_url: str, unique: str) -> Iterator[str]:
    db = f"gf_{unique}"
    flows = FlowWriter(clickhouse_url, db)
    flows.migrate(ttl_days=0)
    run_migrations(clickhouse_url, db, "graph-builder", GRAPH_MIGRATIONS)
    f1_first = flow("f1", "tid-a", "HTTP", "10.0.0.1", "10.0.0.2", FlowLayer("TCP", 40000, 80),
                    metric(4, 400, 2, 200, T0, T0 + 1000), metric(4, 400, 2, 200, T0, T0 + 1000))
    f1_next = flow("f1", "tid-a", "HTTP", "10.0.0.1", "10.0.0.2", FlowLayer("TCP", 40000, 80),
                   metric(10, 1000, 5, 500, T0, T0 + 61_000), metric(6, 600, 3, 300, T0 + 1000, T0 + 61_000))
    f2 = flow("f2", "tid-b", "DNS", "10.0.0.3", "10.0.0.1", FlowLayer("UDP", 5353, 53),
              metric(3, 300, 2, 200, T0, T0 + 2000), metric(3, 300, 2, 200, T0, T0 + 2000))
    f3 = flow("f3", "tid-a", "ICMPv4", "10.0.0.2", "10.0.0.3", None,
              metric(1, 100, 1, 100, T0, T0 + 3000), metric(1, 100, 1, 100, T0, T0 + 3000))
    before = flow("f4", "tid-a", "SSH", "10.9.9.9", "10.0.0.1", FlowLayer("TCP", 40001, 22),
                  metric(50, 5000, 50, 5000, T0 - 7_200_000, T0 - 7_100_000),
                  metric(50, 5000, 50, 5000, T0 - 7_200_000, T0 - 7_100_000))
    batches = [FlowUpdateBatch(host="h1", batch_id="b1", ts=T0, flows=[f1_first, f2, f3, before]),
               FlowUpdateBatch(host="h1", batch_id="b2", ts=T0 + 61_000, flows=[f1_next])]
    assert flows.insert(fs.batches_to_columns(batches)) == 5
    flows.close()

    history = RevisionWriter(clickhouse_url, db)
    history.add([
        node("n1", 1, T0, T0, {"TID": "tid-a", "Name": "eth-a", "MTU": 1500}),
        node("n2", 1, T0 + 5000, T0 + 5000, {"TID": "tid-b", "Name": "veth-b"}),
        node("n1", 2, T0, T0 + 10_000, {"TID": "tid-a", "Name": "eth-a", "MTU": 9000}),
        Revision("edge", GraphElement(ID="e1", Metadata={"RelationType": "layer2"}, Host="h1",
                                      Origin="probe-topology", CreatedAt=T0 + 20_000, UpdatedAt=T0 + 20_000,
                                      Revision=1, Parent="n1", Child="n2")),
        node("n2", 2, T0 + 5000, T0 + 70_000, {"TID": "tid-b", "Name": "veth-b"}, deleted=T0 + 70_000),
        node("n3", 1, T0 - 7_200_000, T0 - 7_200_000, {"TID": "tid-old", "Name": "old"}),  # out of range
    ])
    assert history.flush() == 6
    yield db
    admin = connect(clickhouse_url, "default")
    admin.command(f"DROP DATABASE IF EXISTS `{db}`")
    admin.close()


def run_panel(url: str, db: str, title: str) -> list[tuple[Any, ...]]:
    panel = next(p for p in grafana.SQL_PANELS if p.title == title)
    sql = expand_macros(panel.sql)
    if panel.format == grafana.FORMAT_TIME_SERIES:  # the time column as Unix seconds, to compare exactly
        sql = f"SELECT toUnixTimestamp(time) AS t, * EXCEPT (time) FROM ({sql}) ORDER BY ALL"
    client = connect(url, db)
    try:
        return [tuple(row) for row in client.query(sql).result_rows]
    finally:
        client.close()


def test_top_talkers(clickhouse_url: str, database: str) -> None:
    # f1 A=.1 sent 1000 B/10 p, B=.2 sent 500/5; f2 A=.3 sent 300/3, B=.1 sent 200/2; f3 .2 100/1, .3 100/1;
    # f4 is out of the range
    assert run_panel(clickhouse_url, database, "Top talkers") == [
        ("10.0.0.1", 1200, 12, 2), ("10.0.0.2", 600, 6, 2), ("10.0.0.3", 400, 4, 2)]


def test_bytes_and_packets_per_interface(clickhouse_url: str, database: str) -> None:
    t0 = T0 // 1000
    # minute 0: f1's first update (600 B, 6 p) + f3 (200 B, 2 p) on eth-a, f2 (500 B, 5 p) on veth-b;
    # minute 1: f1's second update (900 B, 9 p) on eth-a. Names come from the graph history.
    assert run_panel(clickhouse_url, database, "Bytes per interface") == [
        (t0, "eth-a", 800), (t0, "veth-b", 500), (t0 + 60, "eth-a", 900)]
    assert run_panel(clickhouse_url, database, "Packets per interface") == [
        (t0, "eth-a", 8), (t0, "veth-b", 5), (t0 + 60, "eth-a", 9)]


def test_flows_per_protocol_and_application(clickhouse_url: str, database: str) -> None:
    assert run_panel(clickhouse_url, database, "Flows per protocol") == [("IPV4", 1), ("TCP", 1), ("UDP", 1)]
    assert run_panel(clickhouse_url, database, "Flows per application") == [
        ("DNS", 1, 500), ("HTTP", 1, 1500), ("ICMPv4", 1, 200)]


def test_topology_changes(clickhouse_url: str, database: str) -> None:
    t0 = T0 // 1000
    assert run_panel(clickhouse_url, database, "Topology changes") == [
        (t0, "edge added", 1), (t0, "node added", 2), (t0, "node updated", 1), (t0 + 60, "node deleted", 1)]


def test_every_sql_panel_is_tested_and_in_the_dashboard() -> None:
    tested = {"Top talkers", "Bytes per interface", "Packets per interface", "Flows per protocol",
              "Flows per application", "Topology changes"}
    assert {p.title for p in grafana.SQL_PANELS} == tested
    board = grafana.build_dashboard()
    sql_by_title = {p["title"]: [t.get("rawSql") for t in p["targets"]] for p in board["panels"]}
    for p in grafana.SQL_PANELS:
        assert sql_by_title[p.title] == [p.sql]
    drops = next(p for p in board["panels"] if p["title"] == "Drops per stage")
    assert [t["legendFormat"] for t in drops["targets"]] == list(grafana.DROP_STAGES)


def test_committed_dashboards_equal_the_generated_ones() -> None:
    for name, text in grafana.dashboard_files().items():
        committed = (ROOT / "deploy/grafana/dashboards" / name).read_text()
        assert committed == text, f"deploy/grafana/dashboards/{name} is stale: python -m netsonde.cli.grafana " \
                                  "deploy/grafana"
        assert json.loads(committed)["uid"] == grafana.DASHBOARD_UID


def test_preview_picture(clickhouse_url: str, database: str) -> None:
    """With NETSONDE_GRAFANA_PREVIEW=<png>, draw what the ClickHouse panels return on the test data (matplotlib,
    requirements-dev.txt): the picture of docs/grafana.md. Not a Grafana screenshot: no Grafana server runs here."""
    target = os.environ.get("NETSONDE_GRAFANA_PREVIEW")
    results = {p.title: run_panel(clickhouse_url, database, p.title) for p in grafana.SQL_PANELS}
    assert all(results.values()), f"a panel returned nothing: {results}"
    if not target:
        return
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    fig.suptitle("Netsonde overview panels: the rows their SQL returns on the embedded store (test data; "
                 "not a Grafana screenshot)", fontsize=11)
    t0 = T0 // 1000
    for ax, panel in zip(axes.flat, grafana.SQL_PANELS, strict=True):
        rows = results[panel.title]
        ax.set_title(panel.title, fontsize=10)
        if panel.format == grafana.FORMAT_TIME_SERIES:
            names = sorted({r[1] for r in rows})
            width = 0.8 / len(names)
            for i, series in enumerate(names):  # one bar per series in each 60 s bucket
                points = [((r[0] - t0) // 60 + i * width, r[2]) for r in rows if r[1] == series]
                bars = ax.bar([p[0] for p in points], [p[1] for p in points], width=width, label=series)
                ax.bar_label(bars, fontsize=8)
            ax.set_xticks([0 + 0.4 - width / 2, 1 + 0.4 - width / 2], ["T0", "T0 + 60 s"])
            ax.legend(fontsize=8)
        else:
            labels = [str(r[0]) for r in rows]
            ax.barh(labels, [r[1] for r in rows])
            ax.invert_yaxis()
            for y, r in enumerate(rows):
                ax.text(r[1], y, " " + ", ".join(str(v) for v in r[1:]), va="center", fontsize=8)
    fig.tight_layout()
    fig.savefig(target, dpi=80)
