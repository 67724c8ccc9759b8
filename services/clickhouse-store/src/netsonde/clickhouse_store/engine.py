"""The chdb engine behind the store: connection pools, sessions, per-request settings, atomic inserts.

One process owns the data directory. chdb allows several connections to it in one process; each has its
own session context (settings, current database, temporary tables) and queries on different connections
run in parallel (the engine releases the GIL). So:

- sessionless requests borrow a connection from a pool (FIFO, so waiters are served in arrival order);
  inserts have their own pool, so a burst of long queries never starves them (nor pings, which never
  touch the engine);
- each HTTP `session_id` gets a connection of its own for its lifetime (temporary tables and SET stay
  with it), locked per request like a ClickHouse server does (a concurrent request gets SESSION_IS_LOCKED);
- URL settings are applied with SET on the borrowed connection and reset to DEFAULT when the next request
  no longer asks for them, so requests never see each other's settings.

Inserts with inline data (`INSERT ... FORMAT fmt` + body) are written to a temp file, then run as one
`INSERT ... FROM INFILE` statement with squashing thresholds high enough that the whole batch becomes one
block: a malformed batch fails before any part is written, and each partition's part appears atomically.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from . import errors, sql, staging
from .conn import Conn, Outcome, Request
from .errors import StoreError
from .quoting import quote_ident, quote_string
from .staging import STAGING_DB, InsertSpec

log = logging.getLogger(__name__)
T = TypeVar("T")

DDL_KINDS = frozenset(
    {"CREATE", "DROP", "ALTER", "RENAME", "EXCHANGE", "TRUNCATE", "DETACH", "ATTACH", "UNDROP"}
)
# Server-wide MergeTree defaults of the embedded engine, as a ClickHouse admin sets them in <merge_tree>
# (a table's own SETTINGS still win). merge_selector_base 10 (ClickHouse's default is 5) waits for more parts
# of a size before merging them: measured with 100 000-row flow inserts, the engine spent 25% less CPU per row
# (merges rewrite each row fewer times), leaving ~10 parts per table instead of ~5 (docs/store.md).
MERGE_TREE_DEFAULTS = {"merge_selector_base": "10"}
# Server settings of the embedded engine. Background merges run at nice 10: on a busy host they take the
# CPU that inserts, queries and the other services leave (an insert waiting behind a merge is flow lag),
# and all of an idle one (docs/store.md).
SERVER_SETTINGS = {"os_threads_nice_value_merge_mutate": "10"}
SERVER_CONFIG = "netsonde-store.xml"
# Squash the whole batch into one block per partition before writing anything.
ATOMIC_INSERT_SETTINGS = {
    "min_insert_block_size_rows": "18446744073709551615",
    "min_insert_block_size_bytes": "18446744073709551615",
    "max_insert_block_size": "18446744073709551615",
    "max_insert_threads": "1",
}


@dataclass
class Session:
    """A client session: its own connection, a lock per request, an idle timeout."""

    sid: str
    conn: Conn
    timeout: float
    last_used: float = field(default_factory=time.monotonic)
    busy: bool = False


class Engine:
    """Owns the chdb data directory and every connection to it."""

    def __init__(
        self,
        data_dir: str | Path,
        query_connections: int = 4,
        insert_connections: int = 2,
        max_sessions: int = 1024,
        tmp_dir: str | Path | None = None,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.query_connections = query_connections
        self.insert_connections = insert_connections
        self.max_sessions = max_sessions
        self.tmp_dir = Path(tmp_dir) if tmp_dir else self.data_dir / "tmp_inserts"
        self.journal_dir = self.data_dir / "insert_journal"
        self._table_locks: dict[tuple[str, str], asyncio.Lock] = {}
        self._stages: dict[tuple[str, str], tuple[str, str]] = {}  # used under the table's lock only
        # system.tables rows of insert targets, dropped whenever DDL goes through the store (and after a TTL)
        self._table_info: dict[tuple[str, str], tuple[list[str], float]] = {}
        self.version = ""
        self.timezone = "UTC"
        self._all: list[Conn] = []
        self._query_pool: asyncio.Queue[Conn] | None = None
        self._insert_pool: asyncio.Queue[Conn] | None = None
        self.sessions: dict[str, Session] = {}
        self._executor = ThreadPoolExecutor(
            max_workers=query_connections + insert_connections + 16, thread_name_prefix="chdb"
        )
        self._inflight = 0
        self._idle = asyncio.Event()
        self._closed = False
        self._lock = threading.Lock()
        self._conn_string = str(self.data_dir)

    # --- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp_dir.glob("insert-*"):  # spooled by a previous run that died
            with contextlib.suppress(OSError):
                stale.unlink()
        self._write_server_config()
        loop = asyncio.get_running_loop()
        first = await loop.run_in_executor(self._executor, self._open)
        res = first.run("SELECT version(), timezone()", "TabSeparated").bytes().decode().strip().split("\t")
        self.version, self.timezone = res[0], res[1]
        StoreError.version = self.version
        names = (
            first.run(
                "SELECT number, errorCodeToName(number) FROM numbers(2000) "
                "WHERE errorCodeToName(number) != ''",
                "TabSeparated",
            )
            .bytes()
            .decode()
        )
        for line in names.splitlines():
            code, _, name = line.partition("\t")
            errors.NAMES_BY_CODE[int(code)] = name
        first.run(f"CREATE DATABASE IF NOT EXISTS {quote_ident(STAGING_DB)}")
        recovered = await loop.run_in_executor(self._executor, staging.recover, first, self.journal_dir)
        if recovered:
            log.warning("recovered interrupted inserts", extra={"inserts": recovered})
        self._query_pool = asyncio.Queue()
        self._insert_pool = asyncio.Queue()
        self._query_pool.put_nowait(first)
        for _ in range(self.query_connections - 1):
            self._query_pool.put_nowait(await loop.run_in_executor(self._executor, self._open))
        for _ in range(self.insert_connections):
            self._insert_pool.put_nowait(await loop.run_in_executor(self._executor, self._open))
        self._idle.set()
        log.info("engine ready", extra={"data_dir": str(self.data_dir), "version": self.version})

    def _write_server_config(self) -> None:
        """The engine's server config (chdb reads it from `?config-file=` in the connection string)."""
        settings = "".join(f"<{k}>{v}</{k}>" for k, v in MERGE_TREE_DEFAULTS.items())
        path = self.data_dir / SERVER_CONFIG
        server = "".join(f"<{k}>{v}</{k}>" for k, v in SERVER_SETTINGS.items())
        path.write_text(f"<clickhouse>{server}<merge_tree>{settings}</merge_tree></clickhouse>\n")
        self._conn_string = f"{self.data_dir}?config-file={path}"

    def _open(self) -> Conn:
        conn = Conn(self._conn_string)
        with self._lock:
            self._all.append(conn)
        return conn

    async def drain(self, timeout: float) -> bool:
        """Wait for in-flight statements to finish (they are never cut in the middle)."""
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
            return True
        except TimeoutError:
            return False

    async def close(self, timeout: float = 30.0) -> None:
        self._closed = True
        finished = await self.drain(timeout)
        if not finished:
            log.warning(
                "statements still running at shutdown; closing anyway", extra={"inflight": self._inflight}
            )
        for conn in self._all:
            conn.close()
        self._all.clear()
        self.sessions.clear()
        self._executor.shutdown(wait=finished)

    # --- running -----------------------------------------------------------------------------------
    @property
    def inflight(self) -> int:
        return self._inflight

    async def _in_thread(self, fn: Callable[[], T]) -> T:
        if self._closed:
            raise StoreError("ABORTED", "The store is shutting down")
        self._inflight += 1
        self._idle.clear()
        try:
            # Shield: a client that goes away must not abandon a statement half-way in our bookkeeping.
            fut = asyncio.get_running_loop().run_in_executor(self._executor, fn)
            try:
                return await asyncio.shield(fut)
            except asyncio.CancelledError:
                # The connection goes back to its pool only once the engine is done with it.
                with contextlib.suppress(BaseException):
                    await asyncio.wait({fut})
                raise
        finally:
            self._inflight -= 1
            if self._inflight == 0:
                self._idle.set()

    @contextlib.asynccontextmanager
    async def _borrow(self, pool: asyncio.Queue[Conn]) -> AsyncIterator[Conn]:
        conn = await pool.get()
        try:
            yield conn
        finally:
            if conn.broken:
                self._discard(conn)
                conn = await asyncio.get_running_loop().run_in_executor(self._executor, self._open)
            pool.put_nowait(conn)

    async def execute(
        self,
        req: Request,
        session_id: str | None = None,
        session_timeout: float = 60.0,
        session_check: bool = False,
    ) -> Outcome:
        """Run one statement on a pooled connection, or on the session's own connection."""
        ddl = req.insert is None and sql.first_keyword(req.sql) in DDL_KINDS
        if ddl:
            self._table_info.clear()
        try:
            return await self._execute(req, session_id, session_timeout, session_check)
        finally:
            if ddl:
                self._table_info.clear()

    async def _execute(
        self, req: Request, session_id: str | None, session_timeout: float, session_check: bool
    ) -> Outcome:
        if session_id:
            return await self._execute_in_session(req, session_id, session_timeout, session_check)
        assert self._query_pool is not None and self._insert_pool is not None
        pool = self._insert_pool if req.insert_file is not None else self._query_pool
        # Without a session, USE / SET / temporary tables must not outlive the request: such a statement
        # leaves its connection to be replaced by a fresh one.
        stateful = req.insert_file is None and (
            sql.first_keyword(req.sql) in ("USE", "SET") or "TEMPORARY" in req.sql.upper()
        )
        async with self._borrow(pool) as conn:
            try:
                return await self._in_thread(lambda: conn.execute(req))
            finally:
                if stateful:
                    conn.broken = True

    async def _execute_in_session(self, req: Request, sid: str, timeout: float, check: bool) -> Outcome:
        session = await self._lock_session(sid, timeout, check)
        try:
            return await self._in_thread(lambda: session.conn.execute(req))
        finally:
            self._unlock_session(session)

    async def _lock_session(self, sid: str, timeout: float, check: bool) -> Session:
        """The session's own connection, marked busy (a concurrent request gets SESSION_IS_LOCKED)."""
        session = self.sessions.get(sid)
        if session is None:
            if check:
                raise StoreError("SESSION_NOT_FOUND", f"Session {sid} not found")
            if len(self.sessions) >= self.max_sessions:
                self.expire_sessions()
            if len(self.sessions) >= self.max_sessions:
                # Clients rarely close sessions (clickhouse-connect makes one per client): drop the one idle
                # the longest rather than refuse new clients.
                idle = [s for s in self.sessions.values() if not s.busy]
                if not idle:
                    raise StoreError(
                        "TOO_MANY_SIMULTANEOUS_QUERIES",
                        f"Too many sessions ({self.max_sessions}) all running a query",
                    )
                oldest = min(idle, key=lambda s: s.last_used)
                self.sessions.pop(oldest.sid, None)
                self._discard(oldest.conn)
                log.info("dropped the least recently used session", extra={"session": oldest.sid})
            conn = await asyncio.get_running_loop().run_in_executor(self._executor, self._open)
            conn.in_session = True
            session = self.sessions.setdefault(sid, Session(sid, conn, timeout))
            if session.conn is not conn:
                self._discard(conn)
        if session.busy:
            raise StoreError("SESSION_IS_LOCKED", f"Session {sid} is locked by a concurrent client")
        session.busy = True
        session.timeout = timeout
        return session

    @staticmethod
    def _unlock_session(session: Session) -> None:
        session.busy = False
        session.last_used = time.monotonic()

    async def open_stream(
        self,
        req: Request,
        session_id: str | None = None,
        session_timeout: float = 60.0,
        session_check: bool = False,
    ) -> ResultStream:
        """Start a query whose result is read chunk by chunk; the connection stays with the stream until
        `close()`. Errors the engine reports before the first chunk raise here."""
        session: Session | None = None
        if session_id:
            session = await self._lock_session(session_id, session_timeout, session_check)
            conn = session.conn
        else:
            assert self._query_pool is not None
            conn = await self._query_pool.get()
        stream = ResultStream(self, conn, session)
        try:
            stream.handle = await self._in_thread(lambda: conn.start_stream(req))
        except BaseException:
            await stream.close()
            raise
        return stream

    def _release(self, conn: Conn, session: Session | None) -> None:
        if session is not None:
            self._unlock_session(session)
        elif self._query_pool is not None:
            if conn.broken:
                self._discard(conn)
                conn = self._open()
            self._query_pool.put_nowait(conn)

    def _discard(self, conn: Conn) -> None:
        conn.close()
        with self._lock:
            if conn in self._all:
                self._all.remove(conn)

    def expire_sessions(self) -> int:
        """Close sessions idle for longer than their timeout; returns how many were closed."""
        now = time.monotonic()
        expired = [s for s in self.sessions.values() if not s.busy and now - s.last_used > s.timeout]
        for s in expired:
            self.sessions.pop(s.sid, None)
            self._discard(s.conn)
        return len(expired)

    # --- inserts -----------------------------------------------------------------------------------
    def spool_path(self) -> str:
        """A fresh file for one insert batch (the caller writes it and removes it afterwards)."""
        fd, path = tempfile.mkstemp(prefix="insert-", suffix=".data", dir=self.tmp_dir)
        os.close(fd)
        return path

    async def insert(
        self,
        target: str,
        fmt: str,
        path: str,
        inline_settings: str,
        req: Request,
        session_id: str | None = None,
        session_timeout: float = 60.0,
        session_check: bool = False,
    ) -> Outcome:
        """`target` is `INSERT INTO t [(cols)]`; `path` holds one batch in `fmt`, inserted atomically."""
        settings = ", ".join(f"{k} = {v}" for k, v in ATOMIC_INSERT_SETTINGS.items())
        if inline_settings:
            settings = f"{settings}, {inline_settings}"
        source = f"FROM INFILE {quote_string(path)} SETTINGS {settings} FORMAT {fmt}"
        req.sql = f"{target} {source}"
        req.insert_file = path
        req.fmt = "TabSeparated"
        parsed = sql.insert_target(target)
        lock: asyncio.Lock | None = None
        if parsed is not None:
            database, table, columns = parsed
            req.insert = InsertSpec(
                database or req.database,
                table,
                columns,
                source,
                self.journal_dir,
                req.sql,
                database is not None,
                self._stages,
                path,
                fmt,
                self._table_info,
            )
            lock = self._table_locks.setdefault((database or req.database, table), asyncio.Lock())
        try:
            if lock is None:
                return await self.execute(req, session_id, session_timeout, session_check)
            async with lock:  # one batch at a time per table: what crash recovery relies on
                return await self.execute(req, session_id, session_timeout, session_check)
        except StoreError as exc:
            exc.message = exc.message.replace(f" (in file/uri {path})", "").replace(path, "<request body>")
            raise


class ResultStream:
    """A query result read chunk by chunk (see Engine.open_stream)."""

    def __init__(self, engine: Engine, conn: Conn, session: Session | None) -> None:
        self.engine = engine
        self.conn = conn
        self.session = session
        self.handle: Any = None
        self.rows = 0
        self.bytes = 0
        self.done = False
        self._closed = False

    async def next(self) -> bytes | None:
        if self.done:
            return None
        try:
            got = await self.engine._in_thread(lambda: self.conn.fetch(self.handle))
        except BaseException:
            self.done = True
            raise
        if got is None:
            self.done = True
            return None
        data, rows = got
        self.rows += rows
        self.bytes += len(data)
        return data

    async def close(self) -> None:
        """Cancel what is left of the query (if anything) and give the connection back."""
        if self._closed:
            return
        self._closed = True
        try:
            if self.handle is not None and not self.done:
                self.conn.broken = self.session is None  # a cancelled stream leaves a fresh connection behind
                await self.engine._in_thread(lambda: self.conn.cancel(self.handle))
        finally:
            self.engine._release(self.conn, self.session)
