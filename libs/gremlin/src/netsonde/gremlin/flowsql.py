"""The flow store client and the SQL that flow steps compile to.

`FlowStore` runs parameterised queries on the flow tables (`flowschema`); `predicate_sql` turns a
`Has(key, predicate)` into a condition whose every user value is a server-side parameter (`SqlParams`), the
column names coming from `flowschema.FIELD_TO_COLUMN`, never from the query text. `FlowsT` (flows.py) stacks
these conditions into one query.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from netsonde.common import flowschema as fs

from . import ast
from .errors import GremlinError
from .predicates import (
    Between,
    Eq,
    Gt,
    Gte,
    Inside,
    Ipv4Range,
    Lt,
    Lte,
    Ne,
    Nee,
    Outside,
    Predicate,
    Regex,
    Within,
    Without,
)
from .steps import HasNotPredicate, HasPredicate, Step

SELECT_COLUMNS = tuple(c for c in fs.FLOW_COLUMN_NAMES if c != "BatchID")
IMMUTABLE_COLUMNS = {
    "UUID",
    "NodeTID",
    "TrackingID",
    "L3TrackingID",
    "ParentUUID",
    "CaptureID",
    "LayersPath",
    "Application",
    "LinkProtocol",
    "LinkA",
    "LinkB",
    "LinkID",
    "NetworkProtocol",
    "NetworkA",
    "NetworkB",
    "NetworkID",
    "TransportProtocol",
    "TransportA",
    "TransportB",
    "TransportID",
    "ICMPType",
    "ICMPCode",
    "ICMPID",
    "Start",
    "NodeID",
    "Host",
}
"""Columns that never change across a flow's updates: filters on them go into the inner query too."""


class FlowStore:
    """Reads the flow tables (`flowschema`) of the client's database.

    `client_factory()` returns a clickhouse-connect client; one is created lazily and shared under a lock.
    `expire_s` is the flow expiry: a live flow is one whose last update is at most that old.
    """

    def __init__(self, client_factory: Callable[[], Any], expire_s: float = 600.0) -> None:
        self.client_factory = client_factory
        self.expire_ms = int(expire_s * 1000)
        self._client: Any = None
        self._lock = threading.Lock()
        self.queries = 0
        self.last_sql = ""
        """The last SQL sent (for tests and debugging)."""

    def query(
        self, sql: str, params: dict[str, Any], timeout_s: float, column_formats: dict[str, str] | None = None
    ) -> tuple[list[str], list[tuple[Any, ...]]]:
        settings = {"max_execution_time": max(int(timeout_s + 0.999), 1)}
        try:
            with self._lock:
                if self._client is None:
                    self._client = self.client_factory()
                self.last_sql = sql
                r = self._client.query(
                    sql, parameters=params, settings=settings, column_formats=column_formats
                )
                self.queries += 1
                return list(r.column_names), r.result_rows
        except GremlinError:
            raise
        except Exception as e:  # the driver's DatabaseError / OperationalError
            text = str(e)
            if "TIMEOUT_EXCEEDED" in text or "Timeout exceeded" in text:
                raise GremlinError("flow query exceeded the query time limit", status=408) from e
            if (
                "Code: 427." in text
            ):  # CANNOT_COMPILE_REGEXP: Python's re accepted it, ClickHouse's RE2 does not
                raise GremlinError(
                    "Regex() not accepted by the flow store (RE2 syntax: no lookaround, no backreferences)",
                    status=400,
                ) from e
            raise GremlinError(
                f"flow store unavailable: {text.splitlines()[0] if text else e!r}", status=503
            ) from e

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


class SqlParams:
    """Numbered server-side parameters: `add(value, type)` returns the `{pN:Type}` placeholder."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def add(self, value: Any, typ: str) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f"{{{name}:{typ}}}"


def columns_for(step: Step, key: str, arg: ast.Arg | None = None) -> tuple[str, ...]:
    cols = fs.FIELD_TO_COLUMN.get(key)
    if cols is None and (drop := fs.drop_reason_column(key)) is not None:
        cols = (drop,)  # DropReasons.<kernel reason name>: open keys, a lookup in the map
    if cols is None:
        known = ", ".join(
            sorted(k for k in fs.FIELD_TO_COLUMN if "[" not in k and not k.startswith(("TCPM", "IPM")))
        )
        raise step.error(f"unknown flow field {key!r}; known fields: {known}", arg)
    return cols


def _coerce(value: Any, typ: str) -> Any:
    """A query literal converted to the column's type, or None when it cannot match."""
    if typ == "String":
        if isinstance(value, bool):
            return None
        return value if isinstance(value, str) else str(value)
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, (int, float)):
        return int(value) if float(value).is_integer() else None
    try:
        return int(str(value), 0)
    except ValueError:
        return None


def _present_sql(key: str, col: str) -> str:
    layer = key.split(".", 1)[0]
    if layer in ("Link", "Network", "Transport"):
        return f"{layer}Protocol != ''"
    if layer == "ICMP":
        return "ICMPType != ''"
    typ = fs.column_type(col)
    return f"{col} != ''" if typ == "String" else "1"


PRESENCE_SQL = {
    "ICMP": "ICMPType != ''",
    "TCPMetric": "notEmpty(TCPMetric)",
    "IPMetric": "notEmpty(IPMetric)",
    "DropReasons": "notEmpty(DropReasons)",
    "Metric": "1",
    "LastUpdateMetric": "1",
}
"""Flow keys that are whole sub-objects: usable in Has(k) / HasNot(k) only."""


def predicate_sql(step: Step, key: str, pred: Predicate, params: SqlParams) -> str:
    """SQL condition for `Has(key, pred)` on the flows table; a layer alone means A or B."""
    if key in PRESENCE_SQL and isinstance(pred, (HasPredicate, HasNotPredicate)):
        cond = PRESENCE_SQL[key]
        return cond if isinstance(pred, HasPredicate) else f"NOT ({cond})"
    cols = columns_for(step, key)
    if fs.FLOW_COLUMN_TYPES.get(cols[0], "").startswith("Map("):  # TCPMetric, IPMetric, DropReasons
        raise step.error(
            f"{key} is a set of counters: Has('{key}') / HasNot('{key}') test it, a value goes "
            f"with one counter ('{key}.<name>')"
        )
    if isinstance(pred, HasPredicate):
        return _present_sql(key, cols[0])
    if isinstance(pred, HasNotPredicate):
        return f"NOT ({_present_sql(key, cols[0])})"
    negative = isinstance(pred, (Ne, Nee, Without))
    parts = [_one_column_sql(step, c, pred, params) for c in cols]
    joiner = " AND " if negative else " OR "
    cond = "(" + joiner.join(parts) + ")" if len(parts) > 1 else parts[0]
    if isinstance(pred, Ne):
        cond = f"({_present_sql(key, cols[0])} AND {cond})"
    return cond


def _one_column_sql(step: Step, col: str, pred: Predicate, params: SqlParams) -> str:
    typ = fs.column_type(col)
    numeric = typ != "String"
    if isinstance(pred, (Eq, Ne, Nee)):
        v = _coerce(pred.args[0], typ)
        if v is None:
            return "1" if isinstance(pred, (Ne, Nee)) else "0"
        op = "=" if isinstance(pred, Eq) else "!="
        return f"{col} {op} {params.add(v, typ)}"
    if isinstance(pred, (Within, Without)):
        vals = [x for x in (_coerce(a, typ) for a in pred.args) if x is not None]
        if not vals:
            return "1" if isinstance(pred, Without) else "0"
        op = "IN" if isinstance(pred, Within) else "NOT IN"
        return f"{col} {op} {params.add(vals, f'Array({typ})')}"
    if isinstance(pred, (Gt, Gte, Lt, Lte)):
        if not numeric:
            raise step.error(f"{pred.NAME}() applies to numeric flow fields, not {col}")
        p = params.add(pred.args[0], "Float64")
        return f"{col} {pred.OP} {p}"
    if isinstance(pred, (Inside, Outside, Between)):
        if not numeric:
            raise step.error(f"{pred.NAME}() applies to numeric flow fields, not {col}")
        a, b = params.add(pred.args[0], "Float64"), params.add(pred.args[1], "Float64")
        if isinstance(pred, Inside):
            return f"({col} > {a} AND {col} < {b})"
        if isinstance(pred, Between):
            return f"({col} >= {a} AND {col} < {b})"
        return f"({col} < {a} OR {col} > {b})"
    if isinstance(pred, Regex):
        target = f"toString({col})" if numeric else col
        return f"match({target}, {params.add('^(?:' + pred.args[0] + ')$', 'String')})"
    if isinstance(pred, Ipv4Range):
        if numeric:
            return "0"
        lo, hi = params.add(pred.lo, "UInt32"), params.add(pred.hi, "UInt32")
        return (
            f"(isIPv4String({col}) AND toUInt32(toIPv4OrZero({col})) >= {lo} "
            f"AND toUInt32(toIPv4OrZero({col})) <= {hi})"
        )
    raise step.error(f"{pred.NAME}() is not supported on flows")


def sort_column(step: Step, key: str) -> str:
    return columns_for(step, key)[0]
