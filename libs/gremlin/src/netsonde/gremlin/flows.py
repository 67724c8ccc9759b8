"""Flow steps: `Flows()` and what follows it, compiled to one parameterised ClickHouse query.

`G.Flows()` / `V(...).Flows()` start a `FlowsT`, which accumulates SQL stages (filters, dedup, sort, slice)
and runs only when a step needs rows (or at the end). Every user value travels as a server-side parameter
(`{p3:String}`); column names come from `flowschema.FIELD_TO_COLUMN`, never from the query text.

Which flow states are read:
- live (no Context): each flow's latest update whose `Last` is within the flow expiry (`expire_s`);
- `Context(t)`: flows alive at t (Start <= t, Last >= t - expiry), each in its last state at or before t;
- `Context(t, d)`: flows whose activity [Start, Last] overlaps [t-d, t], in their last state at or before t.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import struct
import threading
import time
from typing import Any, Callable

from netsonde.common import flowschema as fs
from netsonde.common.bus.graph import GraphElement
from netsonde.common.capture_types import CAPTURABLE_NODE_TYPES
from netsonde.common.libpcap import BpfProgram as PcapProgram
from netsonde.common.libpcap import PcapPkthdr, libpcap

from . import ast

from .core import parse_sort_args
from .errors import GremlinError
from .fields import flatten_keys, path_values
from .predicates import (Between, Eq, Gt, Gte, Inside, Ipv4Range, Lt, Lte, Ne, Nee, Outside, Predicate, Regex,
                         Within, Without)
from .steps import HasNotPredicate, HasPredicate, Step, extension_step, parse_pairs
from .traversal import Context, GraphT, GraphView, MetricsT, NodesT, PathsT, ScalarT, Value, ValuesT

_SELECT_COLUMNS = tuple(c for c in fs.FLOW_COLUMN_NAMES if c != "BatchID")
_IMMUTABLE = {"UUID", "NodeTID", "TrackingID", "L3TrackingID", "ParentUUID", "CaptureID", "LayersPath",
              "Application", "LinkProtocol", "LinkA", "LinkB", "LinkID", "NetworkProtocol", "NetworkA", "NetworkB",
              "NetworkID", "TransportProtocol", "TransportA", "TransportB", "TransportID", "ICMPType", "ICMPCode",
              "ICMPID", "Start", "NodeID", "Host"}
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

    def query(self, sql: str, params: dict[str, Any], timeout_s: float,
              column_formats: dict[str, str] | None = None) -> tuple[list[str], list[tuple[Any, ...]]]:
        settings = {"max_execution_time": max(int(timeout_s + 0.999), 1)}
        try:
            with self._lock:
                if self._client is None:
                    self._client = self.client_factory()
                self.last_sql = sql
                r = self._client.query(sql, parameters=params, settings=settings, column_formats=column_formats)
                self.queries += 1
                return list(r.column_names), r.result_rows
        except GremlinError:
            raise
        except Exception as e:  # the driver's DatabaseError / OperationalError
            text = str(e)
            if "TIMEOUT_EXCEEDED" in text or "Timeout exceeded" in text:
                raise GremlinError("flow query exceeded the query time limit", status=408) from e
            if "Code: 427." in text:  # CANNOT_COMPILE_REGEXP: Python's re accepted it, ClickHouse's RE2 does not
                raise GremlinError("Regex() not accepted by the flow store (RE2 syntax: no lookaround, no "
                                   "backreferences)", status=400) from e
            raise GremlinError(f"flow store unavailable: {text.splitlines()[0] if text else e!r}", status=503) from e

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None


class _Params:
    """Numbered server-side parameters: `add(value, type)` returns the `{pN:Type}` placeholder."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}

    def add(self, value: Any, typ: str) -> str:
        name = f"p{len(self.values)}"
        self.values[name] = value
        return f"{{{name}:{typ}}}"


def _columns_for(step: Step, key: str, arg: ast.Arg | None = None) -> tuple[str, ...]:
    cols = fs.FIELD_TO_COLUMN.get(key)
    if cols is None:
        known = ", ".join(sorted(k for k in fs.FIELD_TO_COLUMN if "[" not in k and not k.startswith(("TCPM", "IPM"))))
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


_PRESENCE = {"ICMP": "ICMPType != ''", "TCPMetric": "notEmpty(TCPMetric)", "IPMetric": "notEmpty(IPMetric)",
             "Metric": "1", "LastUpdateMetric": "1"}
"""Flow keys that are whole sub-objects: usable in Has(k) / HasNot(k) only."""


def predicate_sql(step: Step, key: str, pred: Predicate, params: _Params) -> str:
    """SQL condition for `Has(key, pred)` on the flows table; a layer alone means A or B."""
    if key in _PRESENCE and isinstance(pred, (HasPredicate, HasNotPredicate)):
        cond = _PRESENCE[key]
        return cond if isinstance(pred, HasPredicate) else f"NOT ({cond})"
    cols = _columns_for(step, key)
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


def _one_column_sql(step: Step, col: str, pred: Predicate, params: _Params) -> str:
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
        return (f"(isIPv4String({col}) AND toUInt32(toIPv4OrZero({col})) >= {lo} "
                f"AND toUInt32(toIPv4OrZero({col})) <= {hi})")
    raise step.error(f"{pred.NAME}() is not supported on flows")


def _sort_columns(step: Step, key: str) -> str:
    return _columns_for(step, key)[0]


class FlowsT(Value):
    """A lazily compiled flow query; handles the steps that can follow Flows() (see `step_handler`)."""

    KIND = "flows"

    def __init__(self, ctx: Context, store: FlowStore, view: GraphView, tids: list[str] | None,
                 ids: list[str] | None) -> None:
        self.store = store
        self.view = view
        self.params = _Params()
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
        cols = ", ".join(_SELECT_COLUMNS)
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

    def add_filter(self, step: Step, pairs: Any, any_of: bool) -> "FlowsT":
        if self._rows is not None or self.stages:
            self.stages.append("SELECT * FROM ({inner}) WHERE " + self._cond(step, pairs, any_of))
            self._rows = None
            return self
        cond = self._cond(step, pairs, any_of)
        immutable = all(k not in _PRESENCE and all(c in _IMMUTABLE for c in _columns_for(step, k)) for k, _ in pairs)
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
            self._rows = [dict(zip(names, r)) for r in rows]
        return self._rows

    def flows(self) -> list[dict[str, Any]]:
        return [fs.row_to_flow(r) for r in self.rows()]

    def scalar(self, expr: str) -> Any:
        names, rows = self.store.query(f"SELECT {expr} FROM ({self.sql()})", self.params.values,
                                       self.ctx.remaining_s())
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
        cols = [c for k in keys for c in _columns_for(step, k)]
        self.stages.append(f"SELECT * FROM ({{inner}}) ORDER BY Start ASC, UUID ASC LIMIT 1 BY {', '.join(cols)}")
        self._rows = None
        return self

    def step_sort(self, step: Step, ctx: Context) -> Value:
        desc, key = parse_sort_args(step, "Last")
        col = _sort_columns(step, key)
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
        cols = _columns_for(step, key)
        if any(fs.column_type(c) == "String" for c in cols):
            raise step.error(f"{key!r} is not a numeric flow field")
        v = self.scalar(" + ".join(f"sum({c})" for c in cols))
        return ScalarT(int(v), "sum")

    def step_values(self, step: Step, ctx: Context) -> Value:
        key = step.key  # type: ignore[attr-defined]
        _columns_for(step, key)
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
        p = _Params()
        cols = ", ".join(c for c in fs.METRIC_COLUMN_NAMES if c != "BatchID")
        sql = (f"SELECT {cols} FROM {fs.METRICS_TABLE} WHERE UUID IN {p.add(uuids, 'Array(String)')} "
               f"AND Start <= {p.add(ctx.at_ms, 'Int64')} AND Last >= {p.add(ctx.at_ms - ctx.window_ms, 'Int64')} "
               f"ORDER BY UUID, Start, Last LIMIT 1 BY UUID, Start, Last")
        names, mrows = self.store.query(sql, p.values, ctx.remaining_s())
        ctx.check_size(len(mrows), "metrics")
        for row in mrows:
            d = dict(zip(names, row))
            out.setdefault(d["UUID"], []).append(fs.row_to_metric(d))
        return MetricsT(out, "flows")

    def step_rawpackets(self, step: Step, ctx: Context) -> Value:
        uuids = [r["UUID"] for r in self.rows()]
        packets: dict[str, list[dict[str, Any]]] = {}
        if uuids:
            p = _Params()
            sql = (f"SELECT UUID, Timestamp, Index, Data, LinkType FROM {fs.RAW_PACKETS_TABLE} "
                   f"WHERE UUID IN {p.add(uuids, 'Array(String)')} "
                   f"ORDER BY UUID, Timestamp, Index LIMIT 1 BY UUID, Timestamp, Index")
            names, prow = self.store.query(sql, p.values, ctx.remaining_s(), column_formats={"Data": "bytes"})
            ctx.check_size(len(prow), "raw packets")
            for uuid, ts, idx, data, lt in prow:
                if isinstance(data, str):
                    data = data.encode("latin-1")
                packets.setdefault(uuid, []).append({"Timestamp": ts, "Index": idx, "Data": bytes(data),
                                                     "LinkType": lt})
        return RawPacketsT(packets)


# --- raw packets --------------------------------------------------------------------------------------------
class RawPacketsT(Value):
    """RawPackets(): flow UUID -> packets. JSON: Data base64 (as Go marshals []byte); pcap on request."""

    KIND = "rawpackets"

    def __init__(self, packets: dict[str, list[dict[str, Any]]]) -> None:
        self.packets = packets

    def to_json(self) -> Any:
        import base64
        out = {u: [dict(p, Data=base64.b64encode(p["Data"]).decode()) for p in ps] for u, ps in self.packets.items()}
        return [out] if out else []

    def pcap_bytes(self) -> bytes:
        """A pcap file (microsecond timestamps) of every packet, oldest first."""
        pkts = sorted((p for ps in self.packets.values() for p in ps), key=lambda p: (p["Timestamp"], p["Index"]))
        linktype = pkts[0]["LinkType"] if pkts else 1
        out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)]
        for p in pkts:
            ts = p["Timestamp"]
            data = p["Data"]
            out.append(struct.pack("<IIII", ts // 1000, (ts % 1000) * 1000, len(data), len(data)))
            out.append(data)
        return b"".join(out)

    def step_handler(self, step: Step) -> Callable[[Context], Value] | None:
        if step.NAME == "BPF":
            return lambda ctx: self.bpf(step)
        if step.NAME == "Count":
            return lambda ctx: ScalarT(sum(len(v) for v in self.packets.values()))
        return None

    def bpf(self, step: Step) -> Value:
        prog = BpfProgram(step.expr, step)  # type: ignore[attr-defined]
        out = {}
        for uuid, ps in self.packets.items():
            kept = [p for p in ps if prog.match(p["Data"], p["LinkType"])]
            if kept:
                out[uuid] = kept
        return RawPacketsT(out)


class BpfProgram:
    """A tcpdump filter expression compiled by libpcap, run with `pcap_offline_filter` (per link type)."""

    _lib: Any = None

    def __init__(self, expr: str, step: Step) -> None:
        self.expr = expr
        self.step = step
        self.progs: dict[int, Any] = {}
        if BpfProgram._lib is None:
            if ctypes.util.find_library("pcap") is None:
                raise GremlinError("BPF(): libpcap is not installed (apt-get install libpcap0.8)", status=501)
            BpfProgram._lib = libpcap()
        self.prog(1)  # validate the expression now (Ethernet)

    def prog(self, linktype: int) -> Any:
        prog = self.progs.get(linktype)
        if prog is None:
            lib = self._lib
            handle = lib.pcap_open_dead(linktype, 65535)
            prog = PcapProgram()
            rc = lib.pcap_compile(handle, ctypes.byref(prog), self.expr.encode(), 1, 0xFFFFFFFF)
            if rc != 0:
                err = lib.pcap_geterr(handle).decode(errors="replace")
                lib.pcap_close(handle)
                raise self.step.error(f"bad BPF expression {self.expr!r}: {err}", self.step.args[0])
            lib.pcap_close(handle)
            self.progs[linktype] = prog
        return prog

    def match(self, data: bytes, linktype: int) -> bool:
        hdr = PcapPkthdr(0, 0, len(data), len(data))
        return self._lib.pcap_offline_filter(ctypes.byref(self.prog(linktype)), ctypes.byref(hdr), data) != 0


def group_flows(step: Step, flows: list[dict[str, Any]]) -> Value:
    key = getattr(step, "key", None) or "TrackingID"
    groups: dict[str, list[dict[str, Any]]] = {}
    for f in flows:
        present, vals = path_values(f, key)
        k = str(vals[0]) if present and vals else ""
        groups.setdefault(k, []).append(f)
    return GroupsT(groups)


class GroupsT(Value):
    """Group(): key -> flows; MoreThan(n) keeps groups of more than n flows."""

    KIND = "groups"

    def __init__(self, groups: dict[str, list[dict[str, Any]]]) -> None:
        self.groups = groups

    def to_json(self) -> Any:
        return [self.groups] if self.groups else []

    def step_handler(self, step: Step) -> Callable[[Context], Value] | None:
        if step.NAME == "MoreThan":
            n = step.n  # type: ignore[attr-defined]
            return lambda ctx: GroupsT({k: v for k, v in self.groups.items() if len(v) > n})
        if step.NAME == "Count":
            return lambda ctx: ScalarT(len(self.groups))
        return None


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


__all__ = ["BpfProgram", "FlowStore", "FlowsT", "GroupsT", "RawPacketsT", "predicate_sql"]
