"""probe-topology -> graph-builder: a host's nodes and edges, as full states, deltas and digests.

The probe owns the identity of what it sees: node and edge IDs are deterministic (UUIDv5 of what makes the
object unique on the host), so a probe restart yields the same IDs. graph-builder owns revisions and times.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable
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


class TopologyMessage(msgspec.Struct):
    """One message on `<prefix>.topology.<host>`.

    kind:
      - "full": the host's complete state (`nodes`, `edges`); anything of this host not listed is gone.
      - "delta": upserts (`nodes`, `edges`, whole metadata) and deletions (`deleted_nodes`,
        `deleted_edges`, IDs). Deleting a node deletes its edges.
      - "digest": only `digest`, the hash of the full state; a receiver that disagrees asks for a resync.
    `seq` increases by one per message of a probe run (`boot` identifies the run) so gaps are visible.

    A large "full" is split into `parts` messages (`part` = 0 .. parts-1, consecutive `seq`, same `boot`);
    the receiver applies the full state once it holds every part (the union of their `nodes`/`edges` is the
    state; anything of this host in none of the parts is gone). A single-message full has part=0, parts=1.
    Deltas are never split into parts: each delta message stands on its own.
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
    """kind "digest": `state_digest(nodes, edges)` of the probe's complete current state (see that function:
    sha1 hex over the sorted `N|ID|metadata-json` and `E|ID|Parent|Child|metadata-json` lines, joined by
    newlines, metadata as JSON with sorted keys, `(",", ":")` separators, ensure_ascii=False). A receiver
    computes the same over the nodes and edges it holds for this host (as last sent by the probe, the
    probe's Metadata only) and sends a ResyncRequest when they differ. Also set on "full" messages (on
    the last part) so a receiver can check it rebuilt the state correctly."""
    part: int = 0
    """Index of this message in a split "full" (0-based)."""
    parts: int = 1
    """Number of messages of this "full" (1: not split)."""


class ResyncRequest(msgspec.Struct):
    """Asks the probe of `host` ("" for every probe) to publish a full state now."""

    VERSION: ClassVar[int] = 1
    host: str = ""
    reason: str = ""
    v: int = 1


def _canonical(metadata: Any) -> str:
    return json.dumps(metadata, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)


def state_digest(nodes: Iterable[ProbeNode], edges: Iterable[ProbeEdge]) -> str:
    """The digest of a host's state, computed the same way by the probe and by graph-builder.

    Algorithm (exact, so other implementations can match it):
      1. one line per node: ``"N|" + ID + "|" + canonical(Metadata)``;
      2. one line per edge: ``"E|" + ID + "|" + Parent + "|" + Child + "|" + canonical(Metadata)``;
      3. canonical(x) = ``json.dumps(x, sort_keys=True, separators=(",", ":"), ensure_ascii=False)``
         (nested maps sorted too, lists kept in their order);
      4. sort all lines (Python str order = code point order), join with ``"\n"``, encode UTF-8,
         sha1, lower-case hex.
    The empty state gives sha1 of the empty string.
    """
    lines = [_node_line(n) for n in nodes]
    lines.extend(_edge_line(e) for e in edges)
    return _hash(lines)


def _node_line(n: ProbeNode) -> str:
    return f"N|{n.ID}|{_canonical(n.Metadata)}"


def _edge_line(e: ProbeEdge) -> str:
    return f"E|{e.ID}|{e.Parent}|{e.Child}|{_canonical(e.Metadata)}"


def _hash(lines: list[str]) -> str:
    lines.sort()
    return hashlib.sha1("\n".join(lines).encode("utf-8")).hexdigest()


class DigestCache:
    """`state_digest` of a state that changes little between two digests: each element's line (the costly
    JSON) is kept while the element is the same object (a node's Metadata, an edge), so a digest of 2 000
    nodes costs a sort instead of ~70 ms of JSON on the event loop. Holders must not change those objects
    in place (they replace them)."""

    def __init__(self) -> None:
        self._nodes: dict[str, tuple[Any, str]] = {}
        self._edges: dict[str, tuple[Any, str]] = {}

    def digest(self, nodes: Iterable[ProbeNode], edges: Iterable[ProbeEdge]) -> str:
        node_lines: dict[str, tuple[Any, str]] = {}
        for n in nodes:
            hit = self._nodes.get(n.ID)
            node_lines[n.ID] = (
                hit if hit is not None and hit[0] is n.Metadata else (n.Metadata, _node_line(n))
            )
        edge_lines: dict[str, tuple[Any, str]] = {}
        for e in edges:
            hit = self._edges.get(e.ID)
            edge_lines[e.ID] = hit if hit is not None and hit[0] is e else (e, _edge_line(e))
        self._nodes, self._edges = node_lines, edge_lines
        return _hash(
            [line for _obj, line in node_lines.values()] + [line for _obj, line in edge_lines.values()]
        )
