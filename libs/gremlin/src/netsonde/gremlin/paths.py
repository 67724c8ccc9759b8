"""Core path steps (graffiti's): ShortestPathTo (bidirectional breadth-first search) and SubGraph."""

from __future__ import annotations

from collections import deque
from typing import Any, Iterable

from netsonde.common.bus.graph import GraphElement
from netsonde.common.graph import Graph

from .steps import Filter, Step, core_step, metadata_filter, parse_pairs
from .traversal import (Context, EdgesT, GraphT, GraphView, NodesT, PathsT, Value)


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
            for nxt in _neighbours(view, nid, efl):
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
