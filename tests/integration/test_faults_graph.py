"""Topology services SIGKILLed and restarted, one after the other, with a change made while each is down:
graph-builder, query-api and probe-topology. After each restart the graph reconverges (the change shows,
every node keeps its ID), query-api's replica resyncs, and the history has no gap (the interfaces exist in
the past graph at every second of the test, with each MTU they had)."""

from __future__ import annotations

import json
import subprocess
import time
import urllib.request

import pytest

from tests.integration.fault_pipeline import Services
from netsonde.common.testing import wait_until as _wait_until
from tests.integration.query_api_http import gremlin
from typing import Any

pytestmark = [pytest.mark.root, pytest.mark.slow]


def ids_and_mtu(port: int, va: str, vb: str) -> dict[str, tuple[str, int]]:
    nodes = gremlin(port, f"G.V().Has('Name', Within('{va}', '{vb}'))")
    assert isinstance(nodes, list)
    return {n["Metadata"]["Name"]: (n["ID"], n["Metadata"].get("MTU")) for n in nodes}


def wait_until(fn: Any, timeout: float, what: str) -> Any:
    return _wait_until(fn, timeout, what, interval=0.2)


@pytest.fixture
def veth(unique: str):  # type: ignore[no-untyped-def]
    va, vb = f"gfa{unique[:6]}", f"gfb{unique[:6]}"
    subprocess.run(["ip", "link", "add", va, "type", "veth", "peer", "name", vb], check=True)
    yield va, vb
    subprocess.run(["ip", "link", "del", va], capture_output=True)


def test_topology_services_sigkilled_graph_reconverges_same_ids_no_history_gap(
    nats_url: str, clickhouse_url: str, unique: str, veth: tuple[str, str]
) -> None:
    va, vb = veth
    svc = Services(nats_url, clickhouse_url, f"fg{unique}", f"faults_{unique}")
    try:
        svc.start("graph_builder", history_flush_interval_s="0.2")
        svc.start("probe_topology", ovsdb="", process_netns="false")
        api = svc.start("query_api")
        first = wait_until(lambda: (lambda s: s if len(s) == 2 and s[va][1] == 1500 else None)(
            ids_and_mtu(api.port, va, vb)), 30, "the veth pair in the API")
        t_start = int(time.time() * 1000)
        mtus = [1500]
        for victim, mtu in (("graph_builder", 1400), ("query_api", 1300), ("probe_topology", 1200)):
            proc = svc.procs[victim]
            t0 = time.monotonic()
            proc.kill()
            subprocess.run(["ip", "link", "set", va, "mtu", str(mtu)], check=True)
            time.sleep(1)
            proc.restart()
            now = wait_until(lambda: (lambda s: s if s.get(va, ("", 0))[1] == mtu else None)(
                ids_and_mtu(api.port, va, vb)), 60, f"MTU {mtu} after {victim} restarted")
            took = time.monotonic() - t0
            print(f"\nFAULT {victim} SIGKILLed, MTU changed while down: graph reconverged in {took:.1f} s, "
                  f"IDs {'same' if {k: v[0] for k, v in now.items()} == {k: v[0] for k, v in first.items()} else 'CHANGED'}")
            assert {k: v[0] for k, v in now.items()} == {k: v[0] for k, v in first.items()}
            mtus.append(mtu)
        status = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{api.port}/api/status", timeout=10).read())
        assert status["Graph"]["Synced"] is True
        time.sleep(1)  # the last revision flushed to history
        t_end = int(time.time() * 1000)
        # no gap: both ends exist in the past graph at every second of the test
        missing = [t for t in range(t_start, t_end, 1000)
                   if gremlin(api.port, f"G.Context({t}).V().Has('Name', Within('{va}', '{vb}')).Count()") != 2]
        seen = gremlin(api.port, f"G.Context({t_end}, {(t_end - t_start) // 1000 + 2}).V().Has('Name', '{va}')"
                                 ".Values('MTU')")
        print(f"FAULT history over {(t_end - t_start) / 1000:.0f} s: instants without both nodes: {len(missing)}; "
              f"MTU revisions {seen}")
        assert missing == []
        assert isinstance(seen, list) and [m for i, m in enumerate(seen) if i == 0 or seen[i - 1] != m] == mtus
    finally:
        svc.stop()
