"""What changed and where packets are lost, over REST (the Gremlin steps Diff, FlowChanges, FlowPath and
LossReport, docs/gremlin.md):

- `GET /api/diff?from=-1h[&to=now][&scope=GREMLIN][&flows=1][&factor=2][&idle=30s][&rate_window=1m]
  [&metrics=0][&ignore=k1,k2]`: graph changes (and flow changes) between two instants;
- `GET /api/flowpath/{trackingid}[?from=&to=&settle=10s]`: the capture points of one stream in path order,
  counts per hop, loss between hops;
- `GET /api/loss[?window=5m][&top=20][&settle=10s]`: the links losing the most packets.

Times take what `Context()` takes (`-1h`, `now`, Unix s/ms, ISO 8601, RFC 1123). An unknown parameter is a
400 naming it.
"""

from __future__ import annotations

import asyncio
import json
from typing import TYPE_CHECKING, Any

from aiohttp import web

import netsonde.gremlin as gremlin
from netsonde.gremlin import ast
from netsonde.gremlin.diff import GraphDiffer
from netsonde.gremlin.flowchanges import capture_tids, flow_changes, parse_ms
from netsonde.gremlin.path import flow_path, loss_report
from netsonde.gremlin.timeparse import now_ms, parse_time
from netsonde.gremlin.traversal import GraphView

if TYPE_CHECKING:
    from .service import QueryApiService

DIFF_PARAMS = {"from", "to", "scope", "flows", "factor", "idle", "rate_window", "metrics", "ignore"}
PATH_PARAMS = {"from", "to", "settle"}
LOSS_PARAMS = {"window", "top", "settle"}


class BadParam(ValueError):
    """A query parameter that cannot be honoured (400)."""


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(text=json.dumps(data, default=str), status=status, content_type="application/json")


def _error(status: int, message: str) -> web.Response:
    return web.Response(text=message, status=status, content_type="text/plain")


def _check_params(request: web.Request, allowed: set[str]) -> None:
    unknown = sorted(set(request.query) - allowed)
    if unknown:
        raise BadParam(f"unknown parameter(s) {', '.join(unknown)}; accepted: {', '.join(sorted(allowed))}")


def _time(request: web.Request, name: str, default: str, now: int) -> int:
    text = request.query.get(name, default)
    try:
        return parse_time(ast.Literal(text, 0), now)
    except gremlin.GremlinError as e:
        raise BadParam(f"{name}: {e}") from None


def _flag(request: web.Request, name: str, default: bool) -> bool:
    text = request.query.get(name)
    if text is None:
        return default
    if text.lower() in ("1", "true", "yes"):
        return True
    if text.lower() in ("0", "false", "no"):
        return False
    raise BadParam(f"{name}: expected 1/0 or true/false, got {text!r}")


def _duration(request: web.Request, name: str, default: str) -> int:
    try:
        return parse_ms(request.query.get(name, default), name)
    except ValueError as e:
        raise BadParam(str(e)) from None


def _number(request: web.Request, name: str, default: float, minimum: float) -> float:
    text = request.query.get(name)
    if text is None:
        return default
    try:
        v = float(text)
    except ValueError:
        raise BadParam(f"{name}: {text!r} is not a number") from None
    if v < minimum:
        raise BadParam(f"{name}: must be at least {minimum:g}")
    return v


class DiffApi:
    def __init__(self, svc: QueryApiService) -> None:
        self.svc = svc

    def register(self, app: web.Application) -> None:
        r = app.router
        r.add_get("/api/diff", self.diff)
        r.add_get("/api/flowpath/{trackingid}", self.flowpath)
        r.add_get("/api/loss", self.loss)

    def _backend(self, name: str) -> Any:
        backend = getattr(self.svc.engine, name, None) if self.svc.engine is not None else None
        if backend is None:
            raise gremlin.GremlinError(f"this query-api has no {name} store (ClickHouse)", status=501)
        return backend

    async def _answer(self, fn: Any) -> web.Response:
        try:
            return _json(await fn())
        except BadParam as e:
            return _error(400, str(e))
        except gremlin.GremlinError as e:
            return _error(getattr(e, "status", 400) or 400, str(e))

    async def diff(self, request: web.Request) -> web.Response:
        async def run() -> Any:
            _check_params(request, DIFF_PARAMS)
            now = now_ms()
            lo, hi = _time(request, "from", "-1h", now), _time(request, "to", "now", now)
            if hi < lo:
                raise BadParam("to is before from")
            with_flows = _flag(request, "flows", True)
            factor = _number(request, "factor", 2.0, 1.0)
            if factor <= 1:
                raise BadParam("factor: must be greater than 1")
            idle, rate_window = _duration(request, "idle", "30s"), _duration(request, "rate_window", "1m")
            ignore = [k for k in request.query.get("ignore", "").split(",") if k]
            history = self._backend("history")
            scope_ids: list[str] | None = None
            tids: list[str] | None = None
            scope = request.query.get("scope", "")
            if scope:
                nodes = await self.svc.run_query(scope)
                if not isinstance(nodes, list) or any(
                    not isinstance(n, dict) or "ID" not in n or "Parent" in n for n in nodes
                ):
                    raise BadParam(f"scope {scope!r} must select nodes")
                scope_ids = [n["ID"] for n in nodes]
                tids = capture_tids(_Md(n) for n in nodes)
            limits = self.svc.engine.limits
            answer = await asyncio.to_thread(
                GraphDiffer(history).diff,
                lo,
                hi,
                scope_ids,
                limits.timeout_s,
                not _flag(request, "metrics", False),
                ignore,
            )
            out = answer.to_json()
            if scope:
                out["Scope"] = {"Query": scope, "Nodes": len(scope_ids or [])}
            if with_flows and self.svc.engine.flows is None:
                out["FlowsError"] = "this query-api has no flow store"
            elif with_flows:
                try:  # the graph half stands on its own: a flow-store failure is shown next to it
                    out["Flows"] = await asyncio.to_thread(
                        flow_changes,
                        self.svc.engine.flows,
                        lo,
                        hi,
                        tids,
                        factor,
                        idle,
                        rate_window,
                        limits.max_results,
                        limits.timeout_s,
                    )
                except gremlin.GremlinError as e:
                    text = str(e)
                    out["FlowsError"] = (
                        "flow tables not created yet (no flow-enricher has written to this database)"
                        if "UNKNOWN_TABLE" in text
                        else text[:300]
                    )
            return out

        return await self._answer(run)

    async def flowpath(self, request: web.Request) -> web.Response:
        async def run() -> Any:
            _check_params(request, PATH_PARAMS)
            now = now_ms()
            lo = _time(request, "from", "0", now) if "from" in request.query else 0
            hi = _time(request, "to", "now", now)
            settle = _duration(request, "settle", "10s")
            flows = self._backend("flows")
            snapshot, _ = self.svc.snapshots.get()
            return await asyncio.to_thread(
                flow_path,
                flows,
                GraphView(snapshot),
                request.match_info["trackingid"],
                lo,
                hi,
                settle,
                self.svc.engine.limits.timeout_s,
            )

        return await self._answer(run)

    async def loss(self, request: web.Request) -> web.Response:
        async def run() -> Any:
            _check_params(request, LOSS_PARAMS)
            window = _duration(request, "window", "5m")
            settle = _duration(request, "settle", "10s")
            top = int(_number(request, "top", 20, 1))
            flows = self._backend("flows")
            snapshot, _ = self.svc.snapshots.get()
            hi = now_ms()
            return await asyncio.to_thread(
                loss_report,
                flows,
                GraphView(snapshot),
                hi - window,
                hi,
                settle,
                top,
                10_000,
                self.svc.engine.limits.timeout_s,
            )

        return await self._answer(run)


class _Md:
    """A node's JSON seen as an element (capture_tids reads `.Metadata`)."""

    def __init__(self, node: dict[str, Any]) -> None:
        self.Metadata = node.get("Metadata") or {}


__all__ = ["DiffApi"]
