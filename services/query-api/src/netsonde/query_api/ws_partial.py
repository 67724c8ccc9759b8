"""Skydive's `X-Update-Policy: partial` on `/ws/subscriber`: updates as the metadata keys that changed.

A subscriber that asks for it (header `X-Update-Policy: partial` or query parameter
`x-update-policy=partial`) receives `NodePartiallyUpdated` / `EdgePartiallyUpdated` instead of
`NodeUpdated` / `EdgeUpdated`, with Skydive's PartiallyUpdatedMsg as `Obj`: `{"ID", "UpdatedAt",
"Revision", "Ops"}`, each op `{"Type": 1, "Key", "Value"}` (key added or changed) or
`{"Type": 2, "Key", "Value": null}` (key removed). Added and deleted elements still arrive whole.
Skydive takes its ops from the metadata call that made the change; Netsonde's graph events carry the
whole element, so the ops are the difference of the top-level `Metadata` keys with the element the
event replaced. Any other policy than `full` (the default) or `partial` refuses the connection, as
Skydive does.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from netsonde.common.bus.graph import GraphEvent
from netsonde.common.graph import Graph, element_to_json

FULL, PARTIAL = "full", "partial"
ADD_OP, DEL_OP = 1, 2
"""Skydive's PartiallyUpdatedOpType values."""
PARTIAL_TYPE = {"NodeUpdated": "NodePartiallyUpdated", "EdgeUpdated": "EdgePartiallyUpdated"}


class PolicyError(ValueError):
    """An X-Update-Policy other than full or partial."""


def update_policy(headers: Mapping[str, str], query: Mapping[str, str]) -> str:
    """The subscriber's policy from its header, else its query parameter (Skydive's order)."""
    value = headers.get("X-Update-Policy") or query.get("x-update-policy", "")
    policy = value.lower()
    if policy in ("", FULL):
        return FULL
    if policy == PARTIAL:
        return PARTIAL
    raise PolicyError(f"invalid update policy '{value}' (full or partial)")


def metadata_ops(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Add ops for the keys added or changed, then Del ops for the keys removed."""
    ops = [{"Type": ADD_OP, "Key": k, "Value": v} for k, v in new.items() if k not in old or old[k] != v]
    ops += [{"Type": DEL_OP, "Key": k, "Value": None} for k in old if k not in new]
    return ops


class PreviousMetadata:
    """The metadata each update replaced, noted (by `remember`, the replica's before-apply hook) only while a
    partial subscriber is connected, and turned into partial messages once per batch."""

    def __init__(self) -> None:
        self.wanted = False
        self._by_seq: dict[int, Mapping[str, Any]] = {}

    def remember(self, ev: GraphEvent, graph: Graph) -> None:
        if not self.wanted or ev.type not in PARTIAL_TYPE:
            return
        old = (graph.nodes if ev.type == "NodeUpdated" else graph.edges).get(ev.obj.ID)
        self._by_seq[ev.seq] = old.Metadata if old is not None else {}

    def messages(self, events: list[GraphEvent]) -> dict[tuple[str, int], dict[str, Any]]:
        """(element ID, Revision) -> Skydive's PartiallyUpdatedMsg, for the updates of a batch."""
        out: dict[tuple[str, int], dict[str, Any]] = {}
        by_seq, self._by_seq = self._by_seq, {}
        for ev in events:
            old = by_seq.get(ev.seq)
            if old is None:
                continue
            obj = ev.obj
            out[(obj.ID, obj.Revision)] = {
                "ID": obj.ID,
                "UpdatedAt": element_to_json(obj)["UpdatedAt"],
                "Revision": obj.Revision,
                "Ops": metadata_ops(old, obj.Metadata),
            }
        return out
