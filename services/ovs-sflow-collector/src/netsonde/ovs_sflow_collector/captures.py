"""The `ovssflow` capture controller: capture definitions (KV bucket) -> OVS bridges' sFlow configuration.

For every capture of Type `ovssflow`, the bridges its GremlinQuery selects get an sFlow row pointing at
this collector (sampling = SamplingRate, polling = PollingInterval, header = HeaderSize); when the capture
is deleted, or stops selecting a bridge, the row is removed. `reconcile()` is idempotent and also runs
periodically, so bridges created after the capture are picked up and a row removed by hand comes back.

Bridge selection is the capture's GremlinQuery run by the Gremlin engine on the collector's replica of the
graph (done by the service, on its event loop): `reconcile(selected)` gets, per capture UUID, the names of the
`ovsbridge` nodes of this host the query returns, or None while the replica is not synced (the bridges then
keep what they have).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from netsonde.common.bus.captures import Capture
from netsonde.common.capture_types import unsupported_options
from netsonde.common.logs import OnceLogger

from .collector import PortInfo
from .ovs import OvsError, Vsctl

log = logging.getLogger(__name__)

__all__ = ["CaptureController", "ReconcileResult"]

@dataclass
class ReconcileResult:
    enabled: list[str]
    disabled: list[str]
    ports: dict[int, PortInfo]
    bridges: dict[str, str]
    """bridge -> capture ID, for the bridges that carry a Netsonde sFlow row now."""
    bridge_uuids: dict[str, str]
    """bridge -> OVSDB row UUID (every bridge)."""


class CaptureController:
    """Blocking (ovs-vsctl); the service runs `reconcile` in a worker thread."""

    def __init__(self, vsctl: Vsctl, host: str, target: str, agent: str = "", header_bytes: int = 128) -> None:
        self.vsctl = vsctl
        self.host = host
        self.target = target
        self.agent = agent
        self.header_bytes = header_bytes
        self.captures: dict[str, Capture] = {}
        self._once = OnceLogger(log)

    def set_capture(self, cap: Capture) -> None:
        # "" = each node's default type (ovssflow on a bridge); with an option sFlow cannot honour, probe-flow
        # shows the bridge in State error instead
        if cap.Type in ("", "ovssflow") and not unsupported_options(cap, "ovssflow"):
            self.captures[cap.UUID] = cap
        else:
            self.captures.pop(cap.UUID, None)

    def remove_capture(self, capture_id: str) -> bool:
        return self.captures.pop(capture_id, None) is not None

    def desired(self, bridges: list[str], owners: dict[str, str],
                selected: dict[str, list[str] | None]) -> dict[str, Capture]:
        """bridge -> the capture that should own its sFlow (the oldest-known capture wins a conflict).
        `owners` (bridge -> capture ID now) is kept for a capture whose selection is unknown (None/absent)."""
        out: dict[str, Capture] = {}
        for cap in self.captures.values():
            chosen = selected.get(cap.UUID)
            if chosen is None:
                chosen = [b for b, owner in owners.items() if owner == cap.UUID]
            for b in chosen:
                if b in bridges:
                    out.setdefault(b, cap)
        return out

    def reconcile(self, selected: dict[str, list[str] | None] | None = None) -> ReconcileResult:
        snap = self.vsctl.snapshot()  # one ovs-vsctl run; sFlow changes below do not change the port map
        current = self.vsctl.bridges(snap)
        want = self.desired([b.bridge for b in current], {b.bridge: b.capture_id for b in current if b.capture_id},
                            selected or {})
        enabled, disabled = [], []
        owned: dict[str, str] = {}
        for b in current:
            cap = want.get(b.bridge)
            if cap is None:
                if b.capture_id:  # ours, no longer wanted
                    self.vsctl.disable_sflow(b.bridge)
                    disabled.append(b.bridge)
                continue
            if b.foreign:
                self._once.warning(f"foreign-{b.bridge}", f"bridge {b.bridge} has an sFlow row Netsonde did not "
                                   "create; capture left inactive there", bridge=b.bridge)
                continue
            header = cap.HeaderSize or self.header_bytes
            if (b.capture_id, b.targets, b.sampling, b.polling, b.header) != (
                    cap.UUID, (self.target,), max(1, cap.SamplingRate), cap.PollingInterval, header):
                self.vsctl.enable_sflow(b.bridge, cap.UUID, self.target, self.agent, cap.SamplingRate,
                                        cap.PollingInterval, header)
                enabled.append(b.bridge)
            owned[b.bridge] = cap.UUID
        ports = self.vsctl.port_map(self.host, owned, snap)
        for b in enabled:
            log.info("ovssflow capture enabled on bridge", extra={"bridge": b, "capture": owned[b],
                                                                  "target": self.target})
        for b in disabled:
            log.info("ovssflow capture removed from bridge", extra={"bridge": b})
        return ReconcileResult(enabled, disabled, ports, owned, {b.bridge: b.uuid for b in current})

    def disable_all(self) -> list[str]:
        """Remove every Netsonde sFlow row (service stop with `remove_on_stop`)."""
        out = []
        try:
            for b in self.vsctl.bridges():
                if b.capture_id:
                    self.vsctl.disable_sflow(b.bridge)
                    out.append(b.bridge)
        except OvsError as e:
            log.warning("could not remove sFlow rows: %s", e)
        return out
