"""Appends revisions to ClickHouse in columnar batches, and reads the latest state back after a restart."""

from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any

import msgspec

from netsonde.common.bus.graph import GraphElement
from netsonde.common.clickhouse import connect

from .builder import Revision
from .schema import COLUMNS, TABLE

log = logging.getLogger(__name__)
_json = msgspec.json.Encoder()
_UTC = dt.timezone.utc


def _ts(ms: int | None) -> dt.datetime | None:
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, _UTC)


class RevisionWriter:
    """Buffers revisions and writes them with one columnar insert per flush.

    If ClickHouse is unreachable the buffer is kept (up to `max_pending` rows, then the oldest are dropped and
    counted) and the write is retried on the next flush.
    """

    def __init__(self, url: str, database: str, max_pending: int = 1_000_000) -> None:
        self.url = url
        self.database = database
        self.max_pending = max_pending
        self.pending: list[Revision] = []
        self.dropped = 0
        self.written = 0
        self._lock = threading.Lock()
        self._client: Any = None

    def add(self, revisions: list[Revision]) -> None:
        with self._lock:
            self.pending.extend(revisions)
            overflow = len(self.pending) - self.max_pending
            if overflow > 0:
                del self.pending[:overflow]
                self.dropped += overflow

    def flush(self) -> int:
        """Write everything pending (blocking; call it from a thread). Returns rows written."""
        with self._lock:
            batch, self.pending = self.pending, []
        if not batch:
            return 0
        columns: dict[str, list[Any]] = {name: [] for name, _ in COLUMNS}
        for rev in batch:
            el = rev.element
            columns["kind"].append(rev.kind)
            columns["id"].append(el.ID)
            columns["revision"].append(el.Revision)
            columns["host"].append(el.Host)
            columns["origin"].append(el.Origin)
            columns["created_at"].append(_ts(el.CreatedAt))
            columns["updated_at"].append(_ts(el.UpdatedAt))
            columns["deleted_at"].append(_ts(el.DeletedAt))
            columns["parent"].append(el.Parent)
            columns["child"].append(el.Child)
            columns["metadata"].append(_json.encode(el.Metadata).decode())
        try:
            if self._client is None:
                self._client = connect(self.url, self.database)
            self._client.insert(TABLE, list(columns.values()), column_names=list(columns),
                                column_type_names=[t for _, t in COLUMNS], column_oriented=True)
        except Exception:
            with self._lock:
                self.pending[:0] = batch
            self._client = None
            raise
        self.written += len(batch)
        return len(batch)

    def load_latest(self) -> list[tuple[str, GraphElement]]:
        """The latest revision of every element: the graph as it was when we stopped, plus the deleted elements
        (DeletedAt set) whose revision numbers must continue if their ID comes back."""
        client = connect(self.url, self.database)
        try:
            rows = client.query(
                f"SELECT kind, id, revision, host, origin, toUnixTimestamp64Milli(created_at), "
                f"toUnixTimestamp64Milli(updated_at), deleted_at IS NOT NULL, parent, child, metadata "
                f"FROM {TABLE} FINAL ORDER BY kind, id, revision DESC LIMIT 1 BY kind, id").result_rows
        finally:
            client.close()
        out: list[tuple[str, GraphElement]] = []
        for kind, eid, rev, host, origin, created, updated, deleted, parent, child, metadata in rows:
            out.append((kind, GraphElement(ID=eid, Metadata=msgspec.json.decode(metadata), Host=host, Origin=origin,
                                           CreatedAt=created, UpdatedAt=updated, Revision=rev,
                                           DeletedAt=updated if deleted else None, Parent=parent, Child=child)))
        return out
