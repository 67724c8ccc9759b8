"""probe-topology alone: netlink change -> message at a plain NATS subscriber, bursts, rebuild cost.

The probe runs in-process on a private NATS server; the receiving side is nats-py + msgpack. Single changes:
one veth pair at a time, latency until both ends are in a received delta. Burst: N veth pairs from one
`ip -batch`; time until every end is received, messages used, and the probe's CPU time meanwhile.
Rebuild: time of one full state rebuild (`builder.build`) with the burst's interfaces present, and of the
incremental update the probe makes after one veth pair is added at that size (`incremental.py`).
"""

from __future__ import annotations

import asyncio
import resource
import statistics
import time
import uuid

from netsonde.common.testing import start_nats
from netsonde.probe_topology.testing import sh, start_probe, until

from .result import Result


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _measure(nats_url: str, tries: int, burst: int) -> dict[str, object]:
    tag = uuid.uuid4().hex[:6]
    svc, m = await start_probe(nats_url, tag + "00", process_netns=False)
    lat: list[float] = []
    out: dict[str, object] = {}
    try:
        for i in range(tries):
            await asyncio.sleep(0.05)  # isolated changes (during a stream of changes: one flush per 20 ms)
            a, b = f"q{tag}{i:03d}a", f"q{tag}{i:03d}b"
            t0 = time.perf_counter()
            sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            deadline = time.monotonic() + 10
            while (m.one(Name=a) is None or m.one(Name=b) is None) and time.monotonic() < deadline:
                await asyncio.sleep(0.001)
            lat.append(time.perf_counter() - t0)
        out["lat"] = lat
        names = [(f"w{tag}{i:04d}a", f"w{tag}{i:04d}b") for i in range(burst)]
        wanted = {n for pair in names for n in pair}
        n_msgs = len(m.messages)
        cpu0, t0 = _cpu(), time.perf_counter()
        sh("ip", "-batch", "-", input="".join(f"link add {a} type veth peer name {b}\n" for a, b in names))
        t_ip = time.perf_counter() - t0
        ok = await until(lambda: wanted <= {n["Metadata"]["Name"] for n in m.nodes.values()}, 120)
        out["burst_s"] = time.perf_counter() - t0
        out["burst_ip_s"] = t_ip
        out["burst_cpu_s"] = _cpu() - cpu0
        out["burst_msgs"] = len(m.messages) - n_msgs
        out["burst_ok"] = ok
        out["overruns"] = sum(w.overruns for w in svc.watchers.values())
        builds = []
        for _ in range(5):
            t = time.perf_counter()
            state = svc.current_state()
            builds.append(time.perf_counter() - t)
        out["build_s"] = statistics.median(builds)
        out["n_nodes"] = len(state.nodes)
        out["n_edges"] = len(state.edges)
        updates = []
        for i in range(5):  # single changes on the big state: what the probe redoes for each
            await asyncio.sleep(0.05)
            incremental = svc.tracker.incremental_builds
            a, b = f"u{tag}{i}a", f"u{tag}{i}b"
            sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
            await until(lambda: m.one(Name=a) is not None and m.one(Name=b) is not None, 10)
            if svc.tracker.incremental_builds > incremental:
                updates.append(svc._last_build_s)
        out["update_s"] = statistics.median(updates) if updates else float("nan")
        out["updates"] = len(updates)
    finally:
        sh("ip", "-force", "-batch", "-", check=False,
           input="".join(f"link del q{tag}{i:03d}a\n" for i in range(tries))
           + "".join(f"link del w{tag}{i:04d}a\n" for i in range(burst))
           + "".join(f"link del u{tag}{i}a\n" for i in range(5)))
        await svc.stop()
        await m.close()
    return out


def run(small: bool) -> Result:
    tries, burst = (3, 20) if small else (50, 1000)
    nats = start_nats()
    try:
        r = asyncio.run(_measure(nats.url, tries, burst))
    finally:
        nats.stop()
    lat = [v * 1000 for v in r["lat"]]  # type: ignore[union-attr]
    res = Result("probe-topology alone: netlink change to NATS subscriber",
                 ["measure", "value", "notes"])
    res.rows.append([f"ip link add (veth pair) -> both ends received, median ms ({len(lat)} tries)",
                     statistics.median(lat), f"max {max(lat):.1f} ms; includes running `ip` (fork+exec, ~5 ms); changes 50 ms apart"])
    res.rows.append([f"burst of {burst} veth pairs -> all {2 * burst} ends received, s", r["burst_s"],
                     f"`ip -batch` itself: {r['burst_ip_s']:.2f} s; {'none lost' if r['burst_ok'] else 'LOST SOME'}"])
    res.rows.append(["messages used for the burst", r["burst_msgs"], "deltas of <= 500 items"])
    res.rows.append(["probe CPU during the burst, s", r["burst_cpu_s"], "user + system of the test process"])
    res.rows.append(["netlink overruns during the burst", r["overruns"], "32 MB receive buffer"])
    res.rows.append([f"one state rebuild, ms ({r['n_nodes']} nodes, {r['n_edges']} edges)",
                     float(r["build_s"]) * 1000, "median of 5"])  # type: ignore[arg-type]
    res.rows.append(["incremental update after one veth pair is added at that size, ms",
                     float(r["update_s"]) * 1000,  # type: ignore[arg-type]
                     f"median of {r['updates']}; what the probe redoes after a single change"])
    res.notes.append("Run on the machine's root namespace, which other work may share; the probe is in-process.")
    return res
