"""One flush of the enricher, without I/O: bus messages in; rows for ClickHouse, enriched messages and
rejections out.

Two implementations with the same results (tests compare them row for row):
- the C hot path `_fastflow.process`: msgpack -> enrichment -> ClickHouse Native blocks and enriched msgpack
  in one pass, no Python object per flow (several times faster: see docs/flow-storage.md);
- the reference path in Python: msgspec decode -> `EndpointLookup.enrich` -> `flowschema.batches_to_columns`.
A message the C path rejects is decoded by msgspec: if msgspec rejects it too it is dropped with msgspec's
reason, else it goes through the Python path (so the C path can only be stricter, never lossy).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

from netsonde.common import flowschema as fs
from netsonde.common.bus import BusDecodeError, decode, encode
from netsonde.common.bus.flows import FlowUpdateBatch
from netsonde.common.native import slow_path_allowed

from .lookup import EndpointLookup, _pick

try:
    from . import _fastflow
except ImportError as _exc:  # not built: an error, unless NETSONDE_ALLOW_SLOW_PATH=1 allows the Python path
    slow_path_allowed("netsonde.flow_enricher._fastflow", _exc)
    _fastflow = None  # type: ignore[assignment]

FAST_PATH_AVAILABLE = _fastflow is not None


@dataclass
class Processed:
    """What one flush produced. Index lists refer to positions in the input message list."""

    rows: int = 0
    native: dict[str, bytes] = field(default_factory=dict)
    """table -> Native block (C path)."""
    columns: fs.InsertColumns | None = None
    """Columns of the messages that went through the Python path."""
    enriched: list[bytes | None] = field(default_factory=list)
    """Per message: the enriched message to republish, None when rejected."""
    rejected: list[tuple[int, str]] = field(default_factory=list)
    """(message index, reason: msgpack | schema | version) of undecodable messages (to terminate)."""
    ts: list[int] = field(default_factory=list)
    """Per message: its `ts` (Unix ms), 0 when rejected."""
    unresolved: int = 0
    """Flow updates whose NodeTID matched no graph node."""


def native_columns() -> tuple[list[tuple[str, str]], list[tuple[str, str]], list[tuple[str, str]]]:
    """(name, wire type) of the columns the C path writes, for the flows, metrics and raw-packet tables."""
    if _fastflow is None:
        raise RuntimeError("the _fastflow extension is not built")
    return _fastflow.columns()  # type: ignore[no-any-return]


def process_python(messages: Sequence[bytes], lookup: EndpointLookup) -> Processed:
    out = Processed(enriched=[None] * len(messages), ts=[0] * len(messages))
    batches: list[FlowUpdateBatch] = []
    for i, data in enumerate(messages):
        try:
            batch = decode(data, FlowUpdateBatch)
        except BusDecodeError as exc:
            out.rejected.append((i, exc.reason))
            continue
        found = lookup.enrich(batch.flows, batch.host)
        out.unresolved += len(batch.flows) - found
        out.enriched[i] = encode(batch)
        out.ts[i] = batch.ts
        batches.append(batch)
    if batches:
        out.columns = fs.batches_to_columns(batches)
        out.rows = out.columns.rows
    return out


def process_fast(messages: Sequence[bytes], lookup: EndpointLookup) -> Processed:
    assert _fastflow is not None
    res: dict[str, Any] = _fastflow.process(messages, lookup.by_tid, lookup.by_mac, lookup.by_ip, lookup.host_of,
                                            _pick)
    out = Processed(rows=res["rows"], enriched=res["enriched"], ts=res["ts"], unresolved=res["unresolved"])
    if res["rows"]:
        out.native[fs.FLOWS_TABLE] = res["flows"]
        out.native[fs.METRICS_TABLE] = res["metrics"]
        if res["raw"] is not None:
            out.native[fs.RAW_PACKETS_TABLE] = res["raw"]
    if res["errors"]:
        idx = [i for i, _ in res["errors"]]
        slow = process_python([messages[i] for i in idx], lookup)
        for j, reason in slow.rejected:
            out.rejected.append((idx[j], reason))
        for j, payload in enumerate(slow.enriched):
            out.enriched[idx[j]] = payload
            out.ts[idx[j]] = slow.ts[j]
        out.columns = slow.columns
        out.rows += slow.rows
        out.unresolved += slow.unresolved
    return out


def process(messages: Sequence[bytes], lookup: EndpointLookup, fast: bool = True) -> Processed:
    """Decode, enrich and build the inserts of one flush (C path when built and `fast`)."""
    if fast and _fastflow is not None:
        return process_fast(messages, lookup)
    return process_python(messages, lookup)
