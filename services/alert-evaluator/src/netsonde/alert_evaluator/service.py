"""alert-evaluator service: bus in (alert definitions' bucket, graph events), bus out (alert events, alert
states' bucket), webhooks out, ClickHouse out (`alert_events`).

Graph-triggered alerts are evaluated on the loop that applies graph events (the replica is stable there), only
those a change can affect; periodic ones each on their own timer, in a worker thread (their Flows() queries
wait on ClickHouse). Nothing here waits for a webhook.
"""

from __future__ import annotations

import asyncio
import logging
import time
import zlib
from typing import Any

from nats.js.errors import NoKeysError

import netsonde.gremlin as gremlin
from netsonde.common import natsconn
from netsonde.common.bus import Subjects, encode
from netsonde.common.bus.alerts import (
    Alert,
    AlertEvent,
    AlertStatus,
    open_alert_bucket,
    open_alert_state_bucket,
)
from netsonde.common.bus.graph import GraphEvent
from netsonde.common.clickhouse import connect, run_migrations
from netsonde.common.graph import Graph
from netsonde.common.logs import OnceLogger
from netsonde.common.replica import GraphReplica
from netsonde.common.service import Service

from .config import AlertEvaluatorConfig
from .evaluator import AlertEvaluator
from .history import MIGRATIONS, EventWriter
from .webhooks import WebhookSender

log = logging.getLogger(__name__)


class AlertEvaluatorService(Service):
    name = "alert-evaluator"

    def __init__(self, config: AlertEvaluatorConfig) -> None:
        super().__init__(config)
        self.cfg = config
        self.subjects = Subjects(config.subject_prefix)
        self.nc: Any = None
        self.replica: GraphReplica | None = None
        self.engine: gremlin.GremlinEngine | None = None
        self.evaluator = AlertEvaluator(self._run_live, config.max_reason_items)
        self.writer: EventWriter | None = None
        self.states_kv: Any = None
        self.timers: dict[str, asyncio.Task[None]] = {}
        self.loaded = asyncio.Event()
        """Set once every definition in the bucket was read at start."""
        self._dirty = asyncio.Event()
        self.bad = OnceLogger(log)
        m = self.metrics
        self.m_alerts = m.gauge("alerts", "Alerts this evaluator owns", ["trigger"])
        self.m_evaluations = m.counter("evaluations_total", "Alert evaluations", ["trigger"])
        self.m_failures = m.counter("evaluation_errors_total", "Alert evaluations that failed", ["trigger"])
        self.m_events = m.counter("events_total", "Alert events emitted", ["state"])
        self.m_changes = m.counter("graph_changes_total", "Graph events examined")
        self.m_dispatch = m.histogram(
            "graph_batch_seconds",
            "Time to find and re-evaluate the alerts a batch of graph events affects",
            buckets=(0.0001, 0.0005, 0.001, 0.005, 0.01, 0.1, 1),
        )
        self.m_webhooks = m.counter("webhook_deliveries_total", "Webhook deliveries by outcome", ["result"])
        self.m_webhook_seconds = m.histogram("webhook_seconds", "Duration of one webhook call")
        self.m_history_rows = m.counter("history_rows_total", "Alert events written to ClickHouse")
        self.m_history_errors = m.counter("history_errors_total", "Failed ClickHouse writes (retried)")
        self.m_state_errors = m.counter(
            "state_write_errors_total", "Failed writes to the alert states' bucket"
        )
        self.webhooks = WebhookSender(
            config.webhook_timeout_s,
            config.webhook_retries,
            config.webhook_workers,
            config.webhook_queue,
            self.m_webhooks,
            self.m_webhook_seconds,
        )

    def client_factory(self) -> Any:
        return connect(self.cfg.clickhouse_url, self.cfg.clickhouse_database)

    # --- lifecycle -----------------------------------------------------------------------------------
    async def on_start(self) -> None:
        cfg = self.cfg
        if cfg.history:
            await asyncio.to_thread(
                run_migrations, cfg.clickhouse_url, cfg.clickhouse_database, "alert-evaluator", MIGRATIONS
            )
            await asyncio.to_thread(self._apply_ttl)
            self.writer = EventWriter(cfg.clickhouse_url, cfg.clickhouse_database)
        self.nc = await natsconn.connect(cfg.nats_url, f"alert-evaluator@{cfg.host_id}", config=cfg)
        self.replica = GraphReplica(
            self.nc,
            self.subjects,
            snapshot_timeout=cfg.snapshot_timeout_s,
            bad_messages=self.metrics.bad_messages,
        )
        self.engine = gremlin.GremlinEngine(
            graph=self.replica.graph,
            history=gremlin.HistoryStore(self.client_factory) if cfg.history else None,
            flows=gremlin.FlowStore(self.client_factory) if cfg.flows else None,
            limits=gremlin.QueryLimits(timeout_s=cfg.query_timeout_s, max_results=cfg.max_results),
        )
        self.replica.listeners.append(self._on_graph_events)
        self.replica.on_snapshot(self._on_snapshot)
        await self.replica.start(wait=False)
        try:
            await asyncio.wait_for(self.replica.synced.wait(), cfg.snapshot_timeout_s)
        except TimeoutError:
            log.warning("no graph snapshot yet (is graph-builder running?); graph alerts wait for it")
        js = self.nc.jetstream()
        self.states_kv = await open_alert_state_bucket(js, self.subjects)
        await self._restore_states()
        await self.webhooks.start()
        watcher = await (await open_alert_bucket(js, self.subjects)).watchall()
        self.spawn(self._watch_alerts(watcher), "watch-alerts")
        self.spawn(self._persist_states(), "persist-states")
        if self.writer is not None:
            self.spawn(self._history_loop(), "history-writer")
        await asyncio.wait_for(self.loaded.wait(), 30)
        await self.nc.flush()

    def _apply_ttl(self) -> None:
        from netsonde.common.alertschema import ttl_statement

        client = connect(self.cfg.clickhouse_url, self.cfg.clickhouse_database)
        try:
            client.command(ttl_statement(self.cfg.clickhouse_database, self.cfg.history_ttl_days))
        finally:
            client.close()

    async def on_stop(self) -> None:
        for task in self.timers.values():
            task.cancel()
        if self.replica is not None:
            await self.replica.stop()
        await self._write_states()
        await self.webhooks.stop()
        await natsconn.close(self.nc)
        if self.writer is not None and self.writer.pending:
            try:
                await asyncio.wait_for(asyncio.to_thread(self.writer.flush), 10)
            except Exception as exc:
                log.error(
                    "final alert history flush failed, %d events not stored: %r",
                    len(self.writer.pending),
                    exc,
                )

    def health(self) -> dict[str, Any]:
        states: dict[str, int] = {}
        for st in self.evaluator.states.values():
            states[st.State] = states.get(st.State, 0) + 1
        synced = self.replica is not None and self.replica.synced.is_set()
        return {
            "alerts": len(self.evaluator.alerts),
            "graph_synced": synced,
            "states": states,
            "webhook_queue": self.webhooks.queue.qsize(),
        }

    def owns(self, uuid: str) -> bool:
        """Sharding: this evaluator's alerts are those whose UUID hashes to its shard."""
        return zlib.crc32(uuid.encode()) % self.cfg.shard_count == self.cfg.shard_index

    # --- definitions ---------------------------------------------------------------------------------
    async def _restore_states(self) -> None:
        try:
            keys = await self.states_kv.keys()
        except NoKeysError:
            return
        for key in keys:
            if not self.owns(key):
                continue
            entry = await self.states_kv.get(key)
            if entry is not None and entry.value:
                st = self.inbound(entry.value, AlertStatus, "alert_state", f"alert state {key}")
                if st is not None:
                    self.evaluator.restore(st)

    async def _watch_alerts(self, watcher: Any) -> None:
        async for entry in watcher:
            if entry is None:  # every definition present at start was delivered
                for uuid in [u for u in self.evaluator.states if u not in self.evaluator.alerts]:
                    self.evaluator.delete(uuid)  # the state of an alert deleted while this evaluator was down
                self._dirty.set()
                self.loaded.set()
                continue
            if not self.owns(entry.key):
                continue
            if entry.operation in ("DEL", "PURGE") or not entry.value:
                self._drop(entry.key)
            else:
                alert = self.inbound(entry.value, Alert, "alert", f"alert bucket key {entry.key}")
                if alert is not None:
                    await self._put(alert)
            self._count_alerts()
            self._dirty.set()

    async def _put(self, alert: Alert) -> None:
        self.evaluator.put(alert)
        timer = self.timers.pop(alert.UUID, None)
        if timer is not None:
            timer.cancel()
        period = self.evaluator.periods.get(alert.UUID)
        if period is not None:
            self.timers[alert.UUID] = asyncio.create_task(
                self._periodic(alert.UUID, period), name=f"alert-{alert.UUID}"
            )
        elif self.replica is not None and self.replica.synced.is_set():
            self.m_evaluations.labels("graph").inc()
            await self._emit(self.evaluator.evaluate(alert.UUID))

    def _drop(self, uuid: str) -> None:
        timer = self.timers.pop(uuid, None)
        if timer is not None:
            timer.cancel()
        self.evaluator.delete(uuid)

    def _count_alerts(self) -> None:
        periodic = len(self.evaluator.periods)
        self.m_alerts.labels("periodic").set(periodic)
        self.m_alerts.labels("graph").set(len(self.evaluator.alerts) - periodic)

    # --- evaluation ----------------------------------------------------------------------------------
    def _run_live(self, expression: str) -> Any:
        assert self.engine is not None
        return self.engine.execute(expression)

    async def _on_snapshot(self, graph: Graph) -> None:
        """A (new) snapshot replaced the graph: it is the 'before' of the next events; every graph alert is
        evaluated against it."""
        self.evaluator.index.reset(graph.nodes, graph.edges)
        if not self.loaded.is_set():
            return  # the definitions' first load evaluates them
        for uuid in self.evaluator.graph_alerts():
            self.m_evaluations.labels("graph").inc()
            await self._emit(self.evaluator.evaluate(uuid))

    async def _on_graph_events(self, events: list[GraphEvent]) -> None:
        started = time.perf_counter()
        self.m_changes.inc(len(events))
        affected = self.evaluator.affected(events)
        transitions = []
        for uuid in affected:
            if uuid in self.evaluator.periods:
                continue
            failures = self.evaluator.errors
            ev = self.evaluator.evaluate(uuid)
            if self.evaluator.errors != failures:
                self.m_failures.labels("graph").inc()
            if ev is not None:
                transitions.append(ev)
        if affected:
            self.m_evaluations.labels("graph").inc(len(affected))
        for ev in transitions:
            await self._emit(ev)
        self.m_dispatch.observe(time.perf_counter() - started)

    async def _periodic(self, uuid: str, period: float) -> None:
        """Evaluate now, then every `period` seconds (a slow run delays the next one, never overlaps it)."""
        while True:
            started = time.monotonic()
            try:
                await self._evaluate_periodic(uuid)
            except Exception as exc:  # one alert's failure must not kill its timer
                self.bad.warning("periodic", f"periodic alert {uuid} failed: {exc!r}")
            await asyncio.sleep(max(0.0, period - (time.monotonic() - started)))

    async def _evaluate_periodic(self, uuid: str) -> None:
        alert = self.evaluator.alerts.get(uuid)
        if alert is None or self.replica is None or not self.replica.synced.is_set() or self.engine is None:
            return
        self.m_evaluations.labels("periodic").inc()
        engine = self.engine
        try:
            try:
                result = await asyncio.to_thread(engine.execute, alert.Expression)
            except RuntimeError as exc:  # the replica changed under the query: again, on the loop
                if "changed size during iteration" not in str(exc):
                    raise
                result = engine.execute(alert.Expression)
        except Exception as exc:
            self.m_failures.labels("periodic").inc()
            self.evaluator.fail(alert, str(exc) if isinstance(exc, gremlin.GremlinError) else repr(exc))
            self._dirty.set()
            return
        if uuid in self.evaluator.alerts:  # not deleted meanwhile
            await self._emit(self.evaluator.judge(alert, result))

    # --- delivery ------------------------------------------------------------------------------------
    async def _emit(self, event: AlertEvent | None) -> None:
        self._dirty.set()
        if event is None:
            return
        self.m_events.labels(event.State).inc()
        log.info(
            "alert %s %s",
            event.UUID,
            event.State,
            extra={"alert": event.Name, "event": event.ID, "reason_count": event.ReasonCount},
        )
        await self.nc.publish(self.subjects.alert_events(event.UUID), encode(event))
        alert = self.evaluator.alerts.get(event.UUID)
        if alert is not None and alert.Action:
            self.webhooks.submit(alert.Action, event)
        if self.writer is not None:
            self.writer.add(event)

    async def _persist_states(self) -> None:
        while True:
            await self._dirty.wait()
            self._dirty.clear()
            await self._write_states()

    async def _write_states(self) -> None:
        if self.states_kv is None:
            return
        dirty = self.evaluator.take_dirty()
        for uuid, status in dirty.items():
            try:
                if status is None:
                    await self.states_kv.delete(uuid)
                else:
                    await self.states_kv.put(uuid, encode(status))
            except Exception as exc:
                self.m_state_errors.inc()
                self.bad.warning("state", f"alert state write failed, will retry: {exc!r}")
                self.evaluator.dirty.setdefault(uuid, status)
                await asyncio.sleep(1)
                self._dirty.set()

    async def _history_loop(self) -> None:
        assert self.writer is not None
        while True:
            await asyncio.sleep(1.0)
            if not self.writer.pending:
                continue
            try:
                self.m_history_rows.inc(await asyncio.to_thread(self.writer.flush))
            except Exception as exc:
                self.m_history_errors.inc()
                self.bad.warning("history", f"alert history write failed, will retry: {exc!r}")
