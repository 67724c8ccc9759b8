"""graph-builder -> replicas: graph elements in Skydive's shape, events and snapshots."""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec


class GraphElement(msgspec.Struct, omit_defaults=True):
    """A node (Parent/Child empty) or an edge, as Skydive's API shows it. Times are Unix milliseconds."""

    ID: str
    Metadata: dict[str, Any]
    Host: str
    Origin: str
    CreatedAt: int
    UpdatedAt: int
    Revision: int
    DeletedAt: int | None = None
    Parent: str = ""
    Child: str = ""


class GraphEvent(msgspec.Struct, omit_defaults=True):
    """One change. type: NodeAdded, NodeUpdated, NodeDeleted, EdgeAdded, EdgeUpdated, EdgeDeleted
    (Skydive's WebSocket message types). `seq` is global and gap-free across graph-builder's lifetime
    (`epoch` changes when graph-builder restarts; replicas resnapshot then)."""

    seq: int
    type: str
    obj: GraphElement


class GraphEventBatch(msgspec.Struct):
    """Message on `<prefix>.graph.events`: consecutive events, oldest first."""

    VERSION: ClassVar[int] = 1
    epoch: str
    events: list[GraphEvent]
    v: int = 1


class SnapshotRequest(msgspec.Struct):
    VERSION: ClassVar[int] = 1
    v: int = 1


class SnapshotChunk(msgspec.Struct):
    """Reply to a SnapshotRequest, in as many chunks as the NATS payload limit needs.

    Every chunk carries the same `epoch` and `seq` (the last event applied in the snapshot); the last chunk
    has `last=True`. A replica then applies events with seq > `seq`."""

    VERSION: ClassVar[int] = 1
    epoch: str
    seq: int
    index: int
    last: bool
    nodes: list[GraphElement] = []
    edges: list[GraphElement] = []
    v: int = 1
