"""ClickHouse access for every service: one client factory (URL only) and versioned migrations.

Services never talk to chdb directly: in tests and `make allinone` the URL points at the embedded store
(`netsonde clickhouse-store`), in production at a ClickHouse server or cluster. Same code either way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import parse_qs, unquote, urlparse

import clickhouse_connect
from clickhouse_connect.driver.client import Client

from .clusterddl import on_cluster

log = logging.getLogger(__name__)


def connect(url: str, database: str | None = None, **settings: object) -> Client:
    """A clickhouse-connect client for `http[s]://[user[:password]@]host:port[/database]`."""
    u = urlparse(url)
    if u.scheme not in ("http", "https"):
        raise ValueError(f"ClickHouse URL must be http:// or https://, got {url!r}")
    db = database or (u.path.strip("/") or None)
    return clickhouse_connect.get_client(
        host=u.hostname or "127.0.0.1",
        port=u.port or (8443 if u.scheme == "https" else 8123),
        username=unquote(u.username) if u.username else "default",
        password=unquote(u.password) if u.password else "",
        secure=u.scheme == "https",
        database=db or "default",
        settings=dict(settings) or None,
        autogenerate_session_id=False,
    )


def cluster_of(url: str) -> str:
    """The ClickHouse cluster named by the URL's `?cluster=NAME` ('' for a single server): migrations and
    schema statements then run ON CLUSTER on replicated local tables behind Distributed ones (clusterddl)."""
    return parse_qs(urlparse(url).query).get("cluster", [""])[0]


def ddl(url: str, statement: str) -> list[str]:
    """`statement` (formatted DDL) as it must run against the server or cluster of `url`."""
    cluster = cluster_of(url)
    return on_cluster(statement, cluster) if cluster else [statement]


@dataclass(frozen=True)
class Migration:
    """One ordered, idempotent schema step. `statements` use `{db}` for the database name."""

    version: int
    name: str
    statements: Sequence[str]


def run_migrations(url: str, database: str, component: str, migrations: Sequence[Migration]) -> int:
    """Apply the migrations of `component` not yet recorded in `<db>.schema_migrations`.

    Every statement is written to be idempotent (IF NOT EXISTS), so two services migrating at once, or a
    crash between a statement and its record, is harmless. Returns how many were applied.
    """
    admin = connect(url, "default")
    try:
        for stmt in (
            f"CREATE DATABASE IF NOT EXISTS `{database}`",
            f"CREATE TABLE IF NOT EXISTS `{database}`.schema_migrations (component LowCardinality(String), "
            "version UInt32, name String, applied_at DateTime64(3) DEFAULT now64(3)) "
            "ENGINE = ReplacingMergeTree ORDER BY (component, version)",
        ):
            for part in ddl(url, stmt):
                admin.command(part)
        done = {
            row[0]
            for row in admin.query(
                f"SELECT version FROM `{database}`.schema_migrations WHERE component = {{c:String}}",
                parameters={"c": component},
            ).result_rows
        }
        applied = 0
        for m in sorted(migrations, key=lambda m: m.version):
            if m.version in done:
                continue
            for stmt in m.statements:
                for part in ddl(url, stmt.format(db=f"`{database}`")):
                    admin.command(part)
            admin.insert(
                f"`{database}`.schema_migrations",
                [[component, m.version, m.name]],
                column_names=["component", "version", "name"],
            )
            log.info(
                "applied migration", extra={"component": component, "version": m.version, "migration": m.name}
            )
            applied += 1
        return applied
    finally:
        admin.close()
