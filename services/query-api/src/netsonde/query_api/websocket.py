"""`/ws/subscriber`: graph events in Skydive's WebSocket envelope, and `/ws/subscriber/flow` for flows.

Envelope: {"Namespace": "Graph", "Type": "NodeAdded", "UUID": "", "Status": 200, "Obj": {...}}. A client sends
{"Namespace": "Graph", "Type": "SyncRequest", "Obj": {"GremlinFilter": ...}} and receives a "SyncReply" with
{"Nodes": [...], "Edges": [...]} (Skydive's sync), then every event.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web
from prometheus_client import Counter

from netsonde.common.bus.graph import GraphEvent
from netsonde.common.graph import element_to_json

from .ws_filter import FilteredView, FilterError, SubGraph, subgraph
from .ws_partial import PARTIAL, PARTIAL_TYPE, PolicyError, PreviousMetadata, update_policy

log = logging.getLogger(__name__)


def envelope(namespace: str, type_: str, obj: Any, uuid: str = "", status: int = 200) -> str:
    return json.dumps({"Namespace": namespace, "Type": type_, "UUID": uuid, "Status": status, "Obj": obj})


class Subscriber:
    """One WebSocket client with a bounded outgoing queue: a slow client is disconnected, never waited for.

    A client that stops reading fills the socket buffers, then its queue; the message that would exceed
    `max_queue` disconnects it (close 1008, or the connection aborted if even the close cannot be written),
    its backlog is freed at once and `on_slow` counts it. Memory per subscriber is bounded by `max_queue`."""

    def __init__(self, ws: web.WebSocketResponse, max_queue: int = 10_000,
                 on_slow: Callable[[], None] | None = None, transport: asyncio.BaseTransport | None = None) -> None:
        self.ws = ws
        self.max_queue = max_queue
        self.queue: asyncio.Queue[str | None] = asyncio.Queue(max_queue)
        self.overflowed = False
        self.view: FilteredView | None = None
        """Set when the client subscribed with a Gremlin filter (ws_filter.py)."""
        self.partial = False
        """X-Update-Policy: partial (ws_partial.py): updates as the metadata keys that changed."""
        self.on_slow = on_slow
        self.transport = transport
        self.writer_task: asyncio.Task[None] | None = None
        self._disconnecting: asyncio.Task[None] | None = None

    def send(self, text: str) -> None:
        if self.overflowed:
            return
        try:
            self.queue.put_nowait(text)
        except asyncio.QueueFull:
            self.overflowed = True
            self.queue = asyncio.Queue(1)  # the backlog goes now, not when the client goes
            if self.on_slow is not None:
                self.on_slow()
            self._disconnecting = asyncio.ensure_future(self._disconnect())

    async def _disconnect(self) -> None:
        """Close 1008 if the close frame can still be written, else (the client reads nothing) reset the
        connection: SO_LINGER 0 drops what the kernel still holds for it instead of keeping it until a timeout."""
        log.warning("disconnecting a WebSocket subscriber more than %d messages behind", self.max_queue)
        if self.writer_task is not None:
            self.writer_task.cancel()
        reason = f"subscriber too slow: more than {self.max_queue} messages behind".encode()
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await asyncio.wait_for(self.ws.close(code=1008, message=reason), 2.0)
        if self.transport is not None:
            sock = self.transport.get_extra_info("socket")
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()

    async def writer(self) -> None:
        while True:
            text = await self.queue.get()
            if text is None:
                return
            await self.ws.send_str(text)


class SubscriberHub:
    """Fans graph events and enriched flows out to every connected WebSocket client."""

    def __init__(self, max_queue: int = 10_000, slow_disconnects: Counter | None = None) -> None:
        self.max_queue = max_queue
        self.slow_disconnects = slow_disconnects
        """Counts subscribers disconnected for falling more than `max_queue` messages behind."""
        self.graph_clients: set[Subscriber] = set()
        self.flow_clients: set[Subscriber] = set()
        self.sent = 0
        self.run_query: Any = None
        """Runs a Gremlin query on the live graph (set by the service once its engine exists): for filters."""
        self.previous = PreviousMetadata()
        """What each update replaced, for partial subscribers (the replica's before-apply hook feeds it)."""

    def on_graph_events(self, events: list[GraphEvent]) -> None:
        if not self.graph_clients:
            return
        plain = [c for c in self.graph_clients if c.view is None]
        partial = self.previous.messages(events) if self.previous.wanted else {}
        for ev in events:
            text = envelope("Graph", ev.type, element_to_json(ev.obj))
            ptext = text
            if partial and ev.type in PARTIAL_TYPE:
                msg = partial.get((ev.obj.ID, ev.obj.Revision))
                if msg is not None:
                    ptext = envelope("Graph", PARTIAL_TYPE[ev.type], msg)
            for client in plain:
                client.send(ptext if client.partial else text)
                self.sent += 1
        filtered: dict[str, SubGraph | None] = {}
        for client in [c for c in self.graph_clients if c.view is not None]:
            view = client.view
            assert view is not None
            if view.query not in filtered:
                try:
                    filtered[view.query] = subgraph(self.run_query, view.query)
                except Exception as exc:  # the graph changed under a filter that now fails: say so, keep going
                    log.warning("subscriber filter %r failed: %s", view.query, exc)
                    filtered[view.query] = None
            now = filtered[view.query]
            if now is None:
                continue
            for type_, obj in view.changes(events, now):
                msg = partial.get((obj["ID"], obj["Revision"])) if client.partial and type_ in PARTIAL_TYPE else None
                if msg is not None:
                    type_, obj = PARTIAL_TYPE[type_], msg
                client.send(envelope("Graph", type_, obj))
                self.sent += 1

    def make_view(self, query: str) -> FilteredView:
        if self.run_query is None:
            raise FilterError("the graph is not ready yet")
        return FilteredView(query, self.run_query)

    def on_alert(self, event: dict[str, Any]) -> None:
        """An alert event to every graph subscriber, as Skydive broadcasts its `Alert` messages."""
        text = envelope("Alert", "Alert", event)
        for client in list(self.graph_clients):
            client.send(text)
            self.sent += 1

    def on_flows(self, flows: list[dict[str, Any]]) -> None:
        if not self.flow_clients or not flows:
            return
        text = envelope("Flow", "store", flows)
        for client in list(self.flow_clients):
            client.send(text)

    async def serve(self, request: web.Request, kind: str, sync: Any) -> web.WebSocketResponse:
        query = request.headers.get("X-Gremlin-Filter") or request.query.get("x-gremlin-filter", "")
        view = None
        try:
            policy = update_policy(request.headers, request.query)
        except PolicyError as exc:  # refused before the upgrade, as Skydive refuses the connection
            return web.Response(status=400, text=str(exc))  # type: ignore[return-value]
        if query and kind == "graph":
            try:
                view = self.make_view(query)
            except FilterError as exc:  # refused before the upgrade, as Skydive refuses the connection
                return web.Response(status=400, text=str(exc))  # type: ignore[return-value]
        ws = web.WebSocketResponse(heartbeat=30)
        await ws.prepare(request)
        counter = self.slow_disconnects
        client = Subscriber(ws, self.max_queue, on_slow=counter.labels(kind, "too_slow").inc if counter else None,
                            transport=request.transport)
        client.view = view
        client.partial = kind == "graph" and policy == PARTIAL
        clients = self.graph_clients if kind == "graph" else self.flow_clients
        clients.add(client)
        self.previous.wanted = any(c.partial for c in self.graph_clients)
        writer = asyncio.create_task(client.writer(), name="ws-writer")
        client.writer_task = writer
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                try:
                    req = json.loads(msg.data)
                except ValueError:
                    client.send(envelope("Graph", "Error", "message is not JSON", status=400))
                    continue
                if not isinstance(req, dict):
                    continue
                if req.get("Type") == "SyncRequest":
                    obj = req.get("Obj") or {}
                    try:
                        if kind == "graph" and isinstance(obj.get("GremlinFilter"), str):
                            # a filter in the SyncRequest replaces the subscription's, "" removes it (Skydive)
                            client.view = self.make_view(obj["GremlinFilter"]) if obj["GremlinFilter"] else None
                        elif client.view is not None and "GremlinFilter" not in obj:
                            obj = {"GremlinFilter": client.view.query}
                        reply = await sync(obj.get("GremlinFilter") or "")
                        client.send(envelope("Graph", "SyncReply", reply, uuid=req.get("UUID", "")))
                    except Exception as exc:
                        client.send(envelope("Graph", "SyncReply", str(exc), uuid=req.get("UUID", ""), status=400))
        finally:
            clients.discard(client)
            self.previous.wanted = any(c.partial for c in self.graph_clients)
            writer.cancel()
        return ws
