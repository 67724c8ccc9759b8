"""One chdb connection of the store: statements, per-request settings and database, streamed results.

The engine (`engine.Engine`) pools these; each knows what it has applied (settings, current database) so
that a request only sends the differences and never sees another request's settings.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field
from typing import Any

from chdb import _chdb

from . import staging
from .errors import StoreError
from .quoting import quote_ident, quote_string
from .staging import InsertSpec

_SETTING_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")


@dataclass
class Outcome:
    """What one statement produced, for the response body and the X-ClickHouse-Summary header."""

    body: bytes = b""
    read_rows: int = 0
    read_bytes: int = 0
    written_rows: int = 0
    written_bytes: int = 0
    result_rows: int = 0
    elapsed_ns: int = 0

    def summary(self) -> dict[str, str]:
        return {
            "read_rows": str(self.read_rows),
            "read_bytes": str(self.read_bytes),
            "written_rows": str(self.written_rows),
            "written_bytes": str(self.written_bytes),
            "total_rows_to_read": str(self.read_rows),
            "result_rows": str(self.result_rows),
            "result_bytes": str(len(self.body)),
            "elapsed_ns": str(self.elapsed_ns),
        }


@dataclass
class Request:
    """One statement to run: SQL, output format, `{name:Type}` parameters, settings, database."""

    sql: str
    fmt: str = "TabSeparated"
    params: dict[str, str] = field(default_factory=dict)
    settings: dict[str, str] = field(default_factory=dict)
    database: str = "default"
    insert_file: str | None = None  # set for inserts whose data was spooled to a file
    insert: InsertSpec | None = None


class Conn:
    """A chdb connection plus what the store has applied to it."""

    def __init__(self, path: str) -> None:
        self.raw = _chdb.connect(path)  # type: ignore[attr-defined]  # the C module, no stub
        self.in_session = False
        self.applied: dict[str, str] = {}
        self.database = "default"
        self.broken = False

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self.raw.close()

    def run(self, sql: str, fmt: str = "TabSeparated", params: dict[str, str] | None = None) -> Any:
        try:
            return self.raw.query(sql, fmt, params=params or {})
        except Exception as exc:  # chdb raises RuntimeError with the ClickHouse text
            raise StoreError.from_engine(str(exc)) from None

    def prepare(self, database: str, settings: dict[str, str]) -> None:
        """Switch database and settings to what the request asks for (only the differences)."""
        if database != self.database:
            self.run(f"USE {quote_ident(database)}")
            self.database = database
        changes = []
        for name, value in settings.items():
            if not name or not set(name) <= _SETTING_NAME_OK:
                raise StoreError("UNKNOWN_SETTING", f"Unknown setting '{name}'")
            if self.applied.get(name) != value:
                changes.append(f"{name} = {quote_string(value)}")
        resets = [f"{name} = DEFAULT" for name in self.applied if name not in settings]
        if not changes and not resets:
            return
        try:
            self.run("SET " + ", ".join(changes + resets))
        except StoreError:
            # The SET may have been applied partly: bring every setting we know of back to its default.
            for name in set(self.applied) | set(settings):
                with contextlib.suppress(StoreError):
                    self.run(f"SET {name} = DEFAULT")
            self.applied = {}
            raise
        self.applied = dict(settings)

    def rows(self, query: str, params: dict[str, str] | None = None) -> list[list[str]]:
        body = self.run(query, "TabSeparated", params).bytes().decode()
        return [line.split("\t") for line in body.splitlines()]

    def execute(self, req: Request) -> Outcome:
        self.prepare(req.database, req.settings)
        t0 = time.perf_counter_ns()
        if req.insert is not None:
            out = staging.insert_batch(self, req.insert)
            out.elapsed_ns = time.perf_counter_ns() - t0
            return out
        res = self.run(req.sql, req.fmt, req.params)
        body = res.bytes() if res is not None else b""
        out = Outcome(body=body or b"", elapsed_ns=time.perf_counter_ns() - t0)
        with contextlib.suppress(Exception):
            out.read_rows = int(res.rows_read())
            out.read_bytes = int(res.bytes_read())
            out.written_rows = int(res.rows_written())
            out.written_bytes = int(res.bytes_written())
        if req.insert_file is None and body:
            out.result_rows = out.read_rows
        return out

    def start_stream(self, req: Request) -> Any:
        self.prepare(req.database, req.settings)
        try:
            return self.raw.send_query(req.sql, req.fmt, params=req.params or {})
        except Exception as exc:
            raise StoreError.from_engine(str(exc)) from None

    def fetch(self, handle: Any) -> tuple[bytes, int] | None:
        """The next chunk of a streamed result and its row count, or None at the end."""
        try:
            res = self.raw.streaming_fetch_result(handle)
        except Exception as exc:
            raise StoreError.from_engine(str(exc)) from None
        if res is None:
            return None
        data = res.bytes() or b""
        rows = int(res.rows_read())
        if rows == 0 and not data:
            return None
        return data, rows

    def cancel(self, handle: Any) -> None:
        with contextlib.suppress(Exception):
            self.raw.streaming_cancel_query(handle)

    def run_insert(self, sql_text: str) -> Outcome:
        res = self.run(sql_text)
        out = Outcome()
        with contextlib.suppress(Exception):
            out.written_rows = int(res.rows_written())
            out.written_bytes = int(res.bytes_written())
            out.read_rows = int(res.rows_read())
            out.read_bytes = int(res.bytes_read())
        return out
