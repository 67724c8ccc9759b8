"""The flow pipeline as real processes, for fault tests: probe-flow (flows from pcap files posted to its
`/pcap`, published with the same code and `Nats-Msg-Id` as live captures) -> JetStream -> flow-enricher ->
ClickHouse; a producer thread that keeps posting while a test breaks things; and the end-to-end count read
back from the store (sent, stored, duplicates).
"""

from __future__ import annotations

import io
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from scapy.layers.inet import IP, UDP
from scapy.layers.l2 import Ether
from scapy.utils import PcapWriter

from netsonde.common.clickhouse import connect
from netsonde.common.testing import free_port, stop_process

FLOWS_PER_POST = 20


def flows_pcap(n: int = FLOWS_PER_POST) -> bytes:
    """A pcap of `n` UDP packets, each its own flow (source port 20000+i), stamped now (inside any TTL)."""
    buf = io.BytesIO()
    w = PcapWriter(buf, linktype=1, sync=True)
    now = time.time()
    for i in range(n):
        pkt = Ether(src="02:00:00:00:0f:01", dst="02:00:00:00:0f:02") / IP(src="10.77.0.1", dst="10.77.0.2") / UDP(
            sport=20000 + i, dport=5000
        ) / (b"x" * 32)
        pkt.time = now + i * 0.001
        w.write(pkt)
    w.flush()
    return buf.getvalue()


@dataclass
class ServiceProc:
    """One service process; `kill()` is a SIGKILL, `restart()` starts it again with the same port and env."""

    package: str
    env: dict[str, str]
    port: int
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        with open(self.log_path, "ab") as log:
            self.popen = subprocess.Popen(
                [sys.executable, "-m", f"netsonde.{self.package}"], env=self.env, stdout=log, stderr=subprocess.STDOUT
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.popen.poll() is not None:
                raise RuntimeError(f"{self.package} exited: {self.log_path.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.package} not healthy in {timeout} s: {self.log_path.read_text()[-3000:]}")

    def kill(self) -> None:
        assert self.popen is not None
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait(10)

    def restart(self) -> None:
        self.start()

    def stop(self) -> None:
        stop_process(self.popen, 30)

    def metric(self, name: str) -> float:
        """Sum of every sample of one Prometheus metric (all label sets) from /metrics."""
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/metrics", timeout=5) as r:
            text = r.read().decode()
        total = 0.0
        for line in text.splitlines():
            if line.startswith(name) and line[len(name)] in " {":
                total += float(line.rsplit(" ", 1)[1])
        return total


@dataclass
class Services:
    """Netsonde services as processes sharing a NATS URL (one server or a cluster), a prefix and a store."""

    nats_url: str
    clickhouse_url: str
    prefix: str
    database: str
    logdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="netsonde-faults-")))
    procs: dict[str, ServiceProc] = field(default_factory=dict)

    def start(self, package: str, **settings: str) -> ServiceProc:
        port = free_port()
        env = dict(
            os.environ,
            NETSONDE_NATS_URL=self.nats_url,
            NETSONDE_SUBJECT_PREFIX=self.prefix,
            NETSONDE_CLICKHOUSE_URL=self.clickhouse_url,
            NETSONDE_CLICKHOUSE_DATABASE=self.database,
            NETSONDE_LOG_LEVEL="warning",
            NETSONDE_HOST_ID=f"h{self.prefix}",
            NETSONDE_HTTP_PORT=str(port),
            **{f"NETSONDE_{k.upper()}": v for k, v in settings.items()},
        )
        proc = ServiceProc(package, env, port, self.logdir / f"{package}.log")
        proc.start()
        self.procs[package] = proc
        return proc

    def flow_pipeline(self, probe: dict[str, str] | None = None, **enricher: str) -> tuple[ServiceProc, ServiceProc]:
        """flow-enricher (acks re-sent after 3 s, rows kept forever) and probe-flow (no graph, no OVS)."""
        settings = dict(ack_wait_s="3", ttl_days="0", graph_feed="false", insert_interval_s="0.2", retry_max_s="2")
        settings.update(enricher)
        fe = self.start("flow_enricher", **settings)
        pf = self.start("probe_flow", **{"use_graph": "false", "ovsdb": "", "update_interval_s": "1", **(probe or {})})
        return fe, pf

    def stop(self) -> None:
        """SIGTERM to every service at once, then wait for each (their graceful stops overlap)."""
        for proc in self.procs.values():
            if proc.popen is not None and proc.popen.poll() is None:
                proc.popen.terminate()
        for proc in reversed(list(self.procs.values())):
            proc.stop()


class Producer(threading.Thread):
    """Posts a pcap of FLOWS_PER_POST new flows to probe-flow's /pcap every `period_s` (node_tid `<tag>-<n>`),
    until stopped. A post blocks while probe-flow retries its publishes; `sent` counts the flows of every
    post answered 200."""

    def __init__(self, probe_port: int, tag: str, period_s: float = 0.05) -> None:
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{probe_port}/pcap"
        self.tag = tag
        self.period_s = period_s
        self.pcap = flows_pcap()
        self.sent = 0
        self.posts = 0
        self.errors: list[str] = []
        self.stopped = threading.Event()

    def run(self) -> None:
        while not self.stopped.is_set():
            req = urllib.request.Request(f"{self.url}?node_tid={self.tag}-{self.posts}", data=self.pcap, method="POST")
            try:
                with urllib.request.urlopen(req, timeout=120) as r:
                    import json

                    self.sent += json.loads(r.read())["flows"]
                    self.posts += 1
            except OSError as exc:
                self.errors.append(repr(exc))
                time.sleep(0.2)
            time.sleep(self.period_s)

    def stop(self) -> None:
        self.stopped.set()
        self.join(150)
        assert not self.is_alive(), "producer stuck"


@dataclass
class StoreCount:
    stored: int
    """Flows read through FINAL (one row per flow update, duplicates collapsed)."""
    distinct: int
    """Distinct flow UUIDs."""
    raw: int
    """Rows before collapsing: raw - stored is what redeliveries wrote twice."""


def count_stored(clickhouse_url: str, database: str, tag: str) -> StoreCount:
    c = connect(clickhouse_url, database)
    try:
        like = {"t": f"{tag}-%"}
        stored, distinct = c.query(
            "SELECT count(), uniqExact(UUID) FROM flows FINAL WHERE NodeTID LIKE {t:String}", parameters=like
        ).result_rows[0]
        raw = c.query("SELECT count() FROM flows WHERE NodeTID LIKE {t:String}", parameters=like).result_rows[0][0]
        return StoreCount(int(stored), int(distinct), int(raw))
    finally:
        c.close()


def wait_stored(clickhouse_url: str, database: str, tag: str, expected: int, timeout: float) -> StoreCount:
    """Poll the store until `expected` flows are there (or the timeout); returns the last count."""
    deadline = time.monotonic() + timeout
    last = StoreCount(0, 0, 0)
    while time.monotonic() < deadline:
        try:
            last = count_stored(clickhouse_url, database, tag)
            if last.stored >= expected:
                time.sleep(0.5)  # anything more arriving would be a duplicate: give it a chance to show
                return count_stored(clickhouse_url, database, tag)
        except Exception:
            pass
        time.sleep(0.3)
    return last


def report(what: str, sent: int, count: StoreCount, **extra: object) -> None:
    """The figures every fault test prints (the issue's closing note collects them)."""
    more = " ".join(f"{k}={v}" for k, v in extra.items())
    print(
        f"\nFAULT {what}: sent={sent} stored={count.stored} distinct={count.distinct} "
        f"lost={sent - count.stored} duplicates_collapsed={count.raw - count.stored} {more}".rstrip()
    )
