"""probe-topology settings (section `[probe_topology]`, env `NETSONDE_<FIELD>`)."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from netsonde.common.config import BaseConfig, ConfigError


RESERVED_HOST_KEYS = frozenset({"Name", "Type", "Host", "Hostname", "TID"})
"""Host node keys the probe sets itself: configured metadata may not replace them."""


@dataclasses.dataclass(frozen=True)
class ProbeTopologyConfig(BaseConfig):
    SECTION = "probe_topology"

    ovsdb: str = "unix:/var/run/openvswitch/db.sock"
    """OVSDB remote (unix:PATH or tcp:HOST:PORT); empty disables the OVS part. Waited for if absent."""
    digest_interval_s: float = 10.0
    """Period of the "digest" message (hash of the full state) graph-builder checks against its copy."""
    metrics_interval_s: float = 30.0
    """Period of the refresh (links, addresses, routes, neighbours dumped again in every namespace) that
    updates `Metric`, `LastUpdateMetric` and the ethtool data (Skydive's `agent.topology.netlink.metrics_update`)."""
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Metadata merged into the host node (Skydive's `agent.metadata`): a TOML table
    (`[probe_topology.metadata]`), or JSON in `NETSONDE_METADATA`. Nested tables and arrays are kept as is."""
    flush_interval_s: float = 0.02
    """A change is published at most this long after it was seen (a burst is coalesced in one delta)."""
    flush_quiet_s: float = 0.001
    """While changes keep coming, one is published once no other came for this long (after an idle period of
    flush_interval_s, as soon as no other event is queued)."""
    neighbor_flush_interval_s: float = 1.0
    """Changes of neighbour entries alone (ARP/NDP state churn) are published at most this often."""
    delta_max_items: int = 500
    """Most node/edge upserts + deletions per delta message."""
    message_max_bytes: int = 800_000
    """Messages (deltas and full parts) are split to stay under this size."""
    netns_scan_interval_s: float = 2.0
    """Period of the /proc/*/ns/net scan for namespaces held only by processes (named ones use inotify)."""
    netns_dirs: tuple[str, ...] = ("/var/run/netns", "/run/netns")
    """Directories of named namespaces (watched with inotify). When two are the same directory (/var/run ->
    /run), the first one gives a namespace's `Path` (`/var/run/netns/<name>`, as `ip netns` and Skydive say)."""
    process_netns: bool = True
    """Also follow namespaces that only processes hold (found in /proc)."""
    netlink_rcvbuf: int = 32 * 1024 * 1024
    """Receive buffer of each netlink socket (SO_RCVBUFFORCE): absorbs event bursts."""
    start_timeout_s: float = 10.0
    """Longest wait for the first netlink dumps (and OVSDB, when reachable) before the first full."""
    docker_socket: str = "unix:///var/run/docker.sock"
    """Docker Engine API endpoint whose running containers become `container` nodes (podman's compatible
    service: unix:///run/podman/podman.sock); unix://, tcp:// or http(s)://; empty disables the connector."""
    docker_reconnect_max_s: float = 30.0
    """Longest wait between two connection attempts to the container engine (the wait doubles from 0.5 s)."""

    def __post_init__(self) -> None:
        if isinstance(self.metadata, str):  # from the environment
            try:
                object.__setattr__(self, "metadata", json.loads(self.metadata) if self.metadata.strip() else {})
            except ValueError as exc:
                raise ConfigError(f"setting 'metadata': not JSON: {exc}") from None

    def validate(self) -> None:
        super().validate()
        if not isinstance(self.metadata, dict):
            raise ConfigError(f"setting 'metadata': expected a table, got {type(self.metadata).__name__}")
        reserved = sorted(set(self.metadata) & RESERVED_HOST_KEYS)
        if reserved:
            raise ConfigError(f"setting 'metadata': {', '.join(reserved)} belong to the probe and cannot be set")
        for name in ("digest_interval_s", "metrics_interval_s", "flush_interval_s", "flush_quiet_s",
                     "netns_scan_interval_s",
                     "neighbor_flush_interval_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"setting {name!r} must be > 0")
        if self.delta_max_items < 1:
            raise ConfigError("setting 'delta_max_items' must be >= 1")
        if self.message_max_bytes < 10_000:
            raise ConfigError("setting 'message_max_bytes' must be >= 10000")
        if self.docker_socket and not self.docker_socket.startswith(("unix://", "tcp://", "http://", "https://")):
            raise ConfigError(f"setting 'docker_socket': {self.docker_socket!r} is not unix://PATH, tcp://HOST:PORT "
                              "or http(s)://HOST:PORT")
        if self.docker_reconnect_max_s < 0.5:
            raise ConfigError("setting 'docker_reconnect_max_s' must be >= 0.5")
