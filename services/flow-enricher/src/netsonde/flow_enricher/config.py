"""flow-enricher settings (`[flow_enricher]` in the TOML file, or NETSONDE_<FIELD> variables)."""

from __future__ import annotations

import dataclasses

from netsonde.common.config import BaseConfig, ConfigError


@dataclasses.dataclass(frozen=True)
class FlowEnricherConfig(BaseConfig):
    SECTION = "flow_enricher"

    consumer_name: str = "flow-enricher"
    """Durable JetStream pull consumer shared by every replica (the stream's work is split among them)."""
    fetch_batch: int = 500
    """Most messages asked for in one pull request."""
    fetch_bytes: int = 8 * 1024 * 1024
    """About the most bytes asked for in one pull request: the batch follows the size of the messages seen
    (500 flows of 500 B each make 250 kB messages: 500 of them at once would stall the connection)."""
    insert_rows: int = 200_000
    """Insert as soon as about this many flow updates are pending (estimated from message sizes). Big
    inserts make big parts, which ClickHouse merges far less: 200 000 cost the store 2.5x less CPU per row
    than 50 000 (docs/flow-storage.md); `insert_interval_s` still bounds the wait at low rates."""
    fast_path: bool = True
    """Use the C hot path (`_fastflow`) when it is built; off: the reference Python path (msgspec)."""
    insert_interval_s: float = 0.5
    """Longest time a fetched update waits before its insert (bounds the end-to-end lag when idle)."""
    inserts_in_flight: int = 2
    """Inserts running while the next batch is fetched and built (each holds its messages unacked)."""
    ack_wait_s: float = 60.0
    """JetStream redelivers a message not acked within this time (to any replica)."""
    max_ack_pending: int = 20_000
    """Most unacked messages for the consumer (all replicas together): the memory bound of the pipeline."""
    retry_max_s: float = 10.0
    """Longest back-off between retries of a failed insert (messages stay unacked meanwhile)."""
    publish_enriched: bool = True
    """Republish every stored batch, enriched, on `<prefix>.flows.enriched` (core NATS)."""
    create_stream: bool = True
    """Create the flow stream if it does not exist yet (file storage, limits below)."""
    stream_max_age_s: float = 86_400.0
    """Flow stream retention by age."""
    stream_max_bytes: int = 2 * 1024**3
    """Flow stream retention by size (oldest messages are dropped first)."""
    stream_duplicate_window_s: float = 120.0
    """Publishes with a repeated `Nats-Msg-Id` header inside this window are dropped by JetStream."""
    ttl_days: int = 30
    """Flow rows expire this many days after their Last (0: keep forever). Applied at every start."""
    graph_feed: bool = True
    """Follow graph events on the bus to keep the MAC/IP/TID -> node lookup current."""

    def validate(self) -> None:
        super().validate()
        if self.fetch_batch < 1 or self.fetch_bytes < 1 or self.insert_rows < 1 or self.inserts_in_flight < 1:
            raise ConfigError("fetch_batch, fetch_bytes, insert_rows and inserts_in_flight must be >= 1")
        if self.insert_interval_s <= 0 or self.ack_wait_s <= 0:
            raise ConfigError("insert_interval_s and ack_wait_s must be > 0")
        if self.ttl_days < 0:
            raise ConfigError("setting 'ttl_days' must be >= 0")
