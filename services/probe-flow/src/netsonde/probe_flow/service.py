"""The probe-flow process: capture definitions (KV) + graph replica -> captures -> flow updates (JetStream).

- Capture definitions come from the KV bucket `Subjects.capture_bucket` (watched); the nodes each
  GremlinQuery selects come from a graph replica evaluated by the Gremlin engine; only this host's nodes of a
  capturable type are captured (`controller.CaptureController`).
- Every `update_interval_s`, flows touched since the previous update (and expired ones) are published as
  `FlowUpdateBatch` messages on `Subjects.flows(host)` in stream `Subjects.flow_stream`, with a
  `Nats-Msg-Id` header equal to the batch_id so a retried publish is stored once.
- Capture state changes and, every 10 s, counters go out as `CaptureStatus` on `Subjects.capture_status`.
- HTTP (next to /healthz and /metrics): `POST /pcap` (a pcap file in the body -> flows published),
  `POST /injectpacket` (Skydive's PacketInjection fields, plus `Ifname`/`NetNsPath` or a `Src` query).
  The same injection is served by request/reply on `Subjects.packet_inject(host)` (bus.injection schemas),
  so query-api can forward `/api/injectpacket` to the probe of the host that owns the `Src` node.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import msgspec
from aiohttp import web

from netsonde.common import natsconn
from netsonde.common.bus import Subjects, encode
from netsonde.common.bus.captures import Capture, CaptureStatus
from netsonde.common.bus.flows import Flow, FlowUpdateBatch
from netsonde.common.bus.injection import PacketInjectReply, PacketInjectRequest
from netsonde.common.bus.streams import ensure_flow_stream, open_capture_bucket
from netsonde.common.capture_types import nodes_in_result
from netsonde.common.dropreport import report_drops
from netsonde.common.service import Service
from netsonde.flow.inject import InjectionError, inject_packets
from netsonde.flow.pcapimport import PcapImport, import_pcap

from .config import ProbeFlowConfig
from .controller import CaptureController, QueryError, node_netns
from .sflowsocket import publish_agent_counters

log = logging.getLogger(__name__)

STOP_PUBLISH_S = 3.0

DROPS = {"kernel_drops": "kernel_drops_total", "table_full": "flows_refused_total", "bad_packets": "bad_packets_total",
         "publish_retries": "publish_retries_total", "publish_failures": "publish_errors_total",
         "flow_updates_dropped": "flow_updates_dropped_total", "rejects": "bad_messages_total"}
"""What this stage can lose, as published on `<prefix>.status.drops` (kind -> metric)."""


class ProbeFlowService(Service):
    name = "probe-flow"

    def __init__(self, config: ProbeFlowConfig) -> None:
        super().__init__(config)
        self.cfg = config
        self.subjects = Subjects(config.subject_prefix)
        self.nc: Any = None
        self.js: Any = None
        self.replica: Any = None
        self.engine: Any = None
        self._statuses: list[CaptureStatus] = []
        self._reconcile_now = asyncio.Event()
        self._boot = int(time.time() * 1000)
        self._seq = 0
        self._exported: dict[str, int] = {}
        self.controller = CaptureController(config.host_id, self.select_nodes,
                                            update_expire_ms=int(config.expire_s * 1000),
                                            max_entries=config.max_entries,
                                            ring_block_size=config.ring_block_size, ring_blocks=config.ring_blocks,
                                            on_status=self._statuses.append,
                                            pcapsocket_address=config.pcapsocket_address, ovsdb=config.ovsdb)
        m = self.metrics
        self.m_packets = m.counter("packets_total", "Packets accounted by the flow tables")
        self.m_bad = m.counter("bad_packets_total", "Frames that could not be decoded", ["kind"])
        self.m_option_events = m.counter("option_events_total", "Capture option and target events (defrag_timeouts, "
                                         "defrag_evicted, layer_errors, netflow_records ...)", ["event"])
        self.m_kernel_drops = m.counter("kernel_drops_total", "Packets the kernel dropped (ring full)")
        self.m_table_full = m.counter("flows_refused_total", "Packets of new flows refused: flow table full "
                                      "(max_entries)")
        self.m_flows = m.counter("flow_updates_published_total", "Flow updates published")
        self.m_publish_errors = m.counter("publish_errors_total", "Failed publishes", ["kind"])
        self.m_publish_retries = m.counter("publish_retries_total", "Flow batch publishes retried (NATS down or slow)")
        self.m_flows_dropped = m.counter("flow_updates_dropped_total",
                                         "Flow updates given up after publish_retry_s of failed publishes")
        self.m_captures = m.gauge("captures_running", "Captures running on this host")
        self.m_table_flows = m.gauge("table_flows", "Flows held in the flow tables")
        self.m_stream_errors = m.counter("pcapsocket_stream_errors_total",
                                         "pcapsocket streams closed: not a pcap, or cut inside a record")

    # --- lifecycle --------------------------------------------------------------------------------------
    async def on_start(self) -> None:
        self.nc = await natsconn.connect(self.cfg.nats_url, f"probe-flow-{self.cfg.host_id}", config=self.cfg)
        self.js = self.nc.jetstream()
        await ensure_flow_stream(self.js, self.subjects, max_bytes=self.cfg.stream_max_bytes)
        if self.cfg.use_graph:
            from netsonde.common.replica import GraphReplica
            from netsonde.gremlin.engine import GremlinEngine
            self.replica = GraphReplica(self.nc, self.subjects, bad_messages=self.metrics.bad_messages)
            self.replica.listeners.append(lambda events: self._reconcile_now.set())
            await self.replica.start(wait=False)
            self.engine = GremlinEngine(self.replica.graph)
        await self.nc.subscribe(self.subjects.packet_inject(self.cfg.host_id), cb=self._nats_inject)
        self.spawn(self._watch_captures(), "watch-captures")
        self.spawn(self._reconciler(), "reconcile")
        self.spawn(self._publisher(), "publish")
        self.spawn(report_drops(self.nc, self.subjects, self.name, self.cfg.host_id, self.metrics.registry,
                                self.metrics.prefix, DROPS, self.cfg.status_interval_s), "drop-counters")

    async def on_stop(self) -> None:
        self.controller.stop_all()
        with contextlib.suppress(Exception):
            await self._publish_once()
        # the "stopped" states stop_all() produced: nodes must not keep showing an active capture
        with contextlib.suppress(Exception):
            await self._publish_statuses()
        if self.replica is not None:
            await self.replica.stop()
        await natsconn.close(self.nc)

    def health(self) -> dict[str, Any]:
        return {"captures": [{"capture": s.capture_id, "node": s.node_id, "state": s.state, "error": s.error,
                              "received": s.packets_received, "dropped": s.packets_dropped}
                             for s in self.controller.statuses()],
                "query_errors": list(self.controller.query_errors.values())}

    def add_routes(self, app: web.Application) -> None:
        app.router.add_post("/pcap", self._http_pcap)
        app.router.add_post("/injectpacket", self._http_inject)

    # --- node selection -------------------------------------------------------------------------------
    def select_nodes(self, query: str) -> list[dict[str, Any]]:
        """Nodes (Skydive JSON) a capture's GremlinQuery selects in the replicated graph."""
        if self.engine is None:
            return []
        try:
            result = self.engine.execute(query)
        except Exception as e:
            raise QueryError(str(e)) from None
        return nodes_in_result(result)  # node lists, ShortestPathTo paths, SubGraph()

    # --- tasks ----------------------------------------------------------------------------------------
    async def _watch_captures(self) -> None:
        kv = await open_capture_bucket(self.js, self.subjects)
        watcher = await kv.watchall()
        async for entry in watcher:
            if entry is None:
                self._reconcile_now.set()
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self.controller.delete(entry.key)
            else:
                cap = self.inbound(entry.value, Capture, "capture", f"capture bucket key {entry.key}")
                if cap is None:
                    continue
                self.controller.put(cap)
            self._reconcile_now.set()

    async def _reconciler(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._reconcile_now.wait(), self.cfg.reconcile_interval_s)
            self._reconcile_now.clear()
            # queries in the loop thread (the Gremlin engine reads the replica, which this loop mutates); starting
            # and stopping captures (thread starts, ovs-vsctl for mirrors) in a worker thread
            selection = self.controller.evaluate()
            await asyncio.to_thread(self.controller.apply, selection)
            self.m_captures.set(len(self.controller.running))
            await self._publish_statuses()

    async def _publisher(self) -> None:
        last_status = time.monotonic()
        while True:
            await asyncio.sleep(self.cfg.update_interval_s)
            await self._publish_once()
            if time.monotonic() - last_status >= 10:
                last_status = time.monotonic()
                self._statuses.extend(self.controller.statuses())
            await self._publish_statuses()

    async def _publish_once(self) -> None:
        flows = await asyncio.to_thread(self.controller.collect, int(time.time() * 1000))
        self._export_stats()
        await self.publish_flows(flows)
        # sflow captures: the external agent's counters on the node (SFlow metadata)
        await publish_agent_counters(self.nc, self.subjects, self.cfg.host_id, self.controller,
                                     self.m_publish_errors)

    def _export_stats(self) -> None:
        """Move the Prometheus counters up to what every capture counted, stopped and restarted ones
        included (`CaptureController.counter_totals`: a stopped capture's counts stay in the total)."""
        nflows = 0
        for rc in list(self.controller.running.values()):
            if rc.table is not None and rc.reader is not None:
                nflows += len(rc.table)
        self.m_table_flows.set(nflows)
        for key, value in self.controller.counter_totals().items():
            prev = self._exported.get(key, 0)
            if value > prev:
                self._counter(key).inc(value - prev)
                self._exported[key] = value

    def _counter(self, key: str) -> Any:
        """The Prometheus counter (with its label) of a `capturecounters` key."""
        if key.startswith("bad/"):
            return self.m_bad.labels(key[4:])
        if key.startswith("event/"):
            return self.m_option_events.labels(key[6:])
        return {"packets": self.m_packets, "kernel_drops": self.m_kernel_drops,
                "stream_errors": self.m_stream_errors, "flows_refused": self.m_table_full}[key]

    async def publish_flows(self, flows: list[Flow]) -> int:
        """Publish flow updates in FlowUpdateBatch messages (idempotent batch IDs); returns batches sent."""
        n = 0
        size = self.cfg.publish_batch_flows
        subject = self.subjects.flows(self.cfg.host_id)
        for i in range(0, len(flows), size):
            chunk = flows[i:i + size]
            self._seq += 1
            batch_id = f"{self.cfg.host_id}-{self._boot}-{self._seq}"
            data = encode(FlowUpdateBatch(host=self.cfg.host_id, batch_id=batch_id, ts=int(time.time() * 1000),
                                          flows=chunk))
            if await self._publish_batch(subject, data, batch_id):
                self.m_flows.inc(len(chunk))
                n += 1
            else:
                self.m_publish_errors.labels("flows").inc()
                self.m_flows_dropped.inc(len(chunk))
        return n

    async def _publish_batch(self, subject: str, data: bytes, batch_id: str) -> bool:
        """Publish one batch until JetStream acks it or `publish_retry_s` is spent. The same `Nats-Msg-Id` on
        every attempt: an attempt whose ack was lost is stored once. While this waits, the publisher loop
        waits too (back-pressure): flows stay in the bounded flow tables, no unbounded queue builds up.
        While the service stops, at most STOP_PUBLISH_S more are spent (a stop is not held for a minute)."""
        deadline = time.monotonic() + self.cfg.publish_retry_s
        delay = 0.2
        while True:
            try:
                await self.js.publish(subject, data, headers={"Nats-Msg-Id": batch_id}, timeout=2.0)
                return True
            except Exception as e:
                if self.stopping:
                    deadline = min(deadline, time.monotonic() + STOP_PUBLISH_S)
                if time.monotonic() + delay > deadline:
                    log.warning("gave up publishing flow batch %s after %.0f s: %r", batch_id,
                                self.cfg.publish_retry_s, e)
                    return False
                self.m_publish_retries.inc()
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)

    async def _publish_statuses(self) -> None:
        statuses, self._statuses[:] = list(self._statuses), []
        for s in statuses:
            try:
                await self.nc.publish(self.subjects.capture_status, encode(s))
            except Exception as e:
                self.m_publish_errors.labels("status").inc()
                log.debug("capture status not published: %r", e)

    # --- HTTP -----------------------------------------------------------------------------------------
    async def _http_pcap(self, request: web.Request) -> web.Response:
        body = await request.read()
        node_tid = request.query.get("node_tid", "pcap")
        req = PcapImport(node_tid, request.query.get("capture_id", ""), request.query.get("layer_key_mode", "L2"),
                         ndpi=request.query.get("ndpi", "") in ("1", "true"))
        try:  # a file that is not a pcap (PcapError), a bad layer_key_mode, nDPI not installed
            result = await asyncio.to_thread(import_pcap, body, req)
        except (RuntimeError, ValueError) as e:
            return web.json_response({"error": str(e)}, status=400)
        await self.publish_flows(result.flows)
        return web.json_response({"packets": result.packets, "flows": len(result.flows),
                                  "bad_packets": result.bad_packets})

    async def _http_inject(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return web.json_response({"error": "body must be a JSON PacketInjection"}, status=400)
        try:
            req = PacketInjectRequest.from_json_body(body)
        except ValueError as e:
            return web.json_response({"error": str(e)}, status=400)
        res = await self.inject(req)
        return web.json_response(msgspec.to_builtins(res), status=400 if res.error else 200)

    async def _nats_inject(self, msg: Any) -> None:
        req = self.inbound(msg.data, PacketInjectRequest, "packet_inject", msg.subject)
        res = await self.inject(req) if req is not None else PacketInjectReply(error="request must be a msgpack "
                                                                                     "PacketInjectRequest")
        with contextlib.suppress(Exception):
            await msg.respond(encode(res))

    async def inject(self, req: PacketInjectRequest) -> PacketInjectReply:
        """Run one PacketInjection (Skydive's fields, plus `Ifname`/`NetNsPath` or a `Src` query selecting a
        node of this host)."""
        ifname, netns = req.Ifname, req.NetNsPath
        if not ifname and req.Src:
            try:
                nodes = [n for n in self.select_nodes(req.Src)
                         if (n.get("Host") or n["Metadata"].get("Host")) == self.cfg.host_id]
            except QueryError as e:
                return PacketInjectReply(error=str(e))
            if not nodes:
                return PacketInjectReply(error=f"Src {req.Src!r} selects no node on this host")
            ifname, netns = nodes[0]["Metadata"].get("Name", ""), node_netns(nodes[0])
        if not ifname:
            return PacketInjectReply(error="Ifname or Src is required")
        try:
            sent = await asyncio.to_thread(
                inject_packets, ifname, netns, req.SrcIP, req.DstIP, type=req.Type, count=req.Count,
                interval_ms=req.Interval, size=req.Size, icmp_id=req.ICMPID, src_mac=req.SrcMAC,
                dst_mac=req.DstMAC, src_port=req.SrcPort, dst_port=req.DstPort, payload=req.Payload,
                ttl=req.TTL or 64, mode=req.Mode, increment_payload=req.IncrementPayload)
        except (InjectionError, ValueError, TypeError) as e:
            return PacketInjectReply(error=str(e))
        return PacketInjectReply(sent=sent)
