"""The bus as a plain consumer sees it (nats-py + msgpack, no project decode code): the capture definitions'
KV bucket with every CaptureStatus collected, and the flow stream read batch by batch."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import msgpack
import nats
from nats.aio.msg import Msg

from netsonde.common.bus import Subjects


@dataclass
class CaptureBus:
    """A connection, its JetStream, the capture bucket, and every status message received since `open`."""

    nc: Any
    js: Any
    kv: Any
    statuses: list[dict[str, Any]] = field(default_factory=list)

    @classmethod
    async def open(cls, nats_url: str, subjects: Subjects) -> CaptureBus:
        nc = await nats.connect(nats_url)
        js = nc.jetstream()
        bus = cls(nc, js, None)

        async def on_status(m: Msg) -> None:
            bus.statuses.append(msgpack.unpackb(m.data))

        await nc.subscribe(subjects.capture_status, cb=on_status)
        bus.kv = await js.key_value(subjects.capture_bucket)
        return bus


async def flow_batches(sub: Any, done: Callable[[], bool], timeout: float = 15.0) -> AsyncIterator[tuple[Msg, Any]]:
    """Each message of pull subscription `sub` with its decoded batch, fetched 10 at a time until `done()` (asked
    between fetches) or `timeout` s; a message is acked once the caller has handled it (not if it raised)."""
    deadline = time.monotonic() + timeout
    while not done() and time.monotonic() < deadline:
        try:
            msgs = await sub.fetch(10, timeout=1)
        except nats.errors.TimeoutError:
            continue
        for m in msgs:
            yield m, msgpack.unpackb(m.data)
            await m.ack()


async def waiting_batches(sub: Any, batch: int) -> AsyncIterator[Any]:
    """The decoded batches of up to `batch` messages of pull subscription `sub` waiting now (half a second at
    most; none, or any fetch error, is no error: a poll asks again); each acked once the caller has handled it."""
    try:
        msgs = await sub.fetch(batch, timeout=0.5)
    except Exception:
        msgs = []
    for m in msgs:
        yield msgpack.unpackb(m.data)
        await m.ack()
