"""The dependency index of graph-triggered alerts: what the parsed query touches, and (on random changes to a
real Graph evaluated by the real engine) that every alert whose answer changed is among those re-evaluated."""

from __future__ import annotations

import random

from netsonde.alert_evaluator.dependencies import DependencyIndex, analyze
from netsonde.alert_evaluator.evaluator import verdict
from netsonde.common.bus.graph import GraphElement, GraphEvent
from netsonde.common.graph import Graph
from netsonde.gremlin import GremlinEngine, GremlinError


def test_what_a_query_touches() -> None:
    d = analyze("G.V().Has('Name','eth0','State','DOWN')")
    assert d.local and not d.edges and not d.everything
    assert d.anchor == ("Name", frozenset({"eth0"}))
    assert {"Name", "State"} <= d.keys
    d = analyze("G.V().Has('Type', Within('veth','tun')).Has('Metric.RxBytes', Gt(10))")
    assert d.anchor == ("Type", frozenset({"veth", "tun"})) and "Metric" in d.keys
    d = analyze("G.V('abc').Out().Has('State','DOWN').Count()")
    assert d.edges and not d.local and d.anchor == ("@ID", frozenset({"abc"}))
    assert analyze("G.V().HasEither('Name','a','Name','b')").anchor is None
    assert "*" in analyze("G.V().Has('Type','veth').ValueMap()").keys
    assert "*" in analyze("G.V().Has('@UpdatedAt', Gt(0))").keys
    assert analyze("G.Flows().Has('Network.A','10.0.0.1')").everything
    assert analyze("G.E().Has('RelationType','layer2')").edges


def _node(i: int, **meta: object) -> GraphElement:
    return GraphElement(ID=f"n{i}", Metadata={"Name": f"if{i}", "Type": "veth", "State": "UP", **meta},
                        Host="h", Origin="o", CreatedAt=0, UpdatedAt=0, Revision=1)


def _edge(a: int, b: int) -> GraphElement:
    return GraphElement(ID=f"e{a}-{b}", Metadata={"RelationType": "layer2"}, Host="h", Origin="o", CreatedAt=0,
                        UpdatedAt=0, Revision=1, Parent=f"n{a}", Child=f"n{b}")


def test_only_the_alerts_a_change_can_affect() -> None:
    g = Graph()
    for i in range(3):
        g.upsert_node(_node(i))
    index = DependencyIndex()
    index.reset(g.nodes, g.edges)
    index.add("down0", analyze("G.V().Has('Name','if0','State','DOWN')"))
    index.add("down1", analyze("G.V().Has('Name','if1','State','DOWN')"))
    index.add("peers", analyze("G.V().Has('Name','if0').Out()"))
    index.add("count", analyze("G.V().Count()"))
    metric = GraphEvent(seq=1, type="NodeUpdated", obj=_node(0, Metric={"RxBytes": 5}))
    assert index.affected([metric]) == set()
    down = GraphEvent(seq=2, type="NodeUpdated", obj=_node(1, Metric={"RxBytes": 5}, State="DOWN"))
    assert index.affected([down]) == {"down1"}
    added = GraphEvent(seq=3, type="NodeAdded", obj=_node(7))
    assert index.affected([added]) == {"count"}
    edge = GraphEvent(seq=4, type="EdgeAdded", obj=_edge(0, 7))
    assert index.affected([edge]) == {"peers"}
    renamed = GraphEvent(seq=5, type="NodeUpdated", obj=_node(1, Name="if0"))
    assert index.affected([renamed]) == {"down1", "peers"}  # if0 UP: down0 still false, not re-evaluated
    index.remove("down1")
    assert "down1" not in index.affected([GraphEvent(seq=6, type="NodeUpdated", obj=_node(1, State="DOWN"))])


QUERIES = [
    "G.V().Has('Name','if1','State','DOWN')",
    "G.V().Has('Type','veth','State','DOWN').Count()",
    "G.V().Has('State','DOWN')",
    "G.V().Has('Name', Within('if2','if3')).Has('MTU', Gt(1500))",
    "G.V().Has('Name','if0').Out().Has('State','DOWN')",
    "G.V().Has('Name','if0').Both().Both().Has('Name','if4')",
    "G.V().HasNot('MTU')",
    "G.V().Has('Type','tun').Values('Name')",
    "G.E().Has('RelationType','layer2').Count()",
    "G.V('n3').In()",
    "G.V().Has('Name','if5').Has('MTU', Gte(9000))",
    "G.V().Count()",
]


def _truth(engine: GremlinEngine, query: str) -> object:
    try:
        return verdict(engine.execute(query), 100).true
    except GremlinError as exc:
        return f"error {exc}"


STEPS = 3000


def test_every_answer_that_changes_is_re_evaluated() -> None:
    """Random adds, updates, deletes of nodes and edges; before each step every alert's answer is computed; after
    it, an alert whose answer changed must be in `affected` (the index may over-approximate, never miss)."""
    rng = random.Random(15)
    g = Graph()
    engine = GremlinEngine(graph=g)
    index = DependencyIndex()
    for q in QUERIES:
        index.add(q, analyze(q))
    seq = 0
    re_evaluated = 0
    for step in range(STEPS):
        before = {q: _truth(engine, q) for q in QUERIES}
        seq += 1
        kind = rng.random()
        i, j = rng.randrange(8), rng.randrange(8)
        if kind < 0.5 or f"n{i}" not in g.nodes:
            meta = {"Name": f"if{rng.randrange(8)}" if rng.random() < 0.1 else f"if{i}",
                    "Type": rng.choice(["veth", "tun"]), "State": rng.choice(["UP", "DOWN"]),
                    "Metric": {"RxBytes": rng.randrange(3)}}
            if rng.random() < 0.7:
                meta["MTU"] = rng.choice([1500, 9000])
            el = GraphElement(ID=f"n{i}", Metadata=meta, Host="h", Origin="o", CreatedAt=0, UpdatedAt=step,
                              Revision=step)
            ev = GraphEvent(seq=seq, type="NodeUpdated" if f"n{i}" in g.nodes else "NodeAdded", obj=el)
            events = [ev]
        elif kind < 0.6:
            node = g.nodes[f"n{i}"]
            events = [GraphEvent(seq=seq, type="EdgeDeleted", obj=g.edges[eid])
                      for eid in list(g.out_edges.get(node.ID, ())) + list(g.in_edges.get(node.ID, ()))]
            events.append(GraphEvent(seq=seq, type="NodeDeleted", obj=node))
        elif kind < 0.85 and f"n{j}" in g.nodes and i != j:
            e = _edge(i, j)
            events = [GraphEvent(seq=seq, type="EdgeUpdated" if e.ID in g.edges else "EdgeAdded", obj=e)]
        elif g.edges:
            e = g.edges[rng.choice(sorted(g.edges))]
            events = [GraphEvent(seq=seq, type="EdgeDeleted", obj=e)]
        else:
            continue
        for ev in events:
            g.apply(ev)
        affected = index.affected(events)
        re_evaluated += len(affected)
        for q in QUERIES:
            after = _truth(engine, q)
            if after != before[q]:
                assert q in affected, (step, q, before[q], after, [(e.type, e.obj) for e in events])
    assert re_evaluated < 0.4 * STEPS * len(QUERIES), re_evaluated  # and it skips most of them


def test_shards_split_the_alerts() -> None:
    """`shard_count` evaluators: every alert belongs to exactly one, and each gets a share."""
    import uuid

    from netsonde.alert_evaluator.config import AlertEvaluatorConfig
    from netsonde.alert_evaluator.service import AlertEvaluatorService

    shards = [AlertEvaluatorService(AlertEvaluatorConfig.load(env={}, shard_count=3, shard_index=i))
              for i in range(3)]
    ids = [str(uuid.UUID(int=random.Random(i).getrandbits(128))) for i in range(300)]
    owners = [[s.owns(u) for s in shards].count(True) for u in ids]
    assert owners == [1] * 300
    assert all(sum(s.owns(u) for u in ids) > 60 for s in shards)
