"""Capture targets (Skydive's `Target` / `TargetType`): a capture's flows or packets also sent to a collector.

`table_for_capture(cap, node_tid, **table_kw)` is the one place a capture definition becomes its flow table:
the packet options (`IPDefrag`, `ReassembleTCP`, `ExtraLayers`) go to the `FlowTable`, and a `TargetType`
picks a table that also feeds the target:

- `netflowv5`: every flow update of the table is exported as NetFlow v5 records to `Target` (host:port, UDP);
- `erspanv1`: every captured packet is mirrored as ERSPAN (type II, GRE) to `Target` (host; no port used).

The flows still go to Netsonde's own pipeline, so the capture stays visible in Gremlin.
"""

from __future__ import annotations

from typing import Any

from netsonde.common.bus.captures import Capture

from ..table import FlowTable

TARGET_TYPES = ("netflowv5", "erspanv1")


class TargetError(ValueError):
    """A Target / TargetType that cannot be used (unknown type, bad address); the message says why."""


def table_options(cap: Capture) -> dict[str, Any]:
    """The FlowTable keyword arguments of a capture's packet options."""
    return {"ip_defrag": cap.IPDefrag, "reassemble_tcp": cap.ReassembleTCP, "extra_layers": cap.ExtraLayers}


def check_target(cap: Capture) -> None:
    """Raise TargetError when the capture's Target / TargetType cannot be honoured."""
    if not cap.TargetType and not cap.Target:
        return
    if cap.TargetType not in TARGET_TYPES:
        raise TargetError(
            f"TargetType {cap.TargetType!r} is not supported (supported: {', '.join(TARGET_TYPES)})"
            if cap.TargetType
            else "Target is set but TargetType is empty"
        )
    if not cap.Target:
        raise TargetError(f"TargetType {cap.TargetType} needs a Target (host:port)")
    from .address import parse_target

    parse_target(cap.Target, need_port=cap.TargetType == "netflowv5")


def check_capture_options(cap: Capture) -> None:
    """Raise ValueError (with the reason) when the capture's ExtraLayers or Target / TargetType is invalid;
    query-api answers it with a 400 before the capture is stored."""
    from ..applayers import parse_extra_layers

    parse_extra_layers(cap.ExtraLayers)
    check_target(cap)


def table_for_capture(cap: Capture, node_tid: str, **table_kw: Any) -> FlowTable:
    """The flow table of one capture on one node: packet options applied, target attached."""
    kw = {**table_options(cap), **table_kw}
    args = (node_tid, cap.UUID, cap.LayerKeyMode or "L2", cap.ExtraTCPMetric)
    check_target(cap)
    if cap.TargetType == "netflowv5":
        from .netflow import NetFlowV5Table

        return NetFlowV5Table(cap.Target, *args, **kw)
    if cap.TargetType == "erspanv1":
        from .erspan import ErspanTable

        return ErspanTable(cap.Target, *args, **kw)
    return FlowTable(*args, **kw)


__all__ = [
    "TARGET_TYPES",
    "TargetError",
    "table_options",
    "check_target",
    "check_capture_options",
    "table_for_capture",
]
