"""NATS connection helper: reconnects forever, logs state changes, drains on stop."""

from __future__ import annotations

import asyncio
import logging

import nats
from nats.aio.client import Client as NATS

log = logging.getLogger(__name__)


async def connect(url: str, name: str, connect_timeout: float = 5.0) -> NATS:
    """Connect to NATS (comma-separated URLs allowed). Raises if no server answers at start-up: a service
    that cannot reach its bus should fail loudly, then rely on reconnects once it has started."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %r", exc)

    async def on_disconnect() -> None:
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    return await nats.connect(
        servers=[u.strip() for u in url.split(",") if u.strip()],
        name=name,
        connect_timeout=connect_timeout,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        pending_size=64 * 1024 * 1024,
    )


async def close(nc: NATS | None, timeout: float = 5.0) -> None:
    """Drain (deliver what is in flight, flush what we published) then close; close anyway on timeout."""
    if nc is None or nc.is_closed:
        return
    try:
        await asyncio.wait_for(nc.drain(), timeout)
    except Exception as exc:  # drain can time out with dead JetStream subscriptions; closing is enough then
        log.debug("nats drain failed (%r), closing", exc)
        try:
            await nc.close()
        except Exception:
            pass
