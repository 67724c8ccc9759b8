"""The service lifecycle every Netsonde process shares.

start (in order) -> run until SIGINT/SIGTERM or until a background task dies -> stop (reverse order:
stop pulling, drain the bus, flush pending batches under their own grace period, close clients).
Each service also serves `GET /healthz` and `GET /metrics` (Prometheus) on its own port.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import ssl
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from aiohttp import web

from .bus.inbound import InboundDecoder
from .bus.streams import set_default_replicas
from .config import BaseConfig
from .logs import setup_logging
from .metrics import Metrics

log = logging.getLogger(__name__)


class Service:
    """Base class: subclasses implement `on_start`, optionally `on_stop`, and add background tasks."""

    name = "service"

    def __init__(self, config: BaseConfig) -> None:
        self.config = config
        set_default_replicas(config.stream_replicas)
        self.metrics = Metrics(self.name)
        self.inbound = InboundDecoder(self.metrics.bad_messages, logging.getLogger(type(self).__module__))
        """Decodes bus input: bad messages counted in `bad_messages_total`, logged once, dropped."""
        self.started_at = time.time()
        self._tasks: list[asyncio.Task[Any]] = []
        self._stopping = asyncio.Event()
        self._http_runner: web.AppRunner | None = None
        self.http_port: int = 0
        self.ready = False

    # --- to override -------------------------------------------------------------------------------
    async def on_start(self) -> None:
        """Connect, subscribe, start tasks. Raise to abort the start."""

    async def on_stop(self) -> None:
        """Stop pulling, drain, flush, close: called once, in reverse order of what on_start built."""

    def health(self) -> dict[str, Any]:
        """Extra fields of /healthz; return {'ok': False, ...} to report unhealthy."""
        return {}

    def add_routes(self, app: web.Application) -> None:
        """Services that serve more than health and metrics add their routes here."""

    def ssl_context(self) -> ssl.SSLContext | None:
        """A service that serves HTTPS (query-api with tls_cert/tls_key) returns its context here."""
        return None

    # --- lifecycle ---------------------------------------------------------------------------------
    def spawn(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """Start a named background task; if it dies unexpectedly, the whole service stops."""
        task = asyncio.create_task(coro, name=name)
        self._tasks.append(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or self._stopping.is_set():
            return
        exc = task.exception()
        if exc is not None:
            log.error("task %s died: %r; stopping the service", task.get_name(), exc, exc_info=exc)
            self._stopping.set()

    def request_stop(self) -> None:
        self._stopping.set()

    @property
    def stopping(self) -> bool:
        return self._stopping.is_set()

    async def start(self) -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/metrics", self._metrics)
        self.add_routes(app)
        self._http_runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._http_runner.setup()
        site = web.TCPSite(
            self._http_runner,
            self.config.http_host,
            self.config.http_port,
            reuse_address=True,
            ssl_context=self.ssl_context(),
        )
        await site.start()
        server = site._server
        assert isinstance(server, asyncio.Server) and server.sockets
        self.http_port = server.sockets[0].getsockname()[1]
        await self.on_start()
        self.ready = True
        log.info("%s started", self.name, extra={"http": f"http://{self.config.http_host}:{self.http_port}"})

    async def stop(self) -> None:
        self._stopping.set()
        self.ready = False
        try:
            await self.on_stop()
        except Exception:
            log.exception("error while stopping %s", self.name)
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._http_runner is not None:
            await self._http_runner.cleanup()
        log.info("%s stopped", self.name)

    async def run(self) -> None:
        """Start, wait for a signal (or a dead task), stop."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, self._stopping.set)
        await self.start()
        await self._stopping.wait()
        await self.stop()

    async def _healthz(self, request: web.Request) -> web.Response:
        body = {
            "service": self.name,
            "host": self.config.host_id,
            "ok": self.ready,
            "uptime_s": round(time.time() - self.started_at, 1),
        }
        body.update(self.health())
        return web.json_response(body, status=200 if body["ok"] else 503)

    async def _metrics(self, request: web.Request) -> web.Response:
        return web.Response(body=self.metrics.exposition(), content_type="text/plain", charset="utf-8")


def main_for(service_cls: Callable[[Any], Service], config_cls: type[BaseConfig]) -> None:
    """Entry point body of every `python -m netsonde.<service>`."""
    config = config_cls.load()
    setup_logging(
        service_cls.name if hasattr(service_cls, "name") else "netsonde",
        config.log_level,
        config.log_format,
    )
    service = service_cls(config)
    try:
        asyncio.run(service.run())
    except KeyboardInterrupt:
        pass


async def wait_for(
    predicate: Callable[[], bool | Awaitable[bool]], timeout: float, interval: float = 0.02
) -> bool:
    """Poll a condition until it holds or the timeout passes (tests, start-up waits: never a bare sleep)."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result) or isinstance(result, Awaitable):
            result = await result
        if result:
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
