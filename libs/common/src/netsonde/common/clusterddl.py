"""Cluster mode of the migrations: the same table definitions, spread over a ClickHouse cluster.

On a single server every migration statement runs as written. On a cluster (`clickhouse_cluster` set, e.g.
deploy/cluster/) each statement is rewritten, by `on_cluster()`, into the usual sharded-and-replicated layout:

- `CREATE TABLE db.T (...) ENGINE = ReplacingMergeTree ...` becomes the per-node table `db.T_local ON CLUSTER`
  with `ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/{database}/T_local', '{replica}')` (macros
  from each server's config, replicas kept in sync through Keeper), plus `db.T ON CLUSTER AS db.T_local
  ENGINE = Distributed(cluster, db, T_local, <shard key>)`. Services keep reading and inserting `db.T`.
- The shard key keeps every row of one flow (UUID) or one graph element (id) on one shard, so
  ReplacingMergeTree's deduplication and `FINAL` stay correct per shard.
- `ALTER TABLE db.T ADD/DROP/MODIFY COLUMN` runs on both tables; any other ALTER (indexes, TTL) on `T_local`.
- `CREATE DATABASE` gets `ON CLUSTER`.

Statements reach this module formatted (the database as a backticked name).
"""

from __future__ import annotations

import re

SHARD_KEYS: dict[str, str] = {
    "flows": "cityHash64(UUID)",
    "flow_metrics": "cityHash64(UUID)",
    "flow_raw_packets": "cityHash64(UUID)",
    "graph_revisions": "cityHash64(id)",
    "schema_migrations": "cityHash64(component)",
}
"""Sharding expression of every Distributed table; a table missing here is refused (no silent rand())."""

LOCAL_SUFFIX = "_local"

_TABLE = r"(?P<db>`[^`]+`|\w+)\.(?P<table>\w+)"
_CREATE_DB = re.compile(r"^\s*CREATE DATABASE (?P<ine>IF NOT EXISTS )?(?P<name>`[^`]+`|\w+)\s*$", re.I)
_CREATE_TABLE = re.compile(
    rf"^\s*CREATE TABLE (?P<ine>IF NOT EXISTS )?{_TABLE}\s*(?P<body>\(.*\))\s*ENGINE\s*=\s*"
    r"(?P<engine>\w*MergeTree)(?P<args>\(\))?(?P<rest>.*)$",
    re.I | re.S,
)
_ALTER = re.compile(rf"^\s*ALTER TABLE {_TABLE}\s+(?P<action>.*)$", re.I | re.S)
_COLUMN_ACTION = re.compile(r"^(ADD|DROP|MODIFY|RENAME|COMMENT) COLUMN\b", re.I)


class ClusterDDLError(ValueError):
    """A statement the cluster rewrite does not know how to spread (named in the message)."""


def _quote(name: str) -> str:
    return f"'{name}'"


def on_cluster(statement: str, cluster: str) -> list[str]:
    """The statements that apply `statement` (one formatted migration or TTL statement) on `cluster`."""
    on = f"ON CLUSTER {_quote(cluster)}"
    if m := _CREATE_DB.match(statement):
        return [f"CREATE DATABASE {m['ine'] or ''}{m['name']} {on}"]
    if m := _CREATE_TABLE.match(statement):
        db, table, ine = m["db"], m["table"], m["ine"] or ""
        if table not in SHARD_KEYS:
            raise ClusterDDLError(
                f"table {table!r} has no shard key in netsonde.common.clusterddl.SHARD_KEYS"
            )
        local = table + LOCAL_SUFFIX
        path = f"'/clickhouse/tables/{{shard}}/{{database}}/{local}'"
        return [
            f"CREATE TABLE {ine}{db}.{local} {on} {m['body']} "
            f"ENGINE = Replicated{m['engine']}({path}, '{{replica}}'){m['rest']}",
            f"CREATE TABLE {ine}{db}.{table} {on} AS {db}.{local} "
            f"ENGINE = Distributed({_quote(cluster)}, {db}, {_quote(local)}, {SHARD_KEYS[table]})",
        ]
    if m := _ALTER.match(statement):
        db, table, action = m["db"], m["table"], m["action"]
        local = f"ALTER TABLE {db}.{table}{LOCAL_SUFFIX} {on} {action}"
        if _COLUMN_ACTION.match(action):
            return [local, f"ALTER TABLE {db}.{table} {on} {action}"]
        return [local]
    raise ClusterDDLError(f"no cluster form for statement: {statement[:120]}")
