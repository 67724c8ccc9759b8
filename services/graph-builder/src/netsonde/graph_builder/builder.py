"""The merge logic of graph-builder, free of I/O so it can be tested directly.

Each probe owns the elements it reports (by host). A "full" message replaces the host's state; a "delta"
upserts and deletes; every real change becomes a GraphEvent (with a gap-free sequence number) and a
revision row for the history.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from netsonde.common.bus import topology as topo
from netsonde.common.bus.graph import GraphElement, GraphEvent
from netsonde.common.graph import Graph


@dataclass
class HostState:
    """What graph-builder knows of one probe: the elements it owns and where its message sequence is."""

    boot: str = ""
    seq: int = -1
    synced: bool = False
    """True once a full state of the current probe run has been applied."""
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    """node ID -> metadata as the probe sent it (before overlays)."""
    edges: dict[str, topo.ProbeEdge] = field(default_factory=dict)
    full_parts: dict[int, topo.TopologyMessage] = field(default_factory=dict)
    digests: topo.DigestCache = field(default_factory=topo.DigestCache)
    """Checks the probe's digests without redoing the JSON of unchanged elements (stalls the event loop)."""


@dataclass
class Revision:
    """One row of graph_revisions."""

    kind: str
    element: GraphElement


class GraphBuilder:
    def __init__(self, origin_service: str = "probe-topology", clock: Callable[[], int] | None = None,
                 history_ttl_ms: int = 30 * 86_400_000) -> None:
        import time

        self.graph = Graph()
        self.epoch = uuid.uuid4().hex
        self.seq = 0
        self.hosts: dict[str, HostState] = {}
        self.overlays: dict[str, dict[str, Any]] = {}
        """node ID -> metadata keys set by other sources (Captures, sFlow counters) merged over the probe's."""
        self.rule_layers: dict[str, dict[str, dict[str, Any]]] = {}
        """node ID -> node rule UUID -> metadata an `update` node rule merges over everything else (rules.py)."""
        self.static_nodes: dict[str, GraphElement] = {}
        """Nodes no probe owns (API and node rules, static.py): ID -> element as created or patched."""
        self.restored_foreign: set[tuple[str, str]] = set()
        """(kind, ID) restored from history whose Origin is not a probe: static.py keeps or deletes them."""
        self.origin_service = origin_service
        self.clock = clock or (lambda: int(time.time() * 1000))
        self.events: list[GraphEvent] = []
        self.revisions: list[Revision] = []
        self.resync_wanted: set[str] = set()
        self.deleted_revisions: dict[tuple[str, str], tuple[int, int]] = {}
        """(kind, ID) -> (last revision, deletion time) of a deleted element: an ID that comes back (a namespace
        inode the kernel reused, a re-created static object) continues its revision numbers, so the history, keyed
        and ordered by (ID, revision), never holds two lives under one revision. Forgotten once the history no
        longer holds the deletion (`history_ttl_ms`, the table's TTL)."""
        self.history_ttl_ms = history_ttl_ms
        self._next_prune = 0

    # --- probe messages ------------------------------------------------------------------------------
    def apply(self, msg: topo.TopologyMessage) -> None:
        """Apply one probe message. Events and revisions accumulate in `events`/`revisions` until taken."""
        host = self.hosts.setdefault(msg.host, HostState())
        if msg.kind == "full":
            parts = msg.parts or 1
            if parts > 1:
                first = next(iter(host.full_parts.values()), None)
                if first is not None and (first.boot, first.seq - first.part) != (msg.boot, msg.seq - msg.part):
                    host.full_parts.clear()  # parts of an older, incomplete full: drop them
                host.full_parts[msg.part] = msg
                host.boot, host.seq = msg.boot, msg.seq
                if len(host.full_parts) < parts:
                    return
                pieces = [host.full_parts[i] for i in sorted(host.full_parts)]
                host.full_parts.clear()
                nodes = [n for p in pieces for n in p.nodes]
                edges = [e for p in pieces for e in p.edges]
            else:
                nodes, edges = msg.nodes, msg.edges
            self._apply_full(msg.host, host, nodes, edges)
            host.boot, host.seq, host.synced = msg.boot, msg.seq, True
            self.resync_wanted.discard(msg.host)
            return
        in_sequence = host.synced and msg.boot == host.boot and msg.seq == host.seq + 1
        if msg.kind == "delta":
            for eid in msg.deleted_edges:
                self._delete_edge(msg.host, host, eid)
            for nid in msg.deleted_nodes:
                self._delete_node(msg.host, host, nid)
            for node in msg.nodes:
                self._upsert_node(msg.host, host, node.ID, node.Metadata)
            for edge in msg.edges:
                self._upsert_edge(msg.host, host, edge)
        elif msg.kind == "digest":
            if in_sequence and msg.digest:
                mine = host.digests.digest([topo.ProbeNode(ID=k, Metadata=v) for k, v in host.nodes.items()],
                                           host.edges.values())
                if mine != msg.digest:
                    in_sequence = False
        if not in_sequence:
            self.resync_wanted.add(msg.host)
        host.boot, host.seq = msg.boot, msg.seq

    def _apply_full(self, hostname: str, host: HostState, nodes: list[topo.ProbeNode],
                    edges: list[topo.ProbeEdge]) -> None:
        new_nodes = {n.ID: n.Metadata for n in nodes}
        new_edges = {e.ID: e for e in edges}
        for eid in [e for e in host.edges if e not in new_edges]:
            self._delete_edge(hostname, host, eid)
        for nid in [n for n in host.nodes if n not in new_nodes]:
            self._delete_node(hostname, host, nid)
        for nid, metadata in new_nodes.items():
            self._upsert_node(hostname, host, nid, metadata)
        for edge in edges:
            self._upsert_edge(hostname, host, edge)

    # --- element changes -----------------------------------------------------------------------------
    def _origin(self, hostname: str) -> str:
        return f"{self.origin_service}.{hostname}"

    def _emit(self, type_: str, kind: str, el: GraphElement) -> None:
        self.seq += 1
        self.events.append(GraphEvent(seq=self.seq, type=type_, obj=el))
        self.revisions.append(Revision(kind, el))

    def effective_metadata(self, nid: str, metadata: dict[str, Any]) -> dict[str, Any]:
        """A node's own metadata, then overlays (Captures, counters), then node rule layers (oldest rule first)."""
        if nid not in self.overlays and nid not in self.rule_layers:
            return metadata
        out = {**metadata, **self.overlays.get(nid, {})}
        for layer in self.rule_layers.get(nid, {}).values():
            out.update(layer)
        return out

    def _upsert_node(self, hostname: str, host: HostState | None, nid: str, metadata: dict[str, Any],
                     origin: str = "") -> None:
        """Add or update a node; `host` None for a node no probe owns (`origin` then names its owner)."""
        if host is not None:
            host.nodes[nid] = metadata
        effective = self.effective_metadata(nid, metadata)
        origin = origin or self._origin(hostname)
        old = self.graph.nodes.get(nid)
        now = self.clock()
        if old is None:
            rev = self.deleted_revisions.pop(("node", nid), (0, 0))[0] + 1
            el = GraphElement(ID=nid, Metadata=effective, Host=hostname, Origin=origin,
                              CreatedAt=now, UpdatedAt=now, Revision=rev)
            self.graph.upsert_node(el)
            self._emit("NodeAdded", "node", el)
        elif old.Metadata != effective or old.Host != hostname or old.Origin != origin:
            el = GraphElement(ID=nid, Metadata=effective, Host=hostname, Origin=origin,
                              CreatedAt=old.CreatedAt, UpdatedAt=max(now, old.UpdatedAt), Revision=old.Revision + 1)
            self.graph.upsert_node(el)
            self._emit("NodeUpdated", "node", el)

    def _upsert_edge(self, hostname: str, host: HostState | None, edge: topo.ProbeEdge, origin: str = "") -> None:
        """Add or update an edge; `host` None for an edge no probe owns (`origin` then names its owner)."""
        if host is not None:
            host.edges[edge.ID] = edge
        origin = origin or self._origin(hostname)
        old = self.graph.edges.get(edge.ID)
        now = self.clock()
        if old is None:
            rev = self.deleted_revisions.pop(("edge", edge.ID), (0, 0))[0] + 1
            el = GraphElement(ID=edge.ID, Metadata=edge.Metadata, Host=hostname, Origin=origin,
                              CreatedAt=now, UpdatedAt=now, Revision=rev, Parent=edge.Parent, Child=edge.Child)
            self.graph.upsert_edge(el)
            self._emit("EdgeAdded", "edge", el)
        elif (old.Metadata, old.Parent, old.Child, old.Origin) != (edge.Metadata, edge.Parent, edge.Child, origin):
            el = GraphElement(ID=edge.ID, Metadata=edge.Metadata, Host=hostname, Origin=origin,
                              CreatedAt=old.CreatedAt, UpdatedAt=max(now, old.UpdatedAt), Revision=old.Revision + 1,
                              Parent=edge.Parent, Child=edge.Child)
            self.graph.upsert_edge(el)
            self._emit("EdgeUpdated", "edge", el)

    def _delete_edge(self, hostname: str, host: HostState | None, eid: str) -> None:
        if host is not None:
            host.edges.pop(eid, None)
        old = self.graph.delete_edge(eid)
        if old is None:
            return
        now = max(self.clock(), old.UpdatedAt)
        el = GraphElement(ID=old.ID, Metadata=old.Metadata, Host=old.Host, Origin=old.Origin,
                          CreatedAt=old.CreatedAt, UpdatedAt=now, Revision=old.Revision + 1, DeletedAt=now,
                          Parent=old.Parent, Child=old.Child)
        self._forget_deleted("edge", el)
        self._emit("EdgeDeleted", "edge", el)

    def _delete_node(self, hostname: str, host: HostState | None, nid: str) -> None:
        if host is not None:
            host.nodes.pop(nid, None)
        if nid not in self.graph.nodes:
            return
        for edge in list(self.graph.node_edges(nid)):
            owner = self.hosts.get(edge.Host)
            self._delete_edge(edge.Host, owner, edge.ID)
        old = self.graph.delete_node(nid)
        assert old is not None
        self.overlays.pop(nid, None)
        self.rule_layers.pop(nid, None)
        now = max(self.clock(), old.UpdatedAt)
        el = GraphElement(ID=old.ID, Metadata=old.Metadata, Host=old.Host, Origin=old.Origin,
                          CreatedAt=old.CreatedAt, UpdatedAt=now, Revision=old.Revision + 1, DeletedAt=now)
        self._forget_deleted("node", el)
        self._emit("NodeDeleted", "node", el)

    def _forget_deleted(self, kind: str, el: GraphElement) -> None:
        """Remember a deleted element's last revision; drop those the history's TTL has removed (at most once
        a minute of element time)."""
        deleted_at = el.DeletedAt or el.UpdatedAt
        self.deleted_revisions[(kind, el.ID)] = (el.Revision, deleted_at)
        if deleted_at >= self._next_prune:
            self._next_prune = deleted_at + 60_000
            horizon = deleted_at - self.history_ttl_ms
            for key in [k for k, (_, at) in self.deleted_revisions.items() if at < horizon]:
                del self.deleted_revisions[key]

    # --- other sources of metadata -------------------------------------------------------------------
    def set_overlay(self, nid: str, key: str, value: Any) -> bool:
        """Set (value not None) or clear one overlay key of a node, e.g. `Captures` or `SFlow`.
        Returns False when the node is unknown."""
        node = self.graph.nodes.get(nid)
        if node is None:
            return False
        overlay = self.overlays.setdefault(nid, {})
        if value is None:
            overlay.pop(key, None)
        else:
            overlay[key] = value
        self.refresh_node(nid, drop_key=key)
        return True

    def refresh_node(self, nid: str, drop_key: str = "") -> None:
        """Recompute a node's metadata after its overlays or rule layers changed (an event if it differs)."""
        node = self.graph.nodes.get(nid)
        if node is None:
            return
        static = self.static_nodes.get(nid)
        if static is not None:
            self._upsert_node(static.Host, None, nid, static.Metadata, origin=static.Origin)
            return
        host = self.hosts.setdefault(node.Host, HostState())
        base = host.nodes.get(nid, {k: v for k, v in node.Metadata.items() if k != drop_key})
        self._upsert_node(node.Host, host, nid, base)

    # --- restart -------------------------------------------------------------------------------------
    def restore(self, elements: list[tuple[str, GraphElement]]) -> None:
        """Seed the graph with the latest live revisions read back from the history after a restart, so
        CreatedAt and revision numbers continue (deleted elements, DeletedAt set, only keep their last revision
        number); every host is then marked as needing a resync."""
        for kind, el in elements:
            if el.DeletedAt is not None:
                self._forget_deleted(kind, el)
                continue
            if not el.Origin.startswith(f"{self.origin_service}."):
                # static objects and rule results: no probe's state; static.py keeps or deletes them
                if kind == "node":
                    self.graph.upsert_node(el)
                else:
                    self.graph.upsert_edge(el)
                self.restored_foreign.add((kind, el.ID))
                continue
            host = self.hosts.setdefault(el.Host, HostState())
            if kind == "node":
                self.graph.upsert_node(el)
                host.nodes[el.ID] = el.Metadata
            else:
                self.graph.upsert_edge(el)
                host.edges[el.ID] = topo.ProbeEdge(ID=el.ID, Parent=el.Parent, Child=el.Child, Metadata=el.Metadata)
        self.resync_wanted.update(self.hosts)

    def take(self) -> tuple[list[GraphEvent], list[Revision]]:
        events, revisions = self.events, self.revisions
        self.events, self.revisions = [], []
        return events, revisions
