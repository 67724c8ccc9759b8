"""flow-enricher service: the pull loop.

fetch (durable pull consumer shared by every replica) -> decode -> enrich (EndpointLookup) -> accumulate
until `insert_rows` updates or `insert_interval_s` -> columnar insert of the three flow tables (in a
thread, while the next batch is fetched) -> ack every message of that insert -> republish the enriched
batches on `<prefix>.flows.enriched`. A failed insert is retried with back-off and its messages stay
unacked (kept alive with in-progress acks), so a ClickHouse outage loses nothing; a redelivered message is
stored again under the same keys, which ReplacingMergeTree collapses (see `netsonde.common.flowschema`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from netsonde.common import natsconn
from netsonde.common.bus import Subjects
from netsonde.common.bus.graph import GraphEvent
from netsonde.common.graph import Graph
from netsonde.common.logs import OnceLogger
from netsonde.common.service import Service

from .config import FlowEnricherConfig
from .lookup import EndpointLookup
from .pipeline import Processed, process
from netsonde.common.bus.streams import ensure_flow_stream
from netsonde.common.dropreport import report_drops

from .stream import consumer_config
from .streamloss import StreamLossWatch
from .writer import FlowWriter

log = logging.getLogger(__name__)

STOP_GRACE_S = 20.0
REPUBLISH_FLUSH_BYTES = 2 * 1024 * 1024

DROPS = {"redeliveries": "redeliveries_total", "rejects": "bad_messages_total",
         "insert_failures": "insert_errors_total", "stream_discarded": "stream_discarded_total"}
"""What this stage can lose or repeat, as published on `<prefix>.status.drops` (kind -> metric)."""


def tune_malloc() -> None:
    """Keep freed memory in the process (glibc): every flush allocates blocks of tens of MB, and handing them
    back to the kernel each time costs page faults worth ~30% of the enricher's CPU (measured; see
    docs/flow-storage.md). Called by `python -m netsonde.flow_enricher`, not on import."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.mallopt(-3, 512 * 1024 * 1024)   # M_MMAP_THRESHOLD: big blocks from the heap, reused
        libc.mallopt(-1, 1024 * 1024 * 1024)  # M_TRIM_THRESHOLD: do not give the heap back after each flush
        libc.mallopt(-8, 1)  # M_ARENA_MAX: one arena. A worker thread's arena holds at most 64 MB, so the
        # bigger blocks a flush builds there were mmapped and unmapped every time (page faults again)
    except (OSError, AttributeError):
        pass  # not glibc: defaults


HUGEPAGE_TUNABLE = "glibc.malloc.hugetlb"


def exec_with_hugepage_malloc() -> None:
    """Restart this process (same pid, same arguments) with glibc's malloc asking for transparent huge pages
    (`GLIBC_TUNABLES=glibc.malloc.hugetlb=1`; glibc reads it only at start). A backlog drain touches
    ~600 MB of fresh heap: with 4 kB pages the page faults were ~13% of the enricher's CPU (perf), with
    2 MB pages they are gone (measured 450 k -> 535 k updates per enricher CPU-second). Does nothing if the
    variable already names the tunable (set it to 0 to opt out), or on a system without glibc or THP."""
    import os
    import sys

    tunables = os.environ.get("GLIBC_TUNABLES", "")
    if HUGEPAGE_TUNABLE in tunables or not sys.platform.startswith("linux"):
        return
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            if "[never]" in f.read():
                return
    except OSError:
        return
    env = dict(os.environ, GLIBC_TUNABLES=":".join(t for t in (tunables, f"{HUGEPAGE_TUNABLE}=1") if t))
    try:
        os.execve(sys.executable, sys.orig_argv, env)
    except OSError as exc:  # keep running without huge pages rather than not at all
        log.warning("could not restart with huge-page malloc: %r", exc)


NATS_READ_BYTES = 512 * 1024


def tune_process() -> None:
    """Process-wide settings for the enricher's throughput (measured on a backlog drain, docs/flow-storage.md).
    Called by `python -m netsonde.flow_enricher` before it connects, not on import.

    - malloc: see `tune_malloc`.
    - nats-py reads the socket 32 kB at a time into a stream buffer of the same limit: with 250 kB messages
      the transport paused and resumed reading (two epoll_ctl calls) and the parser ran ~8 times per message.
      Its module constant is read at connect and on every read, so a bigger value here takes effect.
    - the cyclic garbage collector walked every live object each few thousand allocations (nats-py builds a
      few objects per message); the objects of the running service are frozen out of it, and it runs less
      often. Nothing the enricher builds per message holds a reference cycle.
    """
    import gc

    import nats.aio.client

    tune_malloc()
    nats.aio.client.DEFAULT_BUFFER_SIZE = max(nats.aio.client.DEFAULT_BUFFER_SIZE, NATS_READ_BYTES)
    gc.freeze()
    gc.set_threshold(50_000, 50, 50)


def _delivered(msg: Msg) -> int:
    """How many times JetStream delivered this message (from its reply subject; 1 if unreadable)."""
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1


class FlowEnricherService(Service):
    name = "flow-enricher"

    def __init__(self, config: FlowEnricherConfig, lookup: EndpointLookup | None = None) -> None:
        super().__init__(config)
        self.cfg = config
        self.subjects = Subjects(config.subject_prefix)
        self.lookup = lookup if lookup is not None else EndpointLookup()
        """MAC/IP/TID -> node. Pass one in (tests, embedding) or let the graph feed fill it."""
        self.writer = FlowWriter(config.clickhouse_url, config.clickhouse_database)
        self.nc: Any = None
        self.js: Any = None
        self.psub: Any = None
        self.replica: Any = None
        self.bad = OnceLogger(log)
        self.stored_flows = 0
        self.stored_batches = 0
        self.last_error = ""
        self._consume_task: asyncio.Task[None] | None = None
        self._inflight: set[asyncio.Task[None]] = set()
        self._give_up_at = float("inf")
        self._rows_per_byte = 1 / 400
        """Flow updates per message byte, learned from past flushes (sizes the inserts without decoding)."""
        self._msg_bytes = 256 * 1024.0
        """Average message size, learned from past fetches (sizes the pull requests in bytes)."""
        m = self.metrics
        self.m_flows = m.counter("flows_stored_total", "Flow updates inserted into ClickHouse and acked")
        self.m_batches = m.counter("batches_stored_total", "Bus messages (flow batches) stored and acked")
        self.m_inserts = m.counter("inserts_total", "ClickHouse inserts (each covers many batches)")
        self.m_insert_errors = m.counter("insert_errors_total", "Failed ClickHouse inserts (retried)")
        self.m_stream_lost = m.counter("stream_discarded_total", "Flow batches the stream discarded (retention "
                                       "limits) before any enricher read them")
        self.m_redeliveries = m.counter("redeliveries_total", "Flow batches JetStream delivered more than once "
                                        "(stored again under the same keys, collapsed by FINAL)")
        self.m_insert_s = m.histogram("insert_seconds", "Column build + insert time per flush")
        self.m_lag = m.histogram("lag_seconds", "Batch timestamp to acked-in-ClickHouse time",
                                 buckets=(.05, .1, .25, .5, 1, 2, 5, 10, 30, 60))
        self.m_unresolved = m.counter("unresolved_capture_total", "Flow updates whose NodeTID is not in the graph")
        self.m_pending = m.gauge("pending_flows", "Fetched flow updates not yet acked")
        self.m_lookup = m.gauge("lookup_nodes", "Graph nodes in the endpoint lookup")

    # --- lifecycle ---------------------------------------------------------------------------------
    async def on_start(self) -> None:
        applied = await asyncio.to_thread(self.writer.migrate, self.cfg.ttl_days)
        log.info("flow tables ready", extra={"migrations_applied": applied, "database": self.cfg.clickhouse_database})
        self.nc = await natsconn.connect(self.cfg.nats_url, f"flow-enricher@{self.cfg.host_id}", config=self.cfg)
        self.js = self.nc.jetstream()
        if self.cfg.create_stream:
            await ensure_flow_stream(self.js, self.subjects, self.cfg.stream_max_age_s, self.cfg.stream_max_bytes,
                                     self.cfg.stream_duplicate_window_s)
        if self.cfg.graph_feed:
            await self._start_graph_feed()
        self.psub = await self.js.pull_subscribe(
            self.subjects.flows_all, durable=self.cfg.consumer_name, stream=self.subjects.flow_stream,
            config=consumer_config(self.cfg.consumer_name, self.cfg.ack_wait_s, self.cfg.max_ack_pending))
        self.stream_loss = StreamLossWatch(self.js, self.subjects.flow_stream, self.cfg.consumer_name)
        await self._check_stream_loss()  # before the first fetch moves the consumer past a discarded range
        self._consume_task = self.spawn(self._consume(), "consume")
        self.spawn(self._watch_stream_loss(), "stream-loss")
        self.spawn(report_drops(self.nc, self.subjects, self.name, self.cfg.host_id, self.metrics.registry,
                                self.metrics.prefix, DROPS, self.cfg.status_interval_s), "drop-counters")

    async def on_stop(self) -> None:
        self._give_up_at = time.monotonic() + STOP_GRACE_S / 2
        if self._consume_task is not None:
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(self._consume_task), STOP_GRACE_S)
        if self.replica is not None:
            with contextlib.suppress(Exception):
                await self.replica.stop()
        await natsconn.close(self.nc)
        await asyncio.to_thread(self.writer.close)

    def health(self) -> dict[str, Any]:
        return {"stored_flows": self.stored_flows, "stored_batches": self.stored_batches,
                "lookup_nodes": len(self.lookup), "last_error": self.last_error,
                "graph_synced": bool(self.replica is not None and self.replica.synced.is_set())}

    async def _check_stream_loss(self) -> None:
        try:
            lost = await self.stream_loss.check()
        except Exception as exc:
            self.bad.warning("stream-info", f"stream/consumer info failed: {exc!r}")
            return
        if lost:
            self.m_stream_lost.inc(lost)
            log.warning("the flow stream discarded %d batches before they were read (retention limits)", lost)

    async def _watch_stream_loss(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.status_interval_s)
            await self._check_stream_loss()

    # --- graph feed --------------------------------------------------------------------------------
    async def _start_graph_feed(self) -> None:
        """Follow graph-builder through a GraphReplica: reload the lookup after each snapshot, apply
        node events in between."""
        from netsonde.common.replica import GraphReplica

        self.replica = GraphReplica(self.nc, self.subjects, bad_messages=self.metrics.bad_messages)
        self.replica.on_snapshot(self._reload_lookup)
        self.replica.listeners.append(self._on_graph_events)
        await self.replica.start(wait=False)

    def _on_graph_events(self, events: list[GraphEvent]) -> None:
        for ev in events:
            self.lookup.on_event(ev.type, ev.obj)
        self.m_lookup.set(len(self.lookup))

    def _reload_lookup(self, graph: Graph) -> None:
        """After each snapshot (first sync, gap, new graph-builder epoch): the lookup from the whole graph."""
        self.lookup.load(graph)
        self.m_lookup.set(len(self.lookup))

    # --- the pull loop -----------------------------------------------------------------------------
    async def _consume(self) -> None:
        """Fetch until about `insert_rows` updates (estimated from bytes) or `insert_interval_s` passed, then
        hand the messages to a store task. Decoding happens in the store task's thread, not here."""
        pending: list[Msg] = []
        pending_bytes = 0
        first_at = 0.0
        interval = self.cfg.insert_interval_s
        while not self.stopping:
            timeout = interval if not pending else max(0.01, first_at + interval - time.monotonic())
            try:
                msgs = await self.psub.fetch(self._fetch_size(), timeout=timeout)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                msgs = []
            except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
                break
            except nats.errors.Error as exc:
                self.bad.warning("fetch", f"pull fetch failed: {exc!r}")
                await asyncio.sleep(0.5)
                msgs = []
            if msgs:
                redelivered = sum(1 for m in msgs if _delivered(m) > 1)
                if redelivered:
                    self.m_redeliveries.inc(redelivered)
                if not pending:
                    first_at = time.monotonic()
                pending.extend(msgs)
                fetched = sum(len(m.data) for m in msgs)
                pending_bytes += fetched
                self._msg_bytes = 0.5 * self._msg_bytes + 0.5 * fetched / len(msgs)
            self.m_pending.set(pending_bytes * self._rows_per_byte)
            if pending and (pending_bytes * self._rows_per_byte >= self.cfg.insert_rows
                            or time.monotonic() - first_at >= interval):
                await self._submit(pending)
                pending, pending_bytes = [], 0
        if pending:
            await self._submit(pending)
        while self._inflight:
            await asyncio.wait(set(self._inflight))

    def _fetch_size(self) -> int:
        """Messages to ask for: about `fetch_bytes` of them, at most `fetch_batch`. A pull request for more
        than the client reads in time makes nats-server cut the connection as a slow consumer (measured with
        250 kB messages: 500 per request stalled the pipeline until the ack wait redelivered them)."""
        return max(1, min(self.cfg.fetch_batch, int(self.cfg.fetch_bytes / max(self._msg_bytes, 1.0))))

    async def _submit(self, pending: list[Msg]) -> None:
        while len(self._inflight) >= self.cfg.inserts_in_flight:
            await asyncio.wait(set(self._inflight), return_when=asyncio.FIRST_COMPLETED)
        task = asyncio.create_task(self._store(pending), name="store")
        self._inflight.add(task)
        task.add_done_callback(self._inflight.discard)

    async def _store(self, pending: list[Msg]) -> None:
        """Insert until ClickHouse accepts, then ack and republish. Gives up (leaving the messages unacked,
        hence redelivered later) only when the service stops and the grace period is over."""
        data = [m.data for m in pending]
        nbytes = sum(len(d) for d in data)
        delay = 0.2
        built: Processed | None = None
        started = time.monotonic()
        while True:
            try:
                if built is None:
                    built = await asyncio.to_thread(self._build, data)
                    data = []
                    for msg in pending:  # built: the payloads are not needed any more (~100 MB per flush)
                        msg.data = b""
                await asyncio.to_thread(self.writer.insert_processed, built)
                built.native.clear()  # stored: free the blocks (~110 MB per flush) before the republish
                built.columns = None
                break
            except Exception as exc:
                self.m_insert_errors.inc()
                self.last_error = f"{type(exc).__name__}: {exc}"[:500]
                self.bad.warning("insert", f"ClickHouse insert failed, retrying: {self.last_error}")
                if self.stopping and time.monotonic() > self._give_up_at:
                    return  # the messages stay unacked: JetStream redelivers them to a replica
                for msg in pending:
                    with contextlib.suppress(Exception):
                        await msg.in_progress()
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.cfg.retry_max_s)
        self.m_insert_s.observe(time.monotonic() - started)
        self.m_inserts.inc()
        self.last_error = ""
        rejected = dict(built.rejected)
        for i, msg in enumerate(pending):
            with contextlib.suppress(Exception):
                if i in rejected:
                    self.inbound.reject("flows", rejected[i],
                                        f"dropped an undecodable flow batch ({rejected[i]}) on {msg.subject}")
                    await msg.term()
                else:
                    await msg.ack()
        now_ms = time.time() * 1000
        for ts in built.ts:
            if ts:
                self.m_lag.observe(max(0.0, (now_ms - ts) / 1000))
        if self.cfg.publish_enriched:
            await self._republish(built.enriched)
        if built.rows and nbytes:
            self._rows_per_byte = 0.8 * self._rows_per_byte + 0.2 * built.rows / nbytes
        if built.unresolved:
            self.m_unresolved.inc(built.unresolved)
        stored = len(pending) - len(rejected)
        self.stored_flows += built.rows
        self.stored_batches += stored
        self.m_flows.inc(built.rows)
        self.m_batches.inc(stored)

    async def _republish(self, enriched: list[bytes | None]) -> None:
        """Publish the enriched batches, flushing every REPUBLISH_FLUSH_BYTES: nats-py otherwise queues a
        whole flush (~100 MB) before its writer runs, and asyncio's socket buffer then moves the unsent
        rest after every send (measured: ~13% of the enricher's CPU)."""
        subject = self.subjects.flows_enriched
        unflushed = 0
        for i, payload in enumerate(enriched):
            if payload is None:
                continue
            enriched[i] = None  # freed once nats-py has written it
            with contextlib.suppress(Exception):
                await self.nc.publish(subject, payload)
                unflushed += len(payload)
                if unflushed >= REPUBLISH_FLUSH_BYTES:
                    unflushed = 0
                    await self.nc.flush(timeout=10)

    def _build(self, data: list[bytes]) -> Processed:
        return process(data, self.lookup, self.cfg.fast_path)
