"""Alert evaluation and state transitions, without I/O: the service feeds it graph events and timer ticks and
delivers the events it returns.

An alert fires once when its expression turns true (a non-empty result, a non-zero count, a boolean true) and
resolves once when it turns false again; an evaluation error puts it in state `error` without firing or
resolving (it resolves or fires on the next good evaluation, against what it was before the error).
"""

from __future__ import annotations

import logging
import time
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from netsonde.common.bus.alerts import TRIGGER_GRAPH, Alert, AlertEvent, AlertStatus, parse_trigger
from netsonde.gremlin import GremlinError

from .dependencies import DependencyIndex, analyze

log = logging.getLogger(__name__)

Runner = Callable[[str], Any]
"""Runs a Gremlin expression, returns its JSON-ready result (raises GremlinError)."""


@dataclass
class Verdict:
    true: bool
    reason: Any
    count: int


def verdict(result: Any, max_items: int) -> Verdict:
    """Is a result true (Skydive: non-empty result, non-zero count, boolean true), and the reason to send."""
    if isinstance(result, bool):
        return Verdict(result, result, 1)
    if isinstance(result, (int, float)):
        return Verdict(result != 0, result, 1)
    if isinstance(result, list):
        if result and all(isinstance(x, bool) for x in result):
            return Verdict(any(result), result[:max_items], len(result))
        if len(result) == 1 and isinstance(result[0], dict) and set(result[0]) == {"Nodes", "Edges"}:
            graph = result[0]  # SubGraph(): true when it holds something
            return Verdict(
                bool(graph["Nodes"] or graph["Edges"]), graph, len(graph["Nodes"]) + len(graph["Edges"])
            )
        return Verdict(bool(result), result[:max_items], len(result))
    if isinstance(result, dict):
        return Verdict(bool(result), result, len(result))
    return Verdict(result is not None and result != "", result, 0 if result is None else 1)


class AlertEvaluator:
    """The alerts this evaluator owns, their states, and the dependency index of the graph-triggered ones."""

    def __init__(self, run: Runner, max_reason_items: int = 100) -> None:
        self.run = run
        self.max_reason_items = max_reason_items
        self.alerts: dict[str, Alert] = {}
        self.periods: dict[str, float] = {}
        """UUID -> period (s) of the periodic alerts."""
        self.states: dict[str, AlertStatus] = {}
        self.index = DependencyIndex()
        self.dirty: dict[str, AlertStatus | None] = {}
        """States changed since the service last persisted them (None: delete the key)."""
        self.evaluations = 0
        self.errors = 0

    # --- definitions ---------------------------------------------------------------------------------
    def put(self, alert: Alert) -> None:
        """Add or replace an alert (a replaced one keeps its state when its expression is unchanged)."""
        old = self.alerts.get(alert.UUID)
        kind, period = parse_trigger(alert.Trigger)
        self.alerts[alert.UUID] = alert
        self.periods.pop(alert.UUID, None)
        self.index.remove(alert.UUID)
        if kind == TRIGGER_GRAPH:
            try:
                self.index.add(alert.UUID, analyze(alert.Expression))
            except GremlinError as exc:
                self._set(AlertStatus(UUID=alert.UUID, State="error", Since=_now_ms(), Error=str(exc)))
        else:
            self.periods[alert.UUID] = period
        if old is not None and old.Expression != alert.Expression:
            self._set(AlertStatus(UUID=alert.UUID, State="pending", Since=_now_ms()))
        self.states.setdefault(alert.UUID, AlertStatus(UUID=alert.UUID, State="pending", Since=_now_ms()))

    def delete(self, uuid: str) -> None:
        self.alerts.pop(uuid, None)
        self.periods.pop(uuid, None)
        self.index.remove(uuid)
        if self.states.pop(uuid, None) is not None:
            self.dirty[uuid] = None

    def restore(self, status: AlertStatus) -> None:
        """The state persisted by a previous run (before the definitions are loaded)."""
        self.states[status.UUID] = status

    def graph_alerts(self) -> list[str]:
        return [u for u in self.alerts if u not in self.periods]

    # --- evaluation ----------------------------------------------------------------------------------
    def affected(self, events: list[Any]) -> set[str]:
        return self.index.affected(events)

    def evaluate(self, uuid: str, run: Runner | None = None) -> AlertEvent | None:
        """Evaluate one alert now (graph alerts: on the loop that applies graph events); returns the event of
        a transition, if any."""
        alert = self.alerts.get(uuid)
        if alert is None:
            return None
        self.evaluations += 1
        try:
            result = (run or self.run)(alert.Expression)
        except Exception as exc:  # GremlinError (limits, a missing node ...) or a store failure
            self.fail(alert, str(exc) if isinstance(exc, GremlinError) else repr(exc))
            return None
        return self.judge(alert, result)

    def judge(self, alert: Alert, result: Any) -> AlertEvent | None:
        """Apply a result to the alert's state; the event of a transition, if any."""
        v = verdict(result, self.max_reason_items)
        st = self.states.get(alert.UUID) or AlertStatus(UUID=alert.UUID, State="pending")
        now = _now_ms()
        firing = st.State == "firing" or (st.State == "error" and st.ReasonData is not None)
        if v.true and not firing:
            ev = self._event(alert, "firing", now, v.reason, v.count)
            self._set(
                AlertStatus(
                    UUID=alert.UUID,
                    State="firing",
                    Since=now,
                    ReasonData=v.reason,
                    ReasonCount=v.count,
                    EventID=ev.ID,
                )
            )
            return ev
        if not v.true and firing:
            ev = self._event(alert, "resolved", now, st.ReasonData, st.ReasonCount)
            self._set(AlertStatus(UUID=alert.UUID, State="ok", Since=now, EventID=ev.ID))
            return ev
        want = "firing" if v.true else "ok"
        if st.State != want:  # pending -> ok, error -> (still) firing or ok: no event
            self._set(
                AlertStatus(
                    UUID=alert.UUID,
                    State=want,
                    Since=now,
                    ReasonData=st.ReasonData if v.true else None,
                    ReasonCount=st.ReasonCount if v.true else 0,
                    EventID=st.EventID,
                )
            )
        return None

    def fail(self, alert: Alert, message: str) -> None:
        """The evaluation failed: state `error` (no event; a firing alert is still remembered as fired)."""
        self.errors += 1
        st = self.states.get(alert.UUID)
        if st is not None and st.State == "error" and st.Error == message:
            return
        log.warning("alert %s (%s) could not be evaluated: %s", alert.UUID, alert.Name, message)
        keep = st.ReasonData if st is not None and st.State in ("firing", "error") else None
        self._set(
            AlertStatus(
                UUID=alert.UUID,
                State="error",
                Since=_now_ms(),
                Error=message,
                ReasonData=keep,
                ReasonCount=st.ReasonCount if st is not None and keep is not None else 0,
                EventID=st.EventID if st is not None else "",
            )
        )

    def _event(self, alert: Alert, state: str, now: int, reason: Any, count: int) -> AlertEvent:
        return AlertEvent(
            ID=str(uuidlib.uuid4()),
            UUID=alert.UUID,
            State=state,
            Timestamp=now,
            Name=alert.Name,
            Expression=alert.Expression,
            Trigger=alert.Trigger,
            ReasonData=reason,
            ReasonCount=count,
        )

    def _set(self, status: AlertStatus) -> None:
        self.states[status.UUID] = status
        self.dirty[status.UUID] = status

    def take_dirty(self) -> dict[str, AlertStatus | None]:
        out, self.dirty = self.dirty, {}
        return out


def _now_ms() -> int:
    return int(time.time() * 1000)
