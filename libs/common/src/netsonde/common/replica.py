"""A read replica of the graph: snapshot from graph-builder, then graph events in sequence.

query-api replicas, flow-enricher and probe-flow keep one. Events that arrive while the snapshot is loading
are buffered and applied after it (those already in the snapshot are skipped by seq). A gap in the sequence,
or a new graph-builder epoch, triggers a new snapshot.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from prometheus_client import Counter

from .bus import Subjects, decode, encode
from .bus.graph import GraphEvent, GraphEventBatch, SnapshotChunk, SnapshotRequest
from .bus.inbound import InboundDecoder
from .graph import Graph

log = logging.getLogger(__name__)

EventListener = Callable[[list[GraphEvent]], Awaitable[None] | None]
SnapshotListener = Callable[[Graph], Awaitable[None] | None]


class GraphReplica:
    def __init__(
        self,
        nc: NATS,
        subjects: Subjects,
        snapshot_timeout: float = 10.0,
        bad_messages: Counter | None = None,
    ) -> None:
        """`bad_messages`: the owner's counter of undecodable bus messages (subject_kind, reason)."""
        self.nc = nc
        self.subjects = subjects
        self.graph = Graph()
        self.epoch = ""
        self.seq = 0
        self.synced = asyncio.Event()
        self.snapshot_timeout = snapshot_timeout
        self.listeners: list[EventListener] = []
        """Called with each batch of applied events (after the graph changed)."""
        self.before_apply: list[Callable[[GraphEvent, Graph], None]] = []
        """Called with each event and the graph just before the event changes it (to see what it replaces)."""
        self.snapshot_listeners: list[SnapshotListener] = []
        """Called with the graph each time a snapshot replaced it (before the events buffered meanwhile)."""
        self.resnapshots = 0
        self.inbound = InboundDecoder(bad_messages, log)
        self._buffer: list[GraphEventBatch] | None = None
        self._sub: Subscription | None = None
        self._resync_task: asyncio.Task[None] | None = None
        self._lock = asyncio.Lock()

    @property
    def bad_messages(self) -> int:
        """Graph event batches dropped as undecodable."""
        return self.inbound.dropped

    def on_snapshot(self, listener: SnapshotListener) -> None:
        """Call `listener(graph)` after every snapshot load (first sync, gap, new graph-builder epoch)."""
        self.snapshot_listeners.append(listener)

    async def start(self, wait: bool = True) -> None:
        self._sub = await self.nc.subscribe(self.subjects.graph_events, cb=self._on_events)
        self._resync_task = asyncio.create_task(self._resnapshot_loop(), name="replica-snapshot")
        if wait:
            await asyncio.wait_for(self.synced.wait(), self.snapshot_timeout * 3)

    async def stop(self) -> None:
        self._stopped = True  # a cancel swallowed by a failing unsubscribe must not keep the loop alive
        if self._resync_task is not None:
            self._resync_task.cancel()
        if self._sub is not None:
            try:
                await self._sub.unsubscribe()
            except Exception:
                pass

    async def _resnapshot_loop(self) -> None:
        """Load a snapshot now, then again whenever `synced` is cleared (gap or new epoch)."""
        while not getattr(self, "_stopped", False):
            if not self.synced.is_set():
                try:
                    await self._load_snapshot()
                except Exception as exc:
                    log.warning("graph snapshot failed (%r); retrying", exc)
                    await asyncio.sleep(1)
                    continue
            await asyncio.sleep(0.05)

    async def _load_snapshot(self) -> None:
        self._buffer = []
        inbox = self.nc.new_inbox()
        chunks: list[SnapshotChunk] = []
        done = asyncio.Event()

        async def on_chunk(msg: Msg) -> None:
            chunk = decode(msg.data, SnapshotChunk)
            chunks.append(chunk)
            if chunk.last:
                done.set()

        sub = await self.nc.subscribe(inbox, cb=on_chunk)
        try:
            await self.nc.publish(self.subjects.graph_snapshot, encode(SnapshotRequest()), reply=inbox)
            await asyncio.wait_for(done.wait(), self.snapshot_timeout)
        finally:
            await sub.unsubscribe()
        if len(chunks) != chunks[-1].index + 1 or len({(c.epoch, c.seq) for c in chunks}) != 1:
            raise RuntimeError("incomplete snapshot")
        graph = Graph()
        for chunk in chunks:
            for node in chunk.nodes:
                graph.upsert_node(node)
        for chunk in chunks:
            for edge in chunk.edges:
                graph.upsert_edge(edge)
        async with self._lock:
            self.graph.__dict__.update(graph.__dict__)  # keep the object identity others hold
            self.epoch, self.seq = chunks[0].epoch, chunks[0].seq
            buffered, self._buffer = self._buffer or [], None
            self.synced.set()
            self.resnapshots += 1
            gc.freeze()  # the loaded graph is long-lived: keep the collector from rescanning it (p99 latency)
            for snapshot_listener in self.snapshot_listeners:
                try:
                    result = snapshot_listener(self.graph)
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:
                    log.exception("graph snapshot listener failed")
            for batch in buffered:
                await self._apply(batch)
        log.info(
            "graph snapshot loaded",
            extra={"nodes": len(graph.nodes), "edges": len(graph.edges), "seq": self.seq},
        )

    async def _on_events(self, msg: Msg) -> None:
        batch = self.inbound(msg.data, GraphEventBatch, "graph_events", msg.subject)
        if batch is None:
            return
        if self._buffer is not None:
            self._buffer.append(batch)
            return
        if not self.synced.is_set():
            return
        async with self._lock:
            await self._apply(batch)

    async def _apply(self, batch: GraphEventBatch) -> None:
        if batch.epoch != self.epoch:
            self._lose_sync("new graph-builder epoch")
            return
        applied: list[GraphEvent] = []
        hooks = self.before_apply
        for ev in batch.events:
            if ev.seq <= self.seq:
                continue
            if ev.seq != self.seq + 1:
                self._lose_sync(f"gap: expected seq {self.seq + 1}, got {ev.seq}")
                return
            for hook in hooks:
                hook(ev, self.graph)
            self.graph.apply(ev)
            self.seq = ev.seq
            applied.append(ev)
        if applied:
            for listener in self.listeners:
                try:
                    result = listener(applied)
                    if asyncio.iscoroutine(result):
                        await result
                except Exception:
                    log.exception("graph listener failed")

    def _lose_sync(self, why: str) -> None:
        log.warning("graph replica out of sync (%s): reloading a snapshot", why)
        self.synced.clear()
