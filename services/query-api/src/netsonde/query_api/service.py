"""query-api service: wiring of the graph replica, the Gremlin engine, the capture store and the routes."""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import Any, Mapping

from aiohttp import web

import netsonde.gremlin as gremlin
from netsonde.common import natsconn
from netsonde.common.bus import Subjects
from netsonde.common.clickhouse import connect
from netsonde.common.replica import GraphReplica
from netsonde.common.service import Service

from .bad_input import nesting_guard
from .captures import CaptureStore
from .auth import Authenticator, auth_middleware, auth_required, login_handler, login_without_auth, server_ssl_context
from .config import QueryApiConfig
from .drops import DropBoard
from .limits import body_limit_middleware
from .consistency import CowGraph, SnapshotCache
from . import openapi
from .routes import VERSION, Routes
from .static_api import StaticApi
from .alerts_api import AlertApi
from .diff_api import DiffApi
from .topology_summary import TopologySummaryApi
from .ui import WebUi
from .websocket import SubscriberHub

log = logging.getLogger(__name__)


class QueryApiService(Service):
    name = "query-api"

    def __init__(self, config: QueryApiConfig) -> None:
        super().__init__(config)
        self.cfg = config
        self.subjects = Subjects(config.subject_prefix)
        self.nc: Any = None
        self.replica: GraphReplica | None = None
        self.engine: Any = None
        self.captures: CaptureStore | None = None
        self.hub = SubscriberHub(config.ws_queue_max, self.metrics.counter(
            "websocket_disconnects_total", "WebSocket subscribers disconnected by the server", ["kind", "reason"]))
        self.drops = DropBoard(self.inbound)
        m = self.metrics
        self.m_queries = m.counter("queries_total", "Gremlin queries answered", ["status"])
        self.m_query_seconds = m.histogram("query_seconds", "Gremlin query latency")
        self.m_ws_clients = m.gauge("websocket_clients", "Connected WebSocket subscribers")
        self.m_body_refused = m.counter("body_too_large_total", "Requests refused with 413 (body over the route's "
                                        "limit)", ["route"])
        self.m_auth_failures = m.counter("auth_failures_total", "API requests refused (unauthenticated, forbidden) "
                                         "and failed logins (bad_login)", ["reason"])
        self.auth = (Authenticator(config.users_file, self.m_auth_failures)
                     if auth_required(config.auth, config.http_host) else None)
        self._ssl = server_ssl_context(config.tls_cert, config.tls_key)

    def ssl_context(self) -> ssl.SSLContext | None:
        return self._ssl

    def add_routes(self, app: web.Application) -> None:
        if self.auth is not None:  # first: an unauthenticated request is refused before anything else
            app.middlewares.append(auth_middleware(self.auth))
        app.router.add_post("/login", login_handler(self.auth) if self.auth else login_without_auth)
        app.middlewares.append(body_limit_middleware(self.cfg.max_body_bytes, self.cfg.max_pcap_bytes,
                                                     self.m_body_refused))
        app.middlewares.append(nesting_guard)
        Routes(self).register(app)
        StaticApi(self).register(app)
        AlertApi(self).register(app)
        TopologySummaryApi(self).register(app)
        DiffApi(self).register(app)
        WebUi().register(app)
        openapi.register(app, VERSION)

    def client_factory(self) -> Any:
        return connect(self.cfg.clickhouse_url, self.cfg.clickhouse_database)

    async def on_start(self) -> None:
        self.nc = await natsconn.connect(self.cfg.nats_url, f"query-api@{self.cfg.host_id}", config=self.cfg)
        self.replica = GraphReplica(self.nc, self.subjects, snapshot_timeout=self.cfg.snapshot_timeout_s,
                                    bad_messages=self.metrics.bad_messages)
        replica = self.replica
        replica.graph = CowGraph()  # queries read O(1) copy-on-write snapshots of it (consistency.py)
        self.snapshots = SnapshotCache(replica.graph, lambda: (replica.epoch, replica.seq, replica.resnapshots))
        self.replica.listeners.append(self.hub.on_graph_events)
        self.replica.before_apply.append(self.hub.previous.remember)
        await self.replica.start(wait=False)
        try:
            await asyncio.wait_for(self.replica.synced.wait(), self.cfg.snapshot_timeout_s)
        except asyncio.TimeoutError:
            log.warning("no graph snapshot yet (is graph-builder running?); serving and retrying")
        history = gremlin.HistoryStore(self.client_factory) if self.cfg.history else None
        flows = gremlin.FlowStore(self.client_factory) if self.cfg.flows else None
        self.engine = gremlin.GremlinEngine(
            graph=self.replica.graph, history=history, flows=flows,
            limits=gremlin.QueryLimits(timeout_s=self.cfg.query_timeout_s, max_results=self.cfg.max_results))
        self.hub.run_query = self.engine.execute  # subscribers' Gremlin filters, on the live replica
        self.captures = CaptureStore(self.nc, self.subjects)
        await self.captures.start()
        await self.drops.start(self.nc, self.subjects)
        await self.nc.subscribe(self.subjects.flows_enriched, cb=self._on_enriched_flows)
        await self.nc.subscribe(self.subjects.alert_events_all, cb=self._on_alert_event)
        await self.nc.flush()

    async def on_stop(self) -> None:
        if self.replica is not None:
            await self.replica.stop()
        await natsconn.close(self.nc)

    def health(self) -> dict[str, Any]:
        synced = self.replica is not None and self.replica.synced.is_set()
        return {"ok": self.ready, "graph_synced": synced,
                "nodes": len(self.replica.graph.nodes) if self.replica else 0}

    async def _on_alert_event(self, msg: Any) -> None:
        """alert-evaluator's events to the WebSocket subscribers (Skydive's `Alert` namespace)."""
        from netsonde.common.bus.alerts import AlertEvent, event_to_json

        event = self.inbound(msg.data, AlertEvent, "alert_event", msg.subject)
        if event is not None:
            self.hub.on_alert(event_to_json(event))

    async def _on_enriched_flows(self, msg: Any) -> None:
        if not self.hub.flow_clients:
            return
        import msgspec

        from netsonde.common.bus.flows import FlowUpdateBatch
        batch = self.inbound(msg.data, FlowUpdateBatch, "flows_enriched", msg.subject)
        if batch is None:
            return
        self.hub.on_flows(msgspec.to_builtins(batch.flows))

    async def import_pcap(self, data: bytes, node_tid: str, keep_time: bool = True,
                          options: Mapping[str, str] | None = None) -> int:
        """Flows of a pcap file, published on the flow stream in batches; returns how many flows.
        With `keep_time` (the default) flows carry the packets' own timestamps (a 2016 capture is found with
        `Context(<2016 instant>)`); without it the file is replayed now at capture speed (see `feed_pcap`).
        `options`: the capture packet options `ExtraLayers`, `IPDefrag`, `ReassembleTCP` (query parameters).
        Raises ValueError (a 400) for a file that is not a pcap or a bad option."""
        import uuid

        from netsonde.common.bus import encode
        from netsonde.common.bus.flows import FlowUpdateBatch
        from netsonde.common.bus.streams import ensure_flow_stream
        from netsonde.flow.pcap import PcapError
        from netsonde.flow.pcapimport import PcapImport, import_pcap, packet_options

        ip_defrag, reassemble, layers = packet_options(options or {})
        req = PcapImport(node_tid, f"pcap-{uuid.uuid4()}", ip_defrag=ip_defrag, reassemble_tcp=reassemble,
                         extra_layers=layers, replay_at_ns=None if keep_time else time.time_ns())
        try:
            flows = (await asyncio.to_thread(import_pcap, data, req)).flows
        except PcapError as exc:
            raise ValueError(f"not a pcap file: {exc}") from None
        js = self.nc.jetstream()
        await ensure_flow_stream(js, self.subjects)
        for i in range(0, len(flows), 1000):
            batch = FlowUpdateBatch(host=self.cfg.host_id, batch_id=f"pcap-{uuid.uuid4()}",
                                    ts=int(time.time() * 1000), flows=flows[i:i + 1000])
            await js.publish(self.subjects.flows(self.cfg.host_id), encode(batch),
                             headers={"Nats-Msg-Id": batch.batch_id})
        return len(flows)

    async def run_query(self, query: str, accept: str = "") -> Any:
        """Run a Gremlin query in a worker thread on a snapshot of the replica (one consistent graph: the
        loop keeps applying events to the live graph meanwhile, see consistency.py)."""
        started = time.perf_counter()
        status = "ok"
        try:
            snapshot, _ = self.snapshots.get()
            engine = gremlin.GremlinEngine(graph=snapshot, history=self.engine.history, flows=self.engine.flows,
                                           limits=self.engine.limits)
            return await asyncio.to_thread(engine.execute, query, accept)
        except gremlin.GremlinError:
            status = "error"
            raise
        finally:
            self.m_queries.labels(status).inc()
            self.m_query_seconds.observe(time.perf_counter() - started)
