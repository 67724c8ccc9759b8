"""The in-memory graph: nodes, edges, adjacency and metadata indexes.

graph-builder keeps the authoritative one; every query-api replica keeps a copy fed by graph events.
Elements are `GraphElement`s (Skydive's shape). Lookups by the common metadata keys go through indexes so
`G.V().Has('Name', 'br-int')` does not scan the graph.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator
from typing import Any

from .bus.graph import GraphElement, GraphEvent

INDEXED_KEYS: tuple[str, ...] = (
    "Name",
    "Type",
    "MAC",
    "TID",
    "IfIndex",
    "Host",
    "IPV4",
    "IPV6",
    "PeerIntfMAC",
)
"""Metadata keys with an index (values that are lists are indexed element by element)."""


def _index_values(value: Any) -> Iterable[Any]:
    if isinstance(value, list):
        return [v for v in value if isinstance(v, (str, int))]
    if isinstance(value, (str, int)) and not isinstance(value, bool):
        return (value,)
    return ()


class Graph:
    """Nodes and edges by ID, with out/in adjacency (by edge ID) and value indexes on INDEXED_KEYS."""

    def __init__(self) -> None:
        self.nodes: dict[str, GraphElement] = {}
        self.edges: dict[str, GraphElement] = {}
        self.out_edges: dict[str, set[str]] = defaultdict(set)
        """node ID -> IDs of edges whose Parent is the node."""
        self.in_edges: dict[str, set[str]] = defaultdict(set)
        """node ID -> IDs of edges whose Child is the node."""
        self.index: dict[str, dict[Any, set[str]]] = {k: defaultdict(set) for k in INDEXED_KEYS}

    # --- reads ---------------------------------------------------------------------------------------
    def lookup(self, key: str, value: Any) -> set[str]:
        """IDs of nodes whose indexed `key` equals (or, for lists, contains) `value`."""
        return self.index[key].get(value, set())

    def node_edges(self, node_id: str) -> Iterator[GraphElement]:
        for eid in self.out_edges.get(node_id, ()):
            yield self.edges[eid]
        for eid in self.in_edges.get(node_id, ()):
            yield self.edges[eid]

    def children(self, node_id: str) -> Iterator[GraphElement]:
        for eid in self.out_edges.get(node_id, ()):
            child = self.nodes.get(self.edges[eid].Child)
            if child is not None:
                yield child

    def parents(self, node_id: str) -> Iterator[GraphElement]:
        for eid in self.in_edges.get(node_id, ()):
            parent = self.nodes.get(self.edges[eid].Parent)
            if parent is not None:
                yield parent

    # --- writes --------------------------------------------------------------------------------------
    def _index_add(self, node: GraphElement) -> None:
        for key in INDEXED_KEYS:
            if key in node.Metadata:
                for v in _index_values(node.Metadata[key]):
                    self.index[key][v].add(node.ID)

    def _index_remove(self, node: GraphElement) -> None:
        for key in INDEXED_KEYS:
            if key in node.Metadata:
                bucket = self.index[key]
                for v in _index_values(node.Metadata[key]):
                    ids = bucket.get(v)
                    if ids is not None:
                        ids.discard(node.ID)
                        if not ids:
                            del bucket[v]

    def upsert_node(self, node: GraphElement) -> None:
        old = self.nodes.get(node.ID)
        if old is not None:
            self._index_remove(old)
        self.nodes[node.ID] = node
        self._index_add(node)

    def delete_node(self, node_id: str) -> GraphElement | None:
        """Remove a node and every edge touching it (the caller emits the edge deletions first)."""
        node = self.nodes.pop(node_id, None)
        if node is None:
            return None
        self._index_remove(node)
        for eid in list(self.out_edges.pop(node_id, ())) + list(self.in_edges.pop(node_id, ())):
            self.delete_edge(eid)
        return node

    def upsert_edge(self, edge: GraphElement) -> None:
        old = self.edges.get(edge.ID)
        if old is not None and (old.Parent, old.Child) != (edge.Parent, edge.Child):
            self.delete_edge(edge.ID)
        self.edges[edge.ID] = edge
        self.out_edges[edge.Parent].add(edge.ID)
        self.in_edges[edge.Child].add(edge.ID)

    def delete_edge(self, edge_id: str) -> GraphElement | None:
        edge = self.edges.pop(edge_id, None)
        if edge is None:
            return None
        out = self.out_edges.get(edge.Parent)
        if out is not None:
            out.discard(edge_id)
        inn = self.in_edges.get(edge.Child)
        if inn is not None:
            inn.discard(edge_id)
        return edge

    def apply(self, event: GraphEvent) -> None:
        """Apply one graph event (replicas do this for every event after their snapshot)."""
        obj = event.obj
        if event.type in ("NodeAdded", "NodeUpdated"):
            self.upsert_node(obj)
        elif event.type == "NodeDeleted":
            self.delete_node(obj.ID)
        elif event.type in ("EdgeAdded", "EdgeUpdated"):
            self.upsert_edge(obj)
        elif event.type == "EdgeDeleted":
            self.delete_edge(obj.ID)

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]

    def edges_between_known_nodes(self) -> Iterator[GraphElement]:
        for edge in self.edges.values():
            if edge.Parent in self.nodes and edge.Child in self.nodes:
                yield edge


def element_to_json(el: GraphElement) -> dict[str, Any]:
    """Skydive's JSON shape of a node or edge (DeletedAt only when set, Parent/Child only on edges)."""
    out: dict[str, Any] = {
        "ID": el.ID,
        "Metadata": el.Metadata,
        "Host": el.Host,
        "Origin": el.Origin,
        "CreatedAt": el.CreatedAt,
        "UpdatedAt": el.UpdatedAt,
        "Revision": el.Revision,
    }
    if el.DeletedAt is not None:
        out["DeletedAt"] = el.DeletedAt
    if el.Parent or el.Child:
        out["Parent"] = el.Parent
        out["Child"] = el.Child
    return out
