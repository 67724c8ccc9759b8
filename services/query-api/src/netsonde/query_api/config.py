from __future__ import annotations

import dataclasses

from netsonde.common.config import BaseConfig, ConfigError


@dataclasses.dataclass(frozen=True)
class QueryApiConfig(BaseConfig):
    SECTION = "query_api"

    http_port: int = 8082
    """Port of the API (Skydive's analyzer port), also serving /healthz and /metrics."""
    query_timeout_s: float = 30.0
    """A Gremlin query running longer than this is stopped with HTTP 408."""
    max_results: int = 1_000_000
    """A Gremlin result larger than this (elements, flows or values) is refused with HTTP 413."""
    history: bool = True
    """Answer Context()/At() from the ClickHouse history (graph_revisions)."""
    flows: bool = True
    """Answer Flows() from the ClickHouse flow tables."""
    snapshot_timeout_s: float = 10.0
    """Time to wait for graph-builder's snapshot at start-up."""

    def validate(self) -> None:
        super().validate()
        if self.query_timeout_s <= 0 or self.max_results < 1:
            raise ConfigError("query_timeout_s and max_results must be positive")
