"""graph-builder's migrations of the graph history table, whose definition lives in
`netsonde.common.graphschema` (shared with the Gremlin history reader)."""

from netsonde.common.clickhouse import Migration
from netsonde.common.graphschema import COLUMNS, CREATE_TABLE, TABLE, TIME_INDEX, ttl_statement

__all__ = ["COLUMNS", "MIGRATIONS", "TABLE", "ttl_statement"]

MIGRATIONS = [
    Migration(1, "graph_revisions", [CREATE_TABLE]),
    Migration(2, "graph_revisions time index", [TIME_INDEX]),
]
