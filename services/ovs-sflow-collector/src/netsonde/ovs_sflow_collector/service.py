"""The collector process: UDP socket -> SFlowCollector -> JetStream (flows) and core NATS (counters).

Hot path: the socket is read in the event loop, up to 2048 datagrams per wake-up with recvmmsg and the C scanner
(`SFlowCollector.feed_socket`, samples folded per key in C); while datagrams keep coming it is read every
`read_coalesce_s` on a timer (so each wake-up finds many datagrams), and back in epoll once it is found empty;
the flow tables run every `process_interval_s` or every
`process_datagrams` datagrams; flow updates are published every `update_interval_s` as FlowUpdateBatch
messages with a `Nats-Msg-Id` (= batch_id) so a retried publish is not stored twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import socket
import time
from typing import Any

from netsonde.common import natsconn
from netsonde.common.bus import Subjects, encode
from netsonde.common.bus.captures import Capture, CaptureStatus
from netsonde.common.bus.flows import Flow, FlowUpdateBatch
from netsonde.common.bus.metrics import InterfaceMetricsBatch
from netsonde.common.bus.streams import ensure_flow_stream, open_capture_bucket
from netsonde.common.dropreport import report_drops
from netsonde.common.capture_types import nodes_in_result
from netsonde.common.logs import OnceLogger
from netsonde.common.replica import GraphReplica
from netsonde.common.service import Service
from netsonde.gremlin import GremlinEngine

from .captures import CaptureController
from .collector import PortInfo, SFlowCollector, recv_available
from .config import SFlowCollectorConfig
from .ovs import OvsError, Vsctl, bridge_node_id

log = logging.getLogger(__name__)

READS_PER_WAKEUP = 2048
READ_BATCH = 1024
"""Datagrams a timed read aims at: enough to spread the wake-up's cost, few enough (~2.3 MB of socket buffer)
that the kernel's copy still finds them in the CPU cache (measured: 1.24-1.31 vs 1.30-1.37 us per datagram
flat out, and no drops under load where waiting the full read_coalesce_s dropped)."""


class SFlowCollectorService(Service):
    name = "sflow-collector"

    def __init__(self, config: SFlowCollectorConfig) -> None:
        super().__init__(config)
        self.cfg = config
        self.subjects = Subjects(config.subject_prefix)
        self.ports: dict[int, PortInfo] = {}
        self._local_agents: dict[str, bool] = {}
        self.collector = SFlowCollector(self._resolve, layer_key_mode=config.layer_key_mode,
                                        expire_ms=int(config.expire_s * 1000))
        self.sock: socket.socket | None = None
        self.port = 0
        self.nc: Any = None
        self.js: Any = None
        self.controller: CaptureController | None = None
        self._pending = 0
        self._last_read = 0.0
        self._read_timer: asyncio.Handle | None = None
        self._rcvbuf_datagrams = 0.0
        self._boot = int(time.time() * 1000)
        self._seq = 0
        self._reconcile_now = asyncio.Event()
        self._once_query = OnceLogger(log)
        self.replica: GraphReplica | None = None
        self.engine: GremlinEngine | None = None
        self._active: dict[tuple[str, str], str] = {}
        """(bridge node ID, capture ID) -> bridge name, as last reported on the capture status subject."""
        self._status_sent = 0.0
        self._exported: dict[tuple[str, str], int] = {}
        m = self.metrics
        self.m_datagrams = m.counter("datagrams_total", "sFlow datagrams received", ["sender"])
        self.m_dropped = m.counter("datagrams_dropped_total", "Malformed datagrams dropped", ["sender", "reason"])
        self.m_flow_samples = m.counter("flow_samples_total", "Flow samples decoded", ["sender"])
        self.m_counter_samples = m.counter("counter_samples_total", "Counter samples decoded", ["sender"])
        self.m_lost = m.counter("datagrams_lost_total", "Gaps in the agents' datagram sequence numbers", ["sender"])
        self.m_flows = m.counter("flow_updates_published_total", "Flow updates published on the stream")
        self.m_batches = m.counter("batches_published_total", "FlowUpdateBatch messages published")
        self.m_publish_errors = m.counter("publish_errors_total", "Publishes that failed", ["kind"])
        self.m_metrics = m.counter("interface_metrics_published_total", "Interface counter reports published")
        self.m_socket_drops = m.gauge("socket_drops", "Datagrams the kernel dropped at the socket (queue full)")
        self.m_tables = m.gauge("flow_tables", "Flow tables (one per bridge and capture)")
        self.m_ovs_errors = m.counter("ovs_errors_total", "Failed OVS reconciliations")

    # --- resolution -----------------------------------------------------------------------------------
    def _resolve(self, agent: str, if_index: int) -> PortInfo | None:
        """Local OVS ports by Linux ifIndex, for agents whose address is one of this host's."""
        if not self.ports:
            return None
        local = self._local_agents.get(agent)
        if local is None:
            local = self._local_agents[agent] = _is_local_address(agent)
        return self.ports.get(if_index) if local else None

    # --- lifecycle ------------------------------------------------------------------------------------
    async def on_start(self) -> None:
        self.nc = await natsconn.connect(self.cfg.nats_url, f"sflow-collector@{self.cfg.host_id}", config=self.cfg)
        self.js = self.nc.jetstream()
        if self.cfg.create_stream:
            await ensure_flow_stream(self.js, self.subjects)
        self.sock = _open_socket(self.cfg.listen_host, self.cfg.listen_port, self.cfg.rcvbuf_bytes)
        self.port = self.sock.getsockname()[1]
        # what the kernel granted (it may cap rcvbuf_bytes), in datagrams of the size OVS sends (~1.3 kB; the
        # kernel charges ~2x a datagram's size to the buffer)
        self._rcvbuf_datagrams = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) / 4096
        self.instance = self.cfg.instance or str(self.port)
        asyncio.get_running_loop().add_reader(self.sock.fileno(), self._on_readable)
        self.spawn(self._ticker(), "sflow-ticker")
        drops = {"sflow_sequence_gaps": "datagrams_lost_total", "sflow_malformed": "datagrams_dropped_total",
                 "socket_drops": "socket_drops", "publish_failures": "publish_errors_total",
                 "rejects": "bad_messages_total"}
        self.spawn(report_drops(self.nc, self.subjects, self.name, self.cfg.host_id, self.metrics.registry,
                                self.metrics.prefix, drops, self.cfg.status_interval_s), "drop-counters")
        if self.cfg.manage_ovs:
            target = self.cfg.ovs_target or f"127.0.0.1:{self.port}"
            self.replica = GraphReplica(self.nc, self.subjects, bad_messages=self.metrics.bad_messages)
            self.replica.listeners.append(self._on_graph_events)
            await self.replica.start(wait=False)
            self.engine = GremlinEngine(self.replica.graph)
            self.controller = CaptureController(Vsctl(self.cfg.ovs_db), self.cfg.host_id, target,
                                                self.cfg.ovs_agent, self.cfg.ovs_header_bytes)
            self.spawn(self._watch_captures(), "sflow-captures")
            self.spawn(self._reconciler(), "sflow-ovs")
        log.info("sflow collector listening", extra={"port": self.port, "host": self.cfg.listen_host})

    def _on_graph_events(self, events: list[Any]) -> None:
        """A bridge appeared or went away: reconcile now (metadata updates, e.g. counters, do not count)."""
        if any(ev.type in ("NodeAdded", "NodeDeleted") and ev.obj.Metadata.get("Type") == "ovsbridge"
               for ev in events):
            self._reconcile_now.set()

    def select_bridges(self, query: str) -> list[str] | None:
        """The OVS bridges of this host a capture's GremlinQuery selects (None until the graph is synced).
        Runs on the event loop, where the replica is not changing under the query."""
        if self.replica is None or self.engine is None or not self.replica.synced.is_set():
            return None
        try:
            result = self.engine.execute(query)
        except Exception as exc:  # a bad query selects nothing; logged once per query
            self._once_query.warning(query, f"capture query {query!r}: {exc}")
            return []
        return [n["Metadata"].get("Name", "") for n in nodes_in_result(result)  # also paths, SubGraph()
                if n.get("Metadata", {}).get("Type") == "ovsbridge" and n.get("Host") == self.cfg.host_id]

    async def on_stop(self) -> None:
        if self.replica is not None:
            await self.replica.stop()
        if self._read_timer is not None:
            self._read_timer.cancel()
        if self.sock is not None:
            with contextlib.suppress(Exception):
                asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self._drain_socket()
        self._process()
        with contextlib.suppress(Exception):
            await self._publish_flows(self.collector.updates(_now_ms()))
            await self._publish_counters()
        if self.sock is not None:
            self.sock.close()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self.nc.drain(), 5)
            with contextlib.suppress(Exception):
                await self.nc.close()

    def health(self) -> dict[str, Any]:
        stats = self.collector.stats
        return {
            "udp_port": self.port,
            "datagrams": sum(s.datagrams for s in stats.values()),
            "flow_samples": sum(s.flow_samples for s in stats.values()),
            "dropped": {k: dict(s.errors) for k, s in stats.items() if s.errors},
            "lost": {k: s.lost for k, s in stats.items() if s.lost},
            "socket_drops": self.socket_drops(),
            "flow_tables": len(self.collector.tables),
            "samples_dropped": self.collector.samples_dropped,
            "ovs_bridges": sorted({p.bridge for p in self.ports.values() if p.capture_id}),
        }

    # --- hot path -------------------------------------------------------------------------------------
    # While datagrams keep coming, the socket is read on a timer (every read_coalesce_s, so that one read takes
    # many datagrams: the per-wake-up cost of the event loop is paid ~20 times a second, not per datagram)
    # and is out of epoll; the first empty read puts it back in epoll, so an idle collector never wakes up.
    def _on_readable(self) -> None:
        if self.cfg.read_coalesce_s > 0 and self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self._last_read = 0.0
        self._read_and_wait()

    def _read_and_wait(self) -> None:
        t = time.monotonic()
        n = 0
        try:
            n = self._drain_socket()
            if self._pending >= self.cfg.process_datagrams:
                self._process()
        finally:  # whatever happened, the socket is read again (an error is logged by the event loop)
            self._schedule_read(n, t)

    def _schedule_read(self, n: int, t: float) -> None:
        if self.cfg.read_coalesce_s <= 0 or self.sock is None or self.stopping:
            return
        loop = asyncio.get_running_loop()
        if n == 0:  # quiet: wait in epoll
            self._read_timer = None
            loop.add_reader(self.sock.fileno(), self._on_readable)
        elif n >= READS_PER_WAKEUP:  # more may be waiting: read on as soon as the loop has run its other work
            self._read_timer = loop.call_soon(self._read_and_wait)
        else:
            self._read_timer = loop.call_later(self._coalesce_wait(n, t), self._read_and_wait)
        self._last_read = t

    def _coalesce_wait(self, n: int, now: float) -> float:
        """read_coalesce_s, or less when at the rate just seen more than READ_BATCH datagrams would wait, or the
        socket buffer would be a quarter full (a buffer the kernel capped below rcvbuf_bytes, without
        CAP_NET_ADMIN)."""
        # after a quiet spell the rate is unknown: assume a burst of 1 M datagrams/s
        rate = n / max(now - self._last_read, 1e-4) if self._last_read else 1e6
        return max(0.0005, min(self.cfg.read_coalesce_s, self._rcvbuf_datagrams / 4 / rate, READ_BATCH / rate))

    def _drain_socket(self) -> int:
        """Read what waits on the socket (at most READS_PER_WAKEUP datagrams); returns how many were read."""
        sock = self.sock
        if sock is None:
            return 0
        if self.cfg.recvmmsg and recv_available:
            try:
                n = self.collector.feed_socket(sock.fileno(), _now_ms(), READS_PER_WAKEUP)
            except OSError as e:  # e.g. ICMP errors reported on the socket: never fatal
                if e.errno not in (errno.ECONNREFUSED, errno.EAGAIN):
                    log.warning("udp receive error: %s", e)
                return 0
            self._pending += n
            return n
        feed = self.collector.feed
        recv = sock.recvfrom
        now = _now_ms()
        n = 0
        try:
            while n < READS_PER_WAKEUP:
                data, addr = recv(65535)
                feed(data, addr[0], now)
                n += 1
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as e:  # e.g. ICMP errors reported on the socket: never fatal
            if e.errno not in (errno.ECONNREFUSED, errno.EAGAIN):
                log.warning("udp receive error: %s", e)
        self._pending += n
        return n

    def _process(self) -> None:
        if self._pending:
            self._pending = 0
            self.collector.process(_now_ms())

    # --- background tasks -----------------------------------------------------------------------------
    async def _ticker(self) -> None:
        next_update = time.monotonic() + self.cfg.update_interval_s
        while True:
            await asyncio.sleep(min(self.cfg.process_interval_s, max(0.0, next_update - time.monotonic())))
            self._process()
            await self._publish_counters()
            if time.monotonic() >= next_update:
                next_update = time.monotonic() + self.cfg.update_interval_s
                await self._publish_flows(self.collector.updates(_now_ms()))
                self._export_stats()

    async def publish_now(self) -> int:
        """Process what is pending and publish flow updates at once (tests, shutdown); returns the count."""
        self._drain_socket()
        self._process()
        flows = self.collector.updates(_now_ms())
        await self._publish_flows(flows)
        await self._publish_counters()
        return len(flows)

    async def _publish_flows(self, flows: list[Flow]) -> None:
        if not flows or self.js is None:
            return
        subject = self.subjects.flows(self.cfg.host_id)
        step = self.cfg.flows_per_message
        for i in range(0, len(flows), step):
            chunk = flows[i:i + step]
            self._seq += 1
            batch_id = f"{self.cfg.host_id}/sflow-{self.instance}/{self._boot}/{self._seq}"
            msg = FlowUpdateBatch(host=self.cfg.host_id, batch_id=batch_id, ts=_now_ms(), flows=chunk)
            payload = encode(msg)
            for attempt in range(3):
                try:
                    await self.js.publish(subject, payload, headers={"Nats-Msg-Id": batch_id}, timeout=5)
                    self.m_batches.inc()
                    self.m_flows.inc(len(chunk))
                    break
                except Exception as e:  # NATS down or slow: retry, then count the loss
                    if attempt == 2:
                        self.m_publish_errors.labels("flows").inc()
                        log.warning("could not publish %d flow updates: %r", len(chunk), e)
                    else:
                        await asyncio.sleep(0.5)

    async def _publish_counters(self) -> None:
        items = self.collector.counters()
        if not items or self.nc is None:
            return
        msg = InterfaceMetricsBatch(host=self.cfg.host_id, source="sflow", ts=_now_ms(), items=items)
        try:
            await self.nc.publish(self.subjects.interface_metrics(self.cfg.host_id), encode(msg))
            self.m_metrics.inc(len(items))
        except Exception as e:
            self.m_publish_errors.labels("metrics").inc()
            log.warning("could not publish interface metrics: %r", e)

    def _export_stats(self) -> None:
        for sender, st in self.collector.stats.items():
            for name, value, metric in (("d", st.datagrams, self.m_datagrams), ("f", st.flow_samples,
                                        self.m_flow_samples), ("c", st.counter_samples, self.m_counter_samples),
                                        ("l", st.lost, self.m_lost)):
                prev = self._exported.get((sender, name), 0)
                if value > prev:
                    metric.labels(sender).inc(value - prev)
                    self._exported[(sender, name)] = value
            for reason, value in st.errors.items():
                prev = self._exported.get((sender, "e" + reason), 0)
                if value > prev:
                    self.m_dropped.labels(sender, reason).inc(value - prev)
                    self._exported[(sender, "e" + reason)] = value
        self.m_socket_drops.set(self.socket_drops())
        self.m_tables.set(len(self.collector.tables))

    def socket_drops(self) -> int:
        """Datagrams dropped by the kernel on this socket (the `drops` column of /proc/net/udp[6])."""
        if self.sock is None:
            return 0
        return udp_socket_drops(self.sock)

    # --- ovssflow captures ----------------------------------------------------------------------------
    async def _watch_captures(self) -> None:
        assert self.controller is not None
        kv = await open_capture_bucket(self.js, self.subjects)
        watcher = await kv.watchall()
        async for entry in watcher:
            if entry is None:  # initial values delivered
                self._reconcile_now.set()
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                if self.controller.remove_capture(entry.key):
                    await self._publish_flows(self.collector.drop_capture(entry.key))
                self._reconcile_now.set()
                continue
            cap = self.inbound(entry.value, Capture, "capture", f"capture bucket key {entry.key}")
            if cap is None:
                continue
            was = entry.key in self.controller.captures
            self.controller.set_capture(cap)
            if was and cap.Type != "ovssflow":
                await self._publish_flows(self.collector.drop_capture(entry.key))
            self._reconcile_now.set()

    async def _reconciler(self) -> None:
        assert self.controller is not None
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._reconcile_now.wait(), self.cfg.reconcile_interval_s)
            self._reconcile_now.clear()
            selected = {c.UUID: self.select_bridges(c.GremlinQuery) for c in self.controller.captures.values()}
            try:
                res = await asyncio.to_thread(self.controller.reconcile, selected)
            except OvsError as e:
                self.m_ovs_errors.inc()
                self._once_ovs(e)
                continue
            self.ports = res.ports
            await self._publish_statuses(res.bridges, res.bridge_uuids)

    async def _publish_statuses(self, owned: dict[str, str], uuids: dict[str, str]) -> None:
        """CaptureStatus for each bridge under capture (graph-builder shows it as the node's `Captures`): on
        every change, and every 10 s so a restarted graph-builder learns it again."""
        active = {(bridge_node_id(self.cfg.host_id, uuids[b]), cap): b for b, cap in owned.items() if b in uuids}
        stopped = [k for k in self._active if k not in active]
        if active.keys() == self._active.keys() and time.monotonic() - self._status_sent < 10:
            return
        msgs = [CaptureStatus(host=self.cfg.host_id, node_id=nid, capture_id=cap, state="active", type="ovssflow")
                for nid, cap in active]
        msgs += [CaptureStatus(host=self.cfg.host_id, node_id=nid, capture_id=cap, state="stopped", type="ovssflow")
                 for nid, cap in stopped]
        try:
            for m in msgs:
                await self.nc.publish(self.subjects.capture_status, encode(m))
        except Exception as e:
            self.m_publish_errors.labels("capture_status").inc()
            log.warning("could not publish capture status: %r", e)
            return
        self._active = active
        self._status_sent = time.monotonic()

    def _once_ovs(self, e: Exception) -> None:
        if not getattr(self, "_ovs_warned", False):
            self._ovs_warned = True
            log.warning("OVS not reachable for ovssflow captures (further errors only counted): %s", e)


def _now_ms() -> int:
    return int(time.time() * 1000)


def _open_socket(host: str, port: int, rcvbuf: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_DGRAM)
    if family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    with contextlib.suppress(OSError):  # SO_RCVBUFFORCE passes rmem_max when we have CAP_NET_ADMIN
        sock.setsockopt(socket.SOL_SOCKET, 33, rcvbuf)
    sock.bind((host, port))
    sock.setblocking(False)
    return sock


def udp_socket_drops(sock: socket.socket) -> int:
    inode = str(os.fstat(sock.fileno()).st_ino)
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(path) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if len(cols) > 12 and cols[9] == inode:
                        return int(cols[12])
        except OSError:
            continue
    return 0


def _is_local_address(addr: str) -> bool:
    if not addr:
        return False
    try:
        family = socket.AF_INET6 if ":" in addr else socket.AF_INET
        with socket.socket(family, socket.SOCK_DGRAM) as s:
            s.bind((addr, 0))
        return True
    except OSError:
        return False

