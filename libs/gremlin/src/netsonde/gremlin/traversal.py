"""What flows between steps: the graph, node/edge sets, paths, scalars, metrics; plus the run context.

A step receives one of these values and returns another. Each value knows its JSON shape (`to_json`) and its
result kind (`KIND`: nodes, edges, graph, paths, count, values, metrics, ...), which `execute_raw` reports.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable, ClassVar, Iterable, Iterator

from netsonde.common.bus.graph import GraphElement
from netsonde.common.graph import INDEXED_KEYS, Graph, element_to_json

from .errors import GremlinError


@dataclass(frozen=True)
class QueryLimits:
    """Per-query limits. A query that runs longer than `timeout_s` fails with status 408; a step whose output
    (nodes, edges, flows, values, path nodes ...) grows beyond `max_results` fails with 413."""

    timeout_s: float = 10.0
    max_results: int = 100_000


class GraphView:
    """Read access to a graph for the steps, uniform over the live graph and rebuilt past graphs.

    A past graph over a time window may hold several revisions of one ID (`RevisionGraph.older_nodes`);
    every accessor here returns all of them. Indexes are used only when each ID has one revision.
    """

    def __init__(self, graph: Graph) -> None:
        self.graph = graph
        self.older_nodes: dict[str, list[GraphElement]] = getattr(graph, "older_nodes", None) or {}
        self.older_edges: dict[str, list[GraphElement]] = getattr(graph, "older_edges", None) or {}
        self.single_revision = not self.older_nodes and not self.older_edges
        """True for the live graph and past instants: one element per ID (fast paths apply)."""
        self.indexed = self.single_revision and hasattr(graph, "index")

    def nodes(self) -> Iterator[GraphElement]:
        """Every node; in a window, each ID's revisions together, oldest first."""
        if not self.older_nodes:
            yield from self.graph.nodes.values()
            return
        older = self.older_nodes
        for nid, node in self.graph.nodes.items():
            yield from older.get(nid, ())
            yield node

    def edges(self) -> Iterator[GraphElement]:
        """Every edge; in a window, each ID's revisions together, oldest first."""
        if not self.older_edges:
            yield from self.graph.edges.values()
            return
        older = self.older_edges
        for eid, edge in self.graph.edges.items():
            yield from older.get(eid, ())
            yield edge

    def node_count(self) -> int:
        return len(self.graph.nodes) + sum(len(r) for r in self.older_nodes.values())

    def node_revs(self, node_id: str) -> list[GraphElement]:
        """The node's revisions, oldest first (one outside a window)."""
        n = self.graph.nodes.get(node_id)
        if n is None:
            return []
        return [*self.older_nodes.get(node_id, ()), n] if self.older_nodes else [n]

    def edge_revs(self, edge_id: str) -> list[GraphElement]:
        """The edge's revisions, oldest first (one outside a window)."""
        e = self.graph.edges.get(edge_id)
        if e is None:
            return []
        return [*self.older_edges.get(edge_id, ()), e] if self.older_edges else [e]

    def out_edges(self, node_id: str) -> Iterator[GraphElement]:
        """Edges whose Parent is the node (all revisions)."""
        edges = self.graph.edges
        for eid in self.graph.out_edges.get(node_id, ()):
            if self.older_edges:
                for old in self.older_edges.get(eid, ()):
                    if old.Parent == node_id:
                        yield old
            e = edges.get(eid)
            if e is not None and e.Parent == node_id:
                yield e

    def in_edges(self, node_id: str) -> Iterator[GraphElement]:
        """Edges whose Child is the node (all revisions)."""
        edges = self.graph.edges
        for eid in self.graph.in_edges.get(node_id, ()):
            if self.older_edges:
                for old in self.older_edges.get(eid, ()):
                    if old.Child == node_id:
                        yield old
            e = edges.get(eid)
            if e is not None and e.Child == node_id:
                yield e

    def lookup(self, key: str, value: Any) -> list[GraphElement] | None:
        """Nodes with indexed `key` == `value` (list values: membership), or None when no index applies."""
        return self.lookup_any(key, [value])

    def lookup_any(self, key: str, values: list[Any]) -> list[GraphElement] | None:
        """Nodes whose indexed `key` equals one of `values` (no duplicates), or None when no index applies."""
        if not self.indexed or key not in INDEXED_KEYS:
            return None
        for v in values:
            if isinstance(v, bool) or not isinstance(v, (str, int)):
                return None
        nodes = self.graph.nodes
        if len(values) == 1:
            return [nodes[i] for i in self.graph.lookup(key, values[0]) if i in nodes]
        seen: set[str] = set()
        out = []
        for v in values:
            for i in self.graph.lookup(key, v):
                if i not in seen and i in nodes:
                    seen.add(i)
                    out.append(nodes[i])
        return out


class Context:
    """State of one query run: limits and deadline, time context, named sets (As/Select), backends."""

    def __init__(self, limits: QueryLimits, history: Any = None, flows: Any = None,
                 now: Callable[[], float] = time.monotonic) -> None:
        self.limits = limits
        self.history = history
        self.flows = flows
        self._now = now
        self.deadline = now() + limits.timeout_s
        self.at_ms: int | None = None
        """Time context: the instant of Context()/At(), None for live."""
        self.window_ms: int | None = None
        """Time context: the duration before `at_ms` (None = a point in time)."""
        self.named: dict[str, list[GraphElement]] = {}
        self._ticks = 0
        self.extra: dict[str, Any] = {}

    def remaining_s(self) -> float:
        return max(self.deadline - self._now(), 0.001)

    def check(self) -> None:
        """Fail with 408 past the deadline."""
        if self._now() > self.deadline:
            raise GremlinError(f"query exceeded its time limit of {self.limits.timeout_s:g} s", status=408)

    def tick(self, n: int = 1) -> None:
        """Cheap periodic deadline check for inner loops."""
        self._ticks += n
        if self._ticks >= 4096:
            self._ticks = 0
            self.check()

    def check_size(self, n: int, what: str = "results") -> None:
        if n > self.limits.max_results:
            raise GremlinError(f"query result too large: more than {self.limits.max_results} {what} "
                               f"(refine the query, e.g. with Has() or Limit())", status=413)


class Value:
    """Base of every traversal value."""

    KIND: ClassVar[str] = "value"

    def to_json(self) -> Any:
        raise NotImplementedError


@dataclass
class GraphT(Value):
    """`G` or a SubGraph(): a whole graph."""

    KIND: ClassVar[str] = "graph"
    view: GraphView

    def to_json(self) -> Any:
        nodes = sorted(self.view.nodes(), key=lambda e: (e.CreatedAt, e.ID))
        edges = sorted(self.view.edges(), key=lambda e: (e.CreatedAt, e.ID))
        return [{"Nodes": [element_to_json(n) for n in nodes], "Edges": [element_to_json(e) for e in edges]}]


@dataclass
class NodesT(Value):
    """A list of nodes (order kept, duplicates possible). `elems is None` means "every node", resolved
    lazily so that a following Has() on an indexed key can use the index instead of a scan."""

    KIND: ClassVar[str] = "nodes"
    view: GraphView
    elems: list[GraphElement] | None = None

    def items(self) -> list[GraphElement]:
        if self.elems is None:
            self.elems = list(self.view.nodes())
        return self.elems

    def iter(self) -> Iterable[GraphElement]:
        return self.view.nodes() if self.elems is None else self.elems

    def to_json(self) -> Any:
        return [element_to_json(n) for n in self.items()]


@dataclass
class EdgesT(Value):
    KIND: ClassVar[str] = "edges"
    view: GraphView
    elems: list[GraphElement] | None = None

    def items(self) -> list[GraphElement]:
        if self.elems is None:
            self.elems = list(self.view.edges())
        return self.elems

    def iter(self) -> Iterable[GraphElement]:
        return self.view.edges() if self.elems is None else self.elems

    def to_json(self) -> Any:
        return [element_to_json(e) for e in self.items()]


@dataclass
class PathsT(Value):
    """ShortestPathTo(): one list of nodes per start node that reached a target."""

    KIND: ClassVar[str] = "paths"
    view: GraphView
    paths: list[list[GraphElement]]

    def to_json(self) -> Any:
        return [[element_to_json(n) for n in p] for p in self.paths]


@dataclass
class ScalarT(Value):
    """Count() / Sum(): a bare number."""

    value: Any
    kind: str = "count"

    @property
    def KIND(self) -> str:  # type: ignore[override]
        return self.kind

    def to_json(self) -> Any:
        return self.value


@dataclass
class ValuesT(Value):
    """Values() / ValueMap() / Keys(): a list of plain values."""

    KIND: ClassVar[str] = "values"
    values: list[Any]

    def to_json(self) -> Any:
        return self.values


@dataclass
class MetricsT(Value):
    """Metrics(): ID (node or flow UUID) -> list of metric maps, oldest first."""

    KIND: ClassVar[str] = "metrics"
    metrics: dict[str, list[dict[str, Any]]]
    source: str = "nodes"

    def to_json(self) -> Any:
        return [self.metrics] if self.metrics else []


@dataclass
class AggregatedT(Value):
    """Aggregates(): metrics re-bucketed in time slices, summed over every ID."""

    KIND: ClassVar[str] = "metrics"
    slices: list[dict[str, Any]]

    def to_json(self) -> Any:
        return [{"Aggregated": self.slices}]


@dataclass
class MapT(Value):
    """A keyed result (NextHop, Group, RawPackets ...), returned as a one-element list wrapping the map."""

    value: dict[str, Any]
    kind: str = "map"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def KIND(self) -> str:  # type: ignore[override]
        return self.kind

    def to_json(self) -> Any:
        return [self.value] if self.value else []
