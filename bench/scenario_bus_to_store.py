"""Bus to store: flow updates published to JetStream, through flow-enricher processes, into ClickHouse.

Measured, against one nats-server (-js, file storage) and the embedded store, everything on this machine:
1. Ceiling: the flows table's insert rate with the engine alone, from columns built beforehand:
   clickhouse-connect bulk `insert` of Python column lists, and the same rows as a ready Native block
   (what the enricher's C path sends).
2. The enricher's own cost: the C path and the Python reference path on pre-encoded messages, in this
   process (CPU time per flow update, no I/O).
3. Backlog drain with 1 and 2 enricher replicas (`python -m netsonde.flow_enricher`, one durable consumer):
   a burst of flow updates is published as fast as possible while the replicas run; wall rate, and flow
   updates per CPU-second of the enricher processes (utime + stime from /proc) = "per enricher core".
4. Paced rates with one replica, sustained for several seconds: updates published at fixed rates (500 updates
   per message, as probe-flow and the sFlow collector pack them; `ts` stamped at publish, every update a new
   flow UUID); end-to-end lag = publish -> stored in ClickHouse and acked, from the enricher's lag histogram.
For every pipeline row: CPU-seconds per million updates of the enricher(s), the store process (HTTP + the
ClickHouse engine, its merges included), nats-server and the publisher (this process), and the 1-min load
average at the end of the row.
The machine has 2 cores shared by nats-server, the store (ClickHouse engine), the publisher and the
replicas (and by other jobs: see the load): wall rates are bounded by that; CPU-second figures are each
process's own.
"""

from __future__ import annotations

import asyncio
import os
import re
import struct
import time
import urllib.request
from typing import Any

import nats

from netsonde.common import flowschema as fs
from netsonde.common.bus import Subjects, decode, encode
from netsonde.common.bus.flows import Flow, FlowLayer, FlowMetric, FlowUpdateBatch
from netsonde.common.bus.graph import GraphElement
from netsonde.common.clickhouse import connect
from netsonde.common.testing import start_nats, start_store
from netsonde.flow_enricher import pipeline
from netsonde.flow_enricher.lookup import EndpointLookup
from netsonde.common.bus.streams import ensure_flow_stream
from netsonde.flow_enricher.writer import FlowWriter

from .result import Result
from .services import ServiceProcs

FLOWS_PER_MSG = 500
"""Flow updates per bus message: what probe-flow (`publish_batch_flows`) and the sFlow collector send."""
NODES = 50
PACE_TICK = 0.005
"""Paced publishing sleeps in ticks of at least this (s): messages due within a tick are sent together, as a
probe's flush sends what its table expired, instead of one event-loop wakeup per message."""


def make_messages(n_msgs: int, host: str = "h1", seed: int = 0) -> list[bytes]:
    """Realistic updates: 50 capture points, TCP/UDP 5-tuples, totals and deltas; ~500 B per update."""
    now = int(time.time() * 1000)
    out = []
    for m in range(n_msgs):
        flows = []
        for j in range(FLOWS_PER_MSG):
            i = seed * 10_000_000 + m * FLOWS_PER_MSG + j
            tcp = i % 3 != 0
            flows.append(Flow(
                UUID=f"{i * 2654435761 % 2**64:016x}", LayersPath="Ethernet/IPv4/TCP" if tcp else "Ethernet/IPv4/UDP",
                Application="TCP" if tcp else "UDP", TrackingID=f"{i * 40503 % 2**64:016x}",
                L3TrackingID=f"{i * 9973 % 2**64:016x}", NodeTID=f"tid-{i % NODES}", Start=now - 60_000, Last=now,
                Metric=FlowMetric(ABPackets=10 + i % 7, ABBytes=1500 + i % 1000, BAPackets=8, BABytes=900,
                                  Start=now - 60_000, Last=now, RTT=120_000),
                LastUpdateMetric=FlowMetric(ABPackets=2, ABBytes=300, BAPackets=1, BABytes=120, Start=now - 1000,
                                            Last=now),
                Link=FlowLayer("ETHERNET", f"02:00:00:00:{i % 256:02x}:{i // 256 % 256:02x}", "02:00:00:00:00:01"),
                Network=FlowLayer("IPV4", f"10.{i // 65536 % 256}.{i // 256 % 256}.{i % 256}", "10.255.0.1"),
                Transport=FlowLayer("TCP" if tcp else "UDP", 1024 + i % 60000, 443 if tcp else 53)))
        out.append(encode(FlowUpdateBatch(host=host, batch_id=f"{host}-{seed}-{m}", ts=now, flows=flows)))
    return out


def ts_offset(msg: bytes) -> int:
    """Where the 8 bytes of `ts` (msgpack uint64) sit, to restamp pre-encoded messages at publish time."""
    pos = msg.find(b"\xa2ts\xcf", 0, 200)
    if pos < 0:
        raise ValueError("ts not found")
    return pos + 4


_UUID_KEY = b"\xa4UUID\xb0"  # msgpack "UUID" then a 16-byte fixstr
_UUID_KEY_LONG = b"\xa4UUID\xb4"  # ... then a 20-byte fixstr: 4 hex digits of cycle in front


class Republisher:
    """One pre-encoded message, published over and over as new flows: every copy gets `ts` stamped at
    publish and the 4-hex-digit prefix of each flow UUID set to the cycle (still valid msgpack), as
    ReplacingMergeTree would otherwise collapse the repeats. Written in place into a copy: the publisher
    stands in for probes on other hosts, so it should cost this machine as little as it can (a
    `bytes.replace` per copy cost 0.85 CPU-seconds per million updates, more than nats-server)."""

    def __init__(self, msg: bytes) -> None:
        self.template = msg.replace(_UUID_KEY, _UUID_KEY_LONG + b"0000")
        step = len(_UUID_KEY_LONG)
        self.uuid_offsets = [m.start() + step for m in re.finditer(re.escape(_UUID_KEY_LONG), self.template)]
        self.ts_offset = ts_offset(self.template)

    def copy(self, cycle: int) -> bytearray:
        b = bytearray(self.template)
        prefix = b"%04x" % (cycle % 65536)
        for off in self.uuid_offsets:
            b[off : off + 4] = prefix
        struct.pack_into(">Q", b, self.ts_offset, int(time.time() * 1000))
        return b


def make_lookup() -> EndpointLookup:
    lk = EndpointLookup()
    for t in range(NODES):
        lk.on_node(GraphElement(ID=f"node-{t}", Metadata={"TID": f"tid-{t}", "MAC": f"02:00:00:00:00:{t:02x}",
                                                          "IPV4": [f"10.255.0.{t}/16"]},
                                Host="h1", Origin="bench", CreatedAt=1, UpdatedAt=1, Revision=1))
    return lk


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def scrape(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        text = r.read().decode()
    out: dict[str, float] = {}
    for line in text.splitlines():
        if line.startswith("netsonde_flow_enricher_") and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name[len("netsonde_flow_enricher_"):]] = float(value)
    return out


def lag_quantile(buckets: dict[float, float], q: float) -> float:
    """Upper bound of the histogram bucket holding quantile q (inf if beyond the last finite bucket)."""
    total = buckets.get(float("inf"), 0.0)
    if not total:
        return float("nan")
    for le in sorted(buckets):
        if buckets[le] >= q * total:
            return le
    return float("inf")


def lag_buckets(metrics: list[dict[str, float]]) -> dict[float, float]:
    out: dict[float, float] = {}
    for m in metrics:
        for key, value in m.items():
            found = re.match(r'lag_seconds_bucket\{le="([^"]+)"\}', key)
            if found:
                le = float(found.group(1))
                out[le] = out.get(le, 0.0) + value
    return out


# --- 1 + 2: ceiling and in-process cost -----------------------------------------------------------------

def ceiling(store_url: str, rows: int) -> list[list[Any]]:
    msgs = make_messages(rows // FLOWS_PER_MSG, seed=1)
    lk = make_lookup()
    batches = [decode(m, FlowUpdateBatch) for m in msgs]
    cols = fs.batches_to_columns(batches)
    native = pipeline.process(msgs, lk, fast=True)
    out = []
    for kind in ("clickhouse-connect insert (Python columns)", "Native block (C path output)"):
        w = FlowWriter(store_url, f"bench_ceiling_{'py' if 'Python' in kind else 'nat'}")
        w.migrate()
        names = [n for n, _ in pipeline.native_columns()[0]]
        best = 0.0
        for _ in range(3):
            t0 = time.perf_counter()
            if "Python" in kind:
                w._insert_table(w._client(), fs.FLOWS_TABLE, cols.flows)
            else:
                w.insert_native(fs.FLOWS_TABLE, native.native[fs.FLOWS_TABLE], names)
            best = max(best, rows / (time.perf_counter() - t0))
        client = connect(store_url, "default")
        client.command(f"DROP DATABASE IF EXISTS `{w.database}`")
        client.close()
        w.close()
        out.append([f"ClickHouse alone: flows table, {kind}", rows, best, "", ""])
    return out


def in_process(rows: int) -> list[list[Any]]:
    msgs = make_messages(rows // FLOWS_PER_MSG, seed=2)
    lk = make_lookup()
    out = []
    for fast in (True, False):
        best = float("inf")
        for _ in range(3):
            t0 = time.process_time()
            p = pipeline.process(msgs, lk, fast=fast)
            best = min(best, time.process_time() - t0)
        assert p.rows == rows
        name = "C path" if fast else "Python reference path (msgspec + columns)"
        out.append([f"enricher work in-process, {name}: decode, enrich, build inserts + enriched messages", rows,
                    rows / best, rows / best, ""])
    return out


# --- 3 + 4: the pipeline with real processes --------------------------------------------------------------

async def publish(nc: Any, subject: str, msgs: list[Republisher], rate_msgs: float | None,
                  total_msgs: int | None = None) -> float:
    """Publish to JetStream (async acks, bounded in flight); paced when rate_msgs is set. With `total_msgs`,
    that many messages, cycling through `msgs` (each cycle new flows: `Republisher`). Returns seconds."""
    js = nc.jetstream(publish_async_max_pending=2000)
    t0 = time.monotonic()
    for k in range(total_msgs if total_msgs is not None else len(msgs)):
        if rate_msgs:
            delay = t0 + k / rate_msgs - time.monotonic()
            if delay > PACE_TICK:  # a message due within the tick goes now: one wakeup per tick, not per message
                await asyncio.sleep(delay)
        cycle, i = divmod(k, len(msgs))
        await js.publish_async(subject, msgs[i].copy(cycle))
    await js.publish_async_completed()
    return time.monotonic() - t0


async def pipeline_run(nats_url: str, store_url: str, replicas: int, msgs: list[bytes], rate_flows: float | None,
                       tag: str, total_msgs: int | None = None,
                       watch: dict[str, int] | None = None) -> dict[str, Any]:
    """Start `replicas` enrichers, publish `msgs` (or `total_msgs` messages cycling through them) at
    `rate_flows` updates/s (None: as fast as possible) and wait until all are stored. Returns counts, wall
    time, enricher CPU-seconds, lag quantiles and the CPU-seconds of the `watch` processes (name -> pid)."""
    prefix = f"bb{tag}"
    subjects = Subjects(prefix)
    procs = ServiceProcs(nats_url, store_url, prefix=prefix)
    nc = await nats.connect(nats_url)
    watch = watch or {}
    try:
        await ensure_flow_stream(nc.jetstream(), subjects, max_bytes=8 * 1024**3)
        ports = [procs.start("flow_enricher", clickhouse_database=f"bench_{tag}", graph_feed="false",
                             host_id=f"r{i}") for i in range(replicas)]
        pids = [p.pid for p in procs.procs]
        cpu0 = [cpu_seconds(pid) for pid in pids]
        other0 = {name: cpu_seconds(pid) for name, pid in watch.items()}
        pool = [Republisher(m) for m in msgs]  # set up before the publisher's CPU time is taken
        pub0 = time.process_time()
        n_msgs = total_msgs if total_msgs is not None else len(msgs)
        total = n_msgs * FLOWS_PER_MSG
        t0 = time.monotonic()
        pub_s = await publish(nc, subjects.flows("h1"), pool,
                              rate_flows / FLOWS_PER_MSG if rate_flows else None, total_msgs)
        deadline = time.monotonic() + 120
        stored = 0.0
        while time.monotonic() < deadline:
            stored = sum(scrape(p).get("flows_stored_total", 0.0) for p in ports)
            if stored >= total:
                break
            await asyncio.sleep(0.25)  # the scrapes cost the enricher CPU too: not too often
        wall = time.monotonic() - t0
        cpu = sum(cpu_seconds(pid) - c for pid, c in zip(pids, cpu0))
        others = {name: cpu_seconds(pid) - other0[name] for name, pid in watch.items()}
        others["publisher"] = time.process_time() - pub0  # this process: publishing (and the scrapes)
        metrics = [scrape(p) for p in ports]
        settle_s = await merges_settled(store_url, f"bench_{tag}")
        if "store" in watch:  # the row's merges, also those the engine ran after the last insert
            others["store"] = cpu_seconds(watch["store"]) - other0["store"]
        buckets = lag_buckets(metrics)
        return {"stored": stored, "total": total, "wall": wall, "pub_s": pub_s, "cpu": cpu, "others": others,
                "p50": lag_quantile(buckets, 0.5), "p99": lag_quantile(buckets, 0.99),
                "per_replica": [m.get("flows_stored_total", 0.0) for m in metrics],
                "load": os.getloadavg()[0], "settle_s": settle_s}
    finally:
        await nc.close()
        procs.stop()
        client = connect(store_url, "default")
        client.command(f"DROP DATABASE IF EXISTS `bench_{tag}`")
        client.close()
        nc2 = await nats.connect(nats_url)
        try:
            await nc2.jetstream().delete_stream(subjects.flow_stream)
        except Exception:
            pass
        await nc2.close()


async def merges_settled(store_url: str, database: str, limit_s: float = 60.0) -> float:
    """Wait until the engine runs no merge of `database` (twice in a row, 0.5 s apart); returns the wait.
    The store merges at a lower priority than inserts (docs/store.md): part of a row's merge work runs after
    its last insert, and belongs to the row's cost."""
    client = connect(store_url, "default")
    t0 = time.monotonic()
    try:
        quiet = 0
        while quiet < 2 and time.monotonic() - t0 < limit_s:
            running = int(client.command("SELECT count() FROM system.merges WHERE database = {d:String}",
                                         parameters={"d": database}))
            quiet = quiet + 1 if running == 0 else 0
            await asyncio.sleep(0.5)
    finally:
        client.close()
    return time.monotonic() - t0


def _row(label: str, out: dict[str, Any]) -> list[Any]:
    per_m = 1e6 / out["total"]
    others = out["others"]
    return [label, out["total"], out["total"] / out["wall"], out["total"] / out["cpu"],
            " / ".join(f"{x * per_m:.2f}" for x in (out["cpu"], others.get("store", float("nan")),
                                                     others.get("nats", float("nan")), others["publisher"])),
            f"{out['p50']:g} / {out['p99']:g}", f"{out['load']:.2f}"]


def run(small: bool) -> Result:
    res = Result(
        title="Bus to store: JetStream -> flow-enricher -> ClickHouse",
        columns=["measurement", "flow updates", "flow updates/s (wall)", "per enricher CPU-second",
                 "CPU-s per million: enricher / store / nats / publisher", "lag p50 / p99 (s)", "load (1 min)"])
    nats_proc = start_nats()
    store = start_store()
    watch = {"store": store.popen.pid, "nats": nats_proc.popen.pid}
    sustained: list[tuple[int, dict[str, Any]]] = []
    try:
        ceil_rows = 20_000 if small else 200_000
        rows = ceiling(store.url, ceil_rows)
        res.rows.extend(r + ["", f"{os.getloadavg()[0]:.2f}"] for r in rows)
        native_ceiling = rows[1][2]
        res.rows.extend(r + ["", f"{os.getloadavg()[0]:.2f}"] for r in in_process(10_000 if small else 100_000))
        burst = make_messages(40 if small else 1_200, seed=3)
        for r in ([1] if small else [1, 2]):
            out = asyncio.run(pipeline_run(nats_proc.url, store.url, r, burst, None, f"d{r}{os.getpid()}",
                                           watch=watch))
            assert out["stored"] >= out["total"], out
            res.rows.append(_row(f"backlog burst, {r} replica(s) (split {[int(x) for x in out['per_replica']]})",
                                 out))
            if r == 1:
                per_core = out["total"] / out["cpu"]
        pool = make_messages(20 if small else 400, seed=4)
        seconds = 2 if small else 15
        rates = [10_000] if small else [100_000, 200_000, 250_000]
        for rate in rates:
            n_msgs = int(rate * seconds / FLOWS_PER_MSG)
            out = asyncio.run(pipeline_run(nats_proc.url, store.url, 1, pool, rate, f"p{rate}{os.getpid()}",
                                           total_msgs=n_msgs, watch=watch))
            assert out["stored"] >= out["total"], out
            sustained.append((rate, out))
            res.rows.append(_row(f"paced {rate:,} updates/s offered for {seconds} s, 1 replica "
                                 f"(published in {out['pub_s']:.1f} s)", out))
        res.notes.append(f"{FLOWS_PER_MSG} flow updates per JetStream message (~250 kB, msgpack), as probe-flow "
                         "and the sFlow collector pack them; the enricher inserts ~200 000 updates (or what "
                         "0.5 s brought) at a time into flows + flow_metrics (ReplacingMergeTree).")
        res.notes.append(f"Backlog, one replica: {per_core:,.0f} flow updates per enricher CPU-second (goal "
                         f"500 000). The engine behind the store took the 50-column flows table as a ready "
                         f"Native block at {native_ceiling:,.0f} rows/s in this run.")
        met = [rate for rate, out in sustained if out["pub_s"] <= 1.05 * seconds and out["p99"] <= 2]
        res.notes.append("Sustained (goal 250 000 updates/s with lag p99 <= 2 s): "
                         + (f"met up to {max(met):,} updates/s offered in this run." if met else
                            "not met at any offered rate in this run.")
                         + " A rate counts as sustained when it was published on schedule (JetStream "
                         "acked every publish in time) and everything was stored with lag p99 <= 2 s; the wall "
                         "rate counts to the last insert, so it includes up to one insert interval of tail.")
        rate, out = sustained[-1]
        total_cpu = out["cpu"] + sum(out["others"].values())
        res.notes.append(f"At {rate:,} updates/s offered, the four processes together used "
                         f"{total_cpu * 1e6 / out['total']:.2f} CPU-seconds per million updates: 2 cores could "
                         f"carry at most {2 * out['total'] / total_cpu:,.0f} updates/s with nothing else running "
                         f"(1-min load {out['load']:.2f} at the end of that row).")
        res.notes.append("Lag = publish time (ts stamped at publish) to insert accepted + acked, from the "
                         "enricher's lag histogram; values are bucket upper bounds (0.05, 0.1, 0.25, 0.5, 1, 2, 5 s...).")
        res.notes.append("Store CPU includes the ClickHouse engine's background merges of the row, also those "
                         "it ran after the last insert (it merges at nice 10, behind inserts: the row waits until "
                         "no merge of its database runs, "
                         f"{max(o['settle_s'] for _, o in sustained):.1f} s at most after a paced row here); "
                         "nats-server's includes the republished enriched messages (core NATS, ~same size).")
        res.notes.append("Replicas share 2 cores with nats-server, the store and the publisher: more replicas add "
                         "no cores here, so the wall rate cannot grow; the per-CPU-second figure shows the cost "
                         "of splitting the work.")
        res.notes.append("The replicas run without a graph feed (enrichment lookups miss); see "
                         "docs/flow-storage.md for the in-process figures with a filled lookup.")
    finally:
        store.stop()
        nats_proc.stop()
    return res
