"""Flow steps: `Flows()` and what follows it, compiled to one parameterised ClickHouse query.

`G.Flows()` / `V(...).Flows()` start a `FlowsT`, which accumulates SQL stages (filters, dedup, sort, slice)
and runs only when a step needs rows (or at the end). Every user value travels as a server-side parameter
(`{p3:String}`); column names come from `flowschema.FIELD_TO_COLUMN`, never from the query text.

Which flow states are read:
- live (no Context): each flow's latest update whose `Last` is within the flow expiry (`expire_s`);
- `Context(t)`: flows alive at t (Start <= t, Last >= t - expiry), each in its last state at or before t;
- `Context(t, d)`: flows whose activity [Start, Last] overlaps [t-d, t], in their last state at or before t.

The store client and the predicate SQL are in `flowsql.py`; raw packets, BPF() and groups in `flowvalues.py`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from netsonde.common import flowschema as fs
from netsonde.common.bus.graph import GraphElement
from netsonde.common.capture_types import CAPTURABLE_NODE_TYPES

from .core import parse_sort_args
from .fields import flatten_keys, path_values
from .flowsql import (
    IMMUTABLE_COLUMNS,
    PRESENCE_SQL,
    SELECT_COLUMNS,
    FlowStore,
    SqlParams,
    columns_for,
    predicate_sql,
    sort_column,
)
from .flowvalues import RawPacketsT, group_flows
from .steps import Step, extension_step, parse_pairs
from .traversal import Context, GraphT, GraphView, MetricsT, NodesT, PathsT, ScalarT, Value, ValuesT


class FlowsT(Value):
    """A lazily compiled flow query; handles the steps that can follow Flows() (see `step_handler`)."""

    KIND = "flows"

    def __init__(
        self, ctx: Context, store: FlowStore, view: GraphView, tids: list[str] | None, ids: list[str] | None
    ) -> None:
        self.store = store
        self.view = view
        self.params = SqlParams()
        self.stages: list[str] = []
        """Outer stages, each a format string with `{inner}` for the previous SQL."""
        self.inner_where: list[str] = []
        self.outer_where: list[str] = []
        self.ctx = ctx
        self._rows: list[dict[str, Any]] | None = None
        self._time_filters(ctx, tids, ids)

    # --- SQL building -----------------------------------------------------------------------------------
    def _time_filters(self, ctx: Context, tids: list[str] | None, ids: list[str] | None) -> None:
        expire = self.store.expire_ms
        if ctx.at_ms is None:
            self.hi = None
            self.inner_where.append(f"Last >= {self.params.add(int(time.time() * 1000) - expire, 'Int64')}")
        else:
            hi = ctx.at_ms
            lo = hi - ctx.window_ms if ctx.window_ms is not None else hi - expire
            self.hi = hi
            self.inner_where.append(f"Start <= {self.params.add(hi, 'Int64')}")
            self.inner_where.append(f"Last >= {self.params.add(lo, 'Int64')}")
        if tids is not None:
            conds = [f"NodeTID IN {self.params.add(tids, 'Array(String)')}"]
            if ids:
                conds.append(f"NodeID IN {self.params.add(ids, 'Array(String)')}")
            self.inner_where.append("(" + " OR ".join(conds) + ")")

    def _base_sql(self) -> str:
        cols = ", ".join(SELECT_COLUMNS)
        where = " AND ".join(self.inner_where) or "1"
        if self.hi is None:
            order = "ORDER BY Last DESC LIMIT 1 BY UUID"
        else:
            hi = self.params.add(self.hi, "Int64")
            order = f"ORDER BY (Last > {hi}) ASC, if(Last > {hi}, Last, -Last) ASC LIMIT 1 BY UUID"
        sql = f"SELECT {cols} FROM {fs.FLOWS_TABLE} WHERE {where} {order}"
        if self.outer_where:
            sql = f"SELECT * FROM ({sql}) WHERE {' AND '.join(self.outer_where)}"
        return sql

    def sql(self) -> str:
        sql = self._base_sql()
        for stage in self.stages:
            sql = stage.replace("{inner}", sql)
        return sql

    def add_filter(self, step: Step, pairs: Any, any_of: bool) -> FlowsT:
        if self._rows is not None or self.stages:
            self.stages.append("SELECT * FROM ({inner}) WHERE " + self._cond(step, pairs, any_of))
            self._rows = None
            return self
        cond = self._cond(step, pairs, any_of)
        immutable = all(
            k not in PRESENCE_SQL and all(c in IMMUTABLE_COLUMNS for c in columns_for(step, k))
            for k, _ in pairs
        )
        (self.inner_where if immutable else self.outer_where).append(cond)
        return self

    def _cond(self, step: Step, pairs: Any, any_of: bool) -> str:
        conds = [predicate_sql(step, k, p, self.params) for k, p in pairs]
        return "(" + (" OR " if any_of else " AND ").join(conds) + ")"

    # --- running ----------------------------------------------------------------------------------------
    def rows(self) -> list[dict[str, Any]]:
        if self._rows is None:
            limit = self.ctx.limits.max_results
            sql = f"SELECT * FROM ({self.sql()}) LIMIT {limit + 1}"
            names, rows = self.store.query(sql, self.params.values, self.ctx.remaining_s())
            self.ctx.check_size(len(rows), "flows")
            self._rows = [dict(zip(names, r, strict=False)) for r in rows]
        return self._rows

    def flows(self) -> list[dict[str, Any]]:
        return [fs.row_to_flow(r) for r in self.rows()]

    def scalar(self, expr: str) -> Any:
        names, rows = self.store.query(
            f"SELECT {expr} FROM ({self.sql()})", self.params.values, self.ctx.remaining_s()
        )
        return rows[0][0] if rows else 0

    def to_json(self) -> Any:
        return self.flows()

    # --- steps ------------------------------------------------------------------------------------------
    def step_handler(self, step: Step) -> Callable[[Context], Value] | None:
        fn = getattr(self, "step_" + step.NAME.lower(), None)
        if fn is None:
            return None
        return lambda ctx: fn(step, ctx)

    def step_has(self, step: Step, ctx: Context) -> Value:
        return self.add_filter(step, step.flt.pairs, False)  # type: ignore[attr-defined]

    def step_haseither(self, step: Step, ctx: Context) -> Value:
        return self.add_filter(step, step.flt.pairs, True)  # type: ignore[attr-defined]

    step_haskey = step_has
    step_hasnot = step_has

    def step_dedup(self, step: Step, ctx: Context) -> Value:
        keys = list(step.keys) or ["TrackingID"]  # type: ignore[attr-defined]
        cols = [c for k in keys for c in columns_for(step, k)]
        self.stages.append(
            f"SELECT * FROM ({{inner}}) ORDER BY Start ASC, UUID ASC LIMIT 1 BY {', '.join(cols)}"
        )
        self._rows = None
        return self

    def step_sort(self, step: Step, ctx: Context) -> Value:
        desc, key = parse_sort_args(step, "Last")
        col = sort_column(step, key)
        self.stages.append(f"SELECT * FROM ({{inner}}) ORDER BY {col} {'DESC' if desc else 'ASC'}, UUID ASC")
        self._rows = None
        return self

    def step_limit(self, step: Step, ctx: Context) -> Value:
        self.stages.append(f"SELECT * FROM ({{inner}}) LIMIT {int(step.n)}")  # type: ignore[attr-defined]
        self._rows = None
        return self

    def step_range(self, step: Step, ctx: Context) -> Value:
        a, b = step.a, step.b  # type: ignore[attr-defined]
        self.stages.append(f"SELECT * FROM ({{inner}}) LIMIT {int(b - a)} OFFSET {int(a)}")
        self._rows = None
        return self

    def step_count(self, step: Step, ctx: Context) -> Value:
        return ScalarT(int(self.scalar("count()")))

    def step_sum(self, step: Step, ctx: Context) -> Value:
        key = step.key  # type: ignore[attr-defined]
        if key is None:
            raise step.error("needs a flow field on flows, e.g. Sum('Metric.ABPackets')")
        cols = columns_for(step, key)
        if any(fs.column_type(c) == "String" for c in cols):
            raise step.error(f"{key!r} is not a numeric flow field")
        v = self.scalar(" + ".join(f"sum({c})" for c in cols))
        return ScalarT(int(v), "sum")

    def step_values(self, step: Step, ctx: Context) -> Value:
        key = step.key  # type: ignore[attr-defined]
        columns_for(step, key)
        out = []
        for f in self.flows():
            present, vals = path_values(f, key)
            if not present:
                if key in ("Link", "Network", "Transport") and key in f:
                    out.extend([f[key]["A"], f[key]["B"]])
                continue
            if len(vals) == 1:
                out.append(vals[0])
            else:
                out.append(vals)
        return ValuesT(out)

    def step_keys(self, step: Step, ctx: Context) -> Value:
        keys: set[str] = set()
        for f in self.flows():
            keys.update(flatten_keys(f))
        return ValuesT(sorted(keys))

    def step_group(self, step: Step, ctx: Context) -> Value:
        return group_flows(step, self.flows())

    def _nodes_by(self, key: str, value: Any) -> list[GraphElement]:
        if not value:
            return []
        hits = self.view.lookup(key, value)
        if hits is None:
            hits = [n for n in self.view.nodes() if value in path_values(n.Metadata, key)[1]]
        return hits

    def _mac_node(self, mac: str) -> list[GraphElement]:
        hits = self._nodes_by("MAC", mac) or self._nodes_by("PeerIntfMAC", mac)
        return hits[:1]

    def _to_nodes(self, step: Step, which: str) -> Value:
        out: list[GraphElement] = []
        for r in self.rows():
            if which in ("in", "both", "nodes"):
                if which == "nodes":
                    out.extend(self._nodes_by("TID", r.get("NodeTID"))[:1])
                out.extend(self._mac_node(r.get("LinkA", "")))
            if which in ("out", "both", "nodes"):
                out.extend(self._mac_node(r.get("LinkB", "")))
            if which == "hops":
                out.extend(self._nodes_by("TID", r.get("NodeTID"))[:1])
        flt = getattr(step, "flt", None)
        if flt:
            out = flt.apply(out, self.ctx)
        return NodesT(self.view, out)

    def step_in(self, step: Step, ctx: Context) -> Value:
        return self._to_nodes(step, "in")

    def step_out(self, step: Step, ctx: Context) -> Value:
        return self._to_nodes(step, "out")

    def step_both(self, step: Step, ctx: Context) -> Value:
        return self._to_nodes(step, "both")

    def step_nodes(self, step: Step, ctx: Context) -> Value:
        return self._to_nodes(step, "nodes")

    def step_hops(self, step: Step, ctx: Context) -> Value:
        if not self.stages:
            # no Sort/Dedup/Limit asked: path order. A capture point nearer the requester sees a longer round
            # trip (a local delta, free of clock skew between hosts); flows without RTT by first packet time
            self.stages.append("SELECT * FROM ({inner}) ORDER BY MetricRTT DESC, MetricStart ASC, UUID ASC")
            self._rows = None
        return self._to_nodes(step, "hops")

    step_capturenode = step_hops

    def step_metrics(self, step: Step, ctx: Context) -> Value:
        rows = self.rows()
        out: dict[str, list[dict[str, Any]]] = {}
        if ctx.at_ms is None or ctx.window_ms is None:
            for r in rows:
                f = fs.row_to_flow(r)
                m = f.get("LastUpdateMetric") or f.get("Metric")
                if m:
                    out[r["UUID"]] = [m]
            return MetricsT(out, "flows")
        uuids = [r["UUID"] for r in rows]
        if not uuids:
            return MetricsT({}, "flows")
        p = SqlParams()
        cols = ", ".join(c for c in fs.METRIC_COLUMN_NAMES if c != "BatchID")
        sql = (
            f"SELECT {cols} FROM {fs.METRICS_TABLE} WHERE UUID IN {p.add(uuids, 'Array(String)')} "
            f"AND Start <= {p.add(ctx.at_ms, 'Int64')} "
            f"AND Last >= {p.add(ctx.at_ms - ctx.window_ms, 'Int64')} "
            f"ORDER BY UUID, Start, Last LIMIT 1 BY UUID, Start, Last"
        )
        names, mrows = self.store.query(sql, p.values, ctx.remaining_s())
        ctx.check_size(len(mrows), "metrics")
        for row in mrows:
            d = dict(zip(names, row, strict=False))
            out.setdefault(d["UUID"], []).append(fs.row_to_metric(d))
        return MetricsT(out, "flows")

    def step_rawpackets(self, step: Step, ctx: Context) -> Value:
        uuids = [r["UUID"] for r in self.rows()]
        packets: dict[str, list[dict[str, Any]]] = {}
        if uuids:
            p = SqlParams()
            sql = (
                f"SELECT UUID, Timestamp, Index, Data, LinkType FROM {fs.RAW_PACKETS_TABLE} "
                f"WHERE UUID IN {p.add(uuids, 'Array(String)')} "
                f"ORDER BY UUID, Timestamp, Index LIMIT 1 BY UUID, Timestamp, Index"
            )
            names, prow = self.store.query(sql, p.values, ctx.remaining_s(), column_formats={"Data": "bytes"})
            ctx.check_size(len(prow), "raw packets")
            for uuid, ts, idx, data, lt in prow:
                if isinstance(data, str):
                    data = data.encode("latin-1")
                packets.setdefault(uuid, []).append(
                    {"Timestamp": ts, "Index": idx, "Data": bytes(data), "LinkType": lt}
                )
        return RawPacketsT(packets)


# --- the steps ----------------------------------------------------------------------------------------------
@extension_step("Flows")
class Flows(Step):
    """`G.Flows([k, v ...])` every flow; `V(...).Flows()` flows captured on those nodes (capture-capable
    types, by TID); `ShortestPathTo(...).Flows()` on the path's nodes. Pairs = a following Has()."""

    def setup(self) -> None:
        self.flt = parse_pairs(self, self.args) if self.args else None

    def _start(self, ctx: Context, view: GraphView, nodes: list[GraphElement] | None) -> Value:
        if ctx.flows is None:
            raise self.error("this engine has no flow store (flows need ClickHouse)")
        tids = ids = None
        if nodes is not None:
            capable = [n for n in nodes if n.Metadata.get("Type") in CAPTURABLE_NODE_TYPES]
            tids = sorted({str(n.Metadata["TID"]) for n in capable if n.Metadata.get("TID")})
            ids = sorted({n.ID for n in capable})
        out = FlowsT(ctx, ctx.flows, view, tids, ids)
        if self.flt:
            out.add_filter(self, self.flt.pairs, False)
        return out

    def on_graph(self, ctx: Context, value: GraphT) -> Value:
        return self._start(ctx, value.view, None)

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        return self._start(ctx, value.view, value.items())

    def on_paths(self, ctx: Context, value: PathsT) -> Value:
        return self._start(ctx, value.view, [n for p in value.paths for n in p])


@extension_step("Hops")
class Hops(Step):
    """Flows -> the capture node of each flow (TID == NodeTID)."""

    def setup(self) -> None:
        self.nargs(0, 0)


@extension_step("CaptureNode", "Node")
class CaptureNode(Hops):
    """Alias of Hops()."""


@extension_step("Nodes")
class Nodes(Step):
    """Flows -> per flow the capture node, the node with MAC == Link.A and the one with MAC == Link.B."""

    def setup(self) -> None:
        self.flt = parse_pairs(self, self.args) if self.args else None


@extension_step("RawPackets")
class RawPackets(Step):
    """Flows -> `{flowUUID: [{Timestamp, Index, Data, LinkType}]}` (pcap with the tcpdump Accept type)."""

    def setup(self) -> None:
        self.nargs(0, 0)


@extension_step("BPF")
class BPF(Step):
    """RawPackets -> only the packets a tcpdump filter expression accepts."""

    def setup(self) -> None:
        self.nargs(1, 1)
        self.expr = self.str_arg(0, "a BPF expression")


@extension_step("Group")
class Group(Step):
    """Flows -> `{key: [flow ...]}` grouped by a field (default TrackingID)."""

    def setup(self) -> None:
        self.nargs(0, 1)
        self.key = self.str_arg(0, "a flow field") if self.args else "TrackingID"


@extension_step("MoreThan")
class MoreThan(Step):
    """Group -> the groups with more than n flows."""

    def setup(self) -> None:
        self.nargs(1, 1)
        self.n = self.int_arg(0, "a count")


__all__ = ["FlowsT"]
