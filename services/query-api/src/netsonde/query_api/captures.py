"""Capture definitions in the JetStream key-value bucket that probes watch (key = capture UUID).

A capture is a standing declaration: it is stored when its query parses, its BPF filter compiles and its
Type and options are ones Netsonde honours (`netsonde.common.capture_types`), whether or not it selects a
node today; probes and collectors start it on every node the query selects, now or later.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import msgspec
from nats.js.errors import InvalidKeyError, KeyNotFoundError

import netsonde.gremlin as gremlin
from netsonde.gremlin.engine import compile_query
from netsonde.common.bus import Subjects, decode, encode
from netsonde.common.bus.captures import Capture
from netsonde.common.bus.streams import open_capture_bucket
from netsonde.common.capture_types import (CAPTURABLE_NODE_TYPES, CAPTURE_TYPE_SPECS, nodes_in_result, set_options,
                                           unsupported_options)
from netsonde.flow.applayers import parse_extra_layers
from netsonde.flow.targets import check_capture_options

API_CAPTURE_TYPES = ("", *CAPTURE_TYPE_SPECS)
"""Values of a capture's `Type` the API accepts ("" = each node's default type)."""


KEY_RE = re.compile(r"[-/_=.a-zA-Z0-9]*[-/_=a-zA-Z0-9]")
"""What a JetStream KV key may be (and a capture UUID, which is the key)."""


class CaptureError(ValueError):
    """A capture definition that cannot be accepted (HTTP 400)."""


def capture_from_json(body: Any) -> Capture:
    """Validate a Skydive capture object (unknown keys are ignored, as Skydive does)."""
    if not isinstance(body, dict):
        raise CaptureError("capture must be a JSON object")
    if not body.get("GremlinQuery"):
        raise CaptureError("GremlinQuery is required")
    fields = set(Capture.__struct_fields__)
    data = {k: v for k, v in body.items() if k in fields and v is not None}
    data.setdefault("UUID", str(uuid.uuid4()))
    if not isinstance(data["UUID"], str) or not KEY_RE.fullmatch(data["UUID"]) or data["UUID"].startswith("."):
        raise CaptureError("UUID must be letters, digits and - _ / = . (it is the key of the capture bucket)")
    layers = data.get("ExtraLayers")
    if isinstance(layers, list) and not all(isinstance(x, str) for x in layers):
        raise CaptureError("ExtraLayers: a bitmask, or a list of layer names such as [\"DNS\", \"VRRP\"]")
    if isinstance(layers, (list, str)):  # Skydive's JSON form: ["DNS", "VRRP"]
        try:
            data["ExtraLayers"] = parse_extra_layers(data["ExtraLayers"])
        except ValueError as exc:
            raise CaptureError(f"ExtraLayers: {exc}") from None
    try:
        cap = msgspec.convert(data, Capture)
    except msgspec.ValidationError as exc:
        raise CaptureError(f"invalid capture: {exc}") from None
    if cap.Type not in API_CAPTURE_TYPES:
        raise CaptureError(f"unknown capture Type {cap.Type!r}; one of {', '.join(t for t in API_CAPTURE_TYPES if t)}")
    if cap.LayerKeyMode not in ("L2", "L3"):
        raise CaptureError("LayerKeyMode must be L2 or L3")
    if not 0 <= cap.HeaderSize <= 4096:
        raise CaptureError("HeaderSize must be between 0 and 4096")
    if cap.SamplingRate < 1:
        raise CaptureError("SamplingRate must be >= 1")
    check_options(cap)
    try:
        check_capture_options(cap)  # ExtraLayers bits, TargetType and Target
    except ValueError as exc:
        raise CaptureError(str(exc)) from None
    try:
        compile_query(cap.GremlinQuery)
    except gremlin.GremlinError as exc:
        raise CaptureError(f"GremlinQuery: {exc}") from None
    return cap


def check_options(cap: Capture) -> None:
    """Refuse an option the capture's type cannot honour (with Type "", one that no type honours: the node's
    default type is checked by the probe, which shows `State: error` on a node whose type cannot)."""
    if cap.Type:
        bad = unsupported_options(cap, cap.Type)
        if bad:
            raise CaptureError(f"capture type {cap.Type} does not support option(s) {', '.join(bad)}")
        return
    for option in set_options(cap):
        if not any(option in spec.options for spec in CAPTURE_TYPE_SPECS.values()):
            raise CaptureError(f"option {option} is not supported by any capture type")


def selection_warning(cap: Capture, result: Any) -> str:
    """The `Warning` of a POST answer when the query selects no node now (the capture still stands)."""
    if isinstance(result, Exception):
        return (f"GremlinQuery {cap.GremlinQuery!r} cannot be evaluated now ({result}); the capture starts on "
                "the nodes it selects once it can")
    nodes = [n for n in nodes_in_result(result) if n.get("Metadata", {}).get("Type") in CAPTURABLE_NODE_TYPES]
    if not nodes:
        return (f"GremlinQuery {cap.GremlinQuery!r} selects no node that can be captured yet; the capture starts "
                "on such nodes as they appear")
    return ""


def capture_to_json(cap: Capture) -> dict[str, Any]:
    out = msgspec.to_builtins(cap)
    out.pop("v", None)
    return out


class CaptureStore:
    def __init__(self, nc: Any, subjects: Subjects) -> None:
        self.nc = nc
        self.subjects = subjects
        self.kv: Any = None

    async def start(self) -> None:
        self.kv = await open_capture_bucket(self.nc.jetstream(), self.subjects)

    async def put(self, cap: Capture) -> None:
        await self.kv.put(cap.UUID, encode(cap))

    async def get(self, capture_id: str) -> Capture | None:
        try:
            entry = await self.kv.get(capture_id)
        except (KeyNotFoundError, InvalidKeyError):  # a name that cannot be a key names no capture
            return None
        if entry is None or not entry.value:
            return None
        return decode(entry.value, Capture)

    async def delete(self, capture_id: str) -> bool:
        if await self.get(capture_id) is None:
            return False
        await self.kv.delete(capture_id)
        return True

    async def list(self) -> list[Capture]:
        try:
            keys = await self.kv.keys()
        except Exception:  # nats-py raises NoKeysError on an empty bucket
            return []
        out = []
        for key in keys:
            cap = await self.get(key)
            if cap is not None:
                out.append(cap)
        return out
