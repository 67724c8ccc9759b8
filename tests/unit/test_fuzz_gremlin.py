"""Fuzzing the Gremlin lexer, parser and engine with hypothesis: random strings, token soup and mutated valid
queries give a result or a GremlinError (a parse error names its position), never another exception and never
a hang.

The engine runs on the fixed live graph of `tests/gremlin_testdata.py` with a 1 s time limit; queries that need
ClickHouse (Flows, Context/At) answer their GremlinError here (tests/integration/test_gremlin_sql_injection.py
runs flow queries against the real store). Each query must come back within 3 s.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from netsonde.gremlin import GremlinEngine, GremlinError, QueryLimits
from tests import gremlin_testdata as td
from netsonde.gremlin.lexer import tokenize
from netsonde.gremlin.parser import parse

FUZZ = settings(max_examples=250, deadline=None, database=None, suppress_health_check=list(HealthCheck))
TIME_LIMIT_S = 1.0
CASES: dict[str, int] = {}

VALID = [
    "G.V().Count()", "g.V().Has('Name', 'eth0')", 'G.V("n-eth0").Out().Values("Name")', "G.E().Count()",
    "G.V().Has('Type', Within('veth', 'bridge')).Dedup().Count()", "G.V().HasKey('MTU').Sort('MTU', DESC).Limit(3)",
    "G.V().Has('MTU', Gt(1000)).Both().BothE().Count()", "G.V().Has('Name', Regex('eth.*')).Values('Name')",
    "G.V().Has('Name', 'eth0').ShortestPathTo(Metadata('Type', 'host'))", "G.V().HasNot('IPV4').Count()",
    "G.V().Has('Name', 'br-int').Descendants(2).Values('Name')", "G.V().Has('Type', 'ovsbridge').Out().Out()",
    "G.V().Has('IPV4', Ipv4Range('10.0.0.0/8')).Values('IPV4')", "G.V().Range(1, 4).ValueMap('Name', 'Type')",
    "G.V().Group('Type').Count()", "G.V().As('a').Out().Select('a').Count()", "G.V().Keys()",
    "G.V().Has('Name', Ne('lo')).InV().OutE().Has('RelationType', 'layer2').SubGraph()",
    "G.V().Has('MTU', Inside(1000, 10000)).Sum('MTU')", "G.V().Neighbors(3).Count()",
    "G.Flows().Has('Network.A', '10.0.0.1').Hops()", "G.At('-1h').V().Count()",
    "G.Context(NOW, 60).V().Count()", "G.V().Has('Name', 'eth0').Flows().Sort().Limit(1)",
    "G.V().Metrics().Aggregates(10)", "G.V().CaptureNode()", "G.V().Has('Name','x').Nodes()",
]
VOCAB = ["G", "g", ".", "(", ")", ",", "'", '"', "V", "E", "Has", "Out", "In", "Both", "Count", "Dedup", "Sort",
         "Limit", "Range", "Within", "Without", "Gt", "Lt", "Inside", "Between", "Regex", "Ipv4Range", "Metadata",
         "Flows", "At", "Context", "NOW", "FOREVER", "ASC", "DESC", "true", "false", "1", "-1", "1.5e300",
         "99999999999999999999999", "'Name'", "'eth0'", "\\", "\n", "\x00", "é", "'unterminated", "0x1F", "..."]


@pytest.fixture(scope="module")
def engine() -> GremlinEngine:
    return GremlinEngine(td.live_graph(), limits=QueryLimits(timeout_s=TIME_LIMIT_S, max_results=10_000))


@pytest.fixture(scope="module", autouse=True)
def _print_cases() -> Iterator[None]:
    yield
    print("\nfuzz cases (gremlin): " + ", ".join(f"{k}={v}" for k, v in sorted(CASES.items())))


def run_bounded(engine: GremlinEngine, query: str, kind: str) -> None:
    """The query gives a result or a GremlinError (with a position when it does not parse), in time."""
    CASES[kind] = CASES.get(kind, 0) + 1
    try:
        parse(query)
        parsed = True
    except GremlinError as exc:
        parsed = False
        assert exc.status == 400 and exc.position is not None and 0 <= exc.position <= len(query), (query, exc)
    started = time.monotonic()
    try:
        engine.execute(query)
    except GremlinError as exc:
        assert 400 <= exc.status < 600 and str(exc)
        if not parsed:
            assert exc.position is not None
    else:
        assert parsed
    assert time.monotonic() - started < 3 * TIME_LIMIT_S, query


def test_the_valid_corpus_parses(engine: GremlinEngine) -> None:
    for query in VALID:
        parse(query)
        tokenize(query)
    assert engine.execute("G.V().Count()") == 15


@FUZZ
@given(st.text(max_size=120))
def test_random_strings(engine: GremlinEngine, text: str) -> None:
    run_bounded(engine, text, "random_text")
    run_bounded(engine, "G.V()." + text, "random_after_prefix")


@FUZZ
@given(st.lists(st.sampled_from(VOCAB), max_size=30))
def test_token_soup(engine: GremlinEngine, tokens: list[str]) -> None:
    run_bounded(engine, "".join(tokens), "token_soup")


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """A valid query with characters deleted, replaced or inserted, or vocabulary spliced in."""
    q = draw(st.sampled_from(VALID))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(q)))
        op = draw(st.integers(0, 2))
        piece = draw(st.sampled_from(VOCAB) | st.characters())
        if op == 0:
            q = q[:pos] + q[pos + 1:]
        elif op == 1:
            q = q[:pos] + piece + q[pos + 1:]
        else:
            q = q[:pos] + piece + q[pos:]
    return q


@FUZZ
@given(mutated())
def test_mutated_valid_queries(engine: GremlinEngine, query: str) -> None:
    run_bounded(engine, query, "mutated")


@pytest.mark.parametrize("query", [
    "G.V().Has('a'," + "Within(" * 5000 + "1" + ")" * 5000 + ")",  # deep predicate nesting: a parse error
    "G.V()" + ".Out()" * 5_000,  # a long chain: bounded by the time limit
    "G.V()" + ".Both()" * 200 + ".Count()",
    "G.V().Has('Name', Regex('(a*)*b'))",  # catastrophic backtracking in a naive regex engine
    "G.V().Has('Name', Regex('" + "(" * 500 + "a" + ")" * 500 + "'))",
    "G" + "." * 100_000, "'" * 100_001, "G.V(" + "'a'," * 10_000 + "'a')",
])
def test_hostile_queries_end_in_time(engine: GremlinEngine, query: str) -> None:
    run_bounded(engine, query, "hostile")


def test_regex_matching_is_linear_on_long_metadata() -> None:
    """`(a+)+b` against 5 000 a's: exponential for a backtracking engine, instant with RE2 (the query's time
    limit is only checked between steps, so one match must not run away)."""
    from netsonde.common.bus.graph import GraphElement

    graph = td.live_graph()
    graph.upsert_node(GraphElement(ID="long", Host="h1", Origin="test", CreatedAt=1, UpdatedAt=1, Revision=1,
                                   Metadata={"Name": "long", "Type": "device",
                                             "Description": "a" * 5000 + "!"}))
    engine = GremlinEngine(graph, limits=QueryLimits(timeout_s=TIME_LIMIT_S, max_results=10_000))
    for pattern in ("(a+)+b", "(a|aa)*c", "(a*)*$x"):
        started = time.monotonic()
        assert engine.execute(f"G.V().Has('Description', Regex('{pattern}')).Count()") == 0
        assert time.monotonic() - started < 0.5, pattern
    assert engine.execute("G.V().Has('Description', Regex('a+!')).Count()") == 1
    with pytest.raises(GremlinError, match="invalid regular expression") as exc:
        engine.execute("G.V().Has('Name', Regex('(?=eth)eth0'))")  # lookahead: not RE2 (nor Go, nor ClickHouse)
    assert exc.value.status == 400 and exc.value.position is not None
