"""probe-flow's Prometheus counters count everything its captures counted, across restarts and stops.

A capture's table (and reader) count from zero; a restarted capture gets a new table. The exported counters
must not follow the sum over the running captures down (and then miss what the new table counts until it
passes the old total): `CaptureController.counter_totals` keeps what stopped and replaced tables counted.
Real veth, real pings, a real NetFlow v5 target (a UDP socket here) for the option events.
"""

from __future__ import annotations

import socket
import time
from typing import Any, Iterator

import pytest

from netsonde.common.bus.captures import Capture
from netsonde.probe_flow.config import ProbeFlowConfig
from netsonde.probe_flow.service import ProbeFlowService
from tests.integration.netns_veth import sh, veth_into_namespace

pytestmark = pytest.mark.root


@pytest.fixture
def veth(unique: str) -> Iterator[dict[str, str]]:
    with veth_into_namespace(unique, "pc", 0) as v:
        yield v


def metric(svc: ProbeFlowService, name: str, **labels: str) -> float | None:
    return svc.metrics.registry.get_sample_value(f"netsonde_probe_flow_{name}", labels)


def echoes(v: dict[str, str], n: int) -> None:
    """`n` echoes (2 n packets); the wait lets the ring's block timeout (100 ms) hand them to the thread."""
    sh("ping", "-c", str(n), "-i", "0.2", "-W", "1", v["peer_ip"])
    time.sleep(0.3)


@pytest.mark.slow
def test_counters_keep_what_restarted_and_stopped_captures_counted(veth: dict[str, str], unique: str) -> None:
    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    cfg = ProbeFlowConfig.load(env={}, host_id="h", use_graph=False, log_format="text")
    svc = ProbeFlowService(cfg)  # not started: the controller and the counters, without NATS
    ctl = svc.controller
    node: dict[str, Any] = {"ID": f"n-{unique}", "Host": "h",
                            "Metadata": {"Name": veth["host"], "Type": "veth", "TID": "tid-0"}}
    ctl.select_nodes = lambda q: [node]
    cap = Capture(UUID=f"c-{unique}", GremlinQuery="G.V()", BPFFilter="icmp", TargetType="netflowv5",
                  Target=f"127.0.0.1:{rx.getsockname()[1]}")

    def publish() -> tuple[float | None, float | None]:
        ctl.collect(int(time.time() * 1000))
        svc._export_stats()
        return metric(svc, "packets_total"), metric(svc, "option_events_total", event="netflow_packets")

    try:
        ctl.put(cap)
        ctl.reconcile()
        echoes(veth, 3)
        assert publish() == (6, 6)
        node["Metadata"]["TID"] = "tid-1"  # restart: the capture counts into a new table, from zero
        ctl.reconcile()
        echoes(veth, 2)
        assert publish() == (10, 10)  # was (6, 6): the new table's 4 were below the old total of 6
        ctl.delete(cap.UUID)  # stop: the table is flushed, what it counted stays in the counters
        ctl.reconcile()
        assert not ctl.running and publish() == (10, 10)
        ctl.put(cap)  # a new capture (new socket, new table)
        ctl.reconcile()
        echoes(veth, 1)
        ctl.stop_all()
        assert publish() == (12, 12)
        # one flow update per table, 2 records each (A->B, B->A): 3 tables
        assert metric(svc, "option_events_total", event="netflow_records") == 6
    finally:
        ctl.stop_all()
        rx.close()
