"""ClickHouse schema of the graph history (`graph_revisions`): one row per revision of every node and edge.

The one definition: graph-builder writes and migrates the table from it (`netsonde.graph_builder.schema`),
the Gremlin history module reads it (`netsonde.gremlin.history`).

A row is valid from `updated_at` until the next revision's `updated_at`. A deletion is a last revision with
`deleted_at` set. Revision numbers grow per ID across deletions (an ID that comes back continues them), and
ReplacingMergeTree on (kind, id, revision) makes a re-sent revision harmless.
"""

from __future__ import annotations

TABLE = "graph_revisions"

COLUMNS: tuple[tuple[str, str], ...] = (
    ("kind", "Enum8('node' = 1, 'edge' = 2)"),
    ("id", "String"),
    ("revision", "UInt64"),
    ("host", "LowCardinality(String)"),
    ("origin", "LowCardinality(String)"),
    ("created_at", "DateTime64(3, 'UTC')"),
    ("updated_at", "DateTime64(3, 'UTC')"),
    ("deleted_at", "Nullable(DateTime64(3, 'UTC'))"),
    ("parent", "String"),
    ("child", "String"),
    ("metadata", "String"),
)
"""(name, ClickHouse type) in insert order. `metadata` is the element's Metadata as JSON text."""

CREATE_TABLE = (
    f"CREATE TABLE IF NOT EXISTS {{db}}.{TABLE} ("
    + ", ".join(f"{name} {typ}" for name, typ in COLUMNS)
    + ") ENGINE = ReplacingMergeTree PARTITION BY toYYYYMMDD(updated_at) ORDER BY (kind, id, revision)"
)
"""The table's DDL; `{db}` is the database name (the `Migration` convention)."""

TIME_INDEX = (
    f"ALTER TABLE {{db}}.{TABLE} ADD INDEX IF NOT EXISTS idx_updated_at updated_at TYPE minmax GRANULARITY 1"
)
"""Skip index on updated_at: past-instant queries read only the parts up to their instant."""


def ttl_statement(database: str, days: int) -> str:
    """Retention is a setting, not a migration: applied at every start with the configured value."""
    return f"ALTER TABLE `{database}`.{TABLE} MODIFY TTL toDateTime(updated_at) + INTERVAL {int(days)} DAY"
