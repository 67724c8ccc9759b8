"""HTTP routes in Skydive's API shape."""

from __future__ import annotations

import json
import platform
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

import netsonde.gremlin as gremlin
from netsonde.common.bus import encode
from netsonde.common.bus.injection import PacketInjectReply, PacketInjectRequest
from netsonde.common.graph import element_to_json

from .captures import CaptureError, capture_from_json, capture_to_json, selection_warning

if TYPE_CHECKING:
    from .service import QueryApiService

VERSION = "0.1.0"


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, default=str), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return web.Response(text=message, status=status, content_type="text/plain")


class Routes:
    def __init__(self, svc: "QueryApiService") -> None:
        self.svc = svc

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/api/status", self.status)
        r.add_get("/api/topology", self.topology_get)
        r.add_post("/api/topology", self.topology_query)
        r.add_get("/api/node", self.nodes)
        r.add_get("/api/node/{id}", self.node)
        r.add_get("/api/edge", self.edges)
        r.add_get("/api/edge/{id}", self.edge)
        r.add_get("/api/capture", self.capture_list)
        r.add_get("/api/capture/{id}", self.capture_get)
        r.add_post("/api/capture", self.capture_create)
        r.add_delete("/api/capture/{id}", self.capture_delete)
        r.add_get("/ws/subscriber", self.ws_graph)
        r.add_get("/ws/subscriber/flow", self.ws_flow)
        r.add_post("/api/pcap", self.pcap_import)
        r.add_post("/api/injectpacket", self.inject_packet)

    async def inject_packet(self, request: web.Request) -> web.Response:
        """Skydive's PacketInjection: `Src` (and optionally `Dst`) are Gremlin queries selecting nodes; the
        probe-flow of the Src node's host sends the packets (`Count`, `Interval` ms, `Size`, `ICMPID` ...).
        SrcIP/DstIP/DstMAC default to the addresses of the selected nodes."""
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "body must be a JSON PacketInjection")
        try:
            req = PacketInjectRequest.from_json_body(body)
        except ValueError as exc:
            return _error(400, str(exc))
        if not req.Src:
            return _error(400, "Src (a Gremlin query selecting the interface to send from) is required")
        dst_query = body.get("Dst")
        try:
            src = await self.svc.run_query(req.Src)
            dst = await self.svc.run_query(dst_query) if isinstance(dst_query, str) and dst_query else []
        except gremlin.GremlinError as exc:
            return _error(400, f"Src/Dst: {exc}")
        if not isinstance(src, list) or not src or "Metadata" not in src[0]:
            return _error(400, f"Src {req.Src!r} selects no node")
        node = src[0]
        if not req.SrcIP and node["Metadata"].get("IPV4"):
            req.SrcIP = node["Metadata"]["IPV4"][0].split("/")[0]
        if dst and isinstance(dst, list) and "Metadata" in dst[0]:
            meta = dst[0]["Metadata"]
            if not req.DstIP and meta.get("IPV4"):
                req.DstIP = meta["IPV4"][0].split("/")[0]
            if not req.DstMAC and meta.get("MAC"):
                req.DstMAC = meta["MAC"]
        req.Src = f"G.V('{node['ID']}')"
        try:
            msg = await self.svc.nc.request(self.svc.subjects.packet_inject(node["Host"]), encode(req),
                                            timeout=max(10.0, req.Count * req.Interval / 1000 + 10))
        except Exception as exc:  # no probe-flow on that host, or it did not answer
            return _error(503, f"no probe-flow answered for host {node['Host']!r}: {exc!r}")
        reply = self.svc.inbound(msg.data, PacketInjectReply, "packet_inject_reply", msg.subject)
        if reply is None:
            return _error(502, f"unreadable answer from the probe-flow of host {node['Host']!r}")
        if reply.error:
            return _error(400, reply.error)
        return _json({"Sent": reply.sent, "Host": node["Host"], "Node": node["ID"]})

    async def pcap_import(self, request: web.Request) -> web.Response:
        """Upload a pcap (or pcapng) file: its packets go through the flow table of probe-flow and the resulting
        flows are published on the flow stream like captured ones (then enriched and stored)."""
        data = await request.read()
        if not data:
            return _error(400, "empty body: POST the pcap file")
        try:
            count = await self.svc.import_pcap(data, request.query.get("NodeTID", ""),
                                               request.query.get("KeepTime", "true") not in ("0", "false"),
                                               request.query)
        except ValueError as exc:  # not a pcap, or a bad option
            return _error(400, str(exc))
        return _json({"Flows": count})

    @property
    def graph(self) -> Any:
        assert self.svc.replica is not None
        return self.svc.replica.graph

    async def status(self, request: web.Request) -> web.Response:
        replica = self.svc.replica
        return _json({
            "Service": "query-api", "Version": VERSION, "Host": self.svc.cfg.host_id,
            "Python": platform.python_version(), "Uptime": round(time.time() - self.svc.started_at, 1),
            "Graph": {"Synced": bool(replica and replica.synced.is_set()),
                      "Nodes": len(self.graph.nodes), "Edges": len(self.graph.edges),
                      "Seq": replica.seq if replica else 0},
            "Probes": sorted({n.Host for n in self.graph.nodes.values() if n.Metadata.get("Type") == "host"}),
            # each probe's container connector (probe-topology's docker.py): State connected/disconnected, Error
            "ContainerEngines": {n.Host: n.Metadata["ContainerEngine"] for n in self.graph.nodes.values()
                                 if n.Metadata.get("Type") == "host" and "ContainerEngine" in n.Metadata},
            "Subscribers": len(self.svc.hub.graph_clients) + len(self.svc.hub.flow_clients),
            "Drops": self.svc.drops.summary(),
        })

    async def topology_get(self, request: web.Request) -> web.Response:
        g = self.graph
        return _json({"Nodes": [element_to_json(n) for n in g.nodes.values()],
                      "Edges": [element_to_json(e) for e in g.edges.values()]})

    async def topology_query(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "request body must be JSON: {\"GremlinQuery\": \"...\"}")
        query = body.get("GremlinQuery", "") if isinstance(body, dict) else ""
        if not isinstance(query, str):
            return _error(400, "GremlinQuery must be a string")
        if not query.strip():
            return web.Response(status=204)
        accept = request.headers.get("Accept", "")
        try:
            result = await self.svc.run_query(query, accept)
        except gremlin.GremlinError as exc:
            return _error(getattr(exc, "status", 400) or 400, str(exc))
        except Exception as exc:  # a bug must not look like a bad query, but must not kill the API either
            return _error(500, f"internal error: {exc!r}")
        if "application/vnd.tcpdump.pcap" in accept and isinstance(result, (bytes, bytearray)):
            return web.Response(body=bytes(result), content_type="application/vnd.tcpdump.pcap")
        return _json(result)

    async def nodes(self, request: web.Request) -> web.Response:
        return _json({n.ID: element_to_json(n) for n in self.graph.nodes.values()})

    async def node(self, request: web.Request) -> web.Response:
        node = self.graph.nodes.get(request.match_info["id"])
        if node is None:
            return _error(404, f"Node '{request.match_info['id']}' does not exist")
        return _json(element_to_json(node))

    async def edges(self, request: web.Request) -> web.Response:
        return _json({e.ID: element_to_json(e) for e in self.graph.edges.values()})

    async def edge(self, request: web.Request) -> web.Response:
        edge = self.graph.edges.get(request.match_info["id"])
        if edge is None:
            return _error(404, f"Edge '{request.match_info['id']}' does not exist")
        return _json(element_to_json(edge))

    # --- captures ------------------------------------------------------------------------------------
    async def capture_list(self, request: web.Request) -> web.Response:
        assert self.svc.captures is not None
        return _json({c.UUID: capture_to_json(c) for c in await self.svc.captures.list()})

    async def capture_get(self, request: web.Request) -> web.Response:
        assert self.svc.captures is not None
        cap = await self.svc.captures.get(request.match_info["id"])
        if cap is None:
            return _error(404, f"Capture '{request.match_info['id']}' does not exist")
        return _json(capture_to_json(cap))

    async def capture_create(self, request: web.Request) -> web.Response:
        assert self.svc.captures is not None
        try:
            body = await request.json()
            cap = capture_from_json(body)
        except ValueError as exc:
            return _error(400, str(exc) if isinstance(exc, CaptureError) else "request body must be JSON")
        if cap.BPFFilter:
            problem = _check_bpf(cap.BPFFilter)
            if problem:
                return _error(400, f"BPFFilter {cap.BPFFilter!r}: {problem}")
        try:  # a standing capture: selecting nothing today is a warning, never an error
            selected: Any = await self.svc.run_query(cap.GremlinQuery)
        except gremlin.GremlinError as exc:
            selected = exc
        await self.svc.captures.put(cap)
        warning = selection_warning(cap, selected)
        return _json({**capture_to_json(cap), **({"Warning": warning} if warning else {})})

    async def capture_delete(self, request: web.Request) -> web.Response:
        assert self.svc.captures is not None
        if not await self.svc.captures.delete(request.match_info["id"]):
            return _error(404, f"Capture '{request.match_info['id']}' does not exist")
        return web.Response(status=200)

    # --- websockets ----------------------------------------------------------------------------------
    async def _sync(self, gremlin_filter: str) -> dict[str, Any]:
        if gremlin_filter:
            result = await self.svc.run_query(gremlin_filter + ".SubGraph()")
            return result[0] if isinstance(result, list) and result else {"Nodes": [], "Edges": []}
        g = self.graph
        return {"Nodes": [element_to_json(n) for n in g.nodes.values()],
                "Edges": [element_to_json(e) for e in g.edges.values()]}

    async def ws_graph(self, request: web.Request) -> web.WebSocketResponse:
        return await self.svc.hub.serve(request, "graph", self._sync)

    async def ws_flow(self, request: web.Request) -> web.WebSocketResponse:
        return await self.svc.hub.serve(request, "flow", self._sync)


def _check_bpf(expr: str) -> str:
    """Compile the filter with libpcap, as the probes will; '' when valid, else libpcap's message."""
    from netsonde.flow.capture import BPFError, compile_bpf

    try:
        compile_bpf(expr)
    except BPFError as exc:
        return str(exc)
    return ""
