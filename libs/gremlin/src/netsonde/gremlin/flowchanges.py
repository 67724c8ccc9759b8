"""Flow changes between two instants, per capture point: conversations that started, stopped, or whose rate
changed by more than a factor. The flow half of "what changed?" (`Diff` is the topology half).

- started: first packet (Start) in (from, to];
- stopped: active in the window (Last > from) but silent for at least `idle_ms` at `to` (Last <= to - idle);
- rate changed: bytes per second over [from - rate_window, from] against [to - rate_window, to] (from the
  `flow_metrics` update deltas, by update time), kept when the ratio exceeds `factor` either way and both
  rates are non-zero (a rate going to zero is a stop, from zero a start).

Scope: the capture points' TIDs (`V(...).FlowChanges(...)`), else every flow.
"""

from __future__ import annotations

from typing import Any

from netsonde.common import flowschema as fs
from netsonde.common.capture_types import CAPTURABLE_NODE_TYPES

from .diff import window_args
from .flowsql import FlowStore
from .steps import Step, extension_step
from .timeparse import parse_duration_ms
from .traversal import Context, GraphT, MapT, NodesT, Value

_LATEST_SQL = f"""
SELECT UUID, TrackingID, NodeTID, NodeID, Host, NetworkA, NetworkB, TransportA, TransportB, Application,
       LayersPath, Start, Last, MetricABPackets, MetricABBytes, MetricBAPackets, MetricBABytes
FROM {fs.FLOWS_TABLE}
WHERE Last > {{lo:Int64}} AND Start <= {{hi:Int64}} AND Last <= {{hi:Int64}} {{scope}}
ORDER BY Last DESC LIMIT 1 BY UUID
LIMIT {{limit:UInt32}}
"""

_RATE_SQL = f"""
SELECT UUID,
       sumIf(ABBytes + BABytes, Last > {{lo:Int64}} - {{rw:Int64}} AND Last <= {{lo:Int64}}) AS before_b,
       sumIf(ABBytes + BABytes, Last > {{hi:Int64}} - {{rw:Int64}} AND Last <= {{hi:Int64}}) AS after_b
FROM (SELECT * FROM {fs.METRICS_TABLE}
      WHERE Last > {{lo:Int64}} - {{rw:Int64}} AND Last <= {{hi:Int64}} {{scope}}
      ORDER BY UUID, Start, Last LIMIT 1 BY UUID, Start, Last)
GROUP BY UUID
HAVING before_b > 0 AND after_b > 0
   AND (after_b > before_b * {{factor:Float64}} OR before_b > after_b * {{factor:Float64}})
LIMIT {{limit:UInt32}}
"""


def _summary(r: dict[str, Any]) -> dict[str, Any]:
    return {
        "UUID": r["UUID"],
        "TrackingID": r["TrackingID"],
        "NodeTID": r["NodeTID"],
        "NodeID": r["NodeID"],
        "Host": r["Host"],
        "NetworkA": r["NetworkA"],
        "NetworkB": r["NetworkB"],
        "TransportA": r["TransportA"],
        "TransportB": r["TransportB"],
        "Application": r["Application"],
        "LayersPath": r["LayersPath"],
        "Start": r["Start"],
        "Last": r["Last"],
        "ABPackets": r["MetricABPackets"],
        "ABBytes": r["MetricABBytes"],
        "BAPackets": r["MetricBAPackets"],
        "BABytes": r["MetricBABytes"],
    }


def flow_changes(
    store: FlowStore,
    lo: int,
    hi: int,
    tids: list[str] | None = None,
    factor: float = 2.0,
    idle_ms: int = 30_000,
    rate_window_ms: int = 60_000,
    limit: int = 10_000,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """{From, To, Started, Stopped, RateChanged}: flow summaries (RateChanged: BytesPerSecBefore/After)."""
    if factor <= 1:
        raise ValueError("factor must be greater than 1")
    scope = ""
    params: dict[str, Any] = {"lo": lo, "hi": hi, "limit": limit}
    if tids is not None:
        if not tids:
            return {"From": lo, "To": hi, "Started": [], "Stopped": [], "RateChanged": []}
        scope = "AND NodeTID IN {tids:Array(String)}"
        params["tids"] = tids
    names, rows = store.query(_LATEST_SQL.replace("{scope}", scope), params, timeout_s)
    latest = [dict(zip(names, r, strict=True)) for r in rows]
    started = [_summary(r) for r in latest if r["Start"] > lo]
    stopped = [_summary(r) for r in latest if r["Last"] <= hi - idle_ms]
    _, rrows = store.query(
        _RATE_SQL.replace("{scope}", scope),
        {**params, "rw": rate_window_ms, "factor": float(factor)},
        timeout_s,
    )
    rates = {u: (b, a) for u, b, a in rrows}
    by_uuid = {r["UUID"]: r for r in latest}
    changed = []
    if rates:
        missing = [u for u in rates if u not in by_uuid]
        if missing:
            n2, extra = store.query(
                f"SELECT {', '.join(names)} FROM {fs.FLOWS_TABLE} WHERE UUID IN "
                "{uuids:Array(String)} ORDER BY Last DESC LIMIT 1 BY UUID",
                {"uuids": missing},
                timeout_s,
            )
            by_uuid.update({r[0]: dict(zip(n2, r, strict=True)) for r in extra})
        for u, (before, after) in sorted(rates.items()):
            if u in by_uuid:
                changed.append(
                    {
                        **_summary(by_uuid[u]),
                        "BytesPerSecBefore": before * 1000 / rate_window_ms,
                        "BytesPerSecAfter": after * 1000 / rate_window_ms,
                    }
                )
    for lst in (started, stopped):
        lst.sort(key=lambda f: (f["Start"], f["UUID"]))
    return {
        "From": lo,
        "To": hi,
        "Factor": factor,
        "IdleMs": idle_ms,
        "RateWindowMs": rate_window_ms,
        "Started": started,
        "Stopped": stopped,
        "RateChanged": changed,
    }


def capture_tids(nodes: Any) -> list[str]:
    """TIDs of the capture-capable nodes among `nodes` (the keys of their flows)."""
    return sorted(
        {
            str(n.Metadata["TID"])
            for n in nodes
            if n.Metadata.get("Type") in CAPTURABLE_NODE_TYPES and n.Metadata.get("TID")
        }
    )


@extension_step("FlowChanges")
class FlowChanges(Step):
    """`G.FlowChanges(from[, to[, factor]])` / `V(...).FlowChanges(...)`: flows started, stopped, or whose
    rate changed more than `factor` (default 2) between the two instants (to = NOW by default)."""

    def setup(self) -> None:
        self.nargs(1, 3)
        self.factor = 2.0
        if len(self.args) == 3:
            a = self.args[2]
            v = getattr(a, "value", None)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or v <= 1:
                raise self.error("the factor must be a number greater than 1", a)
            self.factor = float(v)

    def _run(self, ctx: Context, tids: list[str] | None) -> Value:
        if ctx.flows is None:
            raise self.error("this engine has no flow store (flows need ClickHouse)")
        lo, hi = window_args(self, ctx, self.args[:2])
        return MapT(
            flow_changes(ctx.flows, lo, hi, tids, self.factor, timeout_s=ctx.remaining_s()), "flowchanges"
        )

    def on_graph(self, ctx: Context, value: GraphT) -> Value:
        return self._run(ctx, None)

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        return self._run(ctx, capture_tids(value.iter()))


def parse_ms(text: str, what: str) -> int:
    """A Go duration ('30s', '5m') as a positive number of ms, or ValueError naming `what`."""
    d = parse_duration_ms(text)
    if d is None or d <= 0:
        raise ValueError(f"{what}: {text!r} is not a positive duration like '30s' or '5m'")
    return int(d)


__all__ = ["FlowChanges", "capture_tids", "flow_changes", "parse_ms"]
