from __future__ import annotations

import dataclasses

from netsonde.common.config import BaseConfig, ConfigError


@dataclasses.dataclass(frozen=True)
class GraphBuilderConfig(BaseConfig):
    SECTION = "graph_builder"

    history: bool = True
    """Write every revision to ClickHouse (graph_revisions). Off: live graph only, no Context()/At()."""
    history_flush_interval_s: float = 1.0
    """Longest time a revision waits before it is written to ClickHouse."""
    history_batch_rows: int = 10_000
    """Write as soon as this many revisions are pending."""
    history_ttl_days: int = 30
    """Revisions older than this are dropped by ClickHouse (TTL)."""
    event_batch_max: int = 500
    """Most graph events per bus message."""
    snapshot_chunk_elements: int = 2_000
    """Most nodes + edges per snapshot chunk (keeps chunks under the NATS payload limit)."""
    rule_timeout_s: float = 2.0
    """Longest time one node/edge rule query may run; a slower rule fails (graph-builder, the single writer,
    waits for it, so this is shorter than query-api's query_timeout_s)."""
    rule_max_results: int = 100_000
    """Most nodes a rule query, or edges an edge rule, may produce; a bigger rule fails."""

    def validate(self) -> None:
        super().validate()
        if self.history_flush_interval_s <= 0:
            raise ConfigError("setting 'history_flush_interval_s' must be > 0")
        if self.rule_timeout_s <= 0 or self.rule_max_results < 1:
            raise ConfigError("settings 'rule_timeout_s' and 'rule_max_results' must be > 0")
        if self.history_batch_rows < 1 or self.event_batch_max < 1 or self.snapshot_chunk_elements < 1:
            raise ConfigError("batch sizes must be >= 1")
