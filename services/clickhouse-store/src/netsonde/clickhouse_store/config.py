"""Settings of the embedded ClickHouse store (`netsonde clickhouse-store`)."""

from __future__ import annotations

import dataclasses
import os
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from netsonde.common.config import BaseConfig, ConfigError


@dataclasses.dataclass(frozen=True)
class StoreConfig(BaseConfig):
    """The store's own ClickHouse HTTP port is `port`; `http_port` stays the health/metrics port."""

    data_dir: str = ".netsonde/store"
    """chdb data directory; one store process owns it."""
    host: str = "127.0.0.1"
    """Address of the ClickHouse HTTP interface (loopback by default)."""
    port: int = 8123
    """Port of the ClickHouse HTTP interface."""
    user: str = "default"
    """User name clients must present (ClickHouse's `default` unless changed)."""
    password: str = ""
    """Password clients must present; empty: none, like a fresh ClickHouse server."""
    query_connections: int = 4
    """Engine connections for sessionless queries (statements on different connections run in parallel)."""
    insert_connections: int = 2
    """Engine connections reserved for inserts, so long queries never starve them."""
    max_sessions: int = 1024
    """Most open HTTP sessions (each holds an engine connection); beyond it the longest idle goes."""
    default_session_timeout: float = 60.0
    """Idle seconds before a session (and its temporary tables) is dropped, unless `session_timeout` says."""
    max_session_timeout: float = 3600.0
    """Largest `session_timeout` a client may ask for."""
    tmp_dir: str = ""
    """Where insert batches are spooled before the atomic INSERT (default: <data_dir>/tmp_inserts)."""
    max_body_bytes: int = 8 * 1024 * 1024 * 1024
    """Largest request body accepted (after decoding its Content-Encoding)."""
    shutdown_grace: float = 30.0
    """Seconds to let in-flight statements finish on SIGTERM before the engine is closed."""

    SECTION: typing.ClassVar[str] = "store"

    @classmethod
    def load(
        cls,
        env: Mapping[str, str] | None = None,
        file: str | Path | None = None,
        **overrides: Any,
    ) -> StoreConfig:
        """As BaseConfig.load, plus `NETSONDE_STORE_<FIELD>` (e.g. NETSONDE_STORE_DATA_DIR), which wins over
        `NETSONDE_<FIELD>`; explicit overrides (the CLI flags) win over both."""
        env = os.environ if env is None else env
        scoped: dict[str, Any] = {}
        for f in dataclasses.fields(cls):
            key = f"NETSONDE_STORE_{f.name.upper()}"
            if key in env:
                scoped[f.name] = env[key]
        scoped.update({k: v for k, v in overrides.items() if v is not None})
        return super().load(env=env, file=file, **scoped)

    @classmethod
    def describe(cls) -> list[tuple[str, str, Any, str]]:
        """As BaseConfig.describe, naming the store's own settings NETSONDE_STORE_<FIELD>."""
        own = {f.name for f in dataclasses.fields(cls)} - {f.name for f in dataclasses.fields(BaseConfig)}
        out = []
        for env, typ, default, doc in super().describe():
            name = env.removeprefix("NETSONDE_").lower()
            if name in own:
                env = f"NETSONDE_STORE_{name.upper()}"
            out.append((env, typ, default, doc))
        return out

    def validate(self) -> None:
        super().validate()
        if not self.data_dir:
            raise ConfigError("setting 'data_dir': must not be empty")
        if not (0 <= self.port < 65536):
            raise ConfigError(f"setting 'port': {self.port} is not a port")
        if self.query_connections < 1 or self.insert_connections < 1:
            raise ConfigError("settings 'query_connections' and 'insert_connections' must be >= 1")
        if self.max_sessions < 1:
            raise ConfigError("setting 'max_sessions' must be >= 1")
        if not self.user:
            raise ConfigError("setting 'user': must not be empty")
