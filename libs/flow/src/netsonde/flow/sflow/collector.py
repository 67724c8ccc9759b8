"""The collector's core, without I/O: datagrams in, flow updates and interface counters out.

`SFlowCollector.feed(datagram, sender, ts_ms)` validates a datagram and folds its flow samples into a batch
(C scanner, `_fastsflow.scan`, into a `SampleFold`: one row per distinct key with its sample count and the
times of its first and last sample; `fold.py` is its readable reference); `feed_socket` does the same for all
datagrams waiting on a socket. `process(ts_ms)` runs the batch through the flow logic of probe-flow
(`netsonde.flow.table.FlowTable`), scaling packets and bytes by the sampling rate; flows' Start/Last are the
feed times (`ts_ms`) of their samples. Flows are keyed as Skydive
keys them: one table per capture node (the OVS bridge a sample's input port belongs to, or the node of an
`sflow` capture), so both directions of a conversation on one bridge are one flow (ABPackets and BAPackets);
`updates(now_ms)` returns the flows touched since the previous call,
marked with `SamplingRate`; `counters(now_ms)` returns the interface counters of the counter samples.

Bytes of a sampled frame are its wire length without the FCS (`frame_length - stripped`), which is what an
AF_PACKET capture of the same frame counts, so the two kinds of capture agree.
"""

from __future__ import annotations

import ipaddress
import logging
import struct
import uuid
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Callable

from netsonde.common.bus.flows import Flow
from netsonde.common.bus.metrics import ETHERNET_COUNTERS, SFLOW_COUNTERS, InterfaceMetrics
from netsonde.common.logs import OnceLogger
from netsonde.common.native import slow_path_allowed
from netsonde.flow.table import FlowTable

from .decode import (
    CounterSample, EthernetInterfaceCounters, GenericInterfaceCounters, OpenFlowPort, PortName, SFlowDecodeError,
    decode_datagram,
)
from .fold import SampleFold

try:
    from ._fastsflow import SampleFold as _CSampleFold
    from ._fastsflow import recv_scan as _recv_scan
    from ._fastsflow import scan as _scan
except ImportError as _exc:  # not built: an error, unless NETSONDE_ALLOW_SLOW_PATH=1 allows the Python path
    slow_path_allowed("netsonde.flow.sflow._fastsflow", _exc)
    _scan = _recv_scan = _CSampleFold = None

log = logging.getLogger(__name__)

__all__ = ["PortInfo", "AgentStats", "SFlowCollector", "fallback_tid", "scan_available", "recv_available"]

scan_available = _scan is not None
recv_available = _recv_scan is not None
MAX_SENDERS = 10_000
"""Distinct sender addresses with their own stats; more are counted together as "other"."""
MAX_FOLD_KEYS = 200_000
"""Distinct sample keys held before the flow tables run (`process`): a flood of distinct samples is bounded."""
_SEQ = struct.Struct(">II")


@dataclass(frozen=True)
class PortInfo:
    """What the collector knows about the port behind an (agent, ifIndex)."""

    node_tid: str
    """TID of the capture node the port's samples are accounted to: the OVS bridge (flows' NodeTID)."""
    capture_id: str = ""
    name: str = ""
    bridge: str = ""
    of_port: int = -1
    port_tid: str = ""
    """TID of the port's own node (`ovsport`): its counter samples (per-port counters) are reported on it."""


Resolver = Callable[[str, int], "PortInfo | None"]


@lru_cache(maxsize=4096)
def fallback_tid(agent: str) -> str:
    """NodeTID of the samples of an agent none of whose ports is known (one table per agent, as Skydive keeps
    one table per agent socket): stable, but matches no graph node."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"sflow/{agent}"))


@dataclass
class AgentStats:
    """Counters of one sender (keyed by the UDP source address: a bad datagram's agent field is untrusted)."""

    datagrams: int = 0
    flow_samples: int = 0
    counter_samples: int = 0
    errors: dict[str, int] = field(default_factory=dict)
    """Dropped datagrams by reason (decode.REASONS)."""
    lost: int = 0
    """Datagrams missing from the agents' sequence numbers (lost on the way, or dropped at the socket)."""


class SFlowCollector:
    """See the module docstring. Not thread-safe; one per receiving task."""

    def __init__(self, resolve: Resolver | None = None, *, layer_key_mode: str = "L2",
                 expire_ms: int = 600_000, max_entries: int = 500_000, max_tables: int = 4096) -> None:
        self.resolve = resolve or (lambda agent, if_index: None)
        self.layer_key_mode = layer_key_mode
        self.expire_ms = expire_ms
        self.max_entries = max_entries
        self.max_tables = max_tables
        """Most flow tables (capture nodes x captures); samples for more are dropped and counted."""
        self.samples_dropped = 0
        """Sample aggregates dropped because `max_tables` was reached."""
        self.stats: dict[str, AgentStats] = {}
        self.tables: dict[tuple[str, str], FlowTable] = {}
        """(NodeTID, capture ID) -> table: one per bridge and capture."""
        self._rates: dict[int, int] = {}
        """id(table) -> last sampling rate seen."""
        self._fold: SampleFold = _CSampleFold() if _scan is not None else SampleFold()
        """Samples folded per key since the last `process` (C: `_fastsflow.SampleFold`; reference: fold.py)."""
        self._agents: dict[bytes, str] = {}
        self._counter_state: dict[tuple[str, int], tuple[dict[str, int], int]] = {}
        self._counters: list[InterfaceMetrics] = []
        self._once = OnceLogger(log)
        self._seqs: dict[tuple[bytes, bytes, int], int] = {}
        """(packed sender, packed agent, sub-agent) -> last sequence number (shared with the C path)."""
        self._senders: dict[bytes, str] = {}
        self._packed_senders: dict[str, bytes] = {}
        self.unresolved = 0
        """Flow-sample aggregates whose (agent, ifIndex) resolved to no port."""

    # --- in -------------------------------------------------------------------------------------------
    def feed(self, data: bytes, sender: str = "", ts_ms: int = 0) -> bool:
        """Take one datagram. Returns False (and counts it for `sender`) when it is malformed."""
        if _scan is not None:
            reason, nflow, ncounter, agent = _scan(data, self._fold, ts_ms * 1_000_000)
        else:
            reason, nflow, ncounter, agent = self._scan_python(data, ts_ms * 1_000_000)
        sub = seq = 0
        if reason is None:
            sub, seq = _SEQ.unpack_from(data, 8 + len(agent))
        ok = self._account(sender, reason, nflow, ncounter, agent, sub, seq, data, ts_ms)
        if len(self._fold) >= MAX_FOLD_KEYS:
            self.process(ts_ms)
        return ok

    def feed_socket(self, fd: int, ts_ms: int, max_datagrams: int = 512) -> int:
        """Read up to `max_datagrams` waiting on a non-blocking UDP socket and take them all; returns how many
        were read. recvmmsg, scanning and the per-datagram bookkeeping (counts, sequence gaps) run in C; Python
        only sees one row per run of datagrams from one agent, plus bad and counter-carrying datagrams.
        Only with the C extension (`recv_available`)."""
        received, groups, bad, counters = _recv_scan(fd, self._fold, max_datagrams, self._seqs, ts_ms * 1_000_000,
                                                     MAX_FOLD_KEYS)
        for sender_b, datagrams, nflow, ncounter, lost in groups:
            st = self._stats_for(self._sender(sender_b))
            st.datagrams += datagrams
            st.flow_samples += nflow
            st.counter_samples += ncounter
            st.lost += lost
        for sender_b, reason in bad:
            self._bad(self._sender(sender_b), reason)
        for _sender_b, data in counters:
            self._take_counters(data, ts_ms)
        if len(self._fold) >= MAX_FOLD_KEYS:
            self.process(ts_ms)
        return int(received)

    def _sender(self, raw: bytes) -> str:
        sender = self._senders.get(raw)
        if sender is None:
            sender = _sender_text(raw)
            if len(self._senders) < MAX_SENDERS:
                self._senders[raw] = sender
        return sender

    def _packed(self, sender: str) -> bytes:
        raw = self._packed_senders.get(sender)
        if raw is None:
            try:
                raw = ipaddress.ip_address(sender).packed
            except ValueError:
                raw = sender.encode()
            if len(self._packed_senders) < MAX_SENDERS:
                self._packed_senders[sender] = raw
        return raw

    def _stats_for(self, sender: str) -> AgentStats:
        st = self.stats.get(sender)
        if st is None:
            if len(self.stats) >= MAX_SENDERS:  # spoofed sources must not grow memory without bound
                sender = "other"
                st = self.stats.get(sender)
            if st is None:
                st = self.stats[sender] = AgentStats()
        return st

    def _bad(self, sender: str, reason: str) -> None:
        st = self._stats_for(sender)
        st.datagrams += 1
        st.errors[reason] = st.errors.get(reason, 0) + 1
        self._once.warning(f"sflow-{reason}", f"dropped a malformed sFlow datagram from {sender}: {reason}",
                           sender=sender, reason=reason)

    def _account(self, sender: str, reason: str | None, nflow: int, ncounter: int, agent: bytes, sub: int,
                 seq: int, data: bytes | None, ts_ms: int) -> bool:
        if reason is not None:
            self._bad(sender, reason)
            return False
        st = self._stats_for(sender)
        st.datagrams += 1
        st.flow_samples += nflow
        key = (self._packed(sender), agent, sub)  # the same keys as the C path (recv_scan)
        last = self._seqs.get(key)
        if last is not None and 0 < seq - last - 1 < 1_000_000:  # a gap; a restart or reordering is no loss
            st.lost += seq - last - 1
        if last is None or seq > last or last - seq > 1_000_000:
            if last is None and len(self._seqs) >= MAX_SENDERS:
                self._seqs.clear()
            self._seqs[key] = seq
        if ncounter and data is not None:
            st.counter_samples += ncounter
            self._take_counters(data, ts_ms)
        return True

    def _scan_python(self, data: bytes, ts_ns: int) -> tuple[str | None, int, int, bytes]:
        """Fallback without the C extension: decode fully and fold the samples keyed by their whole header."""
        try:
            dg = decode_datagram(data)
        except SFlowDecodeError as e:
            return e.reason, 0, 0, b""
        from .decode import FlowSample, RawPacketHeader
        agent_b = ipaddress.ip_address(dg.agent).packed if dg.agent else b""
        nflow = ncounter = 0
        for s in dg.samples:
            if isinstance(s, FlowSample):
                nflow += 1
                for r in s.records:
                    if isinstance(r, RawPacketHeader) and r.protocol in (1, 11, 12):
                        key = b"py" + bytes([r.protocol]) + agent_b + repr((
                            s.source_id_type, s.source_id_index, s.input_format, s.input, s.output_format,
                            s.output, s.sampling_rate, r.frame_length, r.stripped)).encode() + r.header
                        self._fold.add(key, r.header, s.sampling_rate, r.frame_length, s.input, s.output, agent_b,
                                       s.source_id_index, r.stripped, r.protocol, ts_ns)
                        break
            elif isinstance(s, CounterSample):
                ncounter += 1
        return None, nflow, ncounter, agent_b

    def _agent(self, raw: bytes) -> str:
        a = self._agents.get(raw)
        if a is None:
            a = self._agents[raw] = str(ipaddress.ip_address(raw)) if len(raw) in (4, 16) else ""
        return a

    # --- flows ----------------------------------------------------------------------------------------
    def process(self, ts_ms: int) -> int:
        """Run the pending batch through the flow tables; returns the number of aggregates processed.
        Samples fed without a time (ts_ms 0) count as seen at `ts_ms`."""
        if not len(self._fold):
            return 0
        rows = self._fold.drain()
        ts_ns = ts_ms * 1_000_000
        per_table: dict[int, tuple[FlowTable, list[tuple[bytes, bytes, int, int, int, int]]]] = {}
        resolved: dict[tuple[bytes, int, int], FlowTable | None] = {}
        for key, n, header, rate, frame_len, in_if, out_if, agent_b, _src, stripped, proto, t0, t1 in rows:
            try:
                table = resolved[(agent_b, in_if, out_if)]
            except KeyError:
                table = resolved[(agent_b, in_if, out_if)] = self._table(self._agent(agent_b), in_if, out_if)
            if table is None:
                self.samples_dropped += n
                continue
            rate = rate or 1
            wire_len = max(frame_len - stripped, len(header))  # without the FCS, as AF_PACKET counts
            packets = n * rate
            self._rates[id(table)] = rate
            if not t0:
                t0 = t1 = ts_ns
            if proto != 1:  # a raw IPv4/IPv6 header (routers): no link layer
                for _ in range(n):  # IP headers are keyed whole: n is almost always 1
                    table.process_ip_packet(header, t1 // 1_000_000, wire_len, rate)
                continue
            item = per_table.get(id(table))
            if item is None:
                item = per_table[id(table)] = (table, [])
            item[1].append((key, header, packets, packets * wire_len, t0, t1))
        for table, items in per_table.values():
            _process(table, items)
        return len(rows)

    def _table(self, agent: str, in_if: int, out_if: int) -> FlowTable | None:
        """The table of the bridge the sample's input port belongs to (or, when the input is unknown, e.g. a
        patch port without a Linux ifIndex, the bridge of its single output port)."""
        info = self.resolve(agent, in_if)
        if info is None and 0 < out_if < 0x40000000:  # format 0: a single output port
            info = self.resolve(agent, out_if)
        if info is None:
            self.unresolved += 1
            tid, capture = fallback_tid(agent), ""
        else:
            tid, capture = info.node_tid, info.capture_id
        table = self.tables.get((tid, capture))
        if table is None:
            if len(self.tables) >= self.max_tables:
                self._once.warning("sflow-tables", f"more than {self.max_tables} flow tables: samples dropped")
                return None
            table = self.tables[(tid, capture)] = FlowTable(
                tid, capture, self.layer_key_mode, expire_ms=self.expire_ms, max_entries=self.max_entries)
        return table

    def updates(self, now_ms: int) -> list[Flow]:
        """Flows touched since the previous call (and expired ones), scaled and marked as sampled."""
        out: list[Flow] = []
        for table in list(self.tables.values()):
            flows = table.updates(now_ms)
            rate = self._rates.get(id(table), 1)
            for f in flows:
                f.SamplingRate = f.SamplingRate or rate
            out.extend(flows)
        return out

    def snapshot(self) -> list[Flow]:
        out: list[Flow] = []
        for table in self.tables.values():
            rate = self._rates.get(id(table), 1)
            for f in table.snapshot():
                f.SamplingRate = f.SamplingRate or rate
                out.append(f)
        return out

    def drop_capture(self, capture_id: str) -> list[Flow]:
        """Flush and forget the tables of a capture (capture deleted)."""
        out: list[Flow] = []
        for key in [k for k in self.tables if k[1] == capture_id]:
            table = self.tables.pop(key)
            rate = self._rates.pop(id(table), 1)
            for f in table.flush():
                f.SamplingRate = f.SamplingRate or rate
                out.append(f)
        return out

    # --- counters -------------------------------------------------------------------------------------
    def _take_counters(self, data: bytes, ts_ms: int) -> None:
        try:
            dg = decode_datagram(data)
        except SFlowDecodeError:  # the scanner accepted it: the two decoders must agree
            self._once.warning("sflow-disagree", "reference decoder rejected a datagram the scanner accepted")
            return
        for s in dg.samples:
            if not isinstance(s, CounterSample):
                continue
            generic = ether = None
            of_port, name = -1, ""
            for r in s.records:
                if isinstance(r, GenericInterfaceCounters):
                    generic = r
                elif isinstance(r, EthernetInterfaceCounters):
                    ether = r
                elif isinstance(r, OpenFlowPort):
                    of_port = r.port_no
                elif isinstance(r, PortName):
                    name = r.name
            if generic is None:
                continue
            values = dict(zip(SFLOW_COUNTERS, (
                generic.in_octets, generic.in_ucast_pkts, generic.in_multicast_pkts, generic.in_broadcast_pkts,
                generic.in_discards, generic.in_errors, generic.in_unknown_protos, generic.out_octets,
                generic.out_ucast_pkts, generic.out_multicast_pkts, generic.out_broadcast_pkts,
                generic.out_discards, generic.out_errors)))
            if ether is not None:
                values.update(zip(ETHERNET_COUNTERS, (
                    ether.alignment_errors, ether.fcs_errors, ether.single_collision_frames,
                    ether.multiple_collision_frames, ether.sqe_test_errors, ether.deferred_transmissions,
                    ether.late_collisions, ether.excessive_collisions, ether.internal_mac_transmit_errors,
                    ether.carrier_sense_errors, ether.frame_too_longs, ether.internal_mac_receive_errors,
                    ether.symbol_errors)))
            # 0xFFFFFFFF is "unknown" for 32-bit counters in sFlow: report it as absent
            values = {k: v for k, v in values.items() if v != 0xFFFFFFFF and v != 0xFFFFFFFFFFFFFFFF}
            ifx = generic.if_index
            info = self.resolve(dg.agent, ifx)
            prev = self._counter_state.get((dg.agent, ifx))
            delta: dict[str, int] = {}
            if prev is not None:
                pvals, pts = prev
                for k, v in values.items():
                    if k in pvals:
                        d = v - pvals[k]
                        delta[k] = d if d >= 0 else v  # counter wrap or reset: count from zero
                delta["Start"] = pts
                delta["Last"] = ts_ms
            self._counter_state[(dg.agent, ifx)] = (values, ts_ms)
            self._counters.append(InterfaceMetrics(
                Key="SFlow", Metric=values, LastUpdateMetric=delta, Last=ts_ms,
                NodeTID=(info.port_tid or info.node_tid) if info else "", IfIndex=ifx,
                Name=name or (info.name if info else ""),
                OfPort=of_port if of_port >= 0 else (info.of_port if info else -1), Agent=dg.agent,
                IfSpeed=generic.if_speed, IfStatus=generic.if_status))

    def counters(self) -> list[InterfaceMetrics]:
        """Interface counters taken since the previous call."""
        out, self._counters = self._counters, []
        return out


def _sender_text(raw: bytes) -> str:
    if len(raw) == 16 and raw[:12] == b"\0" * 10 + b"\xff\xff":  # IPv4-mapped (dual-stack socket)
        raw = raw[12:]
    try:
        return str(ipaddress.ip_address(raw))
    except ValueError:
        return ""


def _process(table: FlowTable, items: list[tuple[bytes, bytes, int, int, int, int]]) -> None:
    pa = getattr(table, "process_aggregates", None)
    if pa is not None:
        pa(items)
        return
    for _key, header, packets, nbytes, t0, _t1 in items:  # pragma: no cover - older FlowTable
        table.process_frame(header, t0 // 1_000_000, nbytes // packets, packets)
