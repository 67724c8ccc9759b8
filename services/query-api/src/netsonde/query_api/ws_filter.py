"""A `/ws/subscriber` client's Gremlin filter (`X-Gremlin-Filter` header, `x-gremlin-filter` query parameter,
or the `GremlinFilter` of a SyncRequest), as Skydive's subscriber endpoint applies it: the client sees the
sub-graph the filter selects; after each change, elements that entered it come as NodeAdded/EdgeAdded,
elements that left it as NodeDeleted/EdgeDeleted, and updates only for elements inside it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from netsonde.common.bus.graph import GraphEvent
from netsonde.common.graph import element_to_json

SubGraph = tuple[dict[str, dict[str, Any]], dict[str, dict[str, Any]]]
"""(nodes by ID, edges by ID), each in Skydive's JSON shape."""


class FilterError(ValueError):
    """The filter is not a valid query, or does not select a graph."""


def subgraph(run: Callable[[str], Any], query: str) -> SubGraph:
    """The sub-graph a filter selects: a query giving a graph (`G`, `...SubGraph()`) as is, one giving nodes
    or edges with `.SubGraph()` appended."""
    result = run(query)
    if not _is_graph(result):
        result = run(query + ".SubGraph()")
    if not _is_graph(result):
        raise FilterError(f"Gremlin query '{query}' did not return a graph")
    graph = result[0]
    return {n["ID"]: n for n in graph.get("Nodes", [])}, {e["ID"]: e for e in graph.get("Edges", [])}


def _is_graph(result: Any) -> bool:
    return (
        isinstance(result, list) and len(result) == 1 and isinstance(result[0], dict) and "Nodes" in result[0]
    )


class FilteredView:
    """What one filtered subscriber currently sees."""

    def __init__(self, query: str, run: Callable[[str], Any]) -> None:
        self.query = query
        try:
            self.nodes, self.edges = subgraph(run, query)
        except FilterError:
            raise
        except Exception as exc:  # a Gremlin error: the filter is refused, as Skydive does
            raise FilterError(f"Invalid Gremlin filter '{query}': {exc}") from None

    def changes(self, events: list[GraphEvent], now: SubGraph) -> list[tuple[str, dict[str, Any]]]:
        """(message type, element) to send for a batch of events, given the filter's sub-graph after them."""
        nodes, edges = now
        out: list[tuple[str, dict[str, Any]]] = []
        out += [("NodeAdded", nodes[i]) for i in nodes.keys() - self.nodes.keys()]
        out += [("NodeDeleted", self.nodes[i]) for i in self.nodes.keys() - nodes.keys()]
        out += [("EdgeAdded", edges[i]) for i in edges.keys() - self.edges.keys()]
        out += [("EdgeDeleted", self.edges[i]) for i in self.edges.keys() - edges.keys()]
        for ev in events:
            if ev.type == "NodeUpdated" and ev.obj.ID in nodes and ev.obj.ID in self.nodes:
                out.append((ev.type, element_to_json(ev.obj)))
            elif ev.type == "EdgeUpdated" and ev.obj.ID in edges and ev.obj.ID in self.edges:
                out.append((ev.type, element_to_json(ev.obj)))
        self.nodes, self.edges = nodes, edges
        return out
