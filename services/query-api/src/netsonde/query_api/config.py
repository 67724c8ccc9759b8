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
    max_body_bytes: int = 1024 * 1024
    """Largest request body of the JSON routes; a larger one gets 413 before it is read whole."""
    max_pcap_bytes: int = 16 * 1024 * 1024
    """Largest pcap file `POST /api/pcap` accepts (413 above, before it is read whole)."""
    auth: str = "auto"
    """API authentication: on, off, or auto (on unless http_host is a loopback address).
    docs/reliability.md."""
    users_file: str = ""
    """TOML file of API users and tokens (hashed secrets, roles reader/admin); see docs/reliability.md."""
    tls_cert: str = ""
    """PEM certificate (chain) of the API and WebSocket: with tls_key, the API speaks HTTPS and wss only."""
    tls_key: str = ""
    """PEM private key matching tls_cert."""
    ws_queue_max: int = 10_000
    """Messages queued for one WebSocket subscriber; a subscriber that falls further behind is
    disconnected."""

    def validate(self) -> None:
        super().validate()
        if self.query_timeout_s <= 0 or self.max_results < 1:
            raise ConfigError("query_timeout_s and max_results must be positive")
        if self.max_body_bytes < 1 or self.max_pcap_bytes < 1 or self.ws_queue_max < 1:
            raise ConfigError("max_body_bytes, max_pcap_bytes and ws_queue_max must be positive")
        if self.auth not in ("on", "off", "auto"):
            raise ConfigError(f"setting 'auth': expected on, off or auto, got {self.auth!r}")
        if bool(self.tls_cert) != bool(self.tls_key):
            raise ConfigError("settings 'tls_cert' and 'tls_key' go together: set both or neither")
