"""Crash recovery of the embedded store: a multi-partition insert interrupted between its partition attaches
is rolled forward at the next start, exactly once per partition (even when an attached part was merged).

The crash is staged precisely instead of raced: the test builds the state a kill -9 leaves between two
`ATTACH PARTITION ... FROM` of one batch (staging table, journal, one partition already attached and merged),
stops the store with SIGKILL, starts it again on the same data directory and checks the table.
Embedded store only: it reads and writes the store's data directory.
"""

from __future__ import annotations

import json
import signal
import tempfile
from pathlib import Path

import pytest

from netsonde.common.clickhouse import connect
from netsonde.common.testing import Proc, start_store


def _kill(proc: Proc) -> None:
    proc.keep = True
    proc.popen.send_signal(signal.SIGKILL)
    proc.popen.wait(15)


def test_interrupted_multi_partition_insert_is_rolled_forward_once(unique: str) -> None:
    workdir = Path(tempfile.mkdtemp(prefix="netsonde-store-recovery-"))
    proc = start_store(workdir)
    db, stage = f"rec_{unique}", f"stage_{unique}"
    try:
        c = connect(proc.url, "default")
        c.command(f"CREATE DATABASE {db}")
        c.command(f"CREATE TABLE {db}.t (day Date, n UInt64) ENGINE = MergeTree PARTITION BY day ORDER BY n")
        c.command(f"INSERT INTO {db}.t SELECT toDate('2026-01-01'), number FROM numbers(10)")  # seed
        # The batch: 3 partitions (days 1, 2, 3) x 100 rows, staged as the store stages it.
        c.command(f"CREATE TABLE _netsonde_store.{stage} AS {db}.t")
        c.command(
            f"INSERT INTO _netsonde_store.{stage} SELECT toDate('2026-01-01') + number % 3, 1000 + number "
            "FROM numbers(300)"
        )
        watermark = c.query(
            "SELECT max(max_block_number) FROM system.parts WHERE database = {d:String} AND table = 't'",
            parameters={"d": db},
        ).result_rows[0][0]
        partitions = [
            r[0]
            for r in c.query(
                "SELECT DISTINCT partition_id FROM system.parts "
                "WHERE database = '_netsonde_store' AND table = {s:String} "
                "AND active ORDER BY partition_id",
                parameters={"s": stage},
            ).result_rows
        ]
        assert len(partitions) == 3
        journal_dir = workdir / "data" / "insert_journal"
        (journal_dir / f"{stage}.json").write_text(
            json.dumps(
                {
                    "database": db,
                    "table": "t",
                    "stage": stage,
                    "watermark": watermark,
                    "partitions": partitions,
                }
            )
        )
        # The crash came after the first attach, and a merge already folded that part into the seed's.
        c.command(f"ALTER TABLE {db}.t ATTACH PARTITION ID '{partitions[0]}' FROM _netsonde_store.{stage}")
        c.command(f"OPTIMIZE TABLE {db}.t PARTITION ID '{partitions[0]}' FINAL")
        c.close()
        _kill(proc)

        proc = start_store(workdir)
        c = connect(proc.url, "default")
        rows = c.query(f"SELECT toString(day), count() FROM {db}.t GROUP BY day ORDER BY day").result_rows
        per_day = {day: n for day, n in rows}
        assert per_day == {"2026-01-01": 110, "2026-01-02": 100, "2026-01-03": 100}
        assert c.query(f"SELECT uniqExact(n) FROM {db}.t").result_rows[0][0] == 310
        assert (
            c.query("SELECT count() FROM system.tables WHERE database = '_netsonde_store'").result_rows[0][0]
            == 0
        )
        assert list(journal_dir.glob("*")) == []
        c.close()
    finally:
        proc.keep = False
        proc.stop()


@pytest.mark.slow
def test_store_restart_keeps_data_and_drops_leftover_staging(unique: str) -> None:
    """A staging table without a journal (crash before the first move) is dropped; the target is untouched."""
    workdir = Path(tempfile.mkdtemp(prefix="netsonde-store-recovery-"))
    proc = start_store(workdir)
    db = f"rec_{unique}"
    try:
        c = connect(proc.url, "default")
        c.command(f"CREATE DATABASE {db}")
        c.command(f"CREATE TABLE {db}.t (day Date, n UInt64) ENGINE = MergeTree PARTITION BY day ORDER BY n")
        c.insert(
            f"{db}.t",
            [[__import__("datetime").date(2026, 1, d % 3 + 1), d] for d in range(30)],
            column_names=["day", "n"],
        )
        c.command(f"CREATE TABLE _netsonde_store.stage_{unique} AS {db}.t")
        c.command(
            f"INSERT INTO _netsonde_store.stage_{unique} SELECT toDate('2026-02-01'), number FROM numbers(5)"
        )
        c.close()
        _kill(proc)

        proc = start_store(workdir)
        c = connect(proc.url, "default")
        assert c.query(f"SELECT count(), sum(n) FROM {db}.t").result_rows[0] == (30, sum(range(30)))
        assert (
            c.query("SELECT count() FROM system.tables WHERE database = '_netsonde_store'").result_rows[0][0]
            == 0
        )
        c.close()
    finally:
        proc.keep = False
        proc.stop()
