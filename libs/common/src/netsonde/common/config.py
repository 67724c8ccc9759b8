"""Typed configuration: defaults in code, overridden by a TOML file, then by environment variables.

Every service declares one frozen dataclass deriving from `BaseConfig`. Values are read once at start-up
and validated there, so a typo fails at load time with the name of the offending setting, not later.

Precedence: dataclass default < file given by `NETSONDE_CONFIG` (TOML; a `[common]` table plus one table per
service) < environment variable `NETSONDE_<FIELD>` (upper-cased field name).
"""

from __future__ import annotations

import dataclasses
import itertools
import os
import socket
import tomllib
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar

C = TypeVar("C", bound="BaseConfig")


class ConfigError(ValueError):
    """A setting is missing, malformed or out of range."""


def _cast(name: str, raw: Any, typ: Any) -> Any:
    if isinstance(typ, str):
        typ = {"int": int, "float": float, "bool": bool, "str": str}.get(typ, str)
    origin = typing.get_origin(typ)
    if origin is typing.Union or str(origin) == "types.UnionType":
        args = [a for a in typing.get_args(typ) if a is not type(None)]
        if raw in (None, ""):
            return None
        typ = args[0]
    if typ is bool:
        if isinstance(raw, bool):
            return raw
        value = str(raw).strip().lower()
        if value in ("1", "true", "yes", "on"):
            return True
        if value in ("0", "false", "no", "off"):
            return False
        raise ConfigError(f"setting {name!r}: expected a boolean, got {raw!r}")
    if typ in (int, float):
        try:
            return typ(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"setting {name!r}: expected {typ.__name__}, got {raw!r}") from None
    if typ is str:
        return str(raw)
    if typing.get_origin(typ) is tuple or typ is tuple:
        if isinstance(raw, str):
            return tuple(x.strip() for x in raw.split(",") if x.strip())
        return tuple(raw)
    return raw


@dataclasses.dataclass(frozen=True)
class BaseConfig:
    """Settings every service shares."""

    host_id: str = ""
    """This host's name in the graph (`Host` of its nodes). Default: the machine's hostname."""
    nats_url: str = "nats://127.0.0.1:4222"
    """NATS server(s), comma separated."""
    nats_user: str = ""
    """NATS user (with nats_password) for a server that requires authentication."""
    nats_password: str = ""
    """Password of nats_user (never logged)."""
    nats_token: str = ""
    """NATS authentication token, for servers configured with one (never logged)."""
    nats_creds_file: str = ""
    """NATS credentials file (user JWT and NKey seed), for decentralised NATS authentication."""
    nats_tls_ca: str = ""
    """CA bundle that signed the NATS server's certificate: the connection then uses TLS."""
    nats_tls_cert: str = ""
    """Client certificate for NATS servers that verify clients (with nats_tls_key)."""
    nats_tls_key: str = ""
    """Private key of nats_tls_cert."""
    subject_prefix: str = "netsonde"
    """First token of every subject, so two deployments can share one NATS cluster."""
    stream_replicas: int = 1
    """Copies of every JetStream stream and KV bucket this service creates (3 on a 3-node NATS cluster)."""
    status_interval_s: float = 5.0
    """How often a stage publishes its loss counters (`<prefix>.status.drops`, summed in /api/status)."""
    clickhouse_url: str = "http://127.0.0.1:8123"
    """ClickHouse HTTP URL (a real server, or the embedded store); user:password@ allowed."""
    clickhouse_user: str = ""
    """ClickHouse user (with clickhouse_password); overrides a user:password@ in clickhouse_url."""
    clickhouse_password: str = ""
    """Password of clickhouse_user (never logged)."""
    clickhouse_database: str = "netsonde"
    """Database holding Netsonde's tables; created by the migrations."""
    http_host: str = "127.0.0.1"
    """Address of the health and metrics endpoint."""
    http_port: int = 0
    """Port of the health and metrics endpoint (0: pick a free one)."""
    log_level: str = "info"
    """debug, info, warning or error."""
    log_format: str = "json"
    """json (one object per line) or text."""

    SECTION: typing.ClassVar[str] = "common"

    def validate(self) -> None:
        """Raise ConfigError on values that cannot work. Subclasses extend it."""
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise ConfigError(f"setting 'log_level': unknown level {self.log_level!r}")
        if self.log_format not in ("json", "text"):
            raise ConfigError(f"setting 'log_format': expected json or text, got {self.log_format!r}")
        if self.status_interval_s <= 0:
            raise ConfigError("setting 'status_interval_s' must be > 0")
        if not 1 <= self.stream_replicas <= 5:
            raise ConfigError(f"setting 'stream_replicas': {self.stream_replicas} is not 1..5")
        if not (0 <= self.http_port < 65536):
            raise ConfigError(f"setting 'http_port': {self.http_port} is not a port")
        if bool(self.nats_tls_cert) != bool(self.nats_tls_key):
            raise ConfigError("settings 'nats_tls_cert' and 'nats_tls_key' go together: set both or neither")
        if not self.subject_prefix or any(c in self.subject_prefix for c in " .*>"):
            raise ConfigError(f"setting 'subject_prefix': {self.subject_prefix!r} is not a subject token")

    @classmethod
    def load(
        cls: type[C], env: Mapping[str, str] | None = None, file: str | Path | None = None, **overrides: Any
    ) -> C:
        """Build the config from defaults, file, environment and explicit overrides, then validate it."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        path = file or env.get("NETSONDE_CONFIG")
        if path:
            try:
                data = tomllib.loads(Path(path).read_text())
            except (OSError, tomllib.TOMLDecodeError) as exc:
                raise ConfigError(f"config file {path}: {exc}") from None
            values.update(data.get("common", {}))
            values.update(data.get(cls.SECTION.replace("_", "-"), {}))  # [probe-topology] = [probe_topology]
            values.update(data.get(cls.SECTION, {}))
        fields = {f.name: f for f in dataclasses.fields(cls)}
        for name in fields:
            key = f"NETSONDE_{name.upper()}"
            if key in env:
                values[name] = env[key]
        values.update({k: v for k, v in overrides.items() if v is not None})
        unknown = set(values) - set(fields)
        if unknown:
            raise ConfigError(f"unknown setting(s) for {cls.SECTION}: {', '.join(sorted(unknown))}")
        hints = typing.get_type_hints(cls)
        kwargs = {k: _cast(k, v, hints.get(k, str)) for k, v in values.items()}
        cfg = cls(**kwargs)
        if not cfg.host_id:
            cfg = dataclasses.replace(cfg, host_id=socket.gethostname())
        if cfg.clickhouse_user:  # clickhouse-connect takes the credentials from the URL every service uses
            cfg = dataclasses.replace(
                cfg,
                clickhouse_url=_with_credentials(
                    cfg.clickhouse_url, cfg.clickhouse_user, cfg.clickhouse_password
                ),
            )
        cfg.validate()
        return cfg

    @classmethod
    def describe(cls) -> list[tuple[str, str, Any, str]]:
        """(env var, type, default, doc) for every setting: used by `netsonde config` and the docs."""
        docs = _attribute_docs(cls)
        out = []
        for f in dataclasses.fields(cls):
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            out.append((f"NETSONDE_{f.name.upper()}", str(f.type), default, docs.get(f.name, "")))
        return out


def _with_credentials(url: str, user: str, password: str) -> str:
    """`url` with `user:password@` (URL-quoted) in place of any credentials it had."""
    from urllib.parse import quote, urlsplit, urlunsplit

    u = urlsplit(url)
    host = u.hostname or ""
    host = f"[{host}]" if ":" in host else host
    netloc = f"{quote(user, safe='')}:{quote(password, safe='')}@{host}" + (f":{u.port}" if u.port else "")
    return urlunsplit((u.scheme, netloc, u.path, u.query, u.fragment))


def _attribute_docs(cls: type) -> dict[str, str]:
    """Read the string literal that follows each field (attribute docstrings)."""
    import ast
    import inspect

    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if klass is object:
            continue
        try:
            tree = ast.parse(inspect.getsource(klass))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body  # type: ignore[attr-defined]
        for a, b in itertools.pairwise(body):
            if (
                isinstance(a, ast.AnnAssign)
                and isinstance(a.target, ast.Name)
                and isinstance(b, ast.Expr)
                and isinstance(b.value, ast.Constant)
                and isinstance(b.value.value, str)
            ):
                docs[a.target.id] = b.value.value
    return docs
