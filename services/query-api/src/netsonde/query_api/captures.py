"""Capture definitions in the JetStream key-value bucket that probes watch (key = capture UUID)."""

from __future__ import annotations

import uuid
from typing import Any

import msgspec
from nats.js.errors import KeyNotFoundError

from netsonde.common.bus import Subjects, decode, encode
from netsonde.common.bus.captures import Capture
from netsonde.common.bus.streams import open_capture_bucket

CAPTURE_TYPES = ("", "afpacket", "pcap", "ovssflow", "sflow", "pcapsocket", "ebpf", "ovsmirror")


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
    try:
        cap = msgspec.convert(data, Capture)
    except msgspec.ValidationError as exc:
        raise CaptureError(f"invalid capture: {exc}") from None
    if cap.Type not in CAPTURE_TYPES:
        raise CaptureError(f"unknown capture Type {cap.Type!r}; one of {', '.join(t for t in CAPTURE_TYPES if t)}")
    if cap.LayerKeyMode not in ("L2", "L3"):
        raise CaptureError("LayerKeyMode must be L2 or L3")
    if not 0 <= cap.HeaderSize <= 4096:
        raise CaptureError("HeaderSize must be between 0 and 4096")
    if cap.SamplingRate < 1:
        raise CaptureError("SamplingRate must be >= 1")
    return cap


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
        except KeyNotFoundError:
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
