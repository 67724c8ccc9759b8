"""Gremlin cannot reach SQL outside its parameterised queries: injection attempts in every flow field, every
predicate and the key names themselves, run against the real store (the `clickhouse_url` fixture).

The flows of `tests/gremlin_testdata.py` are stored with a canary table next to them. Every attempt gives the
correct result (no flow has the hostile value: an empty result, or for Ne/Without the same result as a
harmless value that matches nothing) or a 400 naming the problem; the canary rows and the table list are
unchanged; and the SQL text sent never contains the hostile value (it only travels as a typed parameter).
"""

from __future__ import annotations

import re
import time
from typing import Any

import pytest

from netsonde.common import flowschema as fs
from netsonde.common.clickhouse import connect, run_migrations
from netsonde.gremlin import FlowStore, GremlinEngine, GremlinError, QueryLimits
from tests import gremlin_testdata as td

PAYLOADS = [
    "x' OR 1=1 --",
    "'; DROP TABLE canary; --",
    "\\' OR '1'='1",
    "1) OR (1=1",
    "0 OR 1=1",
    "' UNION ALL SELECT secret FROM canary --",
    '" OR ""="',
    "{p0:String}",
    "`canary`",
    "1; INSERT INTO canary VALUES ('pwned')",
    "x'/*",
]
KEY_PAYLOADS = ["Metric.ABBytes) OR 1=1 --", "UUID FROM canary --", "Network.A'", "1=1; DROP TABLE canary"]
HARMLESS = "zz-no-such-value"

pytestmark = pytest.mark.slow


class RecordingFlowStore(FlowStore):
    """The real store client, keeping every (SQL, parameters) it sends."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sent: list[tuple[str, dict[str, Any]]] = []

    def query(self, sql: str, params: dict[str, Any], timeout_s: float,
              column_formats: dict[str, str] | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        self.sent.append((sql, dict(params)))
        return super().query(sql, params, timeout_s, column_formats)


def lit(value: str) -> str:
    """A Gremlin string literal of `value` (escaped)."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


@pytest.fixture(scope="module")
def unique() -> str:  # module-scoped override: one database for the module
    import uuid

    return uuid.uuid4().hex[:8]


@pytest.fixture(scope="module")
def store(clickhouse_url: str, unique: str):  # type: ignore[no-untyped-def]
    db = f"sqli_{unique}"
    run_migrations(clickhouse_url, db, fs.COMPONENT, fs.migrations(0))
    client = connect(clickhouse_url, db)
    td.insert_flows(client, td.flow_updates(int(time.time() * 1000)))
    client.command("CREATE TABLE canary (secret String) ENGINE = MergeTree ORDER BY secret")
    client.command("INSERT INTO canary VALUES ('canary-1'), ('canary-2')")
    flows = RecordingFlowStore(lambda: connect(clickhouse_url, db))
    engine = GremlinEngine(td.live_graph(), flows=flows, limits=QueryLimits(timeout_s=30.0, max_results=10_000))
    yield engine, flows, client
    flows.close()
    client.command(f"DROP DATABASE IF EXISTS `{db}`")
    client.close()


def run(engine: GremlinEngine, query: str) -> Any:
    try:
        return engine.execute(query)
    except GremlinError as exc:
        return exc


def value_fields(engine: GremlinEngine) -> tuple[list[str], list[str]]:
    """(fields Has() compares with a value, numeric ones among them): every flow field but the sub-objects."""
    fields = [k for k in sorted(fs.FIELD_TO_COLUMN) if "[" not in k
              and not isinstance(run(engine, f"G.Flows().Has('{k}', {lit(HARMLESS)}).Count()"), GremlinError)]
    numeric = [k for k in fields if all(fs.column_type(c) != "String" for c in fs.FIELD_TO_COLUMN[k])]
    return fields, numeric


def every(fields: list[str], pred: str) -> str:
    """`'f1', pred, 'f2', pred, ...`: one query puts the hostile value against every field."""
    return ", ".join(f"'{f}', {pred}" for f in fields)


def test_injection_in_values_of_every_field_and_predicate(store) -> None:  # type: ignore[no-untyped-def]
    engine, flows, client = store
    tables = stored(client)
    assert engine.execute("G.Flows().Count()") == 6
    fields, numeric = value_fields(engine)
    assert {"Network.A", "Link.B", "Transport.A", "Metric.ABBytes", "LayersPath", "TrackingID", "DNS.Questions.Name",
            "ICMP.Type", "NodeTID", "UUID"} <= set(fields) and "Metric.RTT" in numeric
    flows.sent.clear()
    counts = {"queries": 0, "empty": 0, "same_as_harmless": 0, "400": 0}
    for payload in PAYLOADS:
        p, h = lit(payload), lit(HARMLESS)
        matching = [f"HasEither({every(fields, p)})", f"HasEither({every(fields, f'Within({p}, {h})')})",
                    f"HasEither({every(fields, f'Regex({lit(re.escape(payload))})')})",
                    f"HasEither({every(fields, f'Regex({p})')})", f"HasEither({every(fields, f'Ipv4Range({p})')})"]
        refused = [f"Has('{numeric[0]}', Gt({p}))", f"Has('{numeric[0]}', Lte({p}))",
                   f"Has('{numeric[0]}', Inside({p}, {p}))", f"Has('{numeric[0]}', Between(0, {p}))",
                   f"Has('Network.A', Gte({p}))"]
        complement = [(f"Has({every(fields, f'Ne({p})')})", f"Has({every(fields, f'Ne({h})')})"),
                      (f"Has({every(fields, f'Nee({p})')})", f"Has({every(fields, f'Nee({h})')})"),
                      (f"Has({every(fields, f'Without({p}, {h})')})", f"Has({every(fields, f'Without({h})')})")]
        if payload == PAYLOADS[0]:  # and one field at a time (a per-field query, as a user writes it)
            complement += [(f"Has('{f}', Ne({p}))", f"Has('{f}', Ne({h}))") for f in fields]
        for q in matching + refused:
            counts["queries"] += 1
            r = run(engine, f"G.Flows().{q}.Values('UUID')")
            if isinstance(r, GremlinError):
                assert r.status == 400, (q[:200], r.status, str(r)[:300])
                counts["400"] += 1
            else:
                assert r == [] and q not in refused, (q[:200], r)
                counts["empty"] += 1
        for q, same in complement:
            counts["queries"] += 1
            r = run(engine, f"G.Flows().{q}.Values('UUID')")
            expected = run(engine, f"G.Flows().{same}.Values('UUID')")
            assert not isinstance(r, GremlinError), (q[:200], str(r)[:300])
            assert sorted(r) == sorted(expected), (q[:200], r, expected)
            counts["same_as_harmless"] += 1
    assert_untouched(client, tables)
    assert_parameterised(flows, PAYLOADS)
    print(f"\nSQL injection, values: {counts} over {len(fields)} flow fields and {len(PAYLOADS)} payloads; "
          f"{len(flows.sent)} SQL statements checked")
    assert counts["empty"] >= 3 * len(PAYLOADS) and counts["same_as_harmless"] >= len(fields) + 3 * len(PAYLOADS)


def test_injection_in_key_names_and_step_arguments(store) -> None:  # type: ignore[no-untyped-def]
    engine, flows, client = store
    tables = stored(client)
    flows.sent.clear()
    n = 0
    for key in KEY_PAYLOADS + PAYLOADS:
        k = lit(key)
        for q in [f"Has({k}, 1)", f"Has({k})", f"HasNot({k})", f"HasKey({k})", f"HasEither({k}, 1, {k}, 2)",
                  f"Has({k}, Gt(1))", f"Sort({k})", f"Sort(DESC, {k})", f"Dedup({k})", f"Values({k})",
                  f"Sum({k})", f"Limit(1).Values({k})"]:
            n += 1
            r = run(engine, f"G.Flows().{q}")
            assert isinstance(r, GremlinError) and r.status == 400, (q, r)
            assert "flow field" in str(r) or repr(key) in str(r), (q, str(r))  # names the key
        # Group() groups the fetched flows in Python (no SQL from the key): an unknown key is one empty group
        r = run(engine, f"G.Flows().Group({k})")
        assert isinstance(r, GremlinError) or list(r[0]) == [""], r
    # step arguments that are numbers or times in SQL: a hostile string is refused before any SQL
    for payload in PAYLOADS:
        p = lit(payload)
        for q in [f"G.Flows().Limit({p})", f"G.Flows().Range({p}, 2)", f"G.At({p}).Flows()",
                  f"G.Context({p}).Flows()", f"G.Flows().Metrics().Aggregates({p})", f"G.V({p}).Flows().Count()",
                  f"G.V().Has('Name', {p}).Flows().Count()"]:
            n += 1
            r = run(engine, q)
            assert (isinstance(r, GremlinError) and r.status == 400) or r in (0, []), (q, r)
    assert_untouched(client, tables)
    assert_parameterised(flows, PAYLOADS + KEY_PAYLOADS, carried=False)  # all refused before any SQL
    print(f"\nSQL injection, keys and step arguments: {n} queries refused or empty; "
          f"{len(flows.sent)} SQL statements reached the store")


def stored(client: Any) -> tuple[list[str], Any]:
    """The table list and the contents that an injection could change."""
    tables = sorted(r[0] for r in client.query("SHOW TABLES").result_rows)
    rows = client.query(f"SELECT count(), sum(MetricABBytes), groupArraySorted(100)(UUID) FROM {fs.FLOWS_TABLE}").result_rows
    return tables, rows


def assert_untouched(client: Any, before: tuple[list[str], Any]) -> None:
    assert stored(client) == before
    assert client.query("SELECT secret FROM canary ORDER BY secret").result_rows == [("canary-1",), ("canary-2",)]


def assert_parameterised(flows: RecordingFlowStore, payloads: list[str], carried: bool = True) -> None:
    """No hostile value in any SQL text; with `carried`, some reached the store, as parameters."""
    for sql, params in flows.sent:
        for payload in payloads:
            assert payload not in sql, (payload, sql)
        assert "canary" not in sql.lower(), sql
    values = {str(v) for _, params in flows.sent for v in params.values()}
    values |= {str(x) for _, params in flows.sent for v in params.values() if isinstance(v, list) for x in v}
    assert any(p in v for p in payloads for v in values) == carried
