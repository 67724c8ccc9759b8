"""Atomic inserts of a spooled batch: staging tables, partition moves and the crash journal.

A batch into a partitioned MergeTree table that spans several partitions goes through a staging copy of
the table and is moved partition by partition; a journal written before the first move lets the next start
finish a move a crash interrupted (`recover`). The engine calls `insert_batch` on a connection of its insert
pool, one batch at a time per table.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import StoreError
from .quoting import quote_ident, quote_string

if TYPE_CHECKING:
    from .conn import Conn, Outcome

log = logging.getLogger(__name__)

STAGING_DB = "_netsonde_store"
TABLE_INFO_TTL = 10.0
SELF_DESCRIBING_FORMATS = {
    "native": "Native",
    "arrow": "Arrow",
    "arrowstream": "ArrowStream",
    "parquet": "Parquet",
}


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


def insert_batch(conn: Conn, spec: InsertSpec) -> Outcome:
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
    if not spec.explicit_database and conn.in_session:
        exists = conn.rows(f"EXISTS TEMPORARY TABLE {quote_ident(spec.table)}")
        if exists and exists[0][0] == "1":
            return conn.run_insert(direct)  # the session's temporary table
    key = (spec.database, spec.table)
    cached = spec.table_info.get(key)
    if cached is not None and time.monotonic() - cached[1] < TABLE_INFO_TTL:
        info = [cached[0]]
    else:
        info = conn.rows(
            "SELECT is_temporary, engine, partition_key, length(dependencies_table), "
            "toString(metadata_modification_time), toString(cityHash64(create_table_query)) "
            "FROM system.tables WHERE database = {d:String} AND name = {t:String}",
            {"d": spec.database, "t": spec.table},
        )
        if info and len(info[0]) >= 6:
            spec.table_info[key] = (info[0], time.monotonic())
    if not info or len(info[0]) < 6:
        return conn.run_insert(direct)  # let the engine report the unknown table
    _, engine, partition_key, dependents, mtime, create_hash = info[0]
    if (
        not engine.endswith("MergeTree")
        or engine.startswith(("Replicated", "Shared"))
        or not partition_key
        or dependents != "0"
    ):
        return conn.run_insert(direct)
    if _single_partition(conn, spec, partition_key):
        # One partition: a plain INSERT writes one part (the batch is squashed into one block), which
        # appears atomically; the staging detour is only needed when a batch spans partitions.
        return conn.run_insert(direct)
    signature = f"{mtime}/{create_hash}"
    stage_cached = spec.stages.get(key)
    if stage_cached is None or stage_cached[1] != signature:
        if stage_cached is not None:
            _drop_stage(conn, stage_cached[0])
            spec.stages.pop(key, None)
        stage_table = "stage_" + uuid.uuid4().hex
        conn.run(f"CREATE TABLE {quote_ident(STAGING_DB)}.{quote_ident(stage_table)} AS {target}")
        spec.stages[key] = (stage_table, signature)
    else:
        stage_table = stage_cached[0]
    stage = f"{quote_ident(STAGING_DB)}.{quote_ident(stage_table)}"
    ok = False
    try:
        t1 = time.perf_counter()
        out = conn.run_insert(f"INSERT INTO {stage} {spec.columns} {spec.source}")
        t2 = time.perf_counter()
        partitions = [
            r[0]
            for r in conn.rows(
                "SELECT DISTINCT partition_id FROM system.parts "
                "WHERE database = {d:String} AND table = {t:String} "
                "AND active ORDER BY partition_id",
                {"d": STAGING_DB, "t": stage_table},
            )
        ]
        if len(partitions) == 1:
            conn.run(f"ALTER TABLE {stage} MOVE PARTITION ID {quote_string(partitions[0])} TO TABLE {target}")
        elif partitions:
            watermark = conn.rows(
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
                conn.run(f"ALTER TABLE {stage} MOVE PARTITION ID {quote_string(pid)} TO TABLE {target}")
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
            _drop_stage(conn, stage_table)
            spec.stages.pop(key, None)


def _single_partition(conn: Conn, spec: InsertSpec, partition_key: str) -> bool:
    """Whether a batch in a self-describing format (column names and types in the data: Native, Arrow,
    Parquet) falls in one partition of the target: the partition key evaluated over the spooled file.
    Anything uncertain answers False."""
    fmt = SELF_DESCRIBING_FORMATS.get(spec.fmt.lower())
    if fmt is None or not spec.path:
        return False
    try:
        rows = conn.rows(
            f"SELECT uniqExact(tuple({partition_key})) FROM file({quote_string(spec.path)}, '{fmt}')"
        )
    except StoreError as exc:  # e.g. the batch lacks a column the key needs (it takes its default)
        log.debug("partition check of a batch failed; staging it", extra={"error": exc.message[:200]})
        return False
    return bool(rows) and rows[0][0] in ("0", "1")


def _drop_stage(conn: Conn, stage_table: str) -> None:
    with contextlib.suppress(StoreError):
        conn.run(f"DROP TABLE IF EXISTS {quote_ident(STAGING_DB)}.{quote_ident(stage_table)} SYNC")


def recover(conn: Conn, journal_dir: Path) -> int:
    """Finish the multi-partition inserts a crash interrupted (see `insert_batch`); drop stages."""
    finished = 0
    for journal in sorted(journal_dir.glob("*.json")):
        try:
            j = json.loads(journal.read_text())
            target = f"{quote_ident(j['database'])}.{quote_ident(j['table'])}"
            stage = f"{quote_ident(STAGING_DB)}.{quote_ident(j['stage'])}"
            for pid in j["partitions"]:
                # Block numbers only grow and the store serialises inserts per table, so a part of this
                # partition above the watermark (merged or not) means the attach already happened.
                done = conn.rows(
                    "SELECT count() FROM system.parts WHERE database = {d:String} AND table = {t:String} "
                    "AND partition_id = {p:String} AND max_block_number > {w:Int64}",
                    {"d": j["database"], "t": j["table"], "p": pid, "w": str(j["watermark"])},
                )[0][0]
                if done == "0":
                    conn.run(f"ALTER TABLE {target} ATTACH PARTITION ID {quote_string(pid)} FROM {stage}")
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
    for (name,) in conn.rows("SELECT name FROM system.tables WHERE database = {d:String}", {"d": STAGING_DB}):
        if name not in kept:
            with contextlib.suppress(StoreError):
                conn.run(f"DROP TABLE IF EXISTS {quote_ident(STAGING_DB)}.{quote_ident(name)} SYNC")
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
