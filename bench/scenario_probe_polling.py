"""probe-topology's periodic refresh on a host with many interfaces: what polling counters and routes costs.

A scratch namespace gets N interfaces (N/2 veth pairs, all up, an IPv4 /30 on each end, IPv6 link-local as
the kernel sets it: about 6 routes per interface across the main and local tables). The probe runs in-process
on a private NATS server (no subscriber: only the probe's work is timed). Each refresh cycle first sends one
frame through every pair (so every interface's counters move and every interface node changes: the worst
case), then asks every watcher to refresh (what the `metrics_interval_s` timer does: links, addresses, routes
and neighbours dumped again, ethtool read again) and waits until the resulting delta is published. The CPU
of the process during that (user + system, the kernel's dump work included) divided by the default interval
is the share of one core that polling costs. The same without traffic gives the quiet-host figure.
"""

from __future__ import annotations

import asyncio
import resource
import socket
import statistics
import time
import uuid

from netsonde.common.testing import start_nats
from netsonde.probe_topology.config import ProbeTopologyConfig
from netsonde.probe_topology.netns import run_in_netns
from netsonde.probe_topology.service import ProbeTopologyService
from netsonde.probe_topology.testing import sh

from .result import Result

DEFAULT_INTERVAL_S = ProbeTopologyConfig.metrics_interval_s


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _pair_names(tag: str, pairs: int) -> list[tuple[str, str]]:
    return [(f"pa{tag}{i:04d}", f"pb{tag}{i:04d}") for i in range(pairs)]


def _setup(ns: str, names: list[tuple[str, str]]) -> None:
    sh("ip", "netns", "add", ns)
    lines = []
    for i, (a, b) in enumerate(names):
        base = f"10.{100 + i // 16384}.{(i // 64) % 256}.{(i % 64) * 4}"
        prefix = base.rsplit(".", 1)[0]
        last = int(base.rsplit(".", 1)[1])
        lines += [f"link add {a} type veth peer name {b}",
                  f"addr add {prefix}.{last + 1}/30 dev {a}", f"addr add {prefix}.{last + 2}/30 dev {b}",
                  f"link set {a} up", f"link set {b} up"]
    sh("ip", "-n", ns, "-batch", "-", input="\n".join(lines) + "\n")


def _one_frame_each(ns: str, names: list[tuple[str, str]]) -> None:
    """One broadcast frame out of every `a` end (tx on a, rx on its peer), from inside the namespace."""
    frame = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x01" + b"\x88\xb5" + b"netsonde-bench".ljust(46, b"\0")

    def send() -> None:
        for a, _b in names:
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
                s.bind((a, 0))
                s.send(frame)

    run_in_netns(f"/var/run/netns/{ns}", send)


async def _refresh(svc: ProbeTopologyService) -> tuple[float, float]:
    """(CPU s, wall s) of one refresh of every namespace, then the flush loop's rebuild and publication."""
    cpu0, t0 = _cpu(), time.perf_counter()
    watchers = list(svc.watchers.values())
    for w in watchers:
        w.resync()
    for w in watchers:
        if not await w.wait_synced(60):
            raise RuntimeError(f"namespace {w.ns.name or 'root'} did not finish its dumps in 60 s")
    synced = time.monotonic()
    deadline = synced + 1  # a refresh that changed nothing causes no flush at all
    while svc._last_flush_end < synced and time.monotonic() < deadline:  # the flush loop has published it
        await asyncio.sleep(0.002)
    async with svc._flush_lock:  # ... and has rebuilt and published
        pass
    return _cpu() - cpu0, time.perf_counter() - t0


async def _measure(nats_url: str, interfaces: int, cycles: int) -> dict[str, object]:
    tag = uuid.uuid4().hex[:5]
    ns = f"poll{tag}"
    names = _pair_names(tag, interfaces // 2)
    out: dict[str, object] = {}
    _setup(ns, names)
    cfg = ProbeTopologyConfig.load(env={}, nats_url=nats_url, host_id=f"bench{tag}", subject_prefix=f"b{tag}",
                                   ovsdb="", process_netns=False, metrics_interval_s=3600, log_format="text")
    svc = ProbeTopologyService(cfg)
    try:
        await svc.start()
        watcher = next(w for w in svc.watchers.values() if w.ns.name == ns)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and sum(1 for a in watcher.addrs.values() if a) < interfaces:
            await asyncio.sleep(0.1)
        await asyncio.sleep(2.0)  # let the kernel's IPv6 start-up (DAD, router solicitations) settle
        await _refresh(svc)
        busy, quiet, walls, changed = [], [], [], []
        for _ in range(cycles):
            _one_frame_each(ns, names)
            before = dict(watcher.metrics)
            cpu, wall = await _refresh(svc)
            busy.append(cpu)
            walls.append(wall)
            changed.append(sum(1 for i, m in watcher.metrics.items() if before.get(i) is not m))
            cpu, _wall = await _refresh(svc)
            quiet.append(cpu)
        out["busy_cpu_s"] = statistics.median(busy)
        out["quiet_cpu_s"] = statistics.median(quiet)
        out["wall_s"] = statistics.median(walls)
        out["changed"] = min(changed)
        out["routes"] = len(watcher.rt.routes)
        out["neighs"] = len(watcher.rt.neighs)
        out["links"] = len(watcher.links)
        out["nodes"] = len(svc.published.nodes)
    finally:
        await svc.stop()
        sh("ip", "netns", "del", ns, check=False)
    return out


def run(small: bool) -> Result:
    interfaces, cycles = (100, 2) if small else (2000, 5)
    nats = start_nats()
    try:
        r = asyncio.run(_measure(nats.url, interfaces, cycles))
    finally:
        nats.stop()
    busy, quiet = float(r["busy_cpu_s"]), float(r["quiet_cpu_s"])  # type: ignore[arg-type]
    res = Result(f"probe-topology: polling counters and routes of {r['links']} interfaces",
                 ["measure", "value", "notes"])
    res.rows.append(["one refresh, every counter moved: probe CPU, ms", busy * 1000,
                     f"{r['changed']} interfaces changed; delta published in {float(r['wall_s']) * 1000:.0f} ms "
                     f"(median of {cycles})"])
    res.rows.append([f"share of one core at the default interval ({DEFAULT_INTERVAL_S:g} s), %",
                     busy / DEFAULT_INTERVAL_S * 100, "goal: under 5 %"])
    res.rows.append(["one refresh, nothing moved: probe CPU, ms", quiet * 1000,
                     f"{quiet / DEFAULT_INTERVAL_S * 100:.2f} % of a core at {DEFAULT_INTERVAL_S:g} s"])
    res.rows.append(["routes / neighbours held in the namespace", f"{r['routes']} / {r['neighs']}",
                     f"{r['nodes']} nodes in the host state"])
    res.notes.append("In-process probe, no subscriber; CPU = user + system of the process (the kernel's netlink "
                     "dump work is system time of the probe). The namespace is a scratch one; the root namespace "
                     "is refreshed too.")
    return res
