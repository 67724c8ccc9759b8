"""Alerts: Skydive's `/api/alert` definitions, their live state, and the events an evaluator emits.

- Definitions (`Alert`) live in the JetStream key-value bucket `<prefix>_alerts` (key = UUID), written by
  query-api's `/api/alert`, watched by alert-evaluator.
- States (`AlertStatus`) live in `<prefix>_alert_states` (key = UUID), written by alert-evaluator on every
  change of state, read by `GET /api/alert` and by the evaluator itself at start (so an alert that fired
  before a restart does not fire again after it).
- Events (`AlertEvent`) go on `<prefix>.alerts.<UUID>`: one `firing` when the expression turns true, one
  `resolved` when it turns false again.
"""

from __future__ import annotations

import datetime as dt
import re
import uuid
from typing import Any, ClassVar

import msgspec

from .subjects import Subjects

TRIGGER_GRAPH = "graph"
TRIGGER_PERIODIC = "periodic"
MIN_PERIOD_S = 1.0
"""Shortest period of a periodic alert (each run may query ClickHouse)."""

STATES = ("pending", "ok", "firing", "error")
"""`pending`: not evaluated yet; `ok`: false; `firing`: true; `error`: the last evaluation failed."""


class Alert(msgspec.Struct):
    """Skydive's Alert: `Expression` (Gremlin) is true when it returns a non-empty result, a non-zero count or
    a boolean true. `Trigger`: `graph` (re-evaluated when the graph changes), `periodic:<duration>` or
    Skydive's `duration:<duration>` (Go durations: `10s`, `1m30s`, `500ms`). `Action`: a webhook URL or ""."""

    VERSION: ClassVar[int] = 1
    UUID: str
    Expression: str
    Name: str = ""
    Description: str = ""
    Action: str = ""
    Trigger: str = TRIGGER_GRAPH
    CreateTime: str = ""
    """RFC 3339, UTC (Skydive's JSON of a Go time)."""
    v: int = 1


class AlertStatus(msgspec.Struct):
    """The current state of one alert (`<prefix>_alert_states`, key = UUID)."""

    VERSION: ClassVar[int] = 1
    UUID: str
    State: str
    """pending, ok, firing or error (see STATES)."""
    Since: int = 0
    """When the alert entered this state (Unix ms)."""
    Error: str = ""
    """Why the last evaluation failed (State `error`)."""
    ReasonData: Any = None
    """While firing: what the expression returned when it fired (the `resolved` event repeats it)."""
    ReasonCount: int = 0
    EventID: str = ""
    """ID of the last event emitted (`firing` or `resolved`)."""
    v: int = 1


class AlertEvent(msgspec.Struct):
    """One transition of one alert, on `<prefix>.alerts.<UUID>`, in the WebSocket `Alert` namespace and in the
    webhook's JSON body. `UUID`, `Timestamp` and `ReasonData` are Skydive's alert message fields."""

    VERSION: ClassVar[int] = 1
    ID: str
    """Unique per event: a webhook receiver can drop a redelivery by it."""
    UUID: str
    """The alert's UUID."""
    State: str
    """firing or resolved."""
    Timestamp: int
    """When the evaluation that saw the transition ran (Unix ms)."""
    Name: str = ""
    Expression: str = ""
    Trigger: str = ""
    ReasonData: Any = None
    """firing: the expression's result (the matching nodes, edges or flows, the count ...); resolved: the
    result that had fired. Lists are cut to the evaluator's `max_reason_items`."""
    ReasonCount: int = 0
    """How many items the result had before the cut (1 for a count or a boolean)."""
    v: int = 1


class AlertError(ValueError):
    """A definition that cannot be accepted; `status` is the HTTP status (400 by default)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


# --- triggers ---------------------------------------------------------------------------------------------
_DURATION_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """A Go duration (`10s`, `1m30s`, `250ms`) in seconds; ValueError otherwise."""
    pos, total = 0, 0.0
    if not text:
        raise ValueError("empty duration")
    while pos < len(text):
        m = _DURATION_PART.match(text, pos)
        if m is None:
            raise ValueError(f"{text!r} is not a duration (e.g. 10s, 1m30s, 500ms)")
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    return total


def parse_trigger(trigger: str) -> tuple[str, float]:
    """(`graph`, 0) or (`periodic`, period in seconds); AlertError naming what is wrong."""
    if trigger in ("", TRIGGER_GRAPH):
        return TRIGGER_GRAPH, 0.0
    kind, _, arg = trigger.partition(":")
    if kind not in (TRIGGER_PERIODIC, "duration"):
        raise AlertError(
            f"Trigger {trigger!r}: expected 'graph', 'periodic:<duration>' or 'duration:<duration>'"
        )
    try:
        period = parse_duration(arg)
    except ValueError as exc:
        raise AlertError(f"Trigger {trigger!r}: {exc}") from None
    if period < MIN_PERIOD_S:
        raise AlertError(f"Trigger {trigger!r}: the period must be at least {MIN_PERIOD_S:g}s")
    return TRIGGER_PERIODIC, period


# --- the API's JSON -----------------------------------------------------------------------------------------
_API_FIELDS = ("UUID", "Name", "Description", "Expression", "Action", "Trigger", "CreateTime")
_OUTPUT_ONLY = ("Status",)
"""What GET adds: accepted back in a POST (a GET -> POST round trip works) and not stored."""


def _opt_str(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if value is None:
        return ""
    if not isinstance(value, str):
        raise AlertError(f"{name} must be a string")
    return value


def alert_from_json(body: Any) -> Alert:
    """Check an alert as Skydive's POST /api/alert takes it (Expression required). The expression itself is
    compiled by the caller, who has the Gremlin engine."""
    if not isinstance(body, dict):
        raise AlertError("an alert must be a JSON object")
    unknown = sorted(set(body) - set(_API_FIELDS) - set(_OUTPUT_ONLY))
    if unknown:
        raise AlertError(f"unknown field(s) {', '.join(unknown)}; an alert has {', '.join(_API_FIELDS)}")
    expression = _opt_str(body, "Expression").strip()
    if not expression:
        raise AlertError("Expression is required (a Gremlin query)")
    action = _opt_str(body, "Action").strip()
    if action.startswith("file://"):
        raise AlertError(
            "Action: scripts (file://) are not supported; use a webhook URL (http:// or https://)"
        )
    if action and not re.match(r"^https?://[^/\s]+", action):
        raise AlertError(f"Action {action!r}: expected a webhook URL (http:// or https://) or nothing")
    trigger = _opt_str(body, "Trigger").strip() or TRIGGER_GRAPH
    parse_trigger(trigger)
    ident = _opt_str(body, "UUID") or str(uuid.uuid4())
    if not re.fullmatch(r"[A-Za-z0-9_-]+", ident):
        raise AlertError("UUID may only hold letters, digits, '-' and '_'")
    created = _opt_str(body, "CreateTime") or now_rfc3339()
    return Alert(
        UUID=ident,
        Expression=expression,
        Name=_opt_str(body, "Name"),
        Description=_opt_str(body, "Description"),
        Action=action,
        Trigger=trigger,
        CreateTime=created,
    )


def alert_to_json(alert: Alert, status: AlertStatus | None = None) -> dict[str, Any]:
    """Skydive's JSON of an alert (every field present) plus `Status`: {State, Since, Error} when known."""
    out: dict[str, Any] = {name: getattr(alert, name) for name in _API_FIELDS}
    st = status or AlertStatus(UUID=alert.UUID, State="pending")
    out["Status"] = {"State": st.State, "Since": st.Since, "Error": st.Error, "ReasonCount": st.ReasonCount}
    return out


def event_to_json(ev: AlertEvent) -> dict[str, Any]:
    """The JSON of an event (webhook body, WebSocket `Alert` message): Skydive's {UUID, Timestamp (RFC 3339),
    ReasonData} plus ID, State, Name, Expression, Trigger, ReasonCount and Time (Unix ms)."""
    return {
        "ID": ev.ID,
        "UUID": ev.UUID,
        "State": ev.State,
        "Name": ev.Name,
        "Expression": ev.Expression,
        "Trigger": ev.Trigger,
        "Timestamp": ms_to_rfc3339(ev.Timestamp),
        "Time": ev.Timestamp,
        "ReasonData": ev.ReasonData,
        "ReasonCount": ev.ReasonCount,
    }


def now_rfc3339() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


def ms_to_rfc3339(ms: int) -> str:
    return (
        dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    )


# --- buckets ------------------------------------------------------------------------------------------------
async def open_alert_bucket(js: Any, subjects: Subjects) -> Any:
    """The alert definitions' bucket (created on first use, file storage, one revision per key)."""
    from .streams import open_bucket

    return await open_bucket(js, subjects.alert_bucket)


async def open_alert_state_bucket(js: Any, subjects: Subjects) -> Any:
    """The alert states' bucket (written by alert-evaluator)."""
    from .streams import open_bucket

    return await open_bucket(js, subjects.alert_state_bucket)
