"""Core graph steps (graffiti's) that select and walk the graph: V, E, Context/At, Has*, Out/In/Both(E/V).

The other core steps: `shaping` (Dedup, Count, Limit, Range, Sort, Values, ValueMap, Keys, Sum, As, Select)
and `paths` (ShortestPathTo, SubGraph). `sort_key` and `parse_sort_args` are shared with the flow steps."""

from __future__ import annotations

import json
from typing import Any, Iterable

from netsonde.common.bus.graph import GraphElement

from . import ast
from .predicates import is_number
from .steps import Filter, Step, core_step, parse_pairs
from .timeparse import is_relative, now_ms, parse_time, parse_window_ms, relative_bucket
from .traversal import (Context, EdgesT, GraphT, GraphView, NodesT, Value)


def _filter_nodes(ctx: Context, value: NodesT, flt: Filter) -> NodesT:
    """Apply a filter to a node set, through an index when the set is "every node" and a key is indexed."""
    if value.elems is None:
        cand = flt.index_candidate()
        if cand is not None:
            hits = value.view.lookup_any(*cand)
            if hits is not None:
                out = flt.apply(hits, ctx)
                ctx.check_size(len(out), "nodes")
                return NodesT(value.view, out)
    out = flt.apply(value.iter(), ctx)
    ctx.check_size(len(out), "nodes")
    return NodesT(value.view, out)


def dedup_key(v: Any) -> Any:
    try:
        hash(v)
        return v
    except TypeError:
        return json.dumps(v, sort_keys=True, default=str)


# --- sources ------------------------------------------------------------------------------------------------
@core_step("V")
class V(Step):
    """`V()` every node, `V('id')` one node (error if unknown), `V(k, v, ...)` = `V().Has(k, v, ...)`."""

    def setup(self) -> None:
        self.node_id: str | None = None
        self.flt: Filter | None = None
        if len(self.args) == 1:
            self.node_id = self.str_arg(0, "a node ID")
        elif self.args:
            self.flt = parse_pairs(self, self.args)

    def on_graph(self, ctx: Context, value: GraphT) -> Value:
        view = value.view
        if self.node_id is not None:
            revs = view.node_revs(self.node_id)
            if not revs:
                raise self.error(f"node '{self.node_id}' does not exist", self.args[0])
            return NodesT(view, revs)
        out = NodesT(view)
        return _filter_nodes(ctx, out, self.flt) if self.flt else out


@core_step("E")
class E(Step):
    """`E()` every edge, `E('id')` one edge, `E(k, v, ...)` edges matching."""

    def setup(self) -> None:
        self.edge_id: str | None = None
        self.flt: Filter | None = None
        if len(self.args) == 1:
            self.edge_id = self.str_arg(0, "an edge ID")
        elif self.args:
            self.flt = parse_pairs(self, self.args)

    def on_graph(self, ctx: Context, value: GraphT) -> Value:
        view = value.view
        if self.edge_id is not None:
            revs = view.edge_revs(self.edge_id)
            if not revs:
                raise self.error(f"edge '{self.edge_id}' does not exist", self.args[0])
            return EdgesT(view, revs)
        if self.flt:
            out = self.flt.apply(view.edges(), ctx)
            ctx.check_size(len(out), "edges")
            return EdgesT(view, out)
        return EdgesT(view)


@core_step("Context", "At")
class ContextStep(Step):
    """`Context(time[, duration])`: the graph at a past instant, or every revision alive in [time-d, time]."""

    def setup(self) -> None:
        self.nargs(1, 2)

    def on_graph(self, ctx: Context, value: GraphT) -> Value:
        now = now_ms()
        at = parse_time(self.args[0], now)
        window = parse_window_ms(self.args[1], at) if len(self.args) == 2 else None
        if ctx.history is None:
            raise self.error("this graph has no history backend (past-time queries need ClickHouse)")
        if is_relative(self.args[0]):  # repeated relative queries share a cached past graph
            at = relative_bucket(at, now, int(getattr(ctx.history, "bucket_ms", 1)))
        ctx.at_ms, ctx.window_ms = at, window
        graph = ctx.history.graph_at(at, window, timeout_s=ctx.remaining_s())
        ctx.check()
        return GraphT(GraphView(graph))


# --- filters ------------------------------------------------------------------------------------------------
class _FilterStep(Step):
    ANY_OF = False
    SINGLE_KEY = True

    def setup(self) -> None:
        self.nargs(1, None)
        self.flt = parse_pairs(self, self.args, any_of=self.ANY_OF, allow_single_key=self.SINGLE_KEY)

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        return _filter_nodes(ctx, value, self.flt)

    def on_edges(self, ctx: Context, value: EdgesT) -> Value:
        return EdgesT(value.view, self.flt.apply(value.iter(), ctx))


@core_step("Has")
class Has(_FilterStep):
    """`Has(k)` key exists; `Has(k, v, ...)` every pair matches (v: literal or predicate)."""


@core_step("HasEither")
class HasEither(_FilterStep):
    """`HasEither(k1, v1, k2, v2 ...)`: any pair matches."""

    ANY_OF = True
    SINGLE_KEY = False


@core_step("HasKey")
class HasKey(_FilterStep):
    """`HasKey(k)`: the key exists (= `Has(k)`)."""

    def setup(self) -> None:
        self.nargs(1, 1)
        self.str_arg(0, "a key")
        super().setup()


@core_step("HasNot")
class HasNot(_FilterStep):
    """`HasNot(k)`: the key is absent."""

    def setup(self) -> None:
        from .steps import HasNotPredicate
        self.nargs(1, 1)
        key = self.str_arg(0, "a key")
        self.flt = Filter(((key, HasNotPredicate([], self.pos)),))


# --- moves --------------------------------------------------------------------------------------------------
class _Move(Step):
    """Node -> node moves with an optional node filter; no dedup (two edges give the node twice)."""

    DIRECTION = "out"

    def setup(self) -> None:
        self.flt = parse_pairs(self, self.args) if self.args else None

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        view = value.view
        out: list[GraphElement] = []
        limit = ctx.limits.max_results
        if view.single_revision:
            out = self._fast(ctx, view, value.iter(), limit)
            if self.flt:
                out = self.flt.apply(out, ctx)
            ctx.check_size(len(out), "nodes")
            return NodesT(view, out)
        for n in value.iter():
            if self.DIRECTION in ("out", "both"):
                for e in view.out_edges(n.ID):
                    out.extend(view.node_revs(e.Child))
            if self.DIRECTION in ("in", "both"):
                for e in view.in_edges(n.ID):
                    out.extend(view.node_revs(e.Parent))
            if len(out) > limit and not self.flt:
                ctx.check_size(len(out), "nodes")
            ctx.tick()
        if self.flt:
            out = self.flt.apply(out, ctx)
        ctx.check_size(len(out), "nodes")
        return NodesT(view, out)


    def _fast(self, ctx: Context, view: GraphView, nodes: Iterable[GraphElement], limit: int) -> list[GraphElement]:
        """One revision per ID (the live graph): walk the adjacency dicts directly."""
        g = view.graph
        edges, by_id = g.edges, g.nodes
        out: list[GraphElement] = []
        append = out.append
        down = self.DIRECTION in ("out", "both")
        up = self.DIRECTION in ("in", "both")
        for n in nodes:
            if down:
                for eid in g.out_edges.get(n.ID, ()):
                    e = edges.get(eid)
                    c = by_id.get(e.Child) if e is not None else None
                    if c is not None:
                        append(c)
            if up:
                for eid in g.in_edges.get(n.ID, ()):
                    e = edges.get(eid)
                    c = by_id.get(e.Parent) if e is not None else None
                    if c is not None:
                        append(c)
            if len(out) > limit and not self.flt:
                ctx.check_size(len(out), "nodes")
            ctx.tick()
        return out


@core_step("Out")
class Out(_Move):
    """Children (nodes at the Child end of edges whose Parent is the node)."""


@core_step("In")
class In(_Move):
    """Parents."""

    DIRECTION = "in"


@core_step("Both")
class Both(_Move):
    DIRECTION = "both"


class _MoveE(Step):
    DIRECTION = "out"

    def setup(self) -> None:
        self.flt = parse_pairs(self, self.args) if self.args else None

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        view = value.view
        out: list[GraphElement] = []
        for n in value.iter():
            if self.DIRECTION in ("out", "both"):
                out.extend(view.out_edges(n.ID))
            if self.DIRECTION in ("in", "both"):
                out.extend(view.in_edges(n.ID))
            ctx.tick()
        if self.flt:
            out = self.flt.apply(out, ctx)
        ctx.check_size(len(out), "edges")
        return EdgesT(view, out)


@core_step("OutE")
class OutE(_MoveE):
    """Edges whose Parent is the node."""


@core_step("InE")
class InE(_MoveE):
    """Edges whose Child is the node."""

    DIRECTION = "in"


@core_step("BothE")
class BothE(_MoveE):
    DIRECTION = "both"


class _EdgeEnd(Step):
    ENDS: tuple[str, ...] = ("Child",)

    def setup(self) -> None:
        self.flt = parse_pairs(self, self.args) if self.args else None

    def on_edges(self, ctx: Context, value: EdgesT) -> Value:
        view = value.view
        out: list[GraphElement] = []
        for e in value.iter():
            for end in self.ENDS:
                out.extend(view.node_revs(getattr(e, end)))
            ctx.tick()
        if self.flt:
            out = self.flt.apply(out, ctx)
        ctx.check_size(len(out), "nodes")
        return NodesT(view, out)


@core_step("OutV")
class OutV(_EdgeEnd):
    """Skydive's reading: the edge's Child (the inverse of TinkerPop)."""


@core_step("InV")
class InV(_EdgeEnd):
    """Skydive's reading: the edge's Parent."""

    ENDS = ("Parent",)


@core_step("BothV")
class BothV(_EdgeEnd):
    ENDS = ("Parent", "Child")


# --- shaping ------------------------------------------------------------------------------------------------


def sort_key(v: Any) -> tuple[int, Any]:
    """Orders missing values last, numbers before strings, everything else by its JSON text."""
    if v is None:
        return (3, 0)
    if is_number(v) or isinstance(v, bool):
        return (0, v)
    if isinstance(v, str):
        return (1, v)
    return (2, json.dumps(v, sort_keys=True, default=str))


def parse_sort_args(step: Step, default_key: str) -> tuple[bool, str]:
    """`Sort()`, `Sort(key)`, `Sort(ASC|DESC)`, `Sort(ASC|DESC, key)` -> (descending, key)."""
    step.nargs(0, 2)
    desc, key = False, default_key
    args = list(step.args)
    if args and isinstance(args[0], ast.Keyword):
        if args[0].name not in ("ASC", "DESC"):
            raise step.error("the order must be ASC or DESC", args[0])
        desc = args[0].name == "DESC"
        args = args[1:]
    if len(args) > 1:
        raise step.error("takes an optional order (ASC/DESC) then an optional key")
    if args:
        a = args[0]
        if not (isinstance(a, ast.Literal) and isinstance(a.value, str)):
            raise step.error("the sort key must be a string", a)
        key = a.value
    return desc, key
