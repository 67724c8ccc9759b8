"""Skydive's alert API: `GET/POST /api/alert`, `GET/DELETE /api/alert/{id}`.

query-api checks a definition (fields, Trigger, Action, and the Expression compiled and run once on its graph
replica: a Gremlin error or an expression beyond the query limits is a 400 naming it) and stores it in the
`<prefix>_alerts` key-value bucket, which alert-evaluator watches. Each alert is answered with its current
`Status` (State pending/ok/firing/error, Since, Error, ReasonCount) read from `<prefix>_alert_states`.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web
from nats.js.errors import InvalidKeyError, KeyNotFoundError, NoKeysError

import netsonde.gremlin as gremlin
from netsonde.common.bus import decode, encode
from netsonde.common.bus.alerts import (
    Alert,
    AlertError,
    AlertStatus,
    alert_from_json,
    alert_to_json,
    open_alert_bucket,
    open_alert_state_bucket,
)
from netsonde.gremlin.engine import compile_query

if TYPE_CHECKING:
    from .service import QueryApiService

LIMIT_STATUSES = (408, 413)
"""GremlinError statuses of a query stopped by the limits (time, result size)."""


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, default=str), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return web.Response(text=message, status=status, content_type="text/plain")


class AlertApi:
    def __init__(self, svc: QueryApiService) -> None:
        self.svc = svc
        self.kv: Any = None
        self.states: Any = None

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/api/alert", self.list)
        r.add_get("/api/alert/{id}", self.get)
        r.add_post("/api/alert", self.create)
        r.add_delete("/api/alert/{id}", self.delete)

    async def _buckets(self) -> tuple[Any, Any]:
        if self.kv is None:
            js = self.svc.nc.jetstream()
            self.states = await open_alert_state_bucket(js, self.svc.subjects)
            self.kv = await open_alert_bucket(js, self.svc.subjects)
        return self.kv, self.states

    async def _load(self, ident: str) -> Alert | None:
        kv, _ = await self._buckets()
        try:
            entry = await kv.get(ident)
        except (KeyNotFoundError, InvalidKeyError):  # a name that cannot be a key names no alert
            return None
        if entry is None or not entry.value:
            return None
        return decode(entry.value, Alert)

    async def _status(self, ident: str) -> AlertStatus | None:
        _, states = await self._buckets()
        try:
            entry = await states.get(ident)
        except (KeyNotFoundError, InvalidKeyError):
            return None
        if entry is None or not entry.value:
            return None
        return decode(entry.value, AlertStatus)

    async def list(self, request: web.Request) -> web.Response:
        kv, _ = await self._buckets()
        try:
            keys = await kv.keys()
        except NoKeysError:
            keys = []
        # definitions and states read concurrently (one KV round trip each): 1 000 alerts list fast
        alerts = await asyncio.gather(*(self._load(key) for key in keys))
        states = await asyncio.gather(*(self._status(key) for key in keys))
        out = {a.UUID: alert_to_json(a, st) for a, st in zip(alerts, states, strict=True) if a is not None}
        return _json(out)

    async def get(self, request: web.Request) -> web.Response:
        ident = request.match_info["id"]
        alert = await self._load(ident) if ident.replace("-", "").replace("_", "").isalnum() else None
        if alert is None:
            return _error(404, f"Alert '{ident}' not found")
        return _json(alert_to_json(alert, await self._status(ident)))

    async def create(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "request body must be a JSON alert object")
        try:
            alert = alert_from_json(body)
        except AlertError as exc:
            return _error(exc.status, str(exc))
        try:
            compile_query(alert.Expression)
        except gremlin.GremlinError as exc:
            return _error(400, f"Expression: {exc}")
        warning = ""
        try:  # once now: an expression beyond the query limits is refused, a failing one is a warning
            await self.svc.run_query(alert.Expression)
        except gremlin.GremlinError as exc:
            status = getattr(exc, "status", 400)
            if status in LIMIT_STATUSES:
                return _error(400, f"Expression exceeds the query limits: {exc}")
            warning = f"Expression cannot be evaluated now ({exc}); the alert is in state error until it can"
        kv, _ = await self._buckets()
        await kv.put(alert.UUID, encode(alert))
        out = alert_to_json(alert)
        if warning:
            out["Warning"] = warning
        return _json(out)

    async def delete(self, request: web.Request) -> web.Response:
        ident = request.match_info["id"]
        if not ident.replace("-", "").replace("_", "").isalnum() or await self._load(ident) is None:
            return _error(404, f"Alert '{ident}' not found")
        kv, _ = await self._buckets()
        await kv.delete(ident)
        return web.Response(status=200)
