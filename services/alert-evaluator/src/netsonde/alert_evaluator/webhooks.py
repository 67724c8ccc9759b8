"""Webhook delivery: a bounded queue and a few workers, so a slow or failing receiver never holds evaluation.

Each event is POSTed as JSON (`event_to_json`) with a timeout; a connection error, a timeout or an HTTP 5xx,
408 or 429 is retried with backoff (0.5 s, 1 s, 2 s ...), any other status is final. Every outcome is counted.
Delivery is at least once: a receiver that answered too late may see a retry, with the same event `ID`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import aiohttp
import msgspec
from prometheus_client import Counter, Histogram

from netsonde.common.bus.alerts import AlertEvent, event_to_json
from netsonde.common.logs import OnceLogger

log = logging.getLogger(__name__)
RETRYABLE = frozenset({408, 429})


class WebhookSender:
    def __init__(
        self,
        timeout_s: float,
        retries: int,
        workers: int,
        max_queue: int,
        results: Counter,
        seconds: Histogram,
    ) -> None:
        self.timeout_s = timeout_s
        self.retries = retries
        self.workers = workers
        self.queue: asyncio.Queue[tuple[str, AlertEvent]] = asyncio.Queue(max_queue)
        self.results = results
        """Labels: result = delivered, failed (after every retry), rejected (a final HTTP error), dropped."""
        self.seconds = seconds
        self.bad = OnceLogger(log)
        self._session: aiohttp.ClientSession | None = None
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=self.timeout_s))
        self._tasks = [asyncio.create_task(self._worker(), name=f"webhook-{i}") for i in range(self.workers)]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            try:
                await task
            except (asyncio.CancelledError, Exception):
                pass
        if self._session is not None:
            await self._session.close()

    def submit(self, url: str, event: AlertEvent) -> None:
        """Queue a call; never waits (a full queue drops the event, counted)."""
        try:
            self.queue.put_nowait((url, event))
        except asyncio.QueueFull:
            self.results.labels("dropped").inc()
            self.bad.warning("queue", f"webhook queue full ({self.queue.maxsize}): events dropped")

    async def _worker(self) -> None:
        while True:
            url, event = await self.queue.get()
            await self._deliver(url, event)

    async def _deliver(self, url: str, event: AlertEvent) -> None:
        assert self._session is not None
        body = msgspec.json.encode(event_to_json(event))
        headers = {
            "Content-Type": "application/json",
            "X-Netsonde-Alert": event.UUID,
            "X-Netsonde-Event": event.ID,
        }
        delay = 0.5
        for attempt in range(self.retries + 1):
            started = time.perf_counter()
            problem: Any
            try:
                async with self._session.post(url, data=body, headers=headers) as resp:
                    await resp.read()
                    status = resp.status
                self.seconds.observe(time.perf_counter() - started)
                if status < 300:
                    self.results.labels("delivered").inc()
                    return
                if status < 500 and status not in RETRYABLE:
                    self.results.labels("rejected").inc()
                    self.bad.warning(url, f"webhook {url} refused alert event {event.ID}: HTTP {status}")
                    return
                problem = f"HTTP {status}"
            except (TimeoutError, aiohttp.ClientError, OSError) as exc:
                problem = repr(exc)
            if attempt < self.retries:
                await asyncio.sleep(delay)
                delay *= 2
        self.results.labels("failed").inc()
        self.bad.warning(
            url,
            f"webhook {url} failed for alert event {event.ID} after {self.retries + 1} attempts: {problem}",
        )
