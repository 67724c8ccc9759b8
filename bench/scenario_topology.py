"""Topology latency: from `ip link add` to the node in the API answer and to the WebSocket event.

probe-topology, graph-builder (history on, into the store) and query-api run as separate processes on one
NATS, as in `netsonde allinone`. Single changes: one veth pair at a time (100 for each measure), alternately
timed by polling the API every 2 ms and by a WebSocket subscriber alone (polling would slow the delivery it
measures). Burst: 1 000 veth pairs created by one `ip -batch`; time until the API counts all 2 000 ends, and
graph-builder events/s (last, after the loaded measure). Loaded: the WebSocket latency again (100 single changes) while the bus-to-store
scenario's load runs on the same cores: its own generator and pipeline (`scenario_bus_to_store.pipeline_run`:
JetStream -> one flow-enricher process -> the store) at 100 000 flow updates/s offered, on the same NATS
server and store. The 1-min load average is taken before and after each measure.
"""

from __future__ import annotations

import asyncio
import json
import os
import statistics
import subprocess
import multiprocessing
import tempfile
import time
import uuid
from typing import Any

import aiohttp
import nats
from pyroute2 import AsyncIPRoute

from netsonde.common.bus import Subjects

from netsonde.common.testing import start_nats, start_store

from . import scenario_bus_to_store as bus_load
from .result import Result
from .services import ServiceProcs, percentile

LOAD_RATE = 100_000
"""Flow updates/s the bus-to-store load offers during the loaded measure (one of its paced rates)."""


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
            burst_s = burst_events = 0.0
            if burst:
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


async def _ws_tries(api: int, tries: int, triggers: tuple[str, ...], busy: Any = None) -> dict[str, list[float]]:
    """WebSocket latency of `tries` single veth additions, 50 ms apart (while `busy()` holds, if given), made
    in turn by each trigger: "netlink" (the request from this process, pyroute2: the change itself) or "ip"
    (the `ip` command: its fork + exec, ~3 ms here, included)."""
    tag = uuid.uuid4().hex[:5]
    lat: dict[str, list[float]] = {t: [] for t in (*triggers, "netlink-done")}
    seen: dict[str, float] = {}
    ipr = AsyncIPRoute()
    await ipr.setup_endpoint()
    await ipr.link_lookup(ifname="lo")  # the first request sets pyroute2 up: not part of a measure
    async with aiohttp.ClientSession() as http:
        ws = await http.ws_connect(f"http://127.0.0.1:{api}/ws/subscriber")

        async def listen() -> None:
            async for msg in ws:
                ev = json.loads(msg.data)
                if ev.get("Type") == "NodeAdded":
                    name = ev["Obj"]["Metadata"].get("Name", "")
                    if name.startswith("bl"):
                        seen.setdefault(name, time.perf_counter())

        listener = asyncio.create_task(listen())
        done = 0
        try:
            for i in range(tries):
                if busy is not None and not busy():
                    break
                name, trigger = f"bl{tag}{i}", triggers[i % len(triggers)]
                t0 = time.perf_counter()
                if trigger == "ip":
                    subprocess.run(["ip", "link", "add", name, "type", "veth", "peer", "name", f"bm{tag}{i}"],
                                   check=True)
                else:
                    await ipr.link("add", ifname=name, kind="veth", peer=f"bm{tag}{i}")
                t_done = time.perf_counter()
                done = i + 1
                deadline = time.monotonic() + 5
                while name not in seen and time.monotonic() < deadline:
                    await asyncio.sleep(0.0005)
                if name in seen:
                    lat[trigger].append(seen[name] - t0)
                    if trigger == "netlink":  # from the change applied: the kernel's own wait (RTNL) left out
                        lat["netlink-done"].append(max(0.0, seen[name] - t_done))
                await asyncio.sleep(0.05)
        finally:
            listener.cancel()
            await ws.close()
            ipr.close()
            subprocess.run(["ip", "-force", "-batch", "-"], capture_output=True,
                           input="".join(f"link del bl{tag}{i}\n" for i in range(done)).encode())
    return lat


def _load_process(nats_url: str, store_url: str, rate: int, seconds: float, tag: str, out: Any) -> None:
    """The load's own process (as the bus-to-store scenario runs beside the services, not inside the client
    that times the events: in a thread here its publisher would hold the client's GIL)."""
    try:
        base = bus_load.make_messages(60, seed=5)  # cycled by pipeline_run (fresh flow IDs each cycle)
        n_msgs = int(rate * seconds / bus_load.FLOWS_PER_MSG)
        out.put(asyncio.run(bus_load.pipeline_run(nats_url, store_url, 1, base, rate, tag, total_msgs=n_msgs)))
    except BaseException as exc:  # noqa: BLE001 - reported by the scenario
        out.put({"error": repr(exc)})


class BusLoad:
    """The bus-to-store scenario's load (its message generator and pipeline, imported) in a process."""

    def __init__(self, nats_url: str, store_url: str, rate: int, seconds: float) -> None:
        self.nats_url, self.rate, self.seconds = nats_url, rate, seconds
        self.tag = f"tl{os.getpid()}"
        ctx = multiprocessing.get_context("spawn")
        self.out = ctx.Queue()
        self.proc = ctx.Process(target=_load_process, args=(nats_url, store_url, rate, seconds, self.tag, self.out),
                                daemon=True)
        self.result: dict[str, Any] = {}
        self.publishing_until = float("inf")

    async def start(self) -> None:
        """Start, and return once the updates flow into JetStream (the enricher is up)."""
        self.proc.start()
        stream = Subjects(f"bb{self.tag}").flow_stream
        nc = await nats.connect(self.nats_url)
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and self.proc.is_alive():
                try:
                    if (await nc.jetstream().stream_info(stream)).state.messages > 0:
                        break
                except Exception:  # noqa: BLE001 - not created yet
                    pass
                await asyncio.sleep(0.1)
        finally:
            await nc.close()
        self.publishing_until = time.monotonic() + self.seconds - 0.5

    def publishing(self) -> bool:
        return self.proc.is_alive() and time.monotonic() < self.publishing_until

    def join(self) -> None:
        self.result = self.out.get(timeout=300)
        self.proc.join(30)
        if "error" in self.result:
            raise RuntimeError(f"the bus-to-store load failed: {self.result['error']}")


async def _loaded(api: int, nats_url: str, store_url: str, tries: int,
                  seconds: float) -> tuple[dict[str, list[float]], Any]:
    load = BusLoad(nats_url, store_url, LOAD_RATE, seconds)
    await load.start()
    try:
        lat = await _ws_tries(api, tries, ("netlink", "ip"), busy=load.publishing)
    finally:
        await asyncio.to_thread(load.join)
    return lat, load


def run(small: bool) -> Result:
    tries, burst = (6, 20) if small else (200, 1000)
    loaded_tries, load_s = (6, 4.0) if small else (200, 20.0)
    nats = start_nats()
    store = start_store()
    procs = ServiceProcs(nats.url, store.url, prefix=f"bt{uuid.uuid4().hex[:6]}")
    try:
        gb = procs.start("graph_builder")
        procs.start("probe_topology", ovsdb="", process_netns="false")
        api = procs.start("query_api", snapshot_timeout_s="5")
        time.sleep(1.0)
        load0 = os.getloadavg()[0]
        api_lat, ws_lat, _, _ = asyncio.run(_measure(api, gb, tries, 0))
        nl_lat = asyncio.run(_ws_tries(api, tries // 2, ("netlink",)))
        load1 = os.getloadavg()[0]
        loaded_lat, load = asyncio.run(_loaded(api, nats.url, store.url, loaded_tries, load_s))
        load2 = os.getloadavg()[0]
        time.sleep(2.0)  # the load's last inserts and merges settle before the burst
        _, _, burst_s, burst_events = asyncio.run(_measure(api, gb, 0, burst))
    finally:
        procs.stop()
        store.stop()
        nats.stop()
    ms = lambda v: v * 1000  # noqa: E731
    res = Result("Topology: netlink change to API and WebSocket",
                 ["measure", "median", "p99", "max", "goal", "verdict", "1-min load before / after"])
    loads, loads_loaded = f"{load0:.2f} / {load1:.2f}", f"{load1:.2f} / {load2:.2f}"
    stored = load.result.get("stored", 0.0) / max(load.result.get("wall", 1.0), 1e-9)
    under = f"while the bus-to-store load runs ({LOAD_RATE:,} updates/s offered, {stored:,.0f}/s stored)"

    def row(label: str, lat: list[float], goal_ms: float, loads_: str, api: bool = False) -> None:
        p99 = ms(percentile(lat, 0.99))
        res.rows.append([f"{label}, ms ({len(lat)} tries)", ms(statistics.median(lat)) if lat else float("nan"),
                         p99, ms(max(lat)) if lat else float("nan"), f"p99 < {goal_ms:g} ms",
                         "meets" if p99 < goal_ms else "misses", loads_])

    row("ip link add -> API answer", api_lat, 100, loads)
    row("change applied (netlink request returned) -> WebSocket NodeAdded", nl_lat["netlink-done"], 20, loads)
    row("netlink request sent -> WebSocket NodeAdded", nl_lat["netlink"], 20, loads)
    row("ip link add -> WebSocket NodeAdded (the `ip` command's run included)", ws_lat, 20, loads)
    row(f"change applied -> WebSocket NodeAdded, {under}", loaded_lat["netlink-done"], 50, loads_loaded)
    row(f"netlink request sent -> WebSocket NodeAdded, {under}", loaded_lat["netlink"], 50, loads_loaded)
    row(f"ip link add -> WebSocket NodeAdded, {under}", loaded_lat["ip"], 50, loads_loaded)
    res.rows.append([f"burst of {burst} veth pairs -> all {2 * burst} ends in the API, s", burst_s, "", "", "",
                     "no interface lost", ""])
    res.rows.append([f"graph-builder events/s during the burst ({int(burst_events)} events)",
                     round(burst_events / burst_s), "", "", "", "", ""])
    res.notes.append("API latency includes the 2 ms polling of POST /api/topology. A change is a veth pair "
                     "created by a netlink request from the bench (pyroute2), timed from when the request was "
                     "sent (the kernel's wait for its lock included: other work on this machine creates and "
                     "deletes namespaces) and from when it returned (the change applied; an event seen earlier "
                     "counts 0), or by the `ip` command, timed from its start (its fork + exec included).")
    res.notes.append("After an idle period the probe publishes a change as soon as nothing else is queued (during "
                     "a burst once none came for 1 ms, at most 20 ms), redoing only the changed interfaces "
                     "(incremental update).")
    res.notes.append("Loaded row: the bus-to-store scenario's generator and pipeline (imported from "
                     "bench/scenario_bus_to_store.py), one flow-enricher replica, on the same NATS server and "
                     "store as the topology services; tries stop when its publishing ends.")
    return res
