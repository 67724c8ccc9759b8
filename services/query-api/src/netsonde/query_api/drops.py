"""Where anything was lost: the stages' DropCounters (`<prefix>.status.drops`) summed per host and per stage,
served in `/api/status` under `Drops`.

Each message carries one process's cumulative counts; the board keeps the last message of each process
(`instance`) and sums over them, so a restarted probe's earlier losses stay counted. At most MAX_INSTANCES
processes are remembered (the oldest report is forgotten first).
"""

from __future__ import annotations

from typing import Any

from netsonde.common.bus import Subjects
from netsonde.common.bus.dropcounters import DropCounters
from netsonde.common.bus.inbound import InboundDecoder

MAX_INSTANCES = 4096


class DropBoard:
    """The last DropCounters of every reporting process, and their sums."""

    def __init__(self, inbound: InboundDecoder) -> None:
        self.inbound = inbound
        self.latest: dict[str, DropCounters] = {}

    async def start(self, nc: Any, subjects: Subjects) -> None:
        await nc.subscribe(subjects.drop_counters, cb=self._on_message)

    async def _on_message(self, msg: Any) -> None:
        report = self.inbound(msg.data, DropCounters, "drop_counters", msg.subject)
        if report is not None:
            self.add(report)

    def add(self, report: DropCounters) -> None:
        prev = self.latest.get(report.instance)
        if prev is not None and prev.ts > report.ts:
            return  # an older report arriving late
        self.latest[report.instance] = report
        if len(self.latest) > MAX_INSTANCES:
            oldest = min(self.latest.values(), key=lambda r: r.ts)
            del self.latest[oldest.instance]

    def summary(self) -> dict[str, Any]:
        """{"Hosts": {host: {stage: {kind: n}}}, "Stages": {stage: {kind: n}}, "Total": n, "Reporters": n}.
        Total counts losses only: retries, redeliveries and failed (retried) inserts are in the stage sums but
        not in Total, since they lose nothing by themselves."""
        hosts: dict[str, dict[str, dict[str, int]]] = {}
        stages: dict[str, dict[str, int]] = {}
        total = 0
        for r in self.latest.values():
            per_host = hosts.setdefault(r.host, {}).setdefault(r.stage, {})
            per_stage = stages.setdefault(r.stage, {})
            for kind, n in r.counters.items():
                per_host[kind] = per_host.get(kind, 0) + n
                per_stage[kind] = per_stage.get(kind, 0) + n
                if kind not in ("publish_retries", "redeliveries", "insert_failures", "history_failures"):
                    total += n
        return {"Hosts": hosts, "Stages": stages, "Total": total, "Reporters": len(self.latest)}
