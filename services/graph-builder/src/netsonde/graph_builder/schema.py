"""ClickHouse schema of the graph history: one row per revision of every node and edge.

A row is valid from `updated_at` until the next revision's `updated_at`. A deletion is a last revision with
`deleted_at` set. ReplacingMergeTree on (kind, id, revision) makes a re-sent revision harmless.
"""

from netsonde.common.clickhouse import Migration

TABLE = "graph_revisions"

COLUMNS: list[tuple[str, str]] = [
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
]

MIGRATIONS = [
    Migration(1, "graph_revisions", [
        "CREATE TABLE IF NOT EXISTS {db}.graph_revisions ("
        + ", ".join(f"{name} {typ}" for name, typ in COLUMNS)
        + ") ENGINE = ReplacingMergeTree PARTITION BY toYYYYMMDD(updated_at) ORDER BY (kind, id, revision)",
    ]),
    Migration(2, "graph_revisions time index", [
        "ALTER TABLE {db}.graph_revisions ADD INDEX IF NOT EXISTS idx_updated_at updated_at TYPE minmax GRANULARITY 1",
    ]),
]


def ttl_statement(database: str, days: int) -> str:
    """Retention is a setting, not a migration: applied at every start with the configured value."""
    return (f"ALTER TABLE `{database}`.{TABLE} MODIFY TTL toDateTime(updated_at) + INTERVAL {int(days)} DAY")
