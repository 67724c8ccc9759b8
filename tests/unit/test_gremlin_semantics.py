"""Semantics that need no ClickHouse: predicates, metadata paths, time arguments, steps on an in-memory graph,
limits and the result shapes."""

from __future__ import annotations

import pytest

from netsonde.common.bus.graph import GraphElement
from netsonde.common.graph import Graph
from netsonde.gremlin import GremlinEngine, GremlinError, QueryLimits
from netsonde.gremlin import ast
from tests import gremlin_testdata as td
from netsonde.gremlin.extensions import aggregate
from netsonde.gremlin.fields import element_values, path_values
from netsonde.gremlin.predicates import make_predicate
from netsonde.gremlin.steps import Step
from netsonde.gremlin.timeparse import is_relative, parse_duration_ms, parse_time, parse_window_ms

NOW = 1_800_000_000_000


def pred(name: str, *args: object):
    return make_predicate(ast.Call(name.upper(), tuple(ast.Literal(a, 0) for a in args), 0, name))


@pytest.mark.parametrize("p, present, values, expected", [
    (make_predicate(ast.Literal("a", 0)), True, ["a"], True),
    (make_predicate(ast.Literal("a", 0)), True, ["x", "a"], True),  # array membership
    (make_predicate(ast.Literal(1, 0)), True, [1.0], True),
    (make_predicate(ast.Literal(1, 0)), True, ["1"], False),
    (make_predicate(ast.Literal(True, 0)), True, [1], False),
    (make_predicate(ast.Literal(2.0, 0)), True, [2], True),
    (pred("Ne", "a"), True, ["b"], True),
    (pred("Ne", "a"), False, [], False),  # Ne needs the key
    (pred("Ne", "a"), True, ["a", "b"], False),
    (pred("Nee", "a"), False, [], True),
    (pred("Nee", "a"), True, ["a"], False),
    (pred("Gt", 5), True, [6], True),
    (pred("Gt", 5), True, [5], False),
    (pred("Gt", 5), True, ["6"], False),
    (pred("Gte", 5), True, [5], True),
    (pred("Lt", 5), True, [4.5], True),
    (pred("Lte", 5), True, [5], True),
    (pred("Inside", 1, 3), True, [1], False),
    (pred("Inside", 1, 3), True, [2], True),
    (pred("Outside", 1, 3), True, [0], True),
    (pred("Outside", 1, 3), True, [4], True),
    (pred("Outside", 1, 3), True, [2], False),
    (pred("Between", 1, 3), True, [1], True),
    (pred("Between", 1, 3), True, [3], False),
    (pred("Within", "a", 2), True, [2.0], True),
    (pred("Within", "a", 2), True, ["b"], False),
    (pred("Without", "a", 2), False, [], True),
    (pred("Without", "a", 2), True, ["b", "a"], False),
    (pred("Regex", "br-.*"), True, ["br-int"], True),
    (pred("Regex", "br"), True, ["br-int"], False),  # anchored
    (pred("Regex", "^br-int$"), True, ["br-int"], True),
    (pred("Regex", "1.*"), True, [12], False),  # strings only
    (pred("Ipv4Range", "10.0.0.0/8"), True, ["10.1.2.3/16"], True),
    (pred("Ipv4Range", "10.0.0.0/8"), True, ["11.1.2.3"], False),
    (pred("Ipv4Range", "10.0.0.0/8"), True, ["fe80::1/64", "10.0.0.1"], True),
])
def test_predicates(p, present: bool, values: list, expected: bool) -> None:
    assert p.test(present, values) is expected


@pytest.mark.parametrize("name, args, text", [
    ("Gt", ("x",), "takes numbers"), ("Inside", (1,), "exactly 2"), ("Regex", ("(",), "invalid regular"),
    ("Ipv4Range", ("nope",), "IPv4 CIDR"), ("Within", (), "at least 1"), ("Bogus", (1,), "unknown predicate"),
])
def test_predicate_errors(name: str, args: tuple, text: str) -> None:
    with pytest.raises(GremlinError) as err:
        pred(name, *args)
    assert err.value.status == 400 and text in str(err.value)


def test_metadata_paths() -> None:
    md = {"A": {"B": 1, "x.y": {"z": 2}}, "L": [{"ID": "a"}, {"ID": "b"}, {"Other": 1}], "E": [],
          "Docker": {"Labels": {"io.kubernetes.pod.namespace": "ns"}}}
    assert path_values(md, "A.B") == (True, [1])
    assert path_values(md, "A.x.y.z") == (True, [2])
    assert path_values(md, "L.ID") == (True, ["a", "b"])
    assert path_values(md, "E") == (True, [])
    assert path_values(md, "Docker.Labels.io.kubernetes.pod.namespace") == (True, ["ns"])
    assert path_values(md, "A.C") == (False, [])
    assert path_values(md, "Nope") == (False, [])
    el = GraphElement(ID="i", Metadata=md, Host="h", Origin="o", CreatedAt=1, UpdatedAt=2, Revision=3)
    assert element_values(el, "@ID") == (True, ["i"])
    assert element_values(el, "@revision") == (True, [3])
    assert element_values(el, "@DeletedAt") == (False, [])
    assert element_values(el, "@Parent") == (False, [])


def test_time_arguments() -> None:
    lit = lambda v: ast.Literal(v, 0)  # noqa: E731
    assert parse_time(ast.Keyword("NOW", 0), NOW) == NOW
    assert parse_time(lit(1479899809), NOW) == 1479899809000  # seconds
    assert parse_time(lit(1479899809123), NOW) == 1479899809123  # ms
    assert parse_time(lit("-1h"), NOW) == NOW - 3_600_000
    assert parse_time(lit("-1m30s"), NOW) == NOW - 90_000
    assert parse_time(lit("1 hour ago"), NOW) == NOW - 3_600_000
    assert parse_time(lit("an hour ago"), NOW) == NOW - 3_600_000
    assert parse_time(lit("5 minutes ago"), NOW) == NOW - 300_000
    assert parse_time(lit("2 days ago"), NOW) == NOW - 2 * 86_400_000
    assert parse_time(lit("yesterday"), NOW) == NOW - 86_400_000
    assert parse_time(lit("Sun, 06 Nov 2016 08:49:37 GMT"), NOW) == 1478422177000
    assert parse_time(lit("2016-11-06T08:49:37Z"), NOW) == 1478422177000
    assert parse_time(lit("2016-11-06 08:49:37"), NOW) == 1478422177000
    assert parse_window_ms(lit("5m"), NOW) == 300_000
    assert parse_window_ms(lit(30), NOW) == 30_000
    assert parse_window_ms(ast.Keyword("FOREVER", 0), NOW) == NOW
    assert parse_window_ms(lit("2 hours"), NOW) == 7_200_000
    assert parse_duration_ms("300ms") == 300 and parse_duration_ms("1.5h") == 5_400_000
    assert parse_duration_ms("abc") is None
    assert is_relative(lit("-1h")) and is_relative(ast.Keyword("NOW", 0)) and is_relative(lit("1 day ago"))
    assert not is_relative(lit(1479899809)) and not is_relative(lit("2016-11-06T08:49:37Z"))
    for bad in (lit("later"), lit(True), ast.Keyword("FOREVER", 0)):
        with pytest.raises(GremlinError):
            parse_time(bad, NOW)


def test_aggregate_splits_in_proportion() -> None:
    step = Step.__new__(Step)
    ms = [{"Rx": 30, "Start": 0, "Last": 30_000}, {"Rx": 10, "Start": 10_000, "Last": 10_000}]
    assert aggregate(ms, 10_000, step) == [
        {"Rx": 10, "Start": 0, "Last": 10_000}, {"Rx": 20, "Start": 10_000, "Last": 20_000},
        {"Rx": 10, "Start": 20_000, "Last": 30_000}]


@pytest.fixture(scope="module")
def engine() -> GremlinEngine:
    return GremlinEngine(td.live_graph(), limits=QueryLimits(timeout_s=10.0, max_results=1000))


def test_result_shapes(engine: GremlinEngine) -> None:
    node = engine.execute("G.V('n-eth0')")[0]
    assert set(node) == {"ID", "Metadata", "Host", "Origin", "CreatedAt", "UpdatedAt", "Revision"}
    edge = engine.execute("G.E('e-veth1')")[0]
    assert edge["Parent"] == "n-vm1veth" and edge["Child"] == "n-vm1eth0"
    assert engine.execute_raw("G.V().Count()") == (15, "count")
    assert engine.execute_raw("G.V().Has('Type', 'netns').Values('Name')")[1] == "values"
    graph, kind = engine.execute_raw("G.V().Has('Type', 'netns').SubGraph()")
    assert kind == "graph" and set(graph[0]) == {"Nodes", "Edges"}
    paths, kind = engine.execute_raw("G.V('n-ns1').ShortestPathTo(Metadata('Type', 'host'))")
    assert kind == "paths" and [[n["ID"] for n in p] for p in paths] == [["n-ns1", "n-host"]]
    metrics, kind = engine.execute_raw("G.V('n-eth0').Metrics()")
    assert kind == "metrics" and list(metrics[0]) == ["n-eth0"]
    assert engine.execute_raw("G.V('n-host').NextHop('8.8.8.8')")[1] == "nexthops"
    assert engine.execute("G.V().Has('Name', 'none')") == []


def test_no_dedup_on_out(engine: GremlinEngine) -> None:
    out = [n["ID"] for n in engine.execute("G.V('n-brint').Out('Type', 'ovsport')")]
    assert sorted(out) == ["n-port1", "n-port1", "n-port2", "n-port2"]


def test_skydive_outv_inv(engine: GremlinEngine) -> None:
    assert engine.execute("G.E('e-host-eth0').OutV().Values('@ID')") == ["n-eth0"]
    assert engine.execute("G.E('e-host-eth0').InV().Values('@ID')") == ["n-host"]


def test_index_and_scan_agree() -> None:
    g = td.generated_graph(2000, 4000)
    engine = GremlinEngine(g)
    by_index = engine.execute("G.V().Has('Type', 'veth').Values('@ID')")
    by_scan = engine.execute("G.V().Has('MTU', Gt(0), 'Type', 'veth').Values('@ID')")
    assert sorted(by_index) == sorted(by_scan) and len(by_index) == 396
    assert engine.execute("G.V().Has('Name', Within('intf-1', 'intf-2', 'nope')).Count()") == 2


def test_live_graph_changes_are_seen(engine: GremlinEngine) -> None:
    g = Graph()
    e = GremlinEngine(g)
    assert e.execute("G.V().Has('Name', 'x').Count()") == 0
    g.upsert_node(GraphElement(ID="x1", Metadata={"Name": "x"}, Host="h", Origin="o", CreatedAt=1, UpdatedAt=1,
                               Revision=1))
    assert e.execute("G.V().Has('Name', 'x').Count()") == 1  # same compiled query, new data


def test_limits(engine: GremlinEngine) -> None:
    tight = GremlinEngine(engine.graph, limits=QueryLimits(timeout_s=10.0, max_results=4))
    with pytest.raises(GremlinError) as err:
        tight.execute("G.V()")
    assert err.value.status == 413 and "more than 4" in str(err.value)
    assert tight.execute("G.V().Count()") == 15
    assert tight.execute("G.V().Limit(4).Count()") == 4
    slow = GremlinEngine(engine.graph, limits=QueryLimits(timeout_s=-1.0))
    with pytest.raises(GremlinError) as err:
        slow.execute("G.V()")
    assert err.value.status == 408


@pytest.mark.parametrize("query, text", [
    ("G.V().Bogus()", "unknown step Bogus()"),
    ("G.V().Has('MTU', Lt('x'))", "takes numbers"),
    ("G.V().Limit(-1)", "cannot be negative"),
    ("G.V().Values()", "exactly 1"),
    ("G.V().HasKey('a', 'b')", "exactly 1"),
    ("G.V().Sum()", "needs a key"),
    ("G.V().Descendants(-1)", "cannot be negative"),
    ("G.V().Aggregates(0)", "positive"),
    ("G.V().Has('Name', DESC)", "not a value"),
    ("G.E().Out()", "cannot follow a step that returns edges"),
    ("G.Flows()", "no flow store"),
    ("G.Context(NOW).V()", "no history backend"),
])
def test_bad_queries_are_400(engine: GremlinEngine, query: str, text: str) -> None:
    with pytest.raises(GremlinError) as err:
        engine.execute(query)
    assert err.value.status == 400 and text in str(err.value), str(err.value)
    assert err.value.position is not None


def test_shortest_path_indexed_and_scanned_agree() -> None:
    """An indexed target uses a bidirectional search, a scanned one a plain BFS: same lengths, valid paths."""
    import random
    g = td.generated_graph(1500, 3000, seed=5)
    engine = GremlinEngine(g)
    rnd = random.Random(1)
    links = {(e.Parent, e.Child) for e in g.edges.values()}
    for _ in range(60):
        a, b = rnd.randrange(1500), rnd.randrange(1500)
        fast = engine.execute(f"G.V('n{a}').ShortestPathTo(Metadata('Name', 'intf-{b}'))")
        slow = engine.execute(f"G.V('n{a}').ShortestPathTo(Metadata('Name', Regex('intf-{b}')))")
        assert [len(p) for p in fast] == [len(p) for p in slow]
        for path in fast:
            ids = [n["ID"] for n in path]
            assert ids[0] == f"n{a}" and ids[-1] == f"n{b}"
            assert all((x, y) in links or (y, x) in links for x, y in zip(ids, ids[1:]))


def test_past_graph_bulk_build_matches_upserts() -> None:
    """build_graph (bulk, lazy indexes) answers lookups and moves like a Graph filled by upserts."""
    from netsonde.gremlin.history import build_graph
    g = td.generated_graph(800, 1600)
    g.upsert_node(GraphElement(ID="multi", Metadata={"Name": "m", "IPV4": ["10.0.0.1/24", "10.0.0.2/24"],
                                                     "Flag": True, "MAC": None}, Host="h", Origin="o",
                               CreatedAt=1, UpdatedAt=1, Revision=1))
    past = build_graph(list(g.nodes.values()) + list(g.edges.values()), revisions=False)
    assert past.nodes == g.nodes and past.edges == g.edges
    for key, value in (("Name", "intf-5"), ("Type", "veth"), ("IPV4", "10.0.0.2/24"),
                       ("IfIndex", 7), ("MAC", "nope")):
        assert past.lookup(key, value) == g.lookup(key, value), key
    live, old = GremlinEngine(g), GremlinEngine(past)
    assert live.execute("G.V().Has('Type', 'veth').In().Count()") == old.execute(
        "G.V().Has('Type', 'veth').In().Count()")
    for q in ("G.V('n5').Out().Out().Values('@ID')", "G.V().Has('TID', Within('tid-3', 'tid-9')).Both().Values('@ID')"):
        assert sorted(live.execute(q)) == sorted(old.execute(q)), q
