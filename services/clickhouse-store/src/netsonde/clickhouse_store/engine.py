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
import json
import logging
import os
import tempfile
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from chdb import _chdb

from . import errors, sql
from .errors import StoreError

log = logging.getLogger(__name__)
T = TypeVar("T")

STAGING_DB = "_netsonde_store"
TABLE_INFO_TTL = 10.0
DDL_KINDS = frozenset(
    {"CREATE", "DROP", "ALTER", "RENAME", "EXCHANGE", "TRUNCATE", "DETACH", "ATTACH", "UNDROP"}
)
SELF_DESCRIBING_FORMATS = {
    "native": "Native",
    "arrow": "Arrow",
    "arrowstream": "ArrowStream",
    "parquet": "Parquet",
}
_SETTING_NAME_OK = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_")
# Squash the whole batch into one block per partition before writing anything.
ATOMIC_INSERT_SETTINGS = {
    "min_insert_block_size_rows": "18446744073709551615",
    "min_insert_block_size_bytes": "18446744073709551615",
    "max_insert_block_size": "18446744073709551615",
    "max_insert_threads": "1",
}


def quote_string(value: str) -> str:
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def quote_ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


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


@dataclass(frozen=True)
class InsertSpec:
    """An insert of a spooled batch into `database.table`: `columns` is the optional column list and
    `source` the `FROM INFILE ... SETTINGS ... FORMAT ...` tail."""

    database: str
    table: str
    columns: str
    source: str
    journal_dir: Path
    statement: str  # the insert as the client wrote it, with the source: the plain, non-staged way
    explicit_database: bool = True
    stages: dict[tuple[str, str], tuple[str, str]] = field(
        default_factory=dict
    )  # target -> (stage, signature)
    path: str = ""  # the spooled batch
    fmt: str = ""
    table_info: dict[tuple[str, str], tuple[list[str], float]] = field(default_factory=dict)


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

    def _run(self, sql: str, fmt: str = "TabSeparated", params: dict[str, str] | None = None) -> Any:
        try:
            return self.raw.query(sql, fmt, params=params or {})
        except Exception as exc:  # chdb raises RuntimeError with the ClickHouse text
            raise StoreError.from_engine(str(exc)) from None

    def prepare(self, database: str, settings: dict[str, str]) -> None:
        """Switch database and settings to what the request asks for (only the differences)."""
        if database != self.database:
            self._run(f"USE {quote_ident(database)}")
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
            self._run("SET " + ", ".join(changes + resets))
        except StoreError:
            # The SET may have been applied partly: bring every setting we know of back to its default.
            for name in set(self.applied) | set(settings):
                with contextlib.suppress(StoreError):
                    self._run(f"SET {name} = DEFAULT")
            self.applied = {}
            raise
        self.applied = dict(settings)

    def _rows(self, query: str, params: dict[str, str] | None = None) -> list[list[str]]:
        body = self._run(query, "TabSeparated", params).bytes().decode()
        return [line.split("\t") for line in body.splitlines()]

    def execute(self, req: Request) -> Outcome:
        self.prepare(req.database, req.settings)
        t0 = time.perf_counter_ns()
        if req.insert is not None:
            out = self._insert_batch(req.insert)
            out.elapsed_ns = time.perf_counter_ns() - t0
            return out
        res = self._run(req.sql, req.fmt, req.params)
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

    def _insert_statement(self, sql_text: str) -> Outcome:
        res = self._run(sql_text)
        out = Outcome()
        with contextlib.suppress(Exception):
            out.written_rows = int(res.rows_written())
            out.written_bytes = int(res.bytes_written())
            out.read_rows = int(res.rows_read())
            out.read_bytes = int(res.bytes_read())
        return out

    def _insert_batch(self, spec: InsertSpec) -> Outcome:
        """Insert one spooled batch so that it becomes visible all at once, even across partitions.

        A batch into a partitioned MergeTree table is first inserted into a staging copy of the table,
        then its partitions are moved to the target (`MOVE PARTITION ... TO TABLE`, atomic per partition,
        hard links). When there are several partitions, a journal written (and fsynced) before the first
        attach lets the next start finish the attaches a crash interrupted: a batch is all or nothing.
        The staging copy is kept per target (the moves empty it) and remade when the target's
        definition changes. Tables it cannot stand in for (other engines, materialized views reading the
        table, temporary tables) take the batch in one plain INSERT, atomic per partition like a server.
        """
        target = f"{quote_ident(spec.database)}.{quote_ident(spec.table)}"
        direct = spec.statement
        t0 = time.perf_counter()
        if not spec.explicit_database and self.in_session:
            exists = self._rows(f"EXISTS TEMPORARY TABLE {quote_ident(spec.table)}")
            if exists and exists[0][0] == "1":
                return self._insert_statement(direct)  # the session's temporary table
        key = (spec.database, spec.table)
        cached = spec.table_info.get(key)
        if cached is not None and time.monotonic() - cached[1] < TABLE_INFO_TTL:
            info = [cached[0]]
        else:
            info = self._rows(
                "SELECT is_temporary, engine, partition_key, length(dependencies_table), "
                "toString(metadata_modification_time), toString(cityHash64(create_table_query)) "
                "FROM system.tables WHERE database = {d:String} AND name = {t:String}",
                {"d": spec.database, "t": spec.table},
            )
            if info and len(info[0]) >= 6:
                spec.table_info[key] = (info[0], time.monotonic())
        if not info or len(info[0]) < 6:
            return self._insert_statement(direct)  # let the engine report the unknown table
        _, engine, partition_key, dependents, mtime, create_hash = info[0]
        if (
            not engine.endswith("MergeTree")
            or engine.startswith(("Replicated", "Shared"))
            or not partition_key
            or dependents != "0"
        ):
            return self._insert_statement(direct)
        if self._single_partition(spec, partition_key):
            # One partition: a plain INSERT writes one part (the batch is squashed into one block), which
            # appears atomically; the staging detour is only needed when a batch spans partitions.
            return self._insert_statement(direct)
        signature = f"{mtime}/{create_hash}"
        stage_cached = spec.stages.get(key)
        if stage_cached is None or stage_cached[1] != signature:
            if stage_cached is not None:
                self._drop_stage(stage_cached[0])
                spec.stages.pop(key, None)
            stage_table = "stage_" + uuid.uuid4().hex
            self._run(f"CREATE TABLE {quote_ident(STAGING_DB)}.{quote_ident(stage_table)} AS {target}")
            spec.stages[key] = (stage_table, signature)
        else:
            stage_table = stage_cached[0]
        stage = f"{quote_ident(STAGING_DB)}.{quote_ident(stage_table)}"
        ok = False
        try:
            t1 = time.perf_counter()
            out = self._insert_statement(f"INSERT INTO {stage} {spec.columns} {spec.source}")
            t2 = time.perf_counter()
            partitions = [
                r[0]
                for r in self._rows(
                    "SELECT DISTINCT partition_id FROM system.parts "
                    "WHERE database = {d:String} AND table = {t:String} "
                    "AND active ORDER BY partition_id",
                    {"d": STAGING_DB, "t": stage_table},
                )
            ]
            if len(partitions) == 1:
                self._run(
                    f"ALTER TABLE {stage} MOVE PARTITION ID {quote_string(partitions[0])} TO TABLE {target}"
                )
            elif partitions:
                watermark = self._rows(
                    "SELECT max(max_block_number) FROM system.parts "
                    "WHERE database = {d:String} AND table = {t:String}",
                    {"d": spec.database, "t": spec.table},
                )[0][0]
                journal = spec.journal_dir / f"{stage_table}.json"
                _write_durably(
                    journal,
                    json.dumps(
                        {
                            "database": spec.database,
                            "table": spec.table,
                            "stage": stage_table,
                            "watermark": int(watermark or 0),
                            "partitions": partitions,
                        }
                    ).encode(),
                )
                for pid in partitions:
                    self._run(f"ALTER TABLE {stage} MOVE PARTITION ID {quote_string(pid)} TO TABLE {target}")
                journal.unlink()
            ok = True
            log.debug(
                "staged insert",
                extra={
                    "prepare_s": round(t1 - t0, 4),
                    "insert_s": round(t2 - t1, 4),
                    "publish_s": round(time.perf_counter() - t2, 4),
                },
            )
            return out
        finally:
            if not ok:  # after any failure start the next batch from a fresh staging table
                self._drop_stage(stage_table)
                spec.stages.pop(key, None)

    def _single_partition(self, spec: InsertSpec, partition_key: str) -> bool:
        """Whether a batch in a self-describing format (column names and types in the data: Native, Arrow,
        Parquet) falls in one partition of the target: the partition key evaluated over the spooled file.
        Anything uncertain answers False."""
        fmt = SELF_DESCRIBING_FORMATS.get(spec.fmt.lower())
        if fmt is None or not spec.path:
            return False
        try:
            rows = self._rows(
                f"SELECT uniqExact(tuple({partition_key})) FROM file({quote_string(spec.path)}, '{fmt}')"
            )
        except StoreError as exc:  # e.g. the batch lacks a column the key needs (it takes its default)
            log.debug("partition check of a batch failed; staging it", extra={"error": exc.message[:200]})
            return False
        return bool(rows) and rows[0][0] in ("0", "1")

    def _drop_stage(self, stage_table: str) -> None:
        with contextlib.suppress(StoreError):
            self._run(f"DROP TABLE IF EXISTS {quote_ident(STAGING_DB)}.{quote_ident(stage_table)} SYNC")

    def recover(self, journal_dir: Path) -> int:
        """Finish the multi-partition inserts a crash interrupted (see `_insert_batch`); drop stages."""
        finished = 0
        for journal in sorted(journal_dir.glob("*.json")):
            try:
                j = json.loads(journal.read_text())
                target = f"{quote_ident(j['database'])}.{quote_ident(j['table'])}"
                stage = f"{quote_ident(STAGING_DB)}.{quote_ident(j['stage'])}"
                for pid in j["partitions"]:
                    # Block numbers only grow and the store serialises inserts per table, so a part of this
                    # partition above the watermark (merged or not) means the attach already happened.
                    done = self._rows(
                        "SELECT count() FROM system.parts WHERE database = {d:String} AND table = {t:String} "
                        "AND partition_id = {p:String} AND max_block_number > {w:Int64}",
                        {"d": j["database"], "t": j["table"], "p": pid, "w": str(j["watermark"])},
                    )[0][0]
                    if done == "0":
                        self._run(
                            f"ALTER TABLE {target} ATTACH PARTITION ID {quote_string(pid)} FROM {stage}"
                        )
                finished += 1
                log.warning(
                    "finished an insert interrupted by a crash",
                    extra={"table": f"{j['database']}.{j['table']}", "partitions": len(j["partitions"])},
                )
            except (StoreError, KeyError, ValueError) as exc:
                log.error(
                    "cannot finish an interrupted insert; its staging table is kept",
                    extra={"journal": str(journal), "error": str(exc)},
                )
                journal.rename(journal.with_suffix(".failed"))
                continue
            journal.unlink()
        kept = {p.stem for p in journal_dir.glob("*.failed")}
        for (name,) in self._rows(
            "SELECT name FROM system.tables WHERE database = {d:String}", {"d": STAGING_DB}
        ):
            if name not in kept:
                with contextlib.suppress(StoreError):
                    self._run(f"DROP TABLE IF EXISTS {quote_ident(STAGING_DB)}.{quote_ident(name)} SYNC")
        return finished


def _write_durably(path: Path, data: bytes) -> None:
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


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

    # --- lifecycle ---------------------------------------------------------------------------------
    async def start(self) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.journal_dir.mkdir(parents=True, exist_ok=True)
        for stale in self.tmp_dir.glob("insert-*"):  # spooled by a previous run that died
            with contextlib.suppress(OSError):
                stale.unlink()
        loop = asyncio.get_running_loop()
        first = await loop.run_in_executor(self._executor, self._open)
        res = first._run("SELECT version(), timezone()", "TabSeparated").bytes().decode().strip().split("\t")
        self.version, self.timezone = res[0], res[1]
        StoreError.version = self.version
        names = (
            first._run(
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
        first._run(f"CREATE DATABASE IF NOT EXISTS {quote_ident(STAGING_DB)}")
        recovered = await loop.run_in_executor(self._executor, first.recover, self.journal_dir)
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

    def _open(self) -> Conn:
        conn = Conn(str(self.data_dir))
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
