"""ClickHouse schema of the alert history (`alert_events`): one row per `firing` or `resolved` event.

The one definition: alert-evaluator migrates and writes the table from it
(`netsonde.alert_evaluator.history`); anyone reads it with SQL, e.g.
`SELECT time, name, state, reason_count FROM netsonde.alert_events WHERE alert = {a:String} ORDER BY time`.
ReplacingMergeTree on the event ID makes a re-sent row harmless.
"""

from __future__ import annotations

TABLE = "alert_events"

COLUMNS: tuple[tuple[str, str], ...] = (
    ("time", "DateTime64(3, 'UTC')"),
    ("id", "String"),
    ("alert", "String"),
    ("name", "String"),
    ("state", "LowCardinality(String)"),
    ("expression", "String"),
    ("trigger", "LowCardinality(String)"),
    ("reason_count", "UInt64"),
    ("reason", "String"),
)
"""(name, ClickHouse type) in insert order. `reason` is the event's ReasonData as JSON text."""

CREATE_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {{db}}.{TABLE} ("
    + ", ".join(f"{name} {typ}" for name, typ in COLUMNS)
    + ") ENGINE = ReplacingMergeTree PARTITION BY toYYYYMMDD(time) ORDER BY (alert, time, id)"
)
"""The table's DDL; `{db}` is the database name (the `Migration` convention)."""


def ttl_statement(database: str, days: int) -> str:
    """Retention is a setting, applied at every start with the configured value."""
    return f"ALTER TABLE `{database}`.{TABLE} MODIFY TTL toDateTime(time) + INTERVAL {int(days)} DAY"
