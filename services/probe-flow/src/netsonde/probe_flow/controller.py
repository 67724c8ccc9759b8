"""Capture controller: capture definitions + the nodes their Gremlin query selects -> running captures.

`reconcile()` is idempotent: for every capture definition, the nodes `select_nodes(query)` returns that
belong to this host and can be captured (Skydive's capture capabilities) get one running capture (thread +
FlowTable); captures whose definition is gone, or whose node is no longer selected, are stopped and their
tables flushed (the flushed flows are handed to `on_flows`). `select_nodes` is injected: the service wires
it to the graph replica + Gremlin engine; tests pass a function returning node dicts for veths they made.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from netsonde.common.bus.captures import Capture, CaptureStatus
from netsonde.common.bus.flows import Flow
from netsonde.flow.capture import CAPTURE_TYPES, BaseCapture, BPFError, CaptureError, compile_bpf
from netsonde.flow.table import FlowTable

log = logging.getLogger(__name__)

CAPTURABLE_TYPES = frozenset({
    "internal", "veth", "tun", "bridge", "dummy", "gre", "bond", "can", "hsr", "ifb", "macvlan", "macvtap",
    "vlan", "vxlan", "gretap", "ip6gretap", "geneve", "ipoib", "vcan", "ipip", "ipvlan", "lowpan", "ip6tnl",
    "ip6gre", "sit", "device", "tap", "loopback"})
"""Node types where `afpacket` (the default) and `pcap` captures apply (Skydive's capabilities)."""

SelectNodes = Callable[[str], list[dict[str, Any]]]


class QueryError(ValueError):
    """A capture's GremlinQuery cannot be evaluated."""


def check_capture(cap: Capture, select_nodes: SelectNodes) -> list[dict[str, Any]]:
    """Validate a capture definition before it is stored: the BPF filter compiles and the GremlinQuery
    selects at least one capturable node. Returns those nodes; raises QueryError or BPFError with a message
    for the user."""
    if not cap.GremlinQuery.strip():
        raise QueryError("GremlinQuery is required")
    if cap.Type and cap.Type not in CAPTURE_TYPES:
        raise QueryError(f"capture type {cap.Type!r} is not handled by probe-flow ({', '.join(CAPTURE_TYPES)})")
    if cap.BPFFilter:
        compile_bpf(cap.BPFFilter, cap.HeaderSize or 256)  # raises BPFError("invalid BPF filter ...")
    try:
        nodes = select_nodes(cap.GremlinQuery)
    except Exception as e:
        raise QueryError(f"GremlinQuery {cap.GremlinQuery!r} failed: {e}") from None
    nodes = [n for n in nodes if n.get("Metadata", {}).get("Type") in CAPTURABLE_TYPES]
    if not nodes:
        raise QueryError(f"GremlinQuery {cap.GremlinQuery!r} selects no node that can be captured")
    return nodes


__all__ = ["CaptureController", "check_capture", "QueryError", "BPFError", "CAPTURABLE_TYPES"]


@dataclass
class RunningCapture:
    capture: Capture
    node: dict[str, Any]
    table: FlowTable
    reader: BaseCapture
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    @property
    def node_id(self) -> str:
        return str(self.node.get("ID", ""))


def node_netns(node: dict[str, Any]) -> str | None:
    md = node.get("Metadata", {})
    return md.get("NetNsPath") or md.get("Netns") or None


class CaptureController:
    """Owns the running captures of this host. Thread-safe (the service calls it from worker threads)."""

    def __init__(self, host: str, select_nodes: SelectNodes, *, update_expire_ms: int = 600_000,
                 max_entries: int = 500_000, ring_block_size: int = 1 << 20, ring_blocks: int = 32,
                 on_status: Callable[[CaptureStatus], None] | None = None) -> None:
        self.host = host
        self.select_nodes = select_nodes
        self.expire_ms = update_expire_ms
        self.max_entries = max_entries
        self.ring_block_size = ring_block_size
        self.ring_blocks = ring_blocks
        self.on_status = on_status or (lambda s: None)
        self.definitions: dict[str, Capture] = {}
        self.running: dict[tuple[str, str], RunningCapture] = {}
        self.errors: dict[tuple[str, str], str] = {}
        self.query_errors: dict[str, str] = {}
        self.pending_flows: list[Flow] = []
        """Flows flushed from stopped captures, waiting for the next publish."""
        self._lock = threading.RLock()

    # --- definitions ------------------------------------------------------------------------------------
    def put(self, capture: Capture) -> None:
        with self._lock:
            self.definitions[capture.UUID] = capture

    def delete(self, capture_id: str) -> None:
        with self._lock:
            self.definitions.pop(capture_id, None)

    # --- reconcile ----------------------------------------------------------------------------------------
    def reconcile(self) -> None:
        """Start what the definitions and the graph ask for; stop the rest."""
        with self._lock:
            want: dict[tuple[str, str], tuple[Capture, dict[str, Any]]] = {}
            for cap in list(self.definitions.values()):
                ctype = cap.Type or "afpacket"
                if ctype not in CAPTURE_TYPES:
                    continue  # another component's type (ovssflow, sflow ...)
                try:
                    nodes = self.select_nodes(cap.GremlinQuery)
                except Exception as e:
                    msg = f"capture {cap.UUID}: query {cap.GremlinQuery!r} failed: {e}"
                    if self.query_errors.get(cap.UUID) != msg:
                        log.warning(msg)
                    self.query_errors[cap.UUID] = msg
                    continue
                self.query_errors.pop(cap.UUID, None)
                for node in nodes:
                    if not self._mine(node):
                        continue
                    want[(cap.UUID, str(node.get("ID", "")))] = (cap, node)
            for key in [k for k in self.running if k not in want]:
                self._stop(key, "stopped")
            for key in [k for k in self.errors if k not in want]:
                del self.errors[key]
            for key, (cap, node) in want.items():
                rc = self.running.get(key)
                if rc is not None and (rc.capture != cap or node_netns(rc.node) != node_netns(node)
                                       or rc.node.get("Metadata", {}).get("Name")
                                       != node.get("Metadata", {}).get("Name")):
                    self._stop(key, "stopped")  # definition or interface changed: restart
                    rc = None
                if rc is not None and not rc.reader.running:
                    err = rc.reader.error or "capture thread ended"
                    self._stop(key, "error", err)
                    self.errors[key] = err
                    continue
                if rc is None and key not in self.errors:
                    self._start(key, cap, node)

    def _mine(self, node: dict[str, Any]) -> bool:
        md = node.get("Metadata", {})
        host = node.get("Host") or md.get("Host")
        return host == self.host and md.get("Type") in CAPTURABLE_TYPES and bool(md.get("Name"))

    def _start(self, key: tuple[str, str], cap: Capture, node: dict[str, Any]) -> None:
        md = node.get("Metadata", {})
        tid = md.get("TID") or str(node.get("ID", ""))
        try:
            table = FlowTable(tid, cap.UUID, cap.LayerKeyMode or "L2", cap.ExtraTCPMetric, expire_ms=self.expire_ms,
                              max_entries=self.max_entries, raw_packet_limit=cap.RawPacketLimit, ndpi=cap.NDPI)
        except (RuntimeError, ValueError) as e:  # bad LayerKeyMode, nDPI unavailable
            self.errors[key] = str(e)
            self._status(cap, node, "error", error=str(e))
            return
        cls = CAPTURE_TYPES[cap.Type or "afpacket"]
        kw: dict[str, Any] = {}
        if cls.kind == "afpacket":
            kw = {"block_size": self.ring_block_size, "block_nr": self.ring_blocks}
        try:
            reader = cls(md["Name"], table, node_netns(node), cap.BPFFilter, cap.HeaderSize or 256, **kw)
            reader.start()
        except CaptureError as e:
            self.errors[key] = str(e)
            log.warning("capture %s on %s failed: %s", cap.UUID, md.get("Name"), e)
            self._status(cap, node, "error", error=str(e))
            return
        self.running[key] = RunningCapture(cap, node, table, reader)
        log.info("capture %s started on %s", cap.UUID, md.get("Name"),
                 extra={"capture": cap.UUID, "node": node.get("ID"), "type": reader.kind})
        self._status(cap, node, "active", type=reader.kind)

    def _stop(self, key: tuple[str, str], state: str, error: str = "") -> None:
        rc = self.running.pop(key)
        rc.reader.stop()
        with rc.reader.lock:
            self.pending_flows.extend(rc.table.flush())
        self._status(rc.capture, rc.node, state, type=rc.reader.kind, error=error,
                     received=rc.reader.packets_received, dropped=rc.reader.packets_dropped)

    def stop_all(self) -> None:
        with self._lock:
            for key in list(self.running):
                self._stop(key, "stopped")

    # --- updates --------------------------------------------------------------------------------------
    def collect(self, now_ms: int) -> list[Flow]:
        """Flow updates of every running capture (touched + expired) plus flows of stopped captures."""
        with self._lock:
            out, self.pending_flows = self.pending_flows, []
            for rc in self.running.values():
                with rc.reader.lock:
                    out.extend(rc.table.updates(now_ms))
            return out

    def statuses(self) -> list[CaptureStatus]:
        with self._lock:
            out = [self._make_status(rc.capture, rc.node, "active", rc.reader.kind, "",
                                     rc.reader.packets_received, rc.reader.packets_dropped)
                   for rc in self.running.values()]
            for (cid, nid), err in self.errors.items():
                out.append(CaptureStatus(host=self.host, node_id=nid, capture_id=cid, state="error", error=err))
            return out

    def _status(self, cap: Capture, node: dict[str, Any], state: str, type: str = "", error: str = "",
                received: int = 0, dropped: int = 0) -> None:
        self.on_status(self._make_status(cap, node, state, type, error, received, dropped))

    def _make_status(self, cap: Capture, node: dict[str, Any], state: str, type: str, error: str,
                     received: int, dropped: int) -> CaptureStatus:
        return CaptureStatus(host=self.host, node_id=str(node.get("ID", "")), capture_id=cap.UUID, state=state,
                             type=type, error=error, packets_received=received, packets_dropped=dropped)
