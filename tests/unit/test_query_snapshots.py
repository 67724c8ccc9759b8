"""query-api's copy-on-write snapshots: a frozen snapshot never changes, whatever the live graph does next."""

from __future__ import annotations

import random
from typing import Any

from netsonde.common.bus.graph import GraphElement, GraphEvent
from netsonde.common.graph import Graph
from netsonde.query_api.consistency import CowGraph, SnapshotCache


def _node(i: int, rev: int, rnd: random.Random) -> GraphElement:
    md: dict[str, Any] = {"Name": f"n{i}", "Type": rnd.choice(["veth", "bridge"]), "MTU": rev,
                          "IPV4": [f"10.0.{rnd.randrange(3)}.{i}/24"]}
    return GraphElement(ID=f"n{i}", Metadata=md, Host="h", Origin="t", CreatedAt=0, UpdatedAt=rev, Revision=rev)


def _edge(i: int, a: int, b: int) -> GraphElement:
    return GraphElement(ID=f"e{i}", Metadata={"RelationType": "layer2"}, Host="h", Origin="t", CreatedAt=0,
                        UpdatedAt=0, Revision=1, Parent=f"n{a}", Child=f"n{b}")


def _state(g: Graph) -> tuple[Any, ...]:
    """Everything a query can read, as plain values."""
    return (
        {k: (v.Revision, v.Metadata["MTU"]) for k, v in g.nodes.items()},
        {k: (v.Parent, v.Child) for k, v in g.edges.items()},
        {k: frozenset(v) for k, v in g.out_edges.items() if v},
        {k: frozenset(v) for k, v in g.in_edges.items() if v},
        {key: {v: frozenset(ids) for v, ids in by.items() if ids} for key, by in g.index.items()},
    )


def _events(rnd: random.Random, n: int) -> list[GraphEvent]:
    out = []
    for seq in range(1, n + 1):
        i, roll = rnd.randrange(40), rnd.random()
        if roll < 0.45:
            out.append(GraphEvent(seq=seq, type="NodeUpdated", obj=_node(i, seq, rnd)))
        elif roll < 0.55:
            out.append(GraphEvent(seq=seq, type="NodeDeleted", obj=_node(i, seq, rnd)))
        elif roll < 0.9:
            out.append(GraphEvent(seq=seq, type="EdgeAdded", obj=_edge(rnd.randrange(60), i, rnd.randrange(40))))
        else:
            out.append(GraphEvent(seq=seq, type="EdgeDeleted", obj=_edge(rnd.randrange(60), 0, 0)))
    return out


def test_snapshots_never_change_and_the_live_graph_matches_a_plain_graph() -> None:
    rnd = random.Random(7)
    plain, cow = Graph(), CowGraph()
    frozen: list[tuple[Graph, tuple[Any, ...]]] = []
    for k, ev in enumerate(_events(rnd, 3000)):
        plain.apply(ev)
        cow.apply(ev)
        if k % rnd.choice([1, 3, 17]) == 0:
            snap = cow.freeze()
            frozen.append((snap, _state(snap)))
            assert _state(snap) == _state(plain)
    assert _state(cow) == _state(plain)
    assert len(frozen) > 300
    for snap, seen in frozen:  # every earlier snapshot still reads exactly what it read when taken
        assert _state(snap) == seen


def test_snapshot_cache_takes_a_new_snapshot_only_when_the_version_moves() -> None:
    g, version = CowGraph(), [0]
    cache = SnapshotCache(g, lambda: version[0])
    first, _ = cache.get()
    assert cache.get()[0] is first and cache.taken == 1
    g.upsert_node(_node(1, 1, random.Random(1)))
    version[0] += 1
    second, v = cache.get()
    assert second is not first and v == 1 and "n1" in second.nodes and "n1" not in first.nodes
