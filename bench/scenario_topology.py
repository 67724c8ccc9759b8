"""Topology latency: from `ip link add` to the node in the API answer and to the WebSocket event.

probe-topology, graph-builder (history on, into the store) and query-api run as separate processes on one
NATS, as in `netsonde allinone`. Single changes: one veth pair at a time (100 for each measure), alternately
timed by polling the API every 2 ms and by a WebSocket subscriber alone (polling would slow the delivery it
measures). Burst: 1 000 veth pairs created by one `ip -batch`; time until the API counts all 2 000 ends, and
graph-builder events/s.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import tempfile
import time
import uuid

import aiohttp

from netsonde.common.testing import start_nats, start_store

from .result import Result
from .services import ServiceProcs, percentile


def graph_events(gb_port: int) -> float:
    """Sum of graph-builder's netsonde_graph_builder_graph_events_total over event types."""
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{gb_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("netsonde_graph_builder_graph_events_total{"))


async def _measure(api: int, gb: int, tries: int, burst: int) -> tuple[list[float], list[float], float, float]:
    tag = uuid.uuid4().hex[:5]
    api_lat: list[float] = []
    ws_lat: list[float] = []
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"http://127.0.0.1:{api}/ws/subscriber")
        seen: dict[str, float] = {}

        async def listen() -> None:
            async for msg in ws:
                ev = json.loads(msg.data)
                if ev.get("Type") == "NodeAdded":
                    name = ev["Obj"]["Metadata"].get("Name", "")
                    if name.startswith("bt"):
                        seen.setdefault(name, time.perf_counter())

        listener = asyncio.create_task(listen())

        async def count(q: str) -> int:
            async with http.post(f"http://127.0.0.1:{api}/api/topology", json={"GremlinQuery": q}) as r:
                return await r.json() if r.status == 200 else -1

        try:
            for i in range(tries):
                name = f"bt{tag}{i}"
                t0 = time.perf_counter()
                subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", f"bu{tag}{i}"], check=True)
                if i % 2 == 0:  # API: poll the answer (the polling itself loads query-api, so not on WS tries)
                    while await count(f"G.V().Has('Name','{name}').Count()") != 1:
                        await asyncio.sleep(0.002)
                    api_lat.append(time.perf_counter() - t0)
                else:  # WebSocket: wait for the event only
                    deadline = time.monotonic() + 5
                    while name not in seen and time.monotonic() < deadline:
                        await asyncio.sleep(0.0005)
                    if name in seen:
                        ws_lat.append(seen[name] - t0)
                await asyncio.sleep(0.05)
            with tempfile.NamedTemporaryFile("w", suffix=".batch", delete=False) as f:
                for i in range(burst):
                    f.write(f"link add bx{tag}{i} type veth peer name by{tag}{i}\n")
            events0 = graph_events(gb)
            t0 = time.perf_counter()
            subprocess.run(["ip", "-batch", f.name], check=True)
            q = f"G.V().Has('Name', Regex('b[xy]{tag}.*')).Count()"
            while await count(q) != 2 * burst:
                await asyncio.sleep(0.01)
            burst_s = time.perf_counter() - t0
            burst_events = graph_events(gb) - events0
            os.unlink(f.name)
        finally:
            listener.cancel()
            await ws.close()
            with tempfile.NamedTemporaryFile("w", suffix=".batch", delete=False) as f:
                for i in range(tries):
                    f.write(f"link del bt{tag}{i}\n")
                for i in range(burst):
                    f.write(f"link del bx{tag}{i}\n")
            subprocess.run(["ip", "-force", "-batch", f.name], capture_output=True)
            os.unlink(f.name)
    return api_lat, ws_lat, burst_s, burst_events


def run(small: bool) -> Result:
    tries, burst = (6, 20) if small else (200, 1000)
    nats = start_nats()
    store = start_store()
    procs = ServiceProcs(nats.url, store.url, prefix=f"bt{uuid.uuid4().hex[:6]}")
    try:
        gb = procs.start("graph_builder")
        procs.start("probe_topology", ovsdb="", process_netns="false")
        api = procs.start("query_api", snapshot_timeout_s="5")
        time.sleep(1.0)
        api_lat, ws_lat, burst_s, burst_events = asyncio.run(_measure(api, gb, tries, burst))
    finally:
        procs.stop()
        store.stop()
        nats.stop()
    ms = lambda v: v * 1000  # noqa: E731
    res = Result("Topology: netlink change to API and WebSocket",
                 ["measure", "median", "p99", "max", "goal", "verdict"])
    p99_api, p99_ws = ms(percentile(api_lat, 0.99)), ms(percentile(ws_lat, 0.99))
    res.rows.append([f"ip link add -> API answer, ms ({len(api_lat)} tries)", ms(statistics.median(api_lat)),
                     p99_api, ms(max(api_lat)), "p99 < 100 ms", "meets" if p99_api < 100 else "misses"])
    res.rows.append([f"ip link add -> WebSocket NodeAdded, ms ({len(ws_lat)} tries)",
                     ms(statistics.median(ws_lat)) if ws_lat else float("nan"), p99_ws,
                     ms(max(ws_lat)) if ws_lat else float("nan"), "p99 < 50 ms",
                     "meets" if p99_ws < 50 else "misses"])
    res.rows.append([f"burst of {burst} veth pairs -> all {2 * burst} ends in the API, s", burst_s, "", "", "",
                     "no interface lost"])
    res.rows.append([f"graph-builder events/s during the burst ({int(burst_events)} events)",
                     round(burst_events / burst_s), "", "", "", ""])
    res.notes.append("API latency includes the 2 ms polling of POST /api/topology; the probe coalesces changes "
                     "for up to 20 ms (flush_interval_s) before publishing.")
    return res
