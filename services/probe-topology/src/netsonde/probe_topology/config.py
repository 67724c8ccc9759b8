"""probe-topology settings (section `[probe_topology]`, env `NETSONDE_<FIELD>`)."""

from __future__ import annotations

import dataclasses

from netsonde.common.config import BaseConfig, ConfigError


@dataclasses.dataclass(frozen=True)
class ProbeTopologyConfig(BaseConfig):
    SECTION = "probe_topology"

    ovsdb: str = "unix:/var/run/openvswitch/db.sock"
    """OVSDB remote (unix:PATH or tcp:HOST:PORT); empty disables the OVS part. Waited for if absent."""
    digest_interval_s: float = 10.0
    """Period of the "digest" message (hash of the full state) graph-builder checks against its copy."""
    metrics_interval_s: float = 30.0
    """Period of the link counter refresh (a netlink dump per namespace) that updates `Metric`."""
    flush_interval_s: float = 0.02
    """A change is published at most this long after it was seen (a burst is coalesced in one delta)."""
    delta_max_items: int = 500
    """Most node/edge upserts + deletions per delta message."""
    message_max_bytes: int = 800_000
    """Messages (deltas and full parts) are split to stay under this size."""
    netns_scan_interval_s: float = 2.0
    """Period of the /proc/*/ns/net scan for namespaces held only by processes (named ones use inotify)."""
    netns_dirs: tuple[str, ...] = ("/run/netns", "/var/run/netns")
    """Directories of named namespaces (watched with inotify)."""
    process_netns: bool = True
    """Also follow namespaces that only processes hold (found in /proc)."""
    netlink_rcvbuf: int = 32 * 1024 * 1024
    """Receive buffer of each netlink socket (SO_RCVBUFFORCE): absorbs event bursts."""
    start_timeout_s: float = 10.0
    """Longest wait for the first netlink dumps (and OVSDB, when reachable) before the first full."""

    def validate(self) -> None:
        super().validate()
        for name in ("digest_interval_s", "metrics_interval_s", "flush_interval_s", "netns_scan_interval_s"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"setting {name!r} must be > 0")
        if self.delta_max_items < 1:
            raise ConfigError("setting 'delta_max_items' must be >= 1")
        if self.message_max_bytes < 10_000:
            raise ConfigError("setting 'message_max_bytes' must be >= 10000")
