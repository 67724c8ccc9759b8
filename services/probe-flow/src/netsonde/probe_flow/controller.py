"""Capture controller: standing capture definitions + the nodes their Gremlin query selects -> running captures.

A capture applies to every node of this host its query selects, now or later. `evaluate()` runs the queries
on the graph (on the thread that owns the graph), `apply(selection)` starts and stops captures (blocking, in a
worker thread); `reconcile()` does both. They run on every capture change, graph change and periodically, and
are idempotent. For each (capture, node):
- the capture type is the node type's default or the capture's explicit Type (`netsonde.common.capture_types`);
  node types that cannot be captured (host, netns ...) are skipped, types another service runs (ovssflow,
  sflow) are left to it;
- a type not allowed on the node type, an option the type cannot honour, a type with no implementation here
  (dpdk), or a capture that fails to start (interface gone, kernel refusal) is `State: error` with the
  reason, retried when the node changes;
- afpacket / pcap read the interface (in its namespace), ebpf attaches a TC program to it (ebpfcapture.py),
  pcapsocket listens on TCP, ovsmirror mirrors the OVS port to an internal port `mir-...` and captures that
  one with afpacket once the topology probe reports it.
Captures whose definition is gone or whose node is no longer selected are stopped and their tables flushed
(the flows are handed out by `collect`). `select_nodes` is injected: the service wires it to the graph replica
+ Gremlin engine; tests may pass a function returning node dicts.
"""

from __future__ import annotations

import logging
import subprocess
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from netsonde.common.bus.captures import Capture, CaptureStatus
from netsonde.common.bus.flows import Flow
from netsonde.common.capture_types import (CAPTURE_TYPE_SPECS, CaptureTypeError, capture_type_for_node,
                                           unsupported_options)
from netsonde.flow.capture import PACKET_READERS, BaseCapture, BPFError, CaptureError
from netsonde.flow.table import FlowTable
from netsonde.flow.targets import table_for_capture

from .capturecounters import Counters, add_into, reader_counters, table_counters
from .ebpfcapture import EbpfCapture
from .mirror import MIRROR_KEY, MirrorError, OvsMirrors, mirror_port_name
from .pcapsocket import PcapSocketCapture
from .sflowsocket import SFlowSocketCapture, listen_address

log = logging.getLogger(__name__)

SelectNodes = Callable[[str], list[dict[str, Any]]]

NOT_IMPLEMENTED = {
    "dpdk": "dpdk capture is not supported by Netsonde",
}
"""Capture types of the table that probe-flow cannot run: a node that gets one shows this error."""


class QueryError(ValueError):
    """A capture's GremlinQuery (or an injection's Src) cannot be evaluated."""


__all__ = ["CaptureController", "QueryError", "BPFError", "RunningCapture", "Selection", "node_netns"]


@dataclass
class Selection:
    """What the graph says now: the nodes each capture's query selects (absent: the query failed) and the
    interface nodes of pending ovsmirror mirrors, by name."""

    captures: list[Capture]
    nodes: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    mirrors: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class RunningCapture:
    """One capture on one node. For ovsmirror, `reader` is None until the mirror interface shows up."""

    capture: Capture
    node: dict[str, Any]
    kind: str
    table: FlowTable | None
    reader: BaseCapture | None
    mirror: str = ""
    """ovsmirror: name of the mirror port/interface."""
    mirror_node: dict[str, Any] | None = None
    attach_error: str = ""
    """ovsmirror: why the mirror interface could not be captured yet (retried at each reconcile)."""
    started_ms: int = field(default_factory=lambda: int(time.time() * 1000))

    @property
    def node_id(self) -> str:
        return str(self.node.get("ID", ""))


def node_netns(node: dict[str, Any]) -> str | None:
    md = node.get("Metadata", {})
    return md.get("NetNsPath") or md.get("Netns") or None


def _fingerprint(cap: Capture, node: dict[str, Any]) -> tuple[Any, ...]:
    """What a running capture or a recorded error depends on: a change restarts / retries it."""
    md = node.get("Metadata", {})
    return (cap, md.get("Type"), md.get("Name"), node_netns(node), md.get("TID"), md.get("UUID"))


class CaptureController:
    """Owns the captures of this host. Thread-safe (the service calls it from the loop and worker threads)."""

    def __init__(self, host: str, select_nodes: SelectNodes, *, update_expire_ms: int = 600_000,
                 max_entries: int = 500_000, ring_block_size: int = 1 << 20, ring_blocks: int = 32,
                 on_status: Callable[[CaptureStatus], None] | None = None, pcapsocket_address: str = "127.0.0.1",
                 ovsdb: str = "unix:/var/run/openvswitch/db.sock") -> None:
        self.host = host
        self.select_nodes = select_nodes
        self.expire_ms = update_expire_ms
        self.max_entries = max_entries
        self.ring_block_size = ring_block_size
        self.ring_blocks = ring_blocks
        self.pcapsocket_address = pcapsocket_address
        self.mirrors = OvsMirrors(ovsdb)
        self.on_status = on_status or (lambda s: None)
        self.definitions: dict[str, Capture] = {}
        self.running: dict[tuple[str, str], RunningCapture] = {}
        self.fingerprints: dict[tuple[str, str], tuple[Any, ...]] = {}
        self.errors: dict[tuple[str, str], str] = {}
        """(capture, node) -> why that capture cannot run on that node (shown as State error)."""
        self.query_errors: dict[str, str] = {}
        self._mirror_nodes: dict[str, dict[str, Any]] = {}
        self._stale_mirrors_checked = False
        self.pending_flows: list[Flow] = []
        """Flows flushed from stopped captures, waiting for the next publish."""
        self.retired: Counters = {}
        """What stopped captures and replaced tables counted (capturecounters.py): `counter_totals` adds it."""
        self._lock = threading.RLock()

    # --- definitions ------------------------------------------------------------------------------------
    def put(self, capture: Capture) -> None:
        with self._lock:
            self.definitions[capture.UUID] = capture

    def delete(self, capture_id: str) -> None:
        with self._lock:
            self.definitions.pop(capture_id, None)

    # --- reconcile ----------------------------------------------------------------------------------------
    def resolve(self, cap: Capture, node: dict[str, Any]) -> str | None:
        """The capture type probe-flow runs for `cap` on `node`; None when the node is skipped (not
        capturable, or another service's type). Raises CaptureTypeError with the reason it cannot run."""
        md = node.get("Metadata", {})
        ctype = capture_type_for_node(str(md.get("Type", "")), cap.Type)
        if ctype is None:
            return None
        if ctype in NOT_IMPLEMENTED:
            raise CaptureTypeError(NOT_IMPLEMENTED[ctype])
        bad = unsupported_options(cap, ctype)
        if bad:  # only with Type "" (query-api refuses such an explicit Type): reported for every service
            raise CaptureTypeError(f"capture type {ctype} (default for node type {md.get('Type')}) does not "
                                   f"support option(s) {', '.join(bad)}")
        if CAPTURE_TYPE_SPECS[ctype].service != "probe-flow":
            return None
        if ctype == "ovsmirror" and MIRROR_KEY in (md.get("ExtID") or {}):
            raise CaptureTypeError("a mirror port of an ovsmirror capture cannot be mirrored itself")
        return ctype

    def evaluate(self) -> Selection:
        """Run every capture's query (and look up pending mirror interfaces) on the graph. Call it on the
        thread that changes the graph (the service's event loop); `apply` does the rest elsewhere."""
        with self._lock:
            captures = list(self.definitions.values())
            pending = [rc.mirror for rc in self.running.values() if rc.mirror and rc.reader is None]
        sel = Selection(captures)
        for cap in captures:
            try:
                sel.nodes[cap.UUID] = self.select_nodes(cap.GremlinQuery)
            except Exception as e:
                msg = f"capture {cap.UUID}: query {cap.GremlinQuery!r} failed: {e}"
                if self.query_errors.get(cap.UUID) != msg:
                    log.warning(msg)
                self.query_errors[cap.UUID] = msg
                continue
            self.query_errors.pop(cap.UUID, None)
        for name in pending:
            try:
                found = [n for n in self.select_nodes(f"G.V().Has('Name', '{name}', 'Type', 'internal')")
                         if self._mine(n)]
            except Exception:
                continue
            if found:
                sel.mirrors[name] = found[0]
        return sel

    def reconcile(self) -> None:
        """Start what the definitions and the graph ask for; stop the rest (evaluate + apply in one go)."""
        self.apply(self.evaluate())

    def apply(self, sel: Selection) -> None:
        """Start, restart and stop captures after `sel` (blocking: threads start, ovs-vsctl runs)."""
        with self._lock:
            self._mirror_nodes = sel.mirrors
            want: dict[tuple[str, str], tuple[Capture, dict[str, Any], str, str]] = {}
            for cap in sel.captures:
                for node in sel.nodes.get(cap.UUID, ()):
                    if not self._mine(node):
                        continue
                    try:
                        ctype = self.resolve(cap, node)
                    except CaptureTypeError as e:
                        want[(cap.UUID, str(node.get("ID", "")))] = (cap, node, "", str(e))
                        continue
                    if ctype is not None:
                        want[(cap.UUID, str(node.get("ID", "")))] = (cap, node, ctype, "")
            for key in [k for k in self.running if k not in want]:
                self._stop(key, "stopped")
            for key in [k for k in self.errors if k not in want]:
                cid, nid = key
                del self.errors[key]
                self.fingerprints.pop(key, None)
                self.on_status(CaptureStatus(host=self.host, node_id=nid, capture_id=cid, state="stopped"))
            for key, (cap, node, ctype, problem) in want.items():
                fp = _fingerprint(cap, node)
                changed = self.fingerprints.get(key) != fp
                rc = self.running.get(key)
                if rc is not None and changed:
                    if self._swap_table(key, rc, cap, node, ctype, fp):
                        continue  # same interface, new node identity: the reader keeps its socket
                    self._stop(key, "stopped")  # definition or interface changed: restart
                    rc = None
                if rc is not None:
                    self._check_running(key, rc)
                    continue
                if key in self.errors and not changed:
                    continue
                self.fingerprints[key] = fp
                self.errors.pop(key, None)
                if not problem and not CAPTURE_TYPE_SPECS[ctype].multiple_per_node:
                    other = next((rc.capture.UUID for rc in self.running.values()
                                  if rc.node_id == key[1] and rc.kind == ctype), None)
                    if other is not None:
                        problem = f"only one {ctype} capture per node: capture {other} runs on this node"
                if problem:
                    self._fail(key, cap, node, problem, ctype)
                else:
                    self._start(key, cap, node, ctype)
            if not self._stale_mirrors_checked:
                self._stale_mirrors_checked = True
                self._remove_stale_mirrors()

    def _remove_stale_mirrors(self) -> None:
        """Remove mirrors a previous run of probe-flow left in OVS (crash, kill): once, at the first apply.
        A capture that still wants one gets it again (creation is idempotent)."""
        keep = {rc.mirror for rc in self.running.values() if rc.mirror}
        try:
            stale = [m for m in self.mirrors.owned() if m not in keep]
            for name in stale:
                self.mirrors.remove(name)
        except MirrorError as e:  # no OVS on this host: nothing to clean
            log.debug("no OVS mirror cleanup: %s", e)
            return
        if stale:
            log.info("removed OVS mirrors left by a previous run: %s", ", ".join(stale))

    def _check_running(self, key: tuple[str, str], rc: RunningCapture) -> None:
        if rc.kind == "ovsmirror" and rc.reader is None:
            self._attach_mirror(key, rc)
            return
        if rc.reader is not None and not rc.reader.running:
            err = rc.reader.error or "capture thread ended"
            self._stop(key, "error", err)
            self.errors[key] = err

    def _mine(self, node: dict[str, Any]) -> bool:
        md = node.get("Metadata", {})
        host = node.get("Host") or md.get("Host")
        return host == self.host and bool(md.get("Name"))

    def _new_table(self, cap: Capture, tid: str) -> FlowTable:
        """The capture's table: packet options (IPDefrag, ReassembleTCP, ExtraLayers) and target (netflowv5,
        erspanv1) applied by `netsonde.flow.targets.table_for_capture`."""
        return table_for_capture(cap, tid, expire_ms=self.expire_ms, max_entries=self.max_entries,
                                 raw_packet_limit=cap.RawPacketLimit, ndpi=cap.NDPI)

    def _fail(self, key: tuple[str, str], cap: Capture, node: dict[str, Any], error: str, ctype: str = "") -> None:
        self.errors[key] = error
        log.warning("capture %s on %s: %s", cap.UUID, node.get("Metadata", {}).get("Name"), error)
        self._status(cap, node, "error", type=ctype or cap.Type, error=error)

    def _start(self, key: tuple[str, str], cap: Capture, node: dict[str, Any], ctype: str) -> None:
        md = node.get("Metadata", {})
        tid = str(md.get("TID") or node.get("ID", ""))
        try:
            if ctype == "ovsmirror":
                mirror = mirror_port_name(cap.UUID, str(md.get("UUID", node.get("ID"))))
                self.mirrors.create(str(md["Name"]), mirror, cap.UUID)
                rc = RunningCapture(cap, node, ctype, None, None, mirror=mirror)
                self.running[key] = rc
                log.info("capture %s: OVS mirror %s of port %s created", cap.UUID, mirror, md.get("Name"))
                self._status(cap, node, "active", type=ctype)
                self._attach_mirror(key, rc)
                return
            table = self._new_table(cap, tid)
            reader: BaseCapture
            if ctype == "pcapsocket":
                reader = PcapSocketCapture(str(md["Name"]), table, cap.BPFFilter, cap.HeaderSize,
                                           address=self.pcapsocket_address)
            elif ctype == "ebpf":  # a TC program counts in the kernel; the thread reads its map (ebpfcapture.py)
                reader = EbpfCapture(str(md["Name"]), table, node_netns(node), drop_reasons=cap.DropReasons)
            elif ctype == "sflow":  # a UDP listener for an external sFlow agent (sflowsocket.py)
                reader = SFlowSocketCapture(str(md["Name"]), table, node_netns(node), listen_address(node), cap.Port)
            else:
                kw: dict[str, Any] = {}
                if ctype == "afpacket":
                    kw = {"block_size": self.ring_block_size, "block_nr": self.ring_blocks}
                reader = PACKET_READERS[ctype](md["Name"], table, node_netns(node), cap.BPFFilter,
                                               cap.HeaderSize or 256, **kw)
            reader.start()
        except (CaptureError, MirrorError, RuntimeError, ValueError) as e:  # ValueError/RuntimeError: table
            self._fail(key, cap, node, str(e), ctype)
            return
        if isinstance(reader, SFlowSocketCapture):  # its samples reach the table through the sFlow code
            table = reader.flows  # type: ignore[assignment]
        self.running[key] = RunningCapture(cap, node, ctype, table, reader)
        log.info("capture %s started on %s", cap.UUID, md.get("Name"),
                 extra={"capture": cap.UUID, "node": node.get("ID"), "type": ctype})
        self._status_of(self.running[key])

    def _attach_mirror(self, key: tuple[str, str], rc: RunningCapture) -> None:
        """Start afpacket on the mirror interface once the topology shows it (it carries the flows' TID)."""
        mnode = self._mirror_nodes.get(rc.mirror)
        if mnode is None or not mnode.get("Metadata", {}).get("IfIndex"):
            return  # not in the graph yet, or only from OVSDB (the kernel interface is not there yet)
        mmd = mnode.get("Metadata", {})
        try:
            _link_up(rc.mirror)
            table = self._new_table(rc.capture, str(mmd.get("TID") or mnode.get("ID", "")))
            reader = PACKET_READERS["afpacket"](rc.mirror, table, node_netns(mnode), rc.capture.BPFFilter,
                                                rc.capture.HeaderSize or 256, block_size=self.ring_block_size,
                                                block_nr=self.ring_blocks)
            reader.start()
        except (CaptureError, OSError, RuntimeError, ValueError) as e:
            # the mirror stays; the next reconcile tries again (the interface may still be settling)
            if rc.attach_error != str(e):
                log.warning("capture %s: mirror interface %s not captured yet: %s", rc.capture.UUID, rc.mirror, e)
                rc.attach_error = str(e)
                self._status_of(rc)
            return
        rc.table, rc.reader, rc.mirror_node = table, reader, mnode
        log.info("capture %s: capturing mirror %s of %s", rc.capture.UUID, rc.mirror,
                 rc.node.get("Metadata", {}).get("Name"))
        self._status_of(rc)

    def _swap_table(self, key: tuple[str, str], rc: RunningCapture, cap: Capture, node: dict[str, Any], ctype: str,
                    fp: tuple[Any, ...]) -> bool:
        """Restart in place when only the node's identity changed (TID, UUID) and the interface is the same
        (name, namespace, IfIndex): the afpacket / pcap reader keeps its socket and counts into a new table
        (with the new TID), the old table is flushed. Closing the socket and opening a new one would lose
        the packets in between (tens of ms: the new ring is allocated). False: restart as usual."""
        old = self.fingerprints.get(key)
        if (rc.kind not in SWAPPABLE or ctype != rc.kind or rc.reader is None or not rc.reader.running
                or old is None or old[:4] != fp[:4] or _ifindex(rc.node) != _ifindex(node)):
            return False
        md = node.get("Metadata", {})
        try:
            table = self._new_table(cap, str(md.get("TID") or node.get("ID", "")))
        except (RuntimeError, ValueError):
            return False
        previous = rc.reader.swap_table(table)
        self.pending_flows.extend(previous.flush())
        add_into(self.retired, table_counters(previous))
        rc.table, rc.node = table, node
        self.fingerprints[key] = fp
        log.info("capture %s on %s: node identity changed, new table (TID %s)", cap.UUID, md.get("Name"),
                 md.get("TID"))
        self._status_of(rc)
        return True

    def _stop(self, key: tuple[str, str], state: str, error: str = "") -> None:
        rc = self.running.pop(key)
        log.info("capture %s stopped on %s (%s)", rc.capture.UUID, rc.node.get("Metadata", {}).get("Name"),
                 error or state)
        self.fingerprints.pop(key, None)
        if rc.reader is not None:
            rc.reader.stop()
            with rc.reader.lock:
                assert rc.table is not None
                self.pending_flows.extend(rc.table.flush())
                add_into(self.retired, table_counters(rc.table))
            add_into(self.retired, reader_counters(rc.reader))
        if rc.mirror:
            try:
                self.mirrors.remove(rc.mirror)
            except MirrorError as e:
                log.warning("capture %s: could not remove OVS mirror %s: %s", rc.capture.UUID, rc.mirror, e)
                error = error or f"mirror {rc.mirror} not removed: {e}"
        received = rc.reader.packets_received if rc.reader else 0
        dropped = rc.reader.packets_dropped if rc.reader else 0
        self._status(rc.capture, rc.node, state, type=rc.kind, error=error, received=received, dropped=dropped)
        if rc.mirror_node is not None:
            self._status(rc.capture, rc.mirror_node, "stopped", type=rc.kind)

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
                if rc.reader is not None and rc.table is not None:
                    with rc.reader.lock:
                        out.extend(rc.table.updates(now_ms))
            return out

    def counter_totals(self) -> Counters:
        """Everything this host's captures counted: the running ones plus `retired` (never goes down)."""
        with self._lock:
            total = dict(self.retired)
            for rc in self.running.values():
                if rc.reader is not None and rc.table is not None:
                    with rc.reader.lock:
                        add_into(total, table_counters(rc.table))
                    add_into(total, reader_counters(rc.reader))
            return total

    def statuses(self) -> list[CaptureStatus]:
        """The state of every (capture, node) of this host (sent every 10 s, so graph-builder re-learns it)."""
        with self._lock:
            out: list[CaptureStatus] = []
            for rc in self.running.values():
                out.extend(self._make_statuses(rc))
            for (cid, nid), err in self.errors.items():
                cap = self.definitions.get(cid)
                out.append(CaptureStatus(host=self.host, node_id=nid, capture_id=cid, state="error", error=err,
                                         type=cap.Type if cap else ""))
            return out

    def _status_of(self, rc: RunningCapture) -> None:
        for s in self._make_statuses(rc):
            self.on_status(s)

    def _make_statuses(self, rc: RunningCapture) -> list[CaptureStatus]:
        r = rc.reader
        received, dropped = (r.packets_received, r.packets_dropped) if r is not None else (0, 0)
        sock = r.pcap_socket if isinstance(r, PcapSocketCapture) else ""
        if r is None and rc.attach_error:  # ovsmirror whose mirror interface cannot be captured (yet)
            return [CaptureStatus(host=self.host, node_id=rc.node_id, capture_id=rc.capture.UUID, state="error",
                                  type=rc.kind, error=f"mirror interface {rc.mirror}: {rc.attach_error}")]
        out = [CaptureStatus(host=self.host, node_id=rc.node_id, capture_id=rc.capture.UUID, state="active",
                             type=rc.kind, packets_received=received, packets_dropped=dropped, pcap_socket=sock,
                             sflow_socket=r.sflow_socket if isinstance(r, SFlowSocketCapture) else "")]
        if rc.mirror_node is not None:
            out.append(CaptureStatus(host=self.host, node_id=str(rc.mirror_node.get("ID", "")),
                                     capture_id=rc.capture.UUID, state="active", type=rc.kind,
                                     packets_received=received, packets_dropped=dropped, mirror_of=rc.node_id))
        return out

    def _status(self, cap: Capture, node: dict[str, Any], state: str, type: str = "", error: str = "",
                received: int = 0, dropped: int = 0) -> None:
        self.on_status(CaptureStatus(host=self.host, node_id=str(node.get("ID", "")), capture_id=cap.UUID,
                                     state=state, type=type, error=error, packets_received=received,
                                     packets_dropped=dropped))


SWAPPABLE = ("afpacket", "pcap")
"""Capture types whose reader can count into a new table without closing its socket (`swap_table`)."""


def _ifindex(node: dict[str, Any]) -> Any:
    return node.get("Metadata", {}).get("IfIndex")


def _link_up(ifname: str) -> None:
    """Bring the mirror's internal port up (OVS creates it down), in the probe's namespace."""
    p = subprocess.run(["ip", "link", "set", "dev", ifname, "up"], capture_output=True, text=True, timeout=10)
    if p.returncode != 0:
        raise OSError(f"ip link set {ifname} up: {p.stderr.strip()}")
