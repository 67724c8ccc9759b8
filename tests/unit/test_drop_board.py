"""Loss counters: read from a service's Prometheus registry (every label set summed), and summed by query-api
per host and per stage over every process that reported (a restarted process's old counts stay)."""

from __future__ import annotations

import logging

import pytest

from netsonde.common.bus.dropcounters import DROP_KINDS, DropCounters
from netsonde.common.bus.inbound import InboundDecoder
from netsonde.common.dropreport import read_counters
from netsonde.common.metrics import Metrics
from netsonde.query_api.drops import MAX_INSTANCES, DropBoard


def test_read_counters_sums_labels_counters_and_gauges() -> None:
    m = Metrics("probe-flow")
    errors = m.counter("publish_errors_total", "x", ["kind"])
    errors.labels("flows").inc(2)
    errors.labels("status").inc(3)
    m.counter("kernel_drops_total", "x").inc(7)
    m.gauge("socket_drops", "x").set(4)
    got = read_counters(m.registry, m.prefix, {"publish_failures": "publish_errors_total",
                                               "kernel_drops": "kernel_drops_total", "socket_drops": "socket_drops",
                                               "table_full": "flows_refused_total"})
    assert got == {"publish_failures": 5, "kernel_drops": 7, "socket_drops": 4, "table_full": 0}


def _report(instance: str, host: str, stage: str, ts: int, **counters: int) -> DropCounters:
    return DropCounters(host=host, stage=stage, instance=instance, ts=ts, counters=counters)


def test_board_sums_per_host_and_stage_keeps_restarted_instances_and_ignores_late_reports() -> None:
    board = DropBoard(InboundDecoder(None, logging.getLogger("t")))
    board.add(_report("pf@a/1", "a", "probe-flow", 10, kernel_drops=5, publish_retries=2))
    board.add(_report("pf@a/1", "a", "probe-flow", 20, kernel_drops=8, publish_retries=2))
    board.add(_report("pf@a/1", "a", "probe-flow", 15, kernel_drops=6))  # late: ignored
    board.add(_report("pf@a/2", "a", "probe-flow", 30, kernel_drops=1))  # the same probe, restarted
    board.add(_report("pf@b/1", "b", "probe-flow", 30, table_full=4))
    board.add(_report("fe@a/1", "a", "flow-enricher", 30, rejects=1, redeliveries=3))
    s = board.summary()
    assert s["Hosts"]["a"]["probe-flow"] == {"kernel_drops": 9, "publish_retries": 2}
    assert s["Hosts"]["b"]["probe-flow"] == {"table_full": 4}
    assert s["Stages"]["probe-flow"] == {"kernel_drops": 9, "publish_retries": 2, "table_full": 4}
    assert s["Total"] == 9 + 4 + 1  # retries and redeliveries are not losses
    assert s["Reporters"] == 4


def test_board_is_bounded() -> None:
    board = DropBoard(InboundDecoder(None, logging.getLogger("t")))
    for i in range(MAX_INSTANCES + 10):
        board.add(_report(f"p/{i}", "h", "probe-flow", i, kernel_drops=1))
    assert len(board.latest) == MAX_INSTANCES
    assert "p/0" not in board.latest and f"p/{MAX_INSTANCES + 9}" in board.latest


def test_every_kind_is_documented() -> None:
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[2] / "docs" / "reliability.md").read_text()
    missing = [k for k in DROP_KINDS if f"`{k}`" not in doc]
    assert missing == []


@pytest.mark.parametrize("bad", [{"kernel_drops": "x"}, "notadict"])
def test_bad_report_is_rejected_by_the_schema(bad: object) -> None:
    import msgspec

    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"host": "h", "stage": "s", "instance": "i", "ts": 1, "counters": bad}, DropCounters)
