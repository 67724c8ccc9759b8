"""The `ovssflow` capture controller: capture definitions (KV bucket) -> OVS bridges' sFlow configuration.

For every capture of Type `ovssflow`, the bridges its GremlinQuery selects get an sFlow row pointing at
this collector (sampling = SamplingRate, polling = PollingInterval, header = HeaderSize); when the capture
is deleted, or stops selecting a bridge, the row is removed. `reconcile()` is idempotent and also runs
periodically, so bridges created after the capture are picked up and a row removed by hand comes back.

Bridge selection is a small matcher until the graph replica + Gremlin engine replace it: the query's
`V(...)` / `Has(...)` key/value pairs, where only `Name` and `Type` are understood. `Type` other than
`ovsbridge` selects nothing; without `Name`, every bridge is selected; any other key selects nothing (logged).
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass

from netsonde.common.bus.captures import Capture
from netsonde.common.logs import OnceLogger

from .collector import PortInfo
from .ovs import OvsError, Vsctl

log = logging.getLogger(__name__)

__all__ = ["match_bridges", "CaptureController", "ReconcileResult"]

_STEP = re.compile(r"\b(?:Has|V)\s*\(([^()]*)\)", re.IGNORECASE)
_ARG = re.compile(r"""'([^']*)'|"([^"]*)"|([^,\s]+)""")


def _pairs(query: str) -> list[tuple[str, str]] | None:
    """Key/value pairs of V()/Has() steps; None when the query uses a construct the matcher cannot judge."""
    out: list[tuple[str, str]] = []
    for m in _STEP.finditer(query):
        args = [a or b or c for a, b, c in _ARG.findall(m.group(1))]
        if len(args) % 2:
            return None
        out.extend(zip(args[::2], args[1::2]))
    return out


def match_bridges(query: str, bridges: list[str]) -> list[str]:
    """The bridges of `bridges` that the capture's GremlinQuery selects (see the module docstring)."""
    pairs = _pairs(query)
    if pairs is None:
        return []
    names: set[str] | None = None
    for k, v in pairs:
        if k == "Type":
            if v != "ovsbridge":
                return []
        elif k == "Name":
            names = {v} if names is None else names & {v}
        else:
            return []
    return [b for b in bridges if names is None or b in names]


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
        if cap.Type == "ovssflow":
            self.captures[cap.UUID] = cap
        else:
            self.captures.pop(cap.UUID, None)

    def remove_capture(self, capture_id: str) -> bool:
        return self.captures.pop(capture_id, None) is not None

    def desired(self, bridges: list[str]) -> dict[str, Capture]:
        """bridge -> the capture that should own its sFlow (the oldest-known capture wins a conflict)."""
        out: dict[str, Capture] = {}
        for cap in self.captures.values():
            for b in match_bridges(cap.GremlinQuery, bridges):
                out.setdefault(b, cap)
        return out

    def reconcile(self) -> ReconcileResult:
        snap = self.vsctl.snapshot()  # one ovs-vsctl run; sFlow changes below do not change the port map
        current = self.vsctl.bridges(snap)
        want = self.desired([b.bridge for b in current])
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
