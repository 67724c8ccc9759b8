from __future__ import annotations

import dataclasses

from netsonde.common.config import BaseConfig, ConfigError


@dataclasses.dataclass(frozen=True)
class AlertEvaluatorConfig(BaseConfig):
    SECTION = "alert_evaluator"

    query_timeout_s: float = 2.0
    """An alert expression running longer than this fails (state `error`): graph alerts run on the loop that
    applies graph events, so this stays short."""
    max_results: int = 100_000
    """An expression whose result (or an intermediate step) grows beyond this fails (state `error`)."""
    max_reason_items: int = 100
    """Most elements of a result carried in an event's ReasonData (ReasonCount tells the full size)."""
    flows: bool = True
    """Answer Flows() in expressions from the ClickHouse flow tables."""
    history: bool = True
    """Keep every event in ClickHouse (`alert_events`), and answer Context()/At() in expressions."""
    history_ttl_days: int = 90
    """Events older than this are dropped by ClickHouse (TTL)."""
    webhook_timeout_s: float = 5.0
    """Longest time one webhook call may take."""
    webhook_retries: int = 3
    """Extra attempts after a failed webhook call (connection error, timeout, HTTP 5xx/408/429), with
    backoff."""
    webhook_workers: int = 4
    """Webhook calls in flight at once."""
    webhook_queue: int = 10_000
    """Events waiting for their webhook beyond this are dropped (counted): evaluation never waits for them."""
    shard_count: int = 1
    """Evaluators sharing the alerts: each owns the alerts whose UUID hashes to its `shard_index`."""
    shard_index: int = 0
    """This evaluator's shard, 0 .. shard_count-1."""
    snapshot_timeout_s: float = 10.0
    """Time to wait for graph-builder's snapshot at start-up."""

    def validate(self) -> None:
        super().validate()
        if self.query_timeout_s <= 0 or self.max_results < 1 or self.max_reason_items < 1:
            raise ConfigError("query_timeout_s, max_results and max_reason_items must be positive")
        if self.webhook_timeout_s <= 0 or self.webhook_retries < 0 or self.webhook_workers < 1:
            raise ConfigError("webhook_timeout_s and webhook_workers must be positive, webhook_retries >= 0")
        if self.webhook_queue < 1:
            raise ConfigError("setting 'webhook_queue' must be >= 1")
        if self.shard_count < 1 or not 0 <= self.shard_index < self.shard_count:
            raise ConfigError(f"shard_index {self.shard_index} is not in 0..{self.shard_count - 1}")
