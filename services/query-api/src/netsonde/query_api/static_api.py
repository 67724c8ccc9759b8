"""Skydive's static topology API: `/api/node`, `/api/edge` (POST, PATCH, DELETE; GET is in routes.py),
`/api/noderule` and `/api/edgerule` (GET, POST, DELETE).

query-api checks the request's shape (400 naming the field), then asks graph-builder, the single writer, to
apply it (`StaticRequest` on `<prefix>.static.request`). Before answering, it waits until its own graph
replica holds the change, so a client that creates a node and queries it right away finds it. Rules are read
back from the `<prefix>_static` key-value bucket, which any replica can read.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web
from nats.js.errors import KeyNotFoundError

from netsonde.common.bus import BusDecodeError, decode, encode
from netsonde.common.bus.static import (
    EdgeRule,
    NodeRule,
    StaticError,
    StaticReply,
    StaticRequest,
    edge_from_json,
    edgerule_from_json,
    node_from_json,
    noderule_from_json,
    open_static_bucket,
    rule_to_json,
    static_key,
)
from netsonde.common.graph import element_to_json

if TYPE_CHECKING:
    from .service import QueryApiService

REQUEST_TIMEOUT_S = 15.0
"""How long to wait for graph-builder (a rule query may take up to its time limit)."""


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, default=str), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return web.Response(text=message, status=status, content_type="text/plain")


class StaticApi:
    def __init__(self, svc: QueryApiService) -> None:
        self.svc = svc
        self.kv: Any = None

    def register(self, app: web.Application) -> None:
        r = app.router
        for kind in ("node", "edge"):
            r.add_post(f"/api/{kind}", self._create(kind))
            r.add_patch(f"/api/{kind}/{{id}}", self._patch(kind))
            r.add_delete(f"/api/{kind}/{{id}}", self._delete(kind))
        for kind in ("noderule", "edgerule"):
            r.add_get(f"/api/{kind}", self._rule_list(kind))
            r.add_get(f"/api/{kind}/{{id}}", self._rule_get(kind))
            r.add_post(f"/api/{kind}", self._create(kind))
            r.add_delete(f"/api/{kind}/{{id}}", self._delete(kind))

    # --- writes, through graph-builder ---------------------------------------------------------------
    def _create(self, kind: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            if "X-Resource-TTL" in request.headers:
                return _error(
                    400, "X-Resource-TTL is not supported: static objects and rules stay until deleted"
                )
            try:
                body = await request.json()
            except ValueError:
                return _error(400, f"request body must be a JSON {kind} object")
            try:
                if kind == "node":
                    req = StaticRequest(op="create", kind=kind, element=node_from_json(body))
                elif kind == "edge":
                    req = StaticRequest(op="create", kind=kind, element=edge_from_json(body))
                elif kind == "noderule":
                    req = StaticRequest(op="create", kind=kind, noderule=noderule_from_json(body))
                else:
                    req = StaticRequest(op="create", kind=kind, edgerule=edgerule_from_json(body))
            except StaticError as exc:
                return _error(exc.status, str(exc))
            return await self._send(req)

        return handler

    def _patch(self, kind: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            try:
                ops = await request.json()
            except ValueError:
                return _error(400, "incorrect JSON patch: the body is not JSON")
            problem = _check_patch(ops)
            if problem:
                return _error(400, f"incorrect JSON patch: {problem}")
            return await self._send(
                StaticRequest(op="patch", kind=kind, id=request.match_info["id"], patch=ops)
            )

        return handler

    def _delete(self, kind: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            return await self._send(StaticRequest(op="delete", kind=kind, id=request.match_info["id"]))

        return handler

    async def _send(self, req: StaticRequest) -> web.Response:
        try:
            msg = await self.svc.nc.request(
                self.svc.subjects.static_request, encode(req), timeout=REQUEST_TIMEOUT_S
            )
        except Exception as exc:  # no graph-builder answering
            return _error(503, f"graph-builder did not answer ({exc!r}); nothing was changed")
        try:
            reply = decode(msg.data, StaticReply)
        except BusDecodeError as exc:
            return _error(502, f"unreadable answer from graph-builder: {exc}")
        if reply.status >= 400:
            return _error(reply.status, reply.error)
        if reply.status == 304:
            return web.Response(status=304)
        await self._wait_replica(reply)
        if reply.element is not None:
            return _json(element_to_json(reply.element), reply.status)
        rule: NodeRule | EdgeRule | None = reply.noderule or reply.edgerule
        if rule is not None:
            return _json(rule_to_json(rule), reply.status)
        return web.Response(status=reply.status, content_type="text/plain")

    async def _wait_replica(self, reply: StaticReply, timeout: float = 5.0) -> None:
        """Read-your-writes: wait (bounded) until this replica applied the events of the change."""
        replica = self.svc.replica
        if replica is None:
            return
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if replica.synced.is_set() and replica.epoch == reply.epoch and replica.seq >= reply.seq:
                return
            await asyncio.sleep(0.005)

    # --- rule reads, from the bucket -----------------------------------------------------------------
    async def _bucket(self) -> Any:
        if self.kv is None:
            self.kv = await open_static_bucket(self.svc.nc.jetstream(), self.svc.subjects)
        return self.kv

    async def _load_rule(self, kind: str, key: str) -> NodeRule | EdgeRule | None:
        kv = await self._bucket()
        try:
            entry = await kv.get(key)
        except KeyNotFoundError:
            return None
        if entry is None or not entry.value:
            return None
        if kind == "noderule":
            return decode(entry.value, NodeRule)
        return decode(entry.value, EdgeRule)

    def _rule_list(self, kind: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            kv = await self._bucket()
            try:
                keys = await kv.keys()
            except Exception:  # nats-py raises NoKeysError on an empty bucket
                keys = []
            out: dict[str, Any] = {}
            for key in keys:
                if key.startswith(kind + "."):
                    rule = await self._load_rule(kind, key)
                    if rule is not None:
                        out[rule.UUID] = rule_to_json(rule)
            return _json(out)

        return handler

    def _rule_get(self, kind: str) -> Any:
        async def handler(request: web.Request) -> web.Response:
            ident = request.match_info["id"]
            rule = await self._load_rule(kind, static_key(kind, ident))
            if rule is None:
                return _error(404, f"{'NodeRule' if kind == 'noderule' else 'EdgeRule'} '{ident}' not found")
            return _json(rule_to_json(rule))

        return handler


def _check_patch(ops: Any) -> str:
    """Shape of an RFC 6902 patch: a list of objects with a known `op` and a string `path` ('' when fine)."""
    if not isinstance(ops, list):
        return "expected a JSON array of operations"
    for i, op in enumerate(ops):
        if not isinstance(op, dict):
            return f"operation {i} is not an object"
        if op.get("op") not in ("add", "remove", "replace", "move", "copy", "test"):
            return f"operation {i}: op must be one of add, remove, replace, move, copy, test"
        if not isinstance(op.get("path"), str):
            return f"operation {i}: path (a JSON pointer string) is required"
        if op["op"] in ("add", "replace", "test") and "value" not in op:
            return f"operation {i}: {op['op']} needs a value"
        if op["op"] in ("move", "copy") and not isinstance(op.get("from"), str):
            return f"operation {i}: {op['op']} needs from"
    return ""
