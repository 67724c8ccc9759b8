"""query-api answers every query from one consistent graph while graph events stream in.

A burst of 1 000 topology changes goes through a real graph-builder and NATS; each change adds node b<i>, its
ownership edge from the host and sets the host's `Burst` metadata to i+1. Meanwhile four clients query over
HTTP. The test records every graph event query-api's replica receives, computes the summary of the graph after
each prefix of that event sequence, and checks every answer is one of those graphs, never going back in time.
The interpreter switches threads every 20 µs during the test (instead of 5 ms) so that a query reading the
live graph from its worker thread would be interrupted mid-read by the loop applying events (reading the live
graph, this test fails with torn answers or "Set changed size during iteration").
"""

from __future__ import annotations

import asyncio
import sys
import time

import httpx
import msgpack
import nats
import pytest

from netsonde.common.bus import decode
from netsonde.common.bus.graph import GraphEventBatch
from netsonde.common.service import wait_for
from netsonde.common.testing import free_port
from netsonde.graph_builder.config import GraphBuilderConfig
from netsonde.graph_builder.service import GraphBuilderService
from netsonde.query_api.config import QueryApiConfig
from netsonde.query_api.service import QueryApiService

CHANGES = 1000


def _msg(kind: str, seq: int, nodes: list[dict], edges: list[dict]) -> bytes:
    return msgpack.packb({"v": 1, "host": "h1", "kind": kind, "boot": "b", "seq": seq, "ts": 0,
                          "nodes": nodes, "edges": edges})


def _change(i: int) -> bytes:
    return _msg("delta", i + 1, [{"ID": "host", "Metadata": {"Name": "h1", "Type": "host", "Burst": i + 1}},
                                 {"ID": f"b{i}", "Metadata": {"Name": f"b{i}", "Type": "burst"}}],
                [{"ID": f"o{i}", "Parent": "host", "Child": f"b{i}", "Metadata": {"RelationType": "ownership"}}])


def _summary(nodes: dict[str, dict], edges: dict[str, dict]) -> tuple[int, int, int]:
    """(burst nodes, ownership edges to them, the host's Burst counter): one graph state."""
    burst = {i for i, n in nodes.items() if n["Metadata"].get("Type") == "burst"}
    owned = sum(1 for e in edges.values() if e["Child"] in burst and e["Parent"] == "host")
    host = nodes.get("host")
    return len(burst), owned, (host or {"Metadata": {}})["Metadata"].get("Burst", 0)


@pytest.mark.slow
async def test_every_answer_is_a_graph_that_existed(nats_url: str, unique: str) -> None:
    prefix = f"c{unique}"
    gb = GraphBuilderService(GraphBuilderConfig.load(env={}, nats_url=nats_url, subject_prefix=prefix,
                                                     history=False))
    await gb.start()
    nc = await nats.connect(nats_url)
    port = free_port()
    api = QueryApiService(QueryApiConfig.load(env={}, nats_url=nats_url, subject_prefix=prefix, http_port=port,
                                              history=False, flows=False))
    switch = sys.getswitchinterval()
    try:
        await nc.publish(f"{prefix}.topology.h1", _msg("full", 0, [{"ID": "host", "Metadata": {
            "Name": "h1", "Type": "host", "Burst": 0}}], []))
        assert await wait_for(lambda: "host" in gb.builder.graph.nodes, 5)
        await api.start()
        assert await wait_for(lambda: "host" in api.replica.graph.nodes, 5)
        start_seq = api.replica.seq
        seen: list = []  # every graph event after the replica's start, in sequence order

        async def record(msg) -> None:
            seen.extend(decode(msg.data, GraphEventBatch).events)
        await nc.subscribe(f"{prefix}.graph.events", cb=record)
        await nc.flush()

        answers: list[list[tuple[int, int, int]]] = [[] for _ in range(4)]
        counts: list[list[int]] = [[] for _ in range(4)]
        done = asyncio.Event()

        async def client(k: int, http: httpx.AsyncClient) -> None:
            while not done.is_set():
                if k % 2:
                    r = await http.post("/api/topology", json={"GremlinQuery": "G"})
                    assert r.status_code == 200, r.text
                    [g] = r.json()
                    answers[k].append(_summary({n["ID"]: n for n in g["Nodes"]}, {e["ID"]: e for e in g["Edges"]}))
                else:
                    r = await http.post("/api/topology",
                                        json={"GremlinQuery": "G.V().Has('Type','burst').Count()"})
                    assert r.status_code == 200, r.text
                    counts[k].append(r.json())

        sys.setswitchinterval(2e-5)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
            clients = [asyncio.create_task(client(k, http)) for k in range(4)]
            started = time.monotonic()
            for i in range(CHANGES):
                await nc.publish(f"{prefix}.topology.h1", _change(i))
                if i % 10 == 9:
                    await asyncio.sleep(0.01)  # about 2 s of changes: queries interleave with them
            assert await wait_for(lambda: api.replica.graph.nodes["host"].Metadata.get("Burst") == CHANGES, 30)
            burst_s = time.monotonic() - started
            done.set()
            await asyncio.gather(*clients)
        sys.setswitchinterval(switch)

        # the graph after each prefix of the event sequence the replica applied
        nodes: dict[str, dict] = {"host": {"Metadata": {"Type": "host", "Burst": 0}}}
        edges: dict[str, dict] = {}
        existed = [_summary(nodes, edges)]
        for ev in sorted(seen, key=lambda e: e.seq):
            assert ev.seq > start_seq
            obj = {"ID": ev.obj.ID, "Metadata": ev.obj.Metadata, "Parent": ev.obj.Parent, "Child": ev.obj.Child}
            if ev.type in ("NodeAdded", "NodeUpdated"):
                nodes[obj["ID"]] = obj
            elif ev.type in ("EdgeAdded", "EdgeUpdated"):
                edges[obj["ID"]] = obj
            existed.append(_summary(nodes, edges))
        assert existed[-1] == (CHANGES, CHANGES, CHANGES)
        order = {s: i for i, s in enumerate(existed)}  # summaries only grow, so each names one prefix
        existed_counts = {s[0] for s in existed}
        graphs = sum(len(a) for a in answers)
        torn = [s for a in answers for s in a if s not in order]
        backwards = sum(1 for a in answers for x, y in zip(a, a[1:]) if order.get(y, 0) < order.get(x, 0))
        backwards += sum(1 for c in counts for x, y in zip(c, c[1:]) if y < x)
        bad_counts = [c for cs in counts for c in cs if c not in existed_counts]
        print(f"\n{CHANGES} changes in {burst_s:.2f} s, {len(seen)} graph events; {graphs} whole-graph answers "
              f"({len({s for a in answers for s in a})} distinct states), {sum(map(len, counts))} counts; "
              f"torn {len(torn)}, backwards {backwards}, impossible counts {len(bad_counts)}")
        assert not torn, torn[:5]
        assert not bad_counts and backwards == 0
        assert graphs >= 10 and len({s for a in answers for s in a}) >= 3  # the queries did overlap the burst
    finally:
        sys.setswitchinterval(switch)
        await api.stop()
        await nc.close()
        await gb.stop()
