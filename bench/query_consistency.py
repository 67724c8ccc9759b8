"""How query-api should give each Gremlin query one consistent graph: the measurement behind the choice.

    .venv/bin/python -m bench.query_consistency [--nodes 10000] [--events 1000] [--clients 4]

A 10 000-node / 20 000-edge graph (`testdata.generated_graph`); a burst of `--events` NodeUpdated events
arrives on the event loop over one second while `--clients` concurrent clients run queries in a loop. For each
design it prints the query latency (p50/p99) and the event apply latency (from the event's arrival to its
application, p50/p99/max):
- `loop`: the query runs on the event loop itself (events wait for the running query);
- `rwlock`: the query runs in a worker thread on the live graph; events wait until no query reads it
  (writer-preferring: new queries wait for pending events);
- `copy`: the query runs in a worker thread on a full copy of the graph's containers, taken on the loop when
  the graph changed since the last copy;
- `cow`: the query runs in a worker thread on a copy-on-write snapshot (`netsonde.query_api.consistency`):
  taking it is O(1), the loop copies a container the first time it changes it after a snapshot.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import statistics
import time
from collections import defaultdict
from typing import Any

from netsonde.common.bus.graph import GraphElement, GraphEvent
from netsonde.common.graph import Graph
from netsonde.gremlin import GremlinEngine
from tests import gremlin_testdata as td
from netsonde.query_api.consistency import CowGraph, SnapshotCache

QUERIES = ("G.V().Has('Type','veth').Count()", "G.V().Has('Name','intf-42').Out().Out()",
           "G.V().Has('Type','bridge').Values('MTU')")


def copy_graph(graph: Graph) -> Graph:
    """A full copy of the containers (elements are shared: they are replaced, never changed in place)."""
    snap = Graph.__new__(Graph)
    snap.nodes, snap.edges = dict(graph.nodes), dict(graph.edges)
    snap.out_edges = defaultdict(set, {k: set(v) for k, v in graph.out_edges.items()})
    snap.in_edges = defaultdict(set, {k: set(v) for k, v in graph.in_edges.items()})
    snap.index = {key: defaultdict(set, {v: set(ids) for v, ids in by_value.items()})
                  for key, by_value in graph.index.items()}
    return snap


class FullCopy:
    def __init__(self, graph: Graph, version: Any) -> None:
        self.graph, self.version, self.snap, self.at = graph, version, None, None

    def get(self) -> tuple[Graph, Any]:
        if self.snap is None or self.at != self.version():
            self.snap, self.at = copy_graph(self.graph), self.version()
        return self.snap, self.at


def _p(xs: list[float], q: float) -> float:
    s = sorted(xs)
    return s[min(int(q * len(s)), len(s) - 1)] * 1000 if s else float("nan")


@dataclasses.dataclass
class Figures:
    design: str
    queries: list[float] = dataclasses.field(default_factory=list)
    applies: list[float] = dataclasses.field(default_factory=list)

    def line(self) -> str:
        return (f"{self.design:9} queries {len(self.queries):5}  query p50 {_p(self.queries, .5):7.1f} ms "
                f"p99 {_p(self.queries, .99):7.1f} ms   event apply p50 {_p(self.applies, .5):6.2f} ms "
                f"p99 {_p(self.applies, .99):6.2f} ms max {max(self.applies) * 1000:6.1f} ms")


def _event(g: Graph, i: int) -> GraphEvent:
    node = g.nodes[f"n{i % len(g.nodes)}"]
    md = dict(node.Metadata, MTU=1400 + i)
    return GraphEvent(seq=i + 1, type="NodeUpdated", obj=GraphElement(ID=node.ID, Metadata=md, Host=node.Host, Origin=node.Origin,
                                                                      CreatedAt=node.CreatedAt,
                                                                      UpdatedAt=node.UpdatedAt + 1,
                                                                      Revision=node.Revision + 1))


async def _run(design: str, nodes: int, events: int, clients: int) -> Figures:
    g = CowGraph()
    g.__dict__.update(td.generated_graph(nodes, nodes * 2).__dict__)
    g._owned = set()
    figs = Figures(design)
    seq = [0]
    readers = [0]
    no_readers = asyncio.Event()
    no_readers.set()
    writers_done = asyncio.Event()
    writers_done.set()
    cache = SnapshotCache(g, lambda: seq[0]) if design == "cow" else FullCopy(g, lambda: seq[0])
    live = GremlinEngine(g)
    done = asyncio.Event()

    async def query(q: str) -> None:
        t = time.perf_counter()
        if design == "loop":
            live.execute(q)
            await asyncio.sleep(0)  # an HTTP client yields between requests
        elif design == "rwlock":
            await writers_done.wait()
            readers[0] += 1
            no_readers.clear()
            try:
                await asyncio.to_thread(live.execute, q)
            finally:
                readers[0] -= 1
                if not readers[0]:
                    no_readers.set()
        else:
            snap, _ = cache.get()
            await asyncio.to_thread(GremlinEngine(snap).execute, q)
        figs.queries.append(time.perf_counter() - t)

    async def client(k: int) -> None:
        i = k
        while not done.is_set():
            await query(QUERIES[i % len(QUERIES)])
            i += 1

    async def apply(ev: GraphEvent, arrived: float) -> None:
        if design == "rwlock":
            writers_done.clear()
            await no_readers.wait()
        g.apply(ev)
        seq[0] = ev.seq
        figs.applies.append(time.perf_counter() - arrived)
        if design == "rwlock":
            writers_done.set()

    tasks = [asyncio.create_task(client(k)) for k in range(clients)]
    await asyncio.sleep(0.2)
    pending = []
    start = time.perf_counter()
    for i in range(events):
        due = start + i / events
        await asyncio.sleep(max(0.0, due - time.perf_counter()))
        pending.append(asyncio.create_task(apply(_event(g, i), time.perf_counter())))
    await asyncio.gather(*pending)
    done.set()
    await asyncio.gather(*tasks)
    return figs


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--nodes", type=int, default=10_000)
    ap.add_argument("--events", type=int, default=1000)
    ap.add_argument("--clients", type=int, default=4)
    args = ap.parse_args()
    g = td.generated_graph(args.nodes, args.nodes * 2)
    copies = []
    for _ in range(20):
        t = time.perf_counter()
        copy_graph(g)
        copies.append(time.perf_counter() - t)
    print(f"graph {args.nodes} nodes / {args.nodes * 2} edges: copy_graph median "
          f"{statistics.median(copies) * 1000:.1f} ms, max {max(copies) * 1000:.1f} ms")
    engine = GremlinEngine(g)
    for q in QUERIES:
        times = []
        for _ in range(10):
            t = time.perf_counter()
            engine.execute(q)
            times.append(time.perf_counter() - t)
        print(f"alone: {q:45} median {statistics.median(times) * 1000:6.1f} ms")
    for design in ("loop", "rwlock", "copy", "cow"):
        print(asyncio.run(_run(design, args.nodes, args.events, args.clients)).line())


if __name__ == "__main__":
    main()
