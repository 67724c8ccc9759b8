"""Core graph steps (graffiti's): V, E, Has*, Out/In/Both(E/V), Dedup, Count, Values, ValueMap, Keys, Limit,
Range, Sort, Sum, As/Select, ShortestPathTo, SubGraph, Context/At."""

from __future__ import annotations

import itertools
import json
from collections import deque
from typing import Any, Iterable

from netsonde.common.bus.graph import GraphElement
from netsonde.common.graph import Graph

from . import ast
from .fields import EDGE_AT_KEYS, NODE_AT_KEYS, element_value, element_values, flatten_keys
from .predicates import is_number
from .steps import Filter, Step, core_step, metadata_filter, parse_pairs
from .timeparse import is_relative, now_ms, parse_time, parse_window_ms, relative_bucket
from .traversal import (AggregatedT, Context, EdgesT, GraphT, GraphView, MetricsT, NodesT, PathsT, ScalarT,
                        Value, ValuesT)


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


def _dedup_key(v: Any) -> Any:
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
@core_step("Dedup")
class Dedup(Step):
    """`Dedup()` by ID (values: by value), `Dedup(k, ...)` by the values of the keys."""

    def setup(self) -> None:
        self.keys = self.str_args()

    def _dedup(self, elems: Iterable[GraphElement]) -> list[GraphElement]:
        seen: set[Any] = set()
        out = []
        for el in elems:
            if self.keys:
                k = tuple(_dedup_key(element_value(el, key)) for key in self.keys)
            else:
                k = el.ID
            if k not in seen:
                seen.add(k)
                out.append(el)
        return out

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        return NodesT(value.view, self._dedup(value.iter()))

    def on_edges(self, ctx: Context, value: EdgesT) -> Value:
        return EdgesT(value.view, self._dedup(value.iter()))

    def on_values(self, ctx: Context, value: ValuesT) -> Value:
        seen: set[Any] = set()
        out = []
        for v in value.values:
            k = _dedup_key(v)
            if k not in seen:
                seen.add(k)
                out.append(v)
        return ValuesT(out)


@core_step("Count")
class Count(Step):
    def setup(self) -> None:
        self.nargs(0, 0)

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        return ScalarT(value.view.node_count() if value.elems is None else len(value.elems))

    def on_edges(self, ctx: Context, value: EdgesT) -> Value:
        return ScalarT(len(value.items()))

    def on_values(self, ctx: Context, value: ValuesT) -> Value:
        return ScalarT(len(value.values))

    def on_paths(self, ctx: Context, value: PathsT) -> Value:
        return ScalarT(len(value.paths))

    def on_metrics(self, ctx: Context, value: Value) -> Value:
        if isinstance(value, AggregatedT):
            return ScalarT(len(value.slices))
        assert isinstance(value, MetricsT)
        return ScalarT(sum(len(v) for v in value.metrics.values()))


class _Slice(Step):
    def bounds(self) -> tuple[int, int]:
        raise NotImplementedError

    def _slice(self, items: Iterable[Any]) -> list[Any]:
        a, b = self.bounds()
        return list(itertools.islice(items, a, b))

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        return NodesT(value.view, self._slice(value.iter()))

    def on_edges(self, ctx: Context, value: EdgesT) -> Value:
        return EdgesT(value.view, self._slice(value.iter()))

    def on_values(self, ctx: Context, value: ValuesT) -> Value:
        return ValuesT(self._slice(value.values))

    def on_paths(self, ctx: Context, value: PathsT) -> Value:
        return PathsT(value.view, self._slice(value.paths))


@core_step("Limit")
class Limit(_Slice):
    """`Limit(n)`: the first n."""

    def setup(self) -> None:
        self.nargs(1, 1)
        self.n = self.int_arg(0, "a count")
        if self.n < 0:
            raise self.error("the count cannot be negative", self.args[0])

    def bounds(self) -> tuple[int, int]:
        return 0, self.n


@core_step("Range")
class Range(_Slice):
    """`Range(a, b)`: items a (included) to b (excluded)."""

    def setup(self) -> None:
        self.nargs(2, 2)
        self.a, self.b = self.int_arg(0, "a start index"), self.int_arg(1, "an end index")
        if self.a < 0 or self.b < self.a:
            raise self.error(f"bad range [{self.a}, {self.b}): need 0 <= start <= end")

    def bounds(self) -> tuple[int, int]:
        return self.a, self.b


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


@core_step("Sort")
class Sort(Step):
    """`Sort([ASC|DESC,] [key])`: nodes/edges by a metadata key or element field (default CreatedAt);
    elements lacking the key come last."""

    def setup(self) -> None:
        self.desc, self.key = parse_sort_args(self, "CreatedAt")

    def _sort(self, elems: list[GraphElement]) -> list[GraphElement]:
        present = [(sort_key(element_value(e, self.key)), e) for e in elems]
        with_key = [p for p in present if p[0][0] != 3]
        without = [p[1] for p in present if p[0][0] == 3]
        with_key.sort(key=lambda p: p[0], reverse=self.desc)
        return [p[1] for p in with_key] + without

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        return NodesT(value.view, self._sort(value.items()))

    def on_edges(self, ctx: Context, value: EdgesT) -> Value:
        return EdgesT(value.view, self._sort(value.items()))

    def on_values(self, ctx: Context, value: ValuesT) -> Value:
        return ValuesT(sorted(value.values, key=sort_key, reverse=self.desc))


@core_step("Values")
class Values(Step):
    """`Values(k)`: the value of k for each element that has it (empty lists/maps skipped)."""

    def setup(self) -> None:
        self.nargs(1, 1)
        self.key = self.str_arg(0, "a key")

    def _values(self, elems: Iterable[GraphElement]) -> ValuesT:
        out = []
        for el in elems:
            v = element_value(el, self.key)
            if v is None or (isinstance(v, (list, dict)) and not v):
                continue
            out.append(v)
        return ValuesT(out)

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        return self._values(value.iter())

    def on_edges(self, ctx: Context, value: EdgesT) -> Value:
        return self._values(value.iter())


@core_step("ValueMap")
class ValueMap(Step):
    """`ValueMap(k1, k2 ...)`: one `{k: v}` map per element (only keys it has); no key = all metadata."""

    def setup(self) -> None:
        self.keys = self.str_args()

    def _maps(self, elems: Iterable[GraphElement]) -> ValuesT:
        out = []
        for el in elems:
            if not self.keys:
                out.append(dict(el.Metadata))
                continue
            m = {}
            for k in self.keys:
                v = element_value(el, k)
                if v is not None:
                    m[k] = v
            out.append(m)
        return ValuesT(out)

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        return self._maps(value.iter())

    def on_edges(self, ctx: Context, value: EdgesT) -> Value:
        return self._maps(value.iter())


@core_step("Keys")
class Keys(Step):
    """`Keys()`: sorted union of the keys (nested as dotted paths) plus the `@` element keys."""

    def setup(self) -> None:
        self.nargs(0, 0)

    def _keys(self, elems: Iterable[GraphElement], at_keys: tuple[str, ...]) -> ValuesT:
        keys: set[str] = set()
        any_el = False
        for el in elems:
            any_el = True
            keys.update(flatten_keys(el.Metadata))
        if any_el:
            keys.update(at_keys)
        return ValuesT(sorted(keys))

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        return self._keys(value.iter(), NODE_AT_KEYS)

    def on_edges(self, ctx: Context, value: EdgesT) -> Value:
        return self._keys(value.iter(), EDGE_AT_KEYS)

    def on_metrics(self, ctx: Context, value: Value) -> Value:
        keys: set[str] = set()
        ms = value.slices if isinstance(value, AggregatedT) else \
            [m for lst in value.metrics.values() for m in lst]  # type: ignore[attr-defined]
        for m in ms:
            keys.update(m)
        return ValuesT(sorted(keys))


def _sum(values: Iterable[Any]) -> int | float:
    total: int | float = 0
    for v in values:
        if is_number(v):
            total += v
    return total


@core_step("Sum")
class Sum(Step):
    """`Sum(k)`: sum of the numeric values of k. On metrics, `Sum()` is one summed metric."""

    def setup(self) -> None:
        self.nargs(0, 1)
        self.key = self.str_arg(0, "a key") if self.args else None

    def _need_key(self) -> str:
        if self.key is None:
            raise self.error("needs a key on nodes and edges")
        return self.key

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        key = self._need_key()
        return ScalarT(_sum(v for n in value.iter() for v in element_values(n, key)[1]), "sum")

    def on_edges(self, ctx: Context, value: EdgesT) -> Value:
        key = self._need_key()
        return ScalarT(_sum(v for n in value.iter() for v in element_values(n, key)[1]), "sum")

    def on_values(self, ctx: Context, value: ValuesT) -> Value:
        return ScalarT(_sum(value.values), "sum")

    def on_metrics(self, ctx: Context, value: Value) -> Value:
        ms = value.slices if isinstance(value, AggregatedT) else \
            [m for lst in value.metrics.values() for m in lst]  # type: ignore[attr-defined]
        if self.key is not None:
            return ScalarT(_sum(m.get(self.key) for m in ms), "sum")
        return ScalarT(sum_metrics(ms), "metric")


def sum_metrics(ms: list[dict[str, Any]]) -> dict[str, Any]:
    """One metric: counters summed, Start = min, Last = max."""
    out: dict[str, Any] = {}
    for m in ms:
        for k, v in m.items():
            if k == "Start":
                out[k] = v if "Start" not in out else min(out[k], v)
            elif k == "Last":
                out[k] = v if "Last" not in out else max(out[k], v)
            elif is_number(v):
                out[k] = out.get(k, 0) + v
    return out


@core_step("As")
class As(Step):
    """`As('name')`: remember the current node set under a name for Select()."""

    def setup(self) -> None:
        self.nargs(1, 1)
        self.name = self.str_arg(0, "a name")

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        ctx.named[self.name] = value.items()
        return value


@core_step("Select")
class Select(Step):
    """`Select('a', 'b' ...)`: the union (by ID, first seen order) of node sets named with As()."""

    def setup(self) -> None:
        self.nargs(1, None)
        self.names = self.str_args()

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        seen: set[tuple[str, int]] = set()
        out: list[GraphElement] = []
        for i, name in enumerate(self.names):
            if name not in ctx.named:
                raise self.error(f"no node set named {name!r} (name one with As({name!r}))", self.args[i])
            for n in ctx.named[name]:
                k = (n.ID, n.Revision)
                if k not in seen:
                    seen.add(k)
                    out.append(n)
        return NodesT(value.view, out)


# --- graph algorithms ---------------------------------------------------------------------------------------
@core_step("ShortestPathTo")
class ShortestPathTo(Step):
    """`ShortestPathTo(Metadata(k, v ...)[, Metadata(edge k, v ...)])`: from each node, the shortest
    undirected path (hop count) to the nearest node matching, over edges matching the optional filter."""

    def setup(self) -> None:
        self.nargs(1, 2)
        self.target = metadata_filter(self, self.args[0])
        self.edge_flt = metadata_filter(self, self.args[1]) if len(self.args) == 2 else None

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        view = value.view
        target_ids: set[str] | None = None
        cand = self.target.index_candidate()
        if cand is not None:
            hits = view.lookup_any(*cand)
            if hits is not None:
                target_ids = {n.ID for n in self.target.apply(hits, ctx)}
        cache: dict[str, bool] = {}

        def is_target(nid: str) -> bool:
            if target_ids is not None:
                return nid in target_ids
            hit = cache.get(nid)
            if hit is None:
                hit = any(self.target.match(n) for n in view.node_revs(nid))
                cache[nid] = hit
            return hit

        efl = self.edge_flt
        paths: list[list[GraphElement]] = []
        for start in value.items():
            if target_ids is not None and not target_ids:
                break
            if target_ids is not None:
                path_ids = _bidirectional(ctx, view, start.ID, target_ids, efl)
            else:
                path_ids = self._bfs(ctx, view, start.ID, is_target, efl)
            if path_ids:
                paths.append([view.node_revs(i)[0] for i in path_ids])
        return PathsT(view, paths)

    @staticmethod
    def _bfs(ctx: Context, view: GraphView, start: str, is_target: Any, efl: Filter | None) -> list[str] | None:
        if is_target(start):
            return [start]
        prev: dict[str, str] = {start: ""}
        queue = deque([start])
        while queue:
            nid = queue.popleft()
            ctx.tick()
            for e in view.out_edges(nid):
                if efl is not None and not efl.match(e):
                    continue
                nxt = e.Child
                if nxt not in prev:
                    prev[nxt] = nid
                    if is_target(nxt):
                        return _unwind(prev, nxt)
                    queue.append(nxt)
            for e in view.in_edges(nid):
                if efl is not None and not efl.match(e):
                    continue
                nxt = e.Parent
                if nxt not in prev:
                    prev[nxt] = nid
                    if is_target(nxt):
                        return _unwind(prev, nxt)
                    queue.append(nxt)
        return None


def _neighbours(view: GraphView, nid: str, efl: Filter | None) -> Iterable[str]:
    for e in view.out_edges(nid):
        if efl is None or efl.match(e):
            yield e.Child
    for e in view.in_edges(nid):
        if efl is None or efl.match(e):
            yield e.Parent


def _bidirectional(ctx: Context, view: GraphView, start: str, targets: set[str],
                   efl: Filter | None) -> list[str] | None:
    """Shortest undirected path from `start` to the nearest of `targets`: BFS from both ends (the targets as
    one multi-source frontier), expanding the smaller frontier one whole level at a time."""
    if start in targets:
        return [start]
    prev_f: dict[str, str] = {start: ""}
    dist_f: dict[str, int] = {start: 0}
    depth_f = 0
    prev_b: dict[str, str] = {t: "" for t in targets}
    dist_b: dict[str, int] = {t: 0 for t in targets}
    front_f, front_b = [start], list(targets)
    depth_b = 0
    while front_f and front_b:
        if len(front_f) <= len(front_b):
            depth_f += 1
            best: tuple[int, str] | None = None
            nxt: list[str] = []
            for nid in front_f:
                ctx.tick()
                for m in _neighbours(view, nid, efl):
                    if m in prev_f:
                        continue
                    prev_f[m] = nid
                    dist_f[m] = depth_f
                    if m in prev_b:
                        if best is None or dist_b[m] < best[0]:
                            best = (dist_b[m], m)
                    else:
                        nxt.append(m)
            if best is not None:
                meet = best[1]
                return _unwind(prev_f, meet) + _unwind(prev_b, meet)[::-1][1:]
            front_f = nxt
        else:
            depth_b += 1
            nxt = []
            meets: list[str] = []
            for nid in front_b:
                ctx.tick()
                for m in _neighbours(view, nid, efl):
                    if m in prev_b:
                        continue
                    prev_b[m] = nid
                    dist_b[m] = depth_b
                    if m in prev_f:
                        meets.append(m)
                    nxt.append(m)
            if meets:
                meet = min(meets, key=dist_f.__getitem__)
                return _unwind(prev_f, meet) + _unwind(prev_b, meet)[::-1][1:]
            front_b = nxt
    return None


def _unwind(prev: dict[str, str], end: str) -> list[str]:
    path = [end]
    while prev[path[-1]]:
        path.append(prev[path[-1]])
    path.reverse()
    return path


@core_step("SubGraph")
class SubGraph(Step):
    """`SubGraph([edge k, v ...])`: a new graph of the selected nodes and the (matching) edges between them,
    or of the selected edges and their ends; continue with V() / E()."""

    def setup(self) -> None:
        self.flt = parse_pairs(self, self.args) if self.args else None

    def _from_nodes(self, ctx: Context, view: GraphView, nodes: Iterable[GraphElement]) -> Value:
        g = Graph()
        for n in nodes:
            g.upsert_node(n)
        for nid in list(g.nodes):
            for e in view.out_edges(nid):
                if e.Child in g.nodes and (self.flt is None or self.flt.match(e)):
                    g.upsert_edge(e)
            ctx.tick()
        return GraphT(GraphView(g))

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        return self._from_nodes(ctx, value.view, value.iter())

    def on_paths(self, ctx: Context, value: PathsT) -> Value:
        return self._from_nodes(ctx, value.view, (n for p in value.paths for n in p))

    def on_edges(self, ctx: Context, value: EdgesT) -> Value:
        g = Graph()
        view = value.view
        for e in value.iter():
            if self.flt is not None and not self.flt.match(e):
                continue
            for end in (e.Parent, e.Child):
                revs = view.node_revs(end)
                if revs:
                    g.upsert_node(revs[0])
            g.upsert_edge(e)
        return GraphT(GraphView(g))

    def on_graph(self, ctx: Context, value: GraphT) -> Value:
        return self._from_nodes(ctx, value.view, value.view.nodes())
