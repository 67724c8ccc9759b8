"""The alerting stack of the alert tests: graph-builder, query-api (optionally probe-topology) and alert-evaluator
in the test process on a real NATS and ClickHouse, plus what receives alerts: a webhook server (aiohttp, free
port), a plain nats-py + msgpack subscriber (no Netsonde code) and a WebSocket subscriber."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import msgpack
import nats
from aiohttp import ClientSession, WSMsgType, web

from netsonde.alert_evaluator.config import AlertEvaluatorConfig
from netsonde.alert_evaluator.service import AlertEvaluatorService
from netsonde.common.testing import free_port
from tests.integration.static_stack import Stack


class WebhookReceiver:
    """Records every POST body (with its arrival time); `/slow` answers after `slow_s`, `/fail` answers 500."""

    def __init__(self, slow_s: float = 30.0) -> None:
        self.port = free_port()
        self.slow_s = slow_s
        self.received: list[tuple[float, str, dict[str, Any]]] = []
        self.failures: list[str] = []
        """Event IDs answered 500 on /fail, once per attempt."""
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.json()
        path = request.path
        if path == "/slow":
            await asyncio.sleep(self.slow_s)
        if path == "/fail":
            self.failures.append(body["ID"])
            return web.Response(status=500)
        self.received.append((time.time(), path, body))
        return web.Response(status=204)

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/{tail:.*}", self._hook)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def events(self, path: str = "/") -> list[dict[str, Any]]:
        return [body for _, p, body in self.received if p == path]


class BusTap:
    """A third-party consumer: plain nats-py and msgpack on `<prefix>.alerts.*`."""

    def __init__(self) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []
        self.nc: Any = None

    async def start(self, url: str, prefix: str) -> None:
        self.nc = await nats.connect(url)

        async def on_msg(msg: Any) -> None:
            self.events.append((time.time(), msgpack.unpackb(msg.data)))

        await self.nc.subscribe(f"{prefix}.alerts.*", cb=on_msg)
        await self.nc.flush()

    async def stop(self) -> None:
        if self.nc is not None:
            await self.nc.close()

    def of(self, alert_uuid: str) -> list[dict[str, Any]]:
        return [ev for _, ev in self.events if ev["UUID"] == alert_uuid]


class WsTap:
    """A `/ws/subscriber` client keeping the `Alert` namespace messages."""

    def __init__(self) -> None:
        self.alerts: list[dict[str, Any]] = []
        self._session: ClientSession | None = None
        self._task: asyncio.Task[None] | None = None

    async def start(self, api_port: int) -> None:
        self._session = ClientSession()
        ws = await self._session.ws_connect(f"http://127.0.0.1:{api_port}/ws/subscriber")

        async def read() -> None:
            async for msg in ws:
                if msg.type == WSMsgType.TEXT:
                    data = json.loads(msg.data)
                    if data.get("Namespace") == "Alert":
                        self.alerts.append(data)

        self._task = asyncio.create_task(read())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        if self._session is not None:
            await self._session.close()


class AlertStack(Stack):
    """static_stack.Stack plus an alert-evaluator (restartable) with its own settings."""

    def __init__(self, common: dict[str, Any], **evaluator: Any) -> None:
        super().__init__(common)
        self.evaluator_settings = evaluator
        self.evaluator: AlertEvaluatorService | None = None

    async def start_evaluator(self) -> AlertEvaluatorService:
        self.evaluator = AlertEvaluatorService(AlertEvaluatorConfig.load(**self.common, **self.evaluator_settings))
        await self.evaluator.start()
        return self.evaluator

    async def stop_evaluator(self) -> None:
        if self.evaluator is not None:
            await self.evaluator.stop()
            self.evaluator = None

    async def stop(self) -> None:
        await self.stop_evaluator()
        await super().stop()


async def wait_until(predicate: Any, timeout: float, what: str, interval: float = 0.01) -> Any:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = predicate()
        if asyncio.iscoroutine(last):
            last = await last
        if last:
            return last
        await asyncio.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}; last: {last!r}")
