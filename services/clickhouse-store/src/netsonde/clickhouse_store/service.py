"""The store as a Netsonde service: the engine, the ClickHouse HTTP port, session expiry, clean shutdown."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from aiohttp import web

from netsonde.common.service import Service

from .config import StoreConfig
from .engine import Engine
from .http import ClickHouseHTTP

log = logging.getLogger(__name__)


class StoreService(Service):
    """Owns one chdb data directory and serves ClickHouse's HTTP interface for it on `config.port`."""

    name = "store"

    def __init__(self, config: StoreConfig) -> None:
        super().__init__(config)
        self.config: StoreConfig = config
        self.engine = Engine(
            config.data_dir,
            config.query_connections,
            config.insert_connections,
            config.max_sessions,
            config.tmp_dir or None,
        )
        self.port = 0
        self._runner: web.AppRunner | None = None
        self.handler: ClickHouseHTTP | None = None
        self._site: web.TCPSite | None = None
        self.metrics.gauge("sessions", "Open HTTP sessions").set_function(lambda: len(self.engine.sessions))
        self.metrics.gauge("inflight_statements", "Statements running in the engine").set_function(
            lambda: self.engine.inflight
        )

    async def on_start(self) -> None:
        await self.engine.start()
        handler = self.handler = ClickHouseHTTP(self.engine, self.config, self.metrics)
        self._runner = web.AppRunner(
            handler.app(),
            access_log=None,
            handle_signals=False,
            auto_decompress=False,
            shutdown_timeout=self.config.shutdown_grace,
        )
        await self._runner.setup()
        site = self._site = web.TCPSite(self._runner, self.config.host, self.config.port, reuse_address=True)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.spawn(self._expire_sessions(), "expire-sessions")
        log.info(
            "ClickHouse HTTP interface listening",
            extra={
                "url": f"http://{self.config.host}:{self.port}",
                "data_dir": self.config.data_dir,
                "engine": self.engine.version,
            },
        )

    async def _expire_sessions(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.engine.expire_sessions()

    async def on_stop(self) -> None:
        # Stop accepting, abort requests still uploading (nothing of theirs is written yet), let statements
        # running in the engine (inserts included) finish, then close the engine.
        if self._site is not None:
            await self._site.stop()
        if self.handler is not None:
            aborted = self.handler.abort_receiving()
            if aborted:
                log.info("aborted requests still receiving their body", extra={"requests": aborted})
        if self._runner is not None:
            await self._runner.cleanup()
        await self.engine.close(self.config.shutdown_grace)

    def health(self) -> dict[str, Any]:
        return {
            "port": self.port,
            "engine": self.engine.version,
            "sessions": len(self.engine.sessions),
            "inflight": self.engine.inflight,
        }
