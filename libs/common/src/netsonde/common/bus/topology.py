"""probe-topology -> graph-builder: a host's nodes and edges, as full states, deltas and digests.

The probe owns the identity of what it sees: node and edge IDs are deterministic (UUIDv5 of what makes the
object unique on the host), so a probe restart yields the same IDs. graph-builder owns revisions and times.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec


class ProbeNode(msgspec.Struct, omit_defaults=True):
    """A node as the probe sees it. `Metadata` follows Skydive's keys (Name, Type, IfIndex, MAC, ...)."""

    ID: str
    Metadata: dict[str, Any]


class ProbeEdge(msgspec.Struct, omit_defaults=True):
    """An edge; `Metadata.RelationType` is ownership, layer2, ... as in Skydive."""

    ID: str
    Parent: str
    Child: str
    Metadata: dict[str, Any]


class TopologyMessage(msgspec.Struct, omit_defaults=True):
    """One message on `<prefix>.topology.<host>`.

    kind:
      - "full": the host's complete state (`nodes`, `edges`); anything of this host not listed is gone.
      - "delta": upserts (`nodes`, `edges`, whole metadata) and deletions (`deleted_nodes`,
        `deleted_edges`, IDs). Deleting a node deletes its edges.
      - "digest": only `digest`, the hash of the full state; a receiver that disagrees asks for a resync.
    `seq` increases by one per message of a probe run (`boot` identifies the run) so gaps are visible.
    """

    VERSION: ClassVar[int] = 1
    host: str
    kind: str
    boot: str
    seq: int
    ts: int
    """Unix milliseconds at the probe."""
    v: int = 1
    nodes: list[ProbeNode] = []
    edges: list[ProbeEdge] = []
    deleted_nodes: list[str] = []
    deleted_edges: list[str] = []
    digest: str = ""


class ResyncRequest(msgspec.Struct, omit_defaults=True):
    """Asks the probe of `host` ("" for every probe) to publish a full state now."""

    VERSION: ClassVar[int] = 1
    host: str = ""
    reason: str = ""
    v: int = 1
