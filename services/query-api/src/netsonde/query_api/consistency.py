"""One consistent graph per query: copy-on-write snapshots of the live replica.

The replica's graph is mutated on the event loop, one graph event batch at a time (never across an await).
A query runs in a worker thread, so it must not read containers the loop is changing: it reads a snapshot.
Taking a snapshot costs nothing: it shares every container (node and edge dicts, adjacency sets, indexes) of
the live graph at that instant. The live graph then copies a container the first time it changes it after
the snapshot (a dict of 10 000 entries: a fraction of a millisecond), so the snapshot never changes and a
query never sees a half-applied batch; events are never held back by a running query.

docs/reliability.md gives the measurement that chose this design over evaluating on the loop, a full copy per
version, and a readers/writer lock (`bench/query_consistency.py`).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable
from typing import Any

from netsonde.common.bus.graph import GraphElement
from netsonde.common.graph import INDEXED_KEYS, Graph, _index_values


class CowGraph(Graph):
    """A `Graph` whose `freeze()` returns an unchanging view in O(1); writes copy what they touch afterwards.

    `_owned` names the containers this graph may change in place: containers created or copied since the last
    `freeze()`. Anything else may be shared with a snapshot and is copied before the first write."""

    def __init__(self) -> None:
        super().__init__()
        self._owned: set[Hashable] = set()

    def freeze(self) -> Graph:
        """A snapshot sharing this graph's current containers; they are never changed again."""
        snap = Graph.__new__(Graph)
        snap.nodes, snap.edges = self.nodes, self.edges
        snap.out_edges, snap.in_edges, snap.index = self.out_edges, self.in_edges, self.index
        self._owned = set()
        return snap

    # --- writable containers -------------------------------------------------------------------------------
    def _top(self, name: str) -> Any:
        """The top-level container `name` (nodes, edges, out_edges, in_edges), copied once per snapshot."""
        if name not in self._owned:
            old = getattr(self, name)
            setattr(self, name, defaultdict(set, old) if isinstance(old, defaultdict) else dict(old))
            self._owned.add(name)
        return getattr(self, name)

    def _adjacency(self, name: str, node_id: str) -> set[str]:
        """The writable set of edge IDs of `node_id` in out_edges/in_edges."""
        table = self._top(name)
        if (name, node_id) not in self._owned:
            table[node_id] = set(table.get(node_id, ()))
            self._owned.add((name, node_id))
        ids: set[str] = table[node_id]
        return ids

    def _bucket(self, key: str) -> dict[Any, set[str]]:
        """The writable value -> IDs dict of the index on `key`."""
        if "index" not in self._owned:
            self.index = dict(self.index)
            self._owned.add("index")
        if ("index", key) not in self._owned:
            self.index[key] = defaultdict(set, self.index[key])
            self._owned.add(("index", key))
        return self.index[key]

    def _ids(self, key: str, value: Any) -> set[str]:
        bucket = self._bucket(key)
        if ("index", key, value) not in self._owned:
            bucket[value] = set(bucket.get(value, ()))
            self._owned.add(("index", key, value))
        return bucket[value]

    # --- writes (the same semantics as Graph's, through the writable accessors) -----------------------------
    def _index_add(self, node: GraphElement) -> None:
        for key in INDEXED_KEYS:
            if key in node.Metadata:
                for v in _index_values(node.Metadata[key]):
                    self._ids(key, v).add(node.ID)

    def _index_remove(self, node: GraphElement) -> None:
        for key in INDEXED_KEYS:
            if key in node.Metadata:
                for v in _index_values(node.Metadata[key]):
                    if v in self.index[key]:
                        ids = self._ids(key, v)
                        ids.discard(node.ID)
                        if not ids:
                            del self._bucket(key)[v]
                            self._owned.discard(("index", key, v))

    def upsert_node(self, node: GraphElement) -> None:
        old = self.nodes.get(node.ID)
        if old is not None:
            self._index_remove(old)
        self._top("nodes")[node.ID] = node
        self._index_add(node)

    def delete_node(self, node_id: str) -> GraphElement | None:
        node = self.nodes.get(node_id)
        if node is None:
            return None
        del self._top("nodes")[node_id]
        self._index_remove(node)
        edge_ids = list(self.out_edges.get(node_id, ())) + list(self.in_edges.get(node_id, ()))
        for name in ("out_edges", "in_edges"):
            if node_id in getattr(self, name):
                del self._top(name)[node_id]
                self._owned.discard((name, node_id))
        for eid in edge_ids:
            self.delete_edge(eid)
        return node

    def upsert_edge(self, edge: GraphElement) -> None:
        old = self.edges.get(edge.ID)
        if old is not None and (old.Parent, old.Child) != (edge.Parent, edge.Child):
            self.delete_edge(edge.ID)
        self._top("edges")[edge.ID] = edge
        self._adjacency("out_edges", edge.Parent).add(edge.ID)
        self._adjacency("in_edges", edge.Child).add(edge.ID)

    def delete_edge(self, edge_id: str) -> GraphElement | None:
        edge = self.edges.get(edge_id)
        if edge is None:
            return None
        del self._top("edges")[edge_id]
        if edge.Parent in self.out_edges:
            self._adjacency("out_edges", edge.Parent).discard(edge_id)
        if edge.Child in self.in_edges:
            self._adjacency("in_edges", edge.Child).discard(edge_id)
        return edge

    def clear(self) -> None:
        self.__init__()  # type: ignore[misc]


class SnapshotCache:
    """The newest snapshot of a `CowGraph`, taken again only when the graph's version moved on.

    `version()` changes with every mutation (query-api passes the replica's (epoch, seq, snapshot loads)).
    Call `get` on the thread that mutates the graph: the event loop."""

    def __init__(self, graph: CowGraph, version: Callable[[], Hashable]) -> None:
        self.graph = graph
        self.version = version
        self._snap: Graph | None = None
        self._snap_version: Hashable = None
        self.taken = 0
        """Snapshots taken so far."""

    def get(self) -> tuple[Graph, Hashable]:
        """(snapshot, its version): the cached one if the graph did not change since."""
        now = self.version()
        if self._snap is None or now != self._snap_version:
            self._snap = self.graph.freeze()
            self._snap_version = now
            self.taken += 1
        return self._snap, self._snap_version
