"""graph-builder service: bus in (probe messages, capture status, metrics), bus out (graph events,
snapshots), ClickHouse out (revisions)."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Callable, TypeVar

from nats.aio.msg import Msg

from netsonde.common import natsconn
from netsonde.common.bus import Subjects, encode
from netsonde.common.bus.captures import CaptureStatus
from netsonde.common.bus.graph import GraphEventBatch, SnapshotChunk
from netsonde.common.bus.metrics import InterfaceMetrics, InterfaceMetricsBatch
from netsonde.common.bus.topology import ResyncRequest, TopologyMessage
from netsonde.common.clickhouse import run_migrations
from netsonde.common.dropreport import report_drops
from netsonde.common.logs import OnceLogger
from netsonde.common.service import Service
from netsonde.gremlin import QueryLimits

from .builder import GraphBuilder
from .config import GraphBuilderConfig
from .history import RevisionWriter
from .schema import MIGRATIONS, ttl_statement
from .static import StaticController
from .tunnels import TunnelLinks

log = logging.getLogger(__name__)
T = TypeVar("T")


class GraphBuilderService(Service):
    name = "graph-builder"

    def __init__(self, config: GraphBuilderConfig) -> None:
        super().__init__(config)
        self.cfg = config
        self.subjects = Subjects(config.subject_prefix)
        self.builder = GraphBuilder(history_ttl_ms=config.history_ttl_days * 86_400_000)
        self.tunnels = TunnelLinks(self.builder)
        """Cross-host tunnel edges, derived after each probe message (tunnels.py)."""
        self.nc: Any = None
        self.writer: RevisionWriter | None = None
        self.static: StaticController | None = None
        self.bad = OnceLogger(log)
        self._resync_sent: dict[str, float] = {}
        self._captures: dict[str, dict[str, dict[str, Any]]] = {}
        m = self.metrics
        self.m_messages = m.counter("probe_messages_total", "Probe messages applied", ["kind"])
        self.m_events = m.counter("graph_events_total", "Graph events published", ["type"])
        self.m_resyncs = m.counter("resync_requests_total", "Resync requests sent to probes")
        self.m_history_rows = m.counter("history_rows_total", "Revisions written to ClickHouse")
        self.m_history_errors = m.counter("history_errors_total", "Failed history writes (retried)")
        self.m_history_dropped = m.gauge("history_dropped", "Revisions dropped from the history buffer (full while "
                                         "ClickHouse was unreachable)")
        self.m_nodes = m.gauge("nodes", "Nodes in the graph")
        self.m_edges = m.gauge("edges", "Edges in the graph")
        self.m_metrics_unmatched = m.counter("metrics_unmatched_total", "Interface counters for no known node")
        self.m_snapshots = m.counter("snapshots_total", "Snapshot requests answered")

    async def on_start(self) -> None:
        if self.cfg.history:
            self.writer = RevisionWriter(self.cfg.clickhouse_url, self.cfg.clickhouse_database)
            await asyncio.to_thread(run_migrations, self.cfg.clickhouse_url, self.cfg.clickhouse_database,
                                    "graph-builder", MIGRATIONS)
            await asyncio.to_thread(self._apply_ttl)
            restored = await asyncio.to_thread(self.writer.load_latest)
            self.builder.restore(restored)
            log.info("restored %d elements from history", len(restored))
        self.nc = await natsconn.connect(self.cfg.nats_url, f"graph-builder@{self.cfg.host_id}", config=self.cfg)
        await self.nc.subscribe(self.subjects.topology_all, cb=self._on_topology)
        await self.nc.subscribe(self.subjects.graph_snapshot, cb=self._on_snapshot)
        await self.nc.subscribe(self.subjects.capture_status, cb=self._on_capture_status)
        await self.nc.subscribe(self.subjects.interface_metrics_all, cb=self._on_interface_metrics)
        self.static = StaticController(self, QueryLimits(timeout_s=self.cfg.rule_timeout_s,
                                                         max_results=self.cfg.rule_max_results))
        await self.static.start()  # static nodes/edges and rules from their bucket, then their requests
        await self.nc.flush()  # the server holds our subscriptions before we call ourselves ready
        await self._request_resync("")
        if self.writer is not None:
            self.spawn(self._history_loop(), "history-writer")
        self.spawn(self._resync_loop(), "resync")
        drops = {"rejects": "bad_messages_total", "history_failures": "history_errors_total",
                 "history_dropped": "history_dropped"}
        self.spawn(report_drops(self.nc, self.subjects, self.name, self.cfg.host_id, self.metrics.registry,
                                self.metrics.prefix, drops, self.cfg.status_interval_s), "drop-counters")

    def _apply_ttl(self) -> None:
        from netsonde.common.clickhouse import connect, ddl
        client = connect(self.cfg.clickhouse_url, self.cfg.clickhouse_database)
        try:
            for stmt in ddl(self.cfg.clickhouse_url, ttl_statement(self.cfg.clickhouse_database,
                                                                   self.cfg.history_ttl_days)):
                client.command(stmt)
        finally:
            client.close()

    async def on_stop(self) -> None:
        await natsconn.close(self.nc)
        if self.writer is not None:
            try:
                await asyncio.wait_for(asyncio.to_thread(self.writer.flush), 15)
            except Exception as exc:
                log.error("final history flush failed, %d revisions lost: %r", len(self.writer.pending), exc)

    def health(self) -> dict[str, Any]:
        return {"nodes": len(self.builder.graph.nodes), "edges": len(self.builder.graph.edges),
                "seq": self.builder.seq, "hosts": sorted(self.builder.hosts),
                "history_pending": len(self.writer.pending) if self.writer else 0,
                "static": self.static.status() if self.static is not None else {}}

    # --- inputs --------------------------------------------------------------------------------------
    def _decode(self, msg: Msg, cls: type[T], kind: str) -> T | None:
        """Decode a bus message; a bad one is counted by kind and reason, logged once per kind, and dropped."""
        return self.inbound(msg.data, cls, kind, msg.subject)

    async def _on_topology(self, msg: Msg) -> None:
        tm = self._decode(msg, TopologyMessage, "topology")
        if tm is None:
            return
        self.builder.apply(tm)
        self.tunnels.sync()
        self.m_messages.labels(tm.kind).inc()
        await self._publish_changes()

    async def _on_capture_status(self, msg: Msg) -> None:
        st = self._decode(msg, CaptureStatus, "capture_status")
        if st is None:
            return
        per_node = self._captures.setdefault(st.node_id, {})
        if st.state == "stopped":
            per_node.pop(st.capture_id, None)
        else:
            per_node[st.capture_id] = {"ID": st.capture_id, "State": st.state, "Type": st.type,
                                       "PacketsReceived": st.packets_received,
                                       "PacketsDropped": st.packets_dropped,
                                       **({"Error": st.error} if st.error else {}),
                                       **({"PCAPSocket": st.pcap_socket} if st.pcap_socket else {}),
                                       **({"MirrorOf": st.mirror_of} if st.mirror_of else {}),
                                       **({"SFlowSocket": st.sflow_socket} if st.sflow_socket else {})}
        value = sorted(per_node.values(), key=lambda c: c["ID"]) or None
        if self.builder.set_overlay(st.node_id, "Captures", value):
            await self._publish_changes()

    async def _on_interface_metrics(self, msg: Msg) -> None:
        """Counters from sFlow (or other sources) become node metadata, e.g. `SFlow.LastUpdateMetric`."""
        batch = self._decode(msg, InterfaceMetricsBatch, "metrics")
        if batch is None:
            return
        changed = False
        for item in batch.items:
            node_id = self._metrics_target(batch.host, item)
            if node_id is None:
                self.m_metrics_unmatched.inc()
                continue
            value = {"Metric": item.Metric, "LastUpdateMetric": item.LastUpdateMetric}
            if item.Key:
                changed |= self.builder.set_overlay(node_id, item.Key, value)
            else:
                changed |= self.builder.set_overlay(node_id, "Metric", item.Metric)
                changed |= self.builder.set_overlay(node_id, "LastUpdateMetric", item.LastUpdateMetric)
        if changed:
            await self._publish_changes()

    def _metrics_target(self, host: str, item: InterfaceMetrics) -> str | None:
        graph = self.builder.graph
        if item.NodeTID:
            ids = graph.lookup("TID", item.NodeTID)
            if ids:
                return next(iter(ids))
        candidates = graph.lookup("Host", host)
        if item.Name:
            by_name = candidates & graph.lookup("Name", item.Name)
            if by_name:
                return sorted(by_name, key=lambda i: graph.nodes[i].Metadata.get("Type") == "ovsport")[0]
        if item.IfIndex:
            by_index = candidates & graph.lookup("IfIndex", item.IfIndex)
            if len(by_index) == 1:
                return next(iter(by_index))
        return None

    async def _on_snapshot(self, msg: Msg) -> None:
        """Reply with the whole graph in chunks; all chunks carry the seq of the last event included."""
        if not msg.reply:
            return
        graph = self.builder.graph
        seq, epoch = self.builder.seq, self.builder.epoch
        nodes, edges = list(graph.nodes.values()), list(graph.edges.values())
        size = self.cfg.snapshot_chunk_elements
        limit = self.nc.max_payload - 1024
        chunks: list[SnapshotChunk] = []
        for i in range(0, max(len(nodes), 1), size):
            chunks += _fit(nodes[i:i + size], lambda part: SnapshotChunk(epoch=epoch, seq=seq, index=0, last=False,
                                                                         nodes=part), limit)
        for i in range(0, len(edges), size):
            chunks += _fit(edges[i:i + size], lambda part: SnapshotChunk(epoch=epoch, seq=seq, index=0, last=False,
                                                                         edges=part), limit)
        for i, chunk in enumerate(chunks):
            chunk.index = i
            chunk.last = i == len(chunks) - 1
            await self.nc.publish(msg.reply, encode(chunk))
        self.m_snapshots.inc()

    # --- outputs -------------------------------------------------------------------------------------
    async def _publish_changes(self) -> None:
        events, revisions = self.builder.take()
        if self.writer is not None and revisions:
            self.writer.add(revisions)
        step = self.cfg.event_batch_max
        limit = self.nc.max_payload - 1024
        for i in range(0, len(events), step):
            for batch in _fit(events[i:i + step], lambda part: GraphEventBatch(epoch=self.builder.epoch, events=part),
                              limit):
                await self.nc.publish(self.subjects.graph_events, encode(batch))
        for ev in events:
            self.m_events.labels(ev.type).inc()
        if self.static is not None:
            self.static.graph_changed(events)
        self.m_nodes.set(len(self.builder.graph.nodes))
        self.m_edges.set(len(self.builder.graph.edges))
        for host in sorted(self.builder.resync_wanted):
            await self._request_resync(host, min_interval=2.0)

    async def _request_resync(self, host: str, min_interval: float = 0.0) -> None:
        """Ask one probe (or all, host "") for its full state; at most once per `min_interval` per host."""
        now = time.monotonic()
        if now - self._resync_sent.get(host, -1e9) < min_interval:
            return
        self._resync_sent[host] = now
        await self.nc.publish(self.subjects.topology_resync, encode(ResyncRequest(host=host, reason="graph-builder")))
        self.m_resyncs.inc()

    async def _resync_loop(self) -> None:
        """Hosts still unsynced (a lost resync request) are asked again every few seconds."""
        while True:
            await asyncio.sleep(5)
            for host in sorted(self.builder.resync_wanted):
                await self._request_resync(host)

    async def _history_loop(self) -> None:
        assert self.writer is not None
        while True:
            await asyncio.sleep(self.cfg.history_flush_interval_s)
            self.m_history_dropped.set(self.writer.dropped)
            if not self.writer.pending:
                continue
            try:
                n = await asyncio.to_thread(self.writer.flush)
                self.m_history_rows.inc(n)
            except Exception as exc:
                self.m_history_errors.inc()
                self.bad.warning("history", f"history write failed, will retry: {exc!r}")


def _fit(items: list[Any], make: Callable[[list[Any]], T], limit: int) -> list[T]:
    """One message of `items`, or as many halves as needed for each to stay under the NATS payload limit (nodes
    with large metadata, e.g. ethtool Features and routing tables, make 500 events exceed 1 MB)."""
    msg = make(items)
    if len(items) <= 1 or len(encode(msg)) <= limit:
        return [msg]
    half = len(items) // 2
    return _fit(items[:half], make, limit) + _fit(items[half:], make, limit)
