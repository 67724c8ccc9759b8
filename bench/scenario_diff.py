"""What changed / where packets are lost: `Diff`, `FlowPath` and `LossReport` on the embedded ClickHouse store.

- History: a 10 000-node / 20 000-edge graph (`small`: 1 000 / 2 000) created 3 h ago, then one hour of
  history: every node's counters refreshed every 5 minutes (12 revisions each, ignored by the diff), 10 % of
  the nodes with a real change (MTU), 1 % deleted, 1 % added. `G.Diff('-1h')` over the whole graph, and scoped
  to one host's interfaces (`V('n0').Descendants().Diff('-1h')`), the cache of nothing in between.
- Flows: 1 000 streams (`small`: 100) seen at 3 capture points each, 60 updates per flow (one a minute); one
  stream's path answer (`flow_path`, 2 queries + the path on the graph) and the loss report over 5 minutes.
Queries run in-process against the functions query-api calls, minus HTTP.
"""

from __future__ import annotations

import random
import statistics
import time
from typing import Any, Callable

from netsonde.common.bus.flows import Flow, FlowLayer, FlowMetric
from netsonde.common.clickhouse import connect, run_migrations
from netsonde.common.flowschema import COMPONENT as FLOW_COMPONENT
from netsonde.common.flowschema import migrations as flow_migrations
from netsonde.common.testing import start_store
from netsonde.gremlin import FlowStore, GremlinEngine, HistoryStore, QueryLimits
from tests import gremlin_testdata as td
from netsonde.gremlin.path import flow_path, loss_report
from netsonde.gremlin.traversal import GraphView

from .result import Result


def _median_ms(fn: Callable[[], Any], runs: int) -> tuple[float, float]:
    fn()  # warm-up
    lat = []
    for _ in range(runs):
        t = time.perf_counter()
        fn()
        lat.append((time.perf_counter() - t) * 1000)
    return statistics.median(lat), max(lat)


def _history_rows(g: Any, now: int, rnd: random.Random) -> tuple[list[dict[str, Any]], int, int, int]:
    rows = td.graph_revision_rows(g, updates_per_node=0)
    nodes = list(g.nodes.values())
    changed = deleted = added = 0
    for i, n in enumerate(nodes):
        rev = 1
        md = dict(n.Metadata)
        for k in range(12):  # counters every 5 minutes over the last hour
            rev += 1
            at = now - 3_600_000 + k * 300_000 + rnd.randrange(300_000)
            md = dict(md, LastUpdateMetric={"RxPackets": rev * 10, "Start": at - 300_000, "Last": at})
            if k == 6 and i % 10 == 0:
                md["MTU"] = 1400
                changed += 1
            dead = k == 11 and i % 100 == 1
            rows.append({"kind": "node", "id": n.ID, "revision": rev, "host": n.Host, "origin": n.Origin,
                         "created_at": n.CreatedAt, "updated_at": at, "deleted_at": at if dead else None,
                         "parent": "", "child": "", "metadata": md})
            if dead:
                deleted += 1
                break
    for j in range(len(nodes) // 100):
        added += 1
        rows.append({"kind": "node", "id": f"new{j}", "revision": 1, "host": "h0", "origin": "bench",
                     "created_at": now - 600_000, "updated_at": now - 600_000, "deleted_at": None, "parent": "",
                     "child": "", "metadata": {"Name": f"new-{j}", "Type": "veth", "MTU": 1500}})
    return rows, changed, deleted, added


def _flows(now: int, streams: int, updates: int) -> list[Flow]:
    out = []
    for s in range(streams):
        for hop in range(3):
            lost = 1 if hop > 0 and s % 10 == 0 else 0
            start = now - updates * 60_000 + hop
            ab = ba = 0
            for u in range(updates):
                last = start + (u + 1) * 60_000
                dab, dba = 100 - lost, 100 - lost
                ab, ba = ab + dab, ba + dba
                lum = FlowMetric(ABPackets=dab, ABBytes=dab * 100, BAPackets=dba, BABytes=dba * 100,
                                 Start=last - 60_000, Last=last)
                metric = FlowMetric(ABPackets=ab, ABBytes=ab * 100, BAPackets=ba, BABytes=ba * 100, Start=start,
                                    Last=last, RTT=1000 - hop)
                out.append(Flow(UUID=f"s{s}h{hop}", NodeTID=f"tid-{hop * streams + s + 200}",
                                TrackingID=f"t{s}", L3TrackingID=f"l3-{s}", Start=start, Last=last,
                                LayersPath="Ethernet/IPv4/TCP", Application="TCP",
                                Network=FlowLayer(Protocol="IPV4", A=f"10.0.{s // 250}.{s % 250}", B="10.9.0.1"),
                                Metric=metric, LastUpdateMetric=lum, NodeID=f"n{hop * streams + s + 200}", Host="h"))
    return out


def run(small: bool) -> Result:
    n_nodes, n_edges = (1_000, 2_000) if small else (10_000, 20_000)
    streams, updates = (100, 10) if small else (1_000, 60)
    runs = 5 if small else 20
    rnd = random.Random(11)
    res = Result(f"Diff and flow path ({n_nodes:,} nodes over 1 h of history; {streams:,} streams x 3 hops)",
                 ["query", "runs", "median (ms)", "max (ms)", "goal"])
    store = start_store()
    try:
        db = "bench_diff"
        from netsonde.graph_builder.schema import MIGRATIONS
        run_migrations(store.url, db, "graph-builder", MIGRATIONS)
        run_migrations(store.url, db, FLOW_COMPONENT, flow_migrations())
        client = connect(store.url, db)
        now = int(time.time() * 1000)
        g = td.generated_graph(n_nodes, n_edges, seed=5)
        for el in list(g.nodes.values()) + list(g.edges.values()):
            el.CreatedAt = el.UpdatedAt = now - 3 * 3_600_000
        rows, changed, deleted, added = _history_rows(g, now, rnd)
        for i in range(0, len(rows), 20_000):
            td.insert_revisions(client, rows[i:i + 20_000])
        engine = GremlinEngine(g, history=HistoryStore(lambda: connect(store.url, db), cache_size=0),
                               flows=FlowStore(lambda: connect(store.url, db)),
                               limits=QueryLimits(timeout_s=60.0, max_results=1_000_000))
        [d] = engine.execute("G.Diff('-1h')")
        got = (len(d["Nodes"]["Changed"]), len(d["Nodes"]["Removed"]), len(d["Nodes"]["Added"]))
        assert got == (changed, deleted, added), f"diff found {got}, wrote {(changed, deleted, added)}"
        med, worst = _median_ms(lambda: engine.execute("G.Diff('-1h')"), runs)
        res.rows.append([f"G.Diff('-1h') whole graph ({len(rows):,} revisions, {changed + deleted + added:,} "
                         f"changes)", runs, med, worst, "< 1000 ms"])
        scope = "G.V('n0').Descendants().Diff('-1h')"
        med, worst = _median_ms(lambda: engine.execute(scope), runs)
        n_scope = engine.execute("G.V('n0').Descendants().Count()")
        res.rows.append([f"V('n0').Descendants().Diff('-1h') (one host: {n_scope} nodes)", runs, med, worst, ""])
        flows = _flows(now, streams, updates)
        for i in range(0, len(flows), 20_000):
            td.insert_flows(client, flows[i:i + 20_000])
        fstore = engine.flows
        view = GraphView(g)
        answer = flow_path(fstore, view, "t10", settle_ms=0)
        assert [x["ABLost"] for x in answer["Links"]] == [updates, 0], answer["Links"]
        med, worst = _median_ms(lambda: flow_path(fstore, view, f"t{rnd.randrange(streams)}"), runs * 5)
        res.rows.append([f"flow_path(one TrackingID) ({len(flows):,} flow updates stored)", runs * 5, med, worst,
                         "< 100 ms"])
        report = loss_report(fstore, view, now - 300_000, now + 1, settle_ms=0)
        assert report["Streams"] == streams, report["Streams"]
        med, worst = _median_ms(lambda: loss_report(fstore, view, now - 300_000, now + 1), runs)
        res.rows.append([f"loss_report(last 5 min, {streams:,} streams)", runs, med, worst, ""])
        res.notes.append("Diff: one SQL query per scope (the IDs changed in the window, each one's state at both "
                         "instants by argMax over revisions); no past graph is rebuilt.")
        res.notes.append("flow_path: one query over flows (the stream's flows, PREWHERE on TrackingID / "
                         "L3TrackingID) and one over flow_metrics by UUID (its sorting key), then the path on the "
                         "live graph. loss_report: one query over every update in the window (joined with flows "
                         "for the L3TrackingID) and one for the hops' flows.")
    finally:
        store.stop()
    return res
