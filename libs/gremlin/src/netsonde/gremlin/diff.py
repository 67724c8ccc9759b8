"""What changed in the graph between two instants: nodes and edges added, removed, and the metadata keys that
changed (old -> new), computed from the stored revisions (`graph_revisions`), never by rebuilding two graphs.

One SQL query per scope: the IDs with a revision in (from, to] (the scope's IDs only, when a scope is given),
then for each of them its last revision at or before `from` and at or before `to` (argMax by revision).

Scope: the traversal's nodes (`G.V().Has('Name','br-int').Descendants(0).Diff('-1h')`) plus the edges
touching them. A node removed in the window is no longer in a live traversal: it is added to the scope when
an edge between it and a scope node changed in the window (a veth deleted from a namespace, a port removed
from a bridge), with the edges between such neighbours (the deleted pair's own link); these are reported
only as added or removed, never as changed.

Metadata is compared flattened to dotted keys (`MTU`, `Ovs.Status`); list entries with an identity are keyed
by it (`RoutingTables[254].Routes[10.9.0.0/24]`, `Neighbors[10.0.0.2]`), other lists compare whole.
Counter keys (`Metric`, `LastUpdateMetric` anywhere in the path) change all the time and are ignored unless
asked for.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from netsonde.common import graphschema

from .errors import GremlinError
from .steps import Step, extension_step
from .timeparse import now_ms, parse_time
from .traversal import Context, GraphT, NodesT, Value

_LIST_IDENTITY: dict[str, tuple[str, bool]] = {
    "RoutingTables": ("ID", True),
    "Routes": ("Prefix", False),
    "Neighbors": ("IP", False),
    "Captures": ("ID", False),
}
"""List name -> (identity key of its entries, whether an entry is flattened further). An entry that is not
flattened further is one value: a route added is one change."""

COUNTER_KEYS = frozenset({"Metric", "LastUpdateMetric"})
"""Path segments of counter metadata, ignored by default (every refresh changes them)."""

_SQL = """
SELECT toString(kind) AS kind, id,
       countIf(updated_at <= fromUnixTimestamp64Milli({lo:Int64}, 'UTC')) AS n_before,
       argMaxIf(deleted_at IS NOT NULL, revision,
                updated_at <= fromUnixTimestamp64Milli({lo:Int64}, 'UTC')) AS del_before,
       argMaxIf(metadata, revision, updated_at <= fromUnixTimestamp64Milli({lo:Int64}, 'UTC')) AS md_before,
       argMax(deleted_at IS NOT NULL, revision) AS del_after,
       argMax(metadata, revision) AS md_after,
       argMaxIf(parent, revision, parent != '') AS parent, argMaxIf(child, revision, child != '') AS child,
       argMax(toString(host), revision) AS host,
       toUnixTimestamp64Milli(argMax(updated_at, revision)) AS changed_at,
       toUnixTimestamp64Milli(min(created_at)) AS created_at
FROM {table}
WHERE updated_at <= fromUnixTimestamp64Milli({hi:Int64}, 'UTC')
  AND (kind, id) IN (SELECT kind, id FROM {table}
                     WHERE updated_at > fromUnixTimestamp64Milli({lo:Int64}, 'UTC')
                       AND updated_at <= fromUnixTimestamp64Milli({hi:Int64}, 'UTC') {scope})
GROUP BY kind, id
"""
"""Per ID changed in (lo, hi]: its state at lo (n_before = 0: did not exist yet) and at hi."""

_SKIP_COUNTER_ONLY = """
SELECT * FROM ({inner})
WHERE NOT (n_before > 0 AND NOT del_before AND NOT del_after AND
           arrayFilter(kv -> kv.1 NOT IN ('Metric', 'LastUpdateMetric'),
                       JSONExtractKeysAndValuesRaw(md_before))
           = arrayFilter(kv -> kv.1 NOT IN ('Metric', 'LastUpdateMetric'),
                         JSONExtractKeysAndValuesRaw(md_after)))
"""
"""Drops, inside ClickHouse, the IDs whose only change is a top-level counter refresh (most revisions): the
metadata is parsed there in C++ instead of in Python. Anything it keeps is compared key by key in Python."""

_decode_md = msgspec.json.Decoder(dict[str, Any]).decode


def flatten(md: dict[str, Any], ignore_counters: bool = True) -> dict[str, Any]:
    """Metadata -> {dotted key: leaf value} (see the module doc for lists)."""
    out: dict[str, Any] = {}
    _flatten(md, "", out, ignore_counters)
    return out


def _flatten(value: Any, prefix: str, out: dict[str, Any], ignore_counters: bool) -> None:
    if isinstance(value, dict):
        if not value and prefix:
            out[prefix] = value
        for k, v in value.items():
            if ignore_counters and k in COUNTER_KEYS:
                continue
            _flatten(v, f"{prefix}.{k}" if prefix else str(k), out, ignore_counters)
        return
    name = prefix.rsplit(".", 1)[-1]
    ident = _LIST_IDENTITY.get(name)
    if (
        isinstance(value, list)
        and ident is not None
        and value
        and all(isinstance(x, dict) and ident[0] in x for x in value)
    ):
        key, deeper = ident
        for item in value:
            p = f"{prefix}[{item[key]}]"
            if deeper:
                _flatten({k: v for k, v in item.items() if k != key}, p, out, ignore_counters)
            else:
                out[p] = item
        return
    out[prefix] = value


def changed_keys(
    before: dict[str, Any], after: dict[str, Any], ignore_counters: bool = True, ignore: Iterable[str] = ()
) -> list[dict[str, Any]]:
    """[{Key, Old, New, Change: added|removed|changed}] sorted by key; keys starting with an `ignore`
    prefix left out."""
    a, b = flatten(before, ignore_counters), flatten(after, ignore_counters)
    skip = tuple(ignore)
    out = []
    for k in sorted(a.keys() | b.keys()):
        if skip and k.startswith(skip):
            continue
        if k not in a:
            out.append({"Key": k, "Old": None, "New": b[k], "Change": "added"})
        elif k not in b:
            out.append({"Key": k, "Old": a[k], "New": None, "Change": "removed"})
        elif a[k] != b[k]:
            out.append({"Key": k, "Old": a[k], "New": b[k], "Change": "changed"})
    return out


@dataclass
class GraphDiff:
    """The answer: elements added/removed (their last state) and nodes/edges changed (their key changes)."""

    lo: int
    hi: int
    nodes_added: list[dict[str, Any]] = field(default_factory=list)
    nodes_removed: list[dict[str, Any]] = field(default_factory=list)
    nodes_changed: list[dict[str, Any]] = field(default_factory=list)
    edges_added: list[dict[str, Any]] = field(default_factory=list)
    edges_removed: list[dict[str, Any]] = field(default_factory=list)
    edges_changed: list[dict[str, Any]] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "From": self.lo,
            "To": self.hi,
            "Nodes": {
                "Added": self.nodes_added,
                "Removed": self.nodes_removed,
                "Changed": self.nodes_changed,
            },
            "Edges": {
                "Added": self.edges_added,
                "Removed": self.edges_removed,
                "Changed": self.edges_changed,
            },
        }


class GraphDiffer:
    """Runs the diff queries on the history store's ClickHouse client (`HistoryStore.client()`)."""

    def __init__(self, history: Any, max_rows: int = 1_000_000) -> None:
        self.history = history
        self.max_rows = max_rows
        self._lock: threading.Lock = getattr(history, "_lock", threading.Lock())

    def _rows(
        self,
        lo: int,
        hi: int,
        scope_sql: str,
        params: dict[str, Any],
        timeout_s: float,
        skip_counter_only: bool = False,
    ) -> list[tuple[Any, ...]]:
        table = self.history.table
        sql = _SQL.replace("{table}", table).replace("{scope}", scope_sql)
        if skip_counter_only:
            sql = _SKIP_COUNTER_ONLY.replace("{inner}", sql)
        settings = {
            "max_execution_time": max(int(timeout_s + 0.999), 1),
            "max_result_rows": self.max_rows + 1,
            "result_overflow_mode": "throw",
        }
        try:
            with self._lock:
                r = self.history.client().query(
                    sql, parameters={"lo": lo, "hi": hi, **params}, settings=settings
                )
            return list(r.result_rows)
        except Exception as e:  # the driver's DatabaseError / OperationalError
            text = str(e)
            if "TOO_MANY_ROWS" in text or "Limit for result exceeded" in text:
                raise GremlinError(
                    f"diff too large: more than {self.max_rows} elements changed "
                    f"(narrow the window or give a scope)",
                    status=413,
                ) from e
            if "TIMEOUT_EXCEEDED" in text or "Timeout exceeded" in text:
                raise GremlinError("diff exceeded the query time limit", status=408) from e
            raise GremlinError(
                f"graph history unavailable: {text.splitlines()[0] if text else e!r}", status=503
            ) from e

    def diff(
        self,
        lo: int,
        hi: int,
        scope: list[str] | None = None,
        timeout_s: float = 10.0,
        ignore_counters: bool = True,
        ignore: Iterable[str] = (),
    ) -> GraphDiff:
        """Changes in (lo, hi] (Unix ms); `scope` = node IDs (None = the whole graph)."""
        if hi < lo:
            raise GremlinError(f"diff: 'to' ({hi}) is before 'from' ({lo})")
        out = GraphDiff(lo, hi)
        ignore = tuple(ignore)
        if scope is None:
            rows = self._rows(lo, hi, "", {}, timeout_s, skip_counter_only=ignore_counters)
            self._classify(out, rows, ignore_counters, ignore, only_add_remove=set())
            return out
        if not scope:
            return out
        ids = sorted(set(scope))
        scope_sql = (
            "AND ((kind = 'node' AND id IN {scope:Array(String)}) OR (kind = 'edge' AND "
            "(parent IN {scope:Array(String)} OR child IN {scope:Array(String)})))"
        )
        rows = self._rows(lo, hi, scope_sql, {"scope": ids}, timeout_s, skip_counter_only=ignore_counters)
        in_scope = set(ids)
        neighbours = sorted(
            {end for r in rows if r[0] == "edge" for end in (r[7], r[8]) if end and end not in in_scope}
        )
        extra: list[tuple[Any, ...]] = []
        if neighbours:  # the removed neighbours, and the edges between them (a deleted veth pair's link)
            extra = self._rows(
                lo,
                hi,
                "AND ((kind = 'node' AND id IN {extra:Array(String)}) OR (kind = 'edge' "
                "AND parent IN {extra:Array(String)} AND child IN {extra:Array(String)}))",
                {"extra": neighbours},
                timeout_s,
            )
        only_add_remove = set(neighbours) | {r[1] for r in extra if r[0] == "edge"}
        self._classify(out, rows + extra, ignore_counters, ignore, only_add_remove)
        return out

    def _classify(
        self,
        out: GraphDiff,
        rows: list[tuple[Any, ...]],
        ignore_counters: bool,
        ignore: tuple[str, ...],
        only_add_remove: set[str],
    ) -> None:
        for (
            kind,
            eid,
            n_before,
            del_before,
            md_before,
            del_after,
            md_after,
            parent,
            child,
            host,
            changed_at,
            created_at,
        ) in rows:
            existed = n_before > 0 and not del_before
            exists = not del_after
            is_edge = kind == "edge"
            if existed == exists and eid in only_add_remove:
                continue
            base: dict[str, Any] = {"ID": eid, "Host": host, "ChangedAt": changed_at}
            if is_edge:
                base["Parent"], base["Child"] = parent, child
            if existed and exists:
                if md_before == md_after:
                    continue
                try:
                    old, md = _decode_md(md_before or "{}"), _decode_md(md_after or "{}")
                except msgspec.DecodeError as e:
                    raise GremlinError(
                        f"graph history holds malformed metadata for {eid}: {e}", status=500
                    ) from e
                if ignore_counters and _without_counters(old) == _without_counters(md):
                    continue  # the usual revision: a counter refresh (checked before flattening: 10x cheaper)
                changes = changed_keys(old, md, ignore_counters, ignore)
                if not changes:
                    continue
                item = {**base, "Name": md.get("Name", ""), "Type": md.get("Type", ""), "Changes": changes}
                if is_edge:
                    item["RelationType"] = md.get("RelationType", "")
                (out.edges_changed if is_edge else out.nodes_changed).append(item)
            elif existed or exists:
                md = _decode_md((md_after if exists else md_before) or "{}")
                item = {**base, "Metadata": md, "CreatedAt": created_at}
                if existed:
                    (out.edges_removed if is_edge else out.nodes_removed).append(item)
                else:
                    (out.edges_added if is_edge else out.nodes_added).append(item)
        for lst in (
            out.nodes_added,
            out.nodes_removed,
            out.nodes_changed,
            out.edges_added,
            out.edges_removed,
            out.edges_changed,
        ):
            lst.sort(key=lambda d: (d["ChangedAt"], d["ID"]))


def _without_counters(md: dict[str, Any]) -> dict[str, Any]:
    """Top-level counter keys removed (nested ones, e.g. Ovs.Metric, are left to the flattened compare)."""
    return {k: v for k, v in md.items() if k not in COUNTER_KEYS}


def format_change(change: dict[str, Any]) -> str:
    """`MTU: 1500 -> 1400` (absent values shown as -)."""
    old = "-" if change["Change"] == "added" else _short(change["Old"])
    new = "-" if change["Change"] == "removed" else _short(change["New"])
    return f"{change['Key']}: {old} -> {new}"


def _short(v: Any) -> str:
    if isinstance(v, (dict, list)):
        return msgspec.json.encode(v).decode()
    return str(v)


HISTORY_TABLE = graphschema.TABLE


class DiffT(Value):
    """Diff(): one object {From, To, Nodes: {Added, Removed, Changed}, Edges: {...}}."""

    KIND = "diff"

    def __init__(self, diff: GraphDiff) -> None:
        self.diff = diff

    def to_json(self) -> Any:
        return [self.diff.to_json()]


def window_args(step: Step, ctx: Context, args: tuple[Any, ...] | None = None) -> tuple[int, int]:
    """(from, to) in Unix ms of a `(from[, to])` step: `to` defaults to now; under `At(t)` a single argument
    is `to` and `from` is the At() instant (`G.At('-1h').V()...Diff(NOW)`)."""
    args = step.args if args is None else args
    now = now_ms()
    if len(args) == 1 and ctx.at_ms is not None:
        return ctx.at_ms, parse_time(args[0], now)
    lo = parse_time(args[0], now)
    hi = parse_time(args[1], now) if len(args) >= 2 else now
    if hi < lo:
        raise step.error("'to' is before 'from'")
    return lo, hi


@extension_step("Diff")
class Diff(Step):
    """`G.Diff(from[, to])`: what changed in the whole graph between two instants (to = NOW by default);
    `V(...)...Diff(from[, to])`: only those nodes and the edges touching them (see the module doc);
    `G.At(t1).V()...Diff(t2)`: the scope taken at t1, changes from t1 to t2."""

    def setup(self) -> None:
        self.nargs(1, 2)

    def _run(self, ctx: Context, scope: list[str] | None) -> Value:
        if ctx.history is None:
            raise self.error("this engine has no history backend (Diff needs ClickHouse)")
        lo, hi = window_args(self, ctx)
        return DiffT(GraphDiffer(ctx.history).diff(lo, hi, scope, timeout_s=ctx.remaining_s()))

    def on_graph(self, ctx: Context, value: GraphT) -> Value:
        return self._run(ctx, None)

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        return self._run(ctx, [n.ID for n in value.iter()])


__all__ = [
    "COUNTER_KEYS",
    "Diff",
    "DiffT",
    "GraphDiff",
    "GraphDiffer",
    "changed_keys",
    "flatten",
    "format_change",
    "window_args",
]
