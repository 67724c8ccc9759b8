"""Gremlin engine speed on a generated graph (100 000 nodes, 200 000 edges; `small`: 5 000 / 10 000).

Queries run in-process against `netsonde.gremlin.GremlinEngine` (what query-api calls, minus HTTP):
- `Has` on an indexed key (`Name`), a different name each time (parse + run) and the same query repeated
  (compiled-query cache hit);
- a 3-hop `Out().Out().Out()` from 100 start nodes (selected by `Within` on the indexed `TID`);
- `ShortestPathTo` between random node pairs across the graph;
- `Context('-1h')` rebuilding a 10 000-node / 20 000-edge graph (2 revisions per node) from the revision
  history in the embedded ClickHouse store, cache off (every run goes to ClickHouse).
Peak memory: tracemalloc peak while one query runs; the graph's own footprint is given per node.
"""

from __future__ import annotations

import gc
import random
import statistics
import time
import tracemalloc
from typing import Any, Callable

from netsonde.common.clickhouse import connect, run_migrations
from netsonde.common.testing import start_store
from netsonde.gremlin import GremlinEngine, HistoryStore, QueryLimits
from tests import gremlin_testdata as td

from .result import Result


def _latencies(fn: Callable[[int], Any], runs: int) -> list[float]:
    out = []
    for i in range(runs):
        t = time.perf_counter()
        fn(i)
        out.append(time.perf_counter() - t)
    return out


def _p(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(int(q * len(s)), len(s) - 1)]


def _peak(fn: Callable[[], Any]) -> int:
    gc.collect()
    tracemalloc.start()
    try:
        fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _graph_bytes_per_node(n_nodes: int, n_edges: int) -> tuple[Any, float]:
    gc.collect()
    tracemalloc.start()
    try:
        g = td.generated_graph(n_nodes, n_edges)
        current = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    return g, current / n_nodes


def run(small: bool) -> Result:
    n_nodes, n_edges = (5_000, 10_000) if small else (100_000, 200_000)
    hist_nodes, hist_edges = (1_000, 2_000) if small else (10_000, 20_000)
    runs = 200 if small else 2_000
    rnd = random.Random(7)
    graph, per_node = _graph_bytes_per_node(n_nodes, n_edges)
    engine = GremlinEngine(graph, limits=QueryLimits(timeout_s=60.0, max_results=1_000_000))
    res = Result(f"Gremlin engine ({n_nodes:,} nodes, {n_edges:,} edges)",
                 ["query", "runs", "median (µs)", "p99 (µs)", "peak query memory (KiB)", "goal"])

    def row(name: str, fn: Callable[[int], Any], n: int, goal: str) -> None:
        fn(0)  # warm-up
        lat = _latencies(fn, n)
        peak = _peak(lambda: fn(n + 1))
        res.rows.append([name, n, statistics.median(lat) * 1e6, _p(lat, 0.99) * 1e6, peak / 1024, goal])

    names = [rnd.randrange(n_nodes) for _ in range(runs + 2)]
    row("G.V().Has('Name', <each time another>)", lambda i: engine.execute(f"G.V().Has('Name', 'intf-{names[i]}')"),
        runs, "< 100 µs")
    row("G.V().Has('Name', 'intf-777') (repeated)", lambda i: engine.execute("G.V().Has('Name', 'intf-777')"),
        runs, "< 100 µs")
    starts = [[rnd.randrange(n_nodes) for _ in range(100)] for _ in range(52)]

    def three_hops(i: int) -> Any:
        tids = ", ".join(f"'tid-{k}'" for k in starts[i % len(starts)])
        return engine.execute(f"G.V().Has('TID', Within({tids})).Out().Out().Out().Count()")

    row("V(100 start nodes).Out().Out().Out().Count()", three_hops, 20 if small else 50, "< 10 ms")
    pairs = [(rnd.randrange(n_nodes), rnd.randrange(n_nodes)) for _ in range(52)]
    row("V(a).ShortestPathTo(Metadata('Name', b))",
        lambda i: engine.execute(f"G.V('n{pairs[i % 52][0]}').ShortestPathTo(Metadata('Name', "
                                 f"'intf-{pairs[i % 52][1]}'))"), 20 if small else 50, "")
    hops = engine.execute(f"G.V().Has('TID', Within({', '.join(repr(f'tid-{k}') for k in starts[0])}))"
                          ".Out().Out().Out().Count()")
    res.notes.append(f"Graph memory: {per_node:,.0f} bytes per node (nodes + edges + adjacency + indexes, "
                     f"tracemalloc, {n_edges // n_nodes} edges per node). 3-hop result size: {hops:,} nodes.")

    # --- past-time rebuild from ClickHouse -------------------------------------------------------------
    store = start_store()
    try:
        db = "bench_gremlin"
        from netsonde.graph_builder.schema import MIGRATIONS
        run_migrations(store.url, db, "graph-builder", MIGRATIONS)
        client = connect(store.url, db)
        hg = td.generated_graph(hist_nodes, hist_edges, seed=3)
        now = int(time.time() * 1000)
        base = now - 3 * 3_600_000  # created 3 h ago, updated 1 s later: '-1h' sees the final state
        for el in list(hg.nodes.values()) + list(hg.edges.values()):
            el.CreatedAt = el.UpdatedAt = base
        rows = td.graph_revision_rows(hg, updates_per_node=1, step_ms=1000)
        for i in range(0, len(rows), 20_000):
            td.insert_revisions(client, rows[i:i + 20_000])
        history = HistoryStore(lambda: connect(store.url, db), cache_size=0)
        past = GremlinEngine(graph, history=history, limits=QueryLimits(timeout_s=60.0, max_results=1_000_000))
        count = past.execute("G.Context('-1h').V().Count()")
        assert count == hist_nodes, f"rebuilt {count} nodes, expected {hist_nodes}"
        splits: list[dict[str, float]] = []

        def rebuild(i: int) -> Any:
            out = past.execute("G.Context('-1h').V().Count()")
            splits.append(dict(history.last_timings))
            return out

        row(f"G.Context('-1h').V().Count() (rebuild {hist_nodes:,} nodes, {hist_edges:,} edges)",
            rebuild, 5 if small else 20, "< 300 ms")
        res.notes.append(f"Rebuild peak memory: {res.rows[-1][4] * 1024 / hist_nodes:,.0f} bytes per node of the past "
                         f"graph (JSON answer + decoded elements + graph, {hist_edges // hist_nodes} edges per node).")
        med = {k: statistics.median(s[k] for s in splits) for k in ("query_s", "decode_s", "build_s")}
        res.notes.append(f"Rebuild split (medians): ClickHouse query + transfer {med['query_s'] * 1e3:.0f} ms "
                         f"({splits[-1]['bytes'] / 1e6:.1f} MB, {splits[-1]['rows']:,.0f} rows), JSON decode "
                         f"{med['decode_s'] * 1e3:.0f} ms, graph build {med['build_s'] * 1e3:.0f} ms; the rest is "
                         "freeing the previous past graph (cache off) and GC.")
        cached = GremlinEngine(graph, history=HistoryStore(lambda: connect(store.url, db)))
        row("G.Context('-1h').V().Count() (cached past graph)",
            lambda i: cached.execute("G.Context('-1h').V().Count()"), 20 if small else 200, "")
        res.notes.append(f"History: {len(rows):,} revision rows in the embedded ClickHouse store "
                         "(chdb behind the HTTP interface), read with clickhouse-connect; the rebuild is one SQL "
                         "query (LIMIT 1 BY id for an instant; a window function for time slices) returning one "
                         "JSON object per element, one msgspec decode, and the Graph construction.")
        client.close()
        history.close()
    finally:
        store.stop()
    return res


if __name__ == "__main__":
    import sys
    print(run(small="--small" in sys.argv).to_markdown())
