from __future__ import annotations

import dataclasses

from netsonde.common.config import BaseConfig, ConfigError


@dataclasses.dataclass(frozen=True)
class ProbeFlowConfig(BaseConfig):
    SECTION = "probe_flow"

    update_interval_s: float = 5.0
    """Flows touched since the last update are published this often (LastUpdateMetric = delta)."""
    expire_s: float = 600.0
    """A flow idle this long is published one last time with FinishType TIMEOUT and forgotten."""
    max_entries: int = 500_000
    """Most flows per capture table; new flows beyond it are dropped and counted."""
    reconcile_interval_s: float = 5.0
    """How often capture queries are re-evaluated (also on every capture change and graph change)."""
    ring_block_size: int = 1 << 20
    """TPACKET_V3 ring block size in bytes (power of two)."""
    ring_blocks: int = 32
    """Number of ring blocks (ring memory = size x blocks per capture)."""
    publish_batch_flows: int = 500
    """Most flows per FlowUpdateBatch message."""
    publish_retry_s: float = 60.0
    """How long one flow batch is retried while NATS is unreachable before it is dropped (and counted in
    flow_updates_dropped_total). Meanwhile the publisher waits: flows accumulate in the bounded flow
    tables."""
    use_graph: bool = True
    """Select capture nodes with the graph replica + Gremlin engine (off: no capture starts by query)."""
    stream_max_bytes: int = 1 << 30
    """Size limit of the flow stream, when this probe creates it."""
    pcapsocket_address: str = "127.0.0.1"
    """Address the TCP listeners of `pcapsocket` captures bind to (each on a free port, shown in
    `Captures[].PCAPSocket`)."""
    ovsdb: str = "unix:/var/run/openvswitch/db.sock"
    """OVSDB remote of this host's Open vSwitch (`ovsmirror` captures create their mirrors there)."""

    def validate(self) -> None:
        super().validate()
        if self.publish_retry_s < 0:
            raise ConfigError("publish_retry_s must be >= 0")
        if self.update_interval_s <= 0 or self.expire_s <= 0 or self.reconcile_interval_s <= 0:
            raise ConfigError("intervals must be > 0")
        if self.ring_block_size < 4096 or self.ring_block_size & (self.ring_block_size - 1):
            raise ConfigError("setting 'ring_block_size' must be a power of two >= 4096")
        if self.ring_blocks < 2 or self.publish_batch_flows < 1 or self.max_entries < 1:
            raise ConfigError("ring_blocks must be >= 2, publish_batch_flows and max_entries >= 1")
