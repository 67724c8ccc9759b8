"""Columnar inserts of flow updates into the three flow tables (blocking; run it in a thread).

Rows are sent as columns with their types given (no DESCRIBE round trip per insert). The tables are
ReplacingMergeTrees keyed on the update's identity, so re-running an insert after a failure, or for a
redelivered batch, never double-counts: retrying all three tables after any error is always safe.
"""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from netsonde.common import flowschema as fs
from netsonde.common.clickhouse import connect, ddl, run_migrations

_wire_type = fs.native_type


_TYPES = {
    fs.FLOWS_TABLE: [_wire_type(c.type) for c in fs.FLOW_COLUMNS],
    fs.METRICS_TABLE: [_wire_type(c.type) for c in fs.METRIC_COLUMNS],
    fs.RAW_PACKETS_TABLE: [_wire_type(c.type) for c in fs.RAW_PACKET_COLUMNS],
}


INSERT_SETTINGS = {"optimize_on_insert": 0}
"""Skip ReplacingMergeTree's collapse of each inserted block: it costs 2-3x the insert, and duplicates within
a block only happen on redelivery, which FINAL handles anyway (docs/flow-storage.md)."""


class FlowWriter:
    """One ClickHouse client per thread that calls `insert` (clickhouse-connect clients are not shared)."""

    def __init__(self, url: str, database: str) -> None:
        self.url = url
        self.database = database
        self._local = threading.local()
        self._clients: list[Client] = []
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(max_workers=2, thread_name_prefix="flow-insert")

    def migrate(self, ttl_days: int = fs.DEFAULT_TTL_DAYS) -> int:
        """Create the flow tables (versioned migrations) and set their TTL; returns migrations applied."""
        applied = run_migrations(self.url, self.database, fs.COMPONENT, fs.migrations(ttl_days))
        client = self._client()
        for stmt in [part for s in fs.ttl_statements(self.database, ttl_days) for part in ddl(self.url, s)]:
            try:
                client.command(stmt)
            except DatabaseError as exc:
                if ttl_days > 0 or "TTL" not in str(exc):
                    raise  # removing a TTL that is not there is fine; anything else is not
        return applied

    def _client(self) -> Client:
        client = getattr(self._local, "client", None)
        if client is None:
            client = connect(self.url, self.database)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def _insert_table(self, client: Client, table: str, cols: dict[str, list[Any]]) -> None:
        client.insert(table, list(cols.values()), column_names=list(cols), column_type_names=_TYPES[table],
                      column_oriented=True, database=self.database, settings=INSERT_SETTINGS)

    def insert(self, cols: fs.InsertColumns) -> int:
        """Insert the columns of one flush into the flow tables; returns the flow rows written.
        Raises on any ClickHouse error (the caller retries; nothing is acked before this returns)."""
        if cols.rows == 0:
            return 0
        client = self._client()
        self._insert_table(client, fs.FLOWS_TABLE, cols.flows)
        self._insert_table(client, fs.METRICS_TABLE, cols.metrics)
        if cols.raw_packets["UUID"]:
            self._insert_table(client, fs.RAW_PACKETS_TABLE, cols.raw_packets)
        return cols.rows

    def insert_native(self, table: str, block: bytes, column_names: list[str]) -> None:
        """Send a ready ClickHouse Native block (from the C path) to `table`. Given as a memoryview, the block
        is sent as it is, the INSERT going in the URL: as bytes, clickhouse-connect would copy the whole block
        (~90 MB per 200 000 flows) to put the statement in front of it."""
        self._client().raw_insert(table, column_names, insert_block=memoryview(block), fmt="Native",
                                  settings=INSERT_SETTINGS)

    def insert_processed(self, p: Any) -> int:
        """Insert what `pipeline.process` built: Native blocks, then Python-path columns; returns flow rows.
        Raises on any ClickHouse error; everything here is idempotent, so the caller retries all of it."""
        if p.native:
            from .pipeline import native_columns
            names = dict(zip((fs.FLOWS_TABLE, fs.METRICS_TABLE, fs.RAW_PACKETS_TABLE),
                             ([n for n, _ in cols] for cols in native_columns())))
            tables = [t for t in (fs.FLOWS_TABLE, fs.METRICS_TABLE, fs.RAW_PACKETS_TABLE) if t in p.native]
            # The tables go in side by side (the store inserts each under its own lock, on its own
            # connection): a flush is stored, and acked, after its largest table rather than after all
            # of them one by one (measured: ~0.1 s less lag per 170 000-update flush).
            others = [self._pool.submit(self.insert_native, t, p.native[t], names[t]) for t in tables[1:]]
            try:
                if tables:
                    self.insert_native(tables[0], p.native[tables[0]], names[tables[0]])
            finally:
                for f in others:
                    f.result()  # raises the first failure after every insert has ended
        if p.columns is not None:
            self.insert(p.columns)
        return int(p.rows)

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        with self._lock:
            clients, self._clients = self._clients, []
        for c in clients:
            try:
                c.close()
            except Exception:
                pass
