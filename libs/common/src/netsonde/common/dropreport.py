"""Publish a service's loss counters on the bus (`bus.dropcounters.DropCounters`), read from its own
Prometheus registry, so query-api can sum them per host and per stage."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry

from .bus import Subjects, encode
from .bus.dropcounters import DROP_KINDS, DropCounters

log = logging.getLogger(__name__)


def read_counters(registry: CollectorRegistry, prefix: str, kinds: dict[str, str]) -> dict[str, int]:
    """{kind: value} where `kinds` maps a drop kind to a metric name as /metrics shows it, without the
    service prefix (`kernel_drops_total`); every label set of the metric is summed. Counters and gauges."""
    wanted = {f"{prefix}_{metric}": kind for kind, metric in kinds.items()}
    out = dict.fromkeys(kinds, 0)
    for family in registry.collect():
        for sample in family.samples:
            kind = wanted.get(sample.name)
            if kind is not None:
                out[kind] += int(sample.value)
    return out


async def report_drops(
    nc: Any,
    subjects: Subjects,
    stage: str,
    host: str,
    registry: CollectorRegistry,
    prefix: str,
    kinds: dict[str, str],
    interval_s: float,
) -> None:
    """Publish the counters now and every `interval_s` (a background task; a failed publish is retried at
    the next tick, the counts being cumulative)."""
    unknown = set(kinds) - set(DROP_KINDS)
    if unknown:
        raise ValueError(f"unknown drop kinds {sorted(unknown)}: add them to bus.dropcounters.DROP_KINDS")
    instance = f"{stage}@{host}/{int(time.time() * 1000)}"
    while True:
        msg = DropCounters(
            host=host,
            stage=stage,
            instance=instance,
            ts=int(time.time() * 1000),
            counters=read_counters(registry, prefix, kinds),
        )
        try:
            await nc.publish(subjects.drop_counters, encode(msg))
        except Exception as exc:
            log.debug("drop counters not published: %r", exc)
        await asyncio.sleep(interval_s)
