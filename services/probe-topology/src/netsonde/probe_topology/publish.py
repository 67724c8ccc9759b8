"""Diffing two host states and cutting the result into bus messages under the item and size limits."""

from __future__ import annotations

from dataclasses import dataclass, field

import msgspec

from netsonde.common.bus.topology import ProbeEdge, ProbeNode

from .builder import HostState

_enc = msgspec.msgpack.Encoder()
_OVERHEAD = 200
"""Bytes of a message envelope (host, kind, boot, seq, ts, digest, field names)."""


@dataclass
class Delta:
    nodes: list[ProbeNode] = field(default_factory=list)
    edges: list[ProbeEdge] = field(default_factory=list)
    deleted_nodes: list[str] = field(default_factory=list)
    deleted_edges: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.nodes) + len(self.edges) + len(self.deleted_nodes) + len(self.deleted_edges)


def diff(prev: HostState, cur: HostState) -> Delta:
    """Upserts (new or changed metadata/endpoints) and deletions that turn `prev` into `cur`."""
    d = Delta()
    for nid, node in cur.nodes.items():
        old = prev.nodes.get(nid)
        if old is None or old.Metadata != node.Metadata:
            d.nodes.append(node)
    for eid, edge in cur.edges.items():
        old_e = prev.edges.get(eid)
        if old_e is None or old_e.Metadata != edge.Metadata or old_e.Parent != edge.Parent \
                or old_e.Child != edge.Child:
            d.edges.append(edge)
    d.deleted_edges = [eid for eid in prev.edges if eid not in cur.edges]
    d.deleted_nodes = [nid for nid in prev.nodes if nid not in cur.nodes]
    return d


def diff_touched(prev: HostState, cur: HostState, node_ids: set[str], edge_ids: set[str]) -> Delta:
    """`diff` restricted to the nodes and edges an incremental update touched (the others are the same
    objects in both states)."""
    d = Delta()
    for nid in node_ids:
        node, old = cur.nodes.get(nid), prev.nodes.get(nid)
        if node is not None and (old is None or old.Metadata != node.Metadata):
            d.nodes.append(node)
        elif node is None and old is not None:
            d.deleted_nodes.append(nid)
    for eid in edge_ids:
        edge, old_e = cur.edges.get(eid), prev.edges.get(eid)
        if edge is not None and (old_e is None or old_e.Metadata != edge.Metadata or old_e.Parent != edge.Parent
                                 or old_e.Child != edge.Child):
            d.edges.append(edge)
        elif edge is None and old_e is not None:
            d.deleted_edges.append(eid)
    return d


def split(delta: Delta, max_items: int, max_bytes: int) -> list[Delta]:
    """Cut into messages of at most `max_items` items and about `max_bytes` bytes, keeping the order
    node upserts, edge upserts, edge deletions, node deletions (an edge never precedes its nodes)."""
    out: list[Delta] = []
    cur = Delta()
    size = _OVERHEAD

    def room(n: int) -> bool:
        return len(cur) + 1 <= max_items and size + n <= max_bytes

    def flush() -> None:
        nonlocal cur, size
        if len(cur):
            out.append(cur)
        cur = Delta()
        size = _OVERHEAD

    for node in delta.nodes:
        n = len(_enc.encode(node))
        if not room(n):
            flush()
        cur.nodes.append(node)
        size += n
    for edge in delta.edges:
        n = len(_enc.encode(edge))
        if not room(n):
            flush()
        cur.edges.append(edge)
        size += n
    for eid in delta.deleted_edges:
        if not room(len(eid) + 2):
            flush()
        cur.deleted_edges.append(eid)
        size += len(eid) + 2
    for nid in delta.deleted_nodes:
        if not room(len(nid) + 2):
            flush()
        cur.deleted_nodes.append(nid)
        size += len(nid) + 2
    flush()
    return out
