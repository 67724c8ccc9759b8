"""Alert events into ClickHouse (`alert_events`, schema in `netsonde.common.alertschema`), in small batches
off the event loop; while ClickHouse is down the rows wait (bounded) and are written later."""

from __future__ import annotations

import datetime as dt
import json
import threading
from typing import Any

from netsonde.common.alertschema import COLUMNS, CREATE_TABLE, TABLE
from netsonde.common.bus.alerts import AlertEvent
from netsonde.common.clickhouse import Migration, connect

MIGRATIONS = [Migration(1, "alert_events", [CREATE_TABLE])]


class EventWriter:
    def __init__(self, url: str, database: str, max_pending: int = 100_000) -> None:
        self.url = url
        self.database = database
        self.max_pending = max_pending
        self.pending: list[AlertEvent] = []
        self.dropped = 0
        self._lock = threading.Lock()
        self._client: Any = None

    def add(self, event: AlertEvent) -> None:
        with self._lock:
            self.pending.append(event)
            if len(self.pending) > self.max_pending:
                del self.pending[0]
                self.dropped += 1

    def flush(self) -> int:
        """Write what is pending (blocking: call from a thread). On failure the rows are kept, and it
        raises."""
        with self._lock:
            batch, self.pending = self.pending, []
        if not batch:
            return 0
        rows = [
            [
                dt.datetime.fromtimestamp(ev.Timestamp / 1000, dt.UTC),
                ev.ID,
                ev.UUID,
                ev.Name,
                ev.State,
                ev.Expression,
                ev.Trigger,
                ev.ReasonCount,
                json.dumps(ev.ReasonData, default=str),
            ]
            for ev in batch
        ]
        try:
            if self._client is None:
                self._client = connect(self.url, self.database)
            self._client.insert(TABLE, rows, column_names=[name for name, _ in COLUMNS])
        except Exception:
            self._client = None
            with self._lock:
                self.pending[:0] = batch
            raise
        return len(rows)
