"""sFlow: datagrams and samples decoded per CPU-second, Netsonde's collector vs pmacct's sfacctd.

The real OVS corpus (`tests/data/sflow-ovs-corpus.bin.gz`, 10,000 datagrams, 63,126 flow samples;
the test slice in `tests/data/` in small mode) is replayed over loopback by a Python sender pinned to CPU0,
at fixed rates and flat out. Each tool runs pinned to CPU1:

- Netsonde: the real service, `python -m netsonde.ovs_sflow_collector`, end to end: socket -> C scanner and
  sample fold -> flow tables -> FlowUpdateBatch published on JetStream every second (nats-server with -js, also
  on CPU0).
- sfacctd: print plugin, aggregate src_host,dst_host,src_port,dst_port,proto (as in baselines.md).

Tool CPU = se.sum_exec_runtime (/proc/<pid>/task/*/schedstat) of the tool's process tree from just before the
first datagram until everything it received has been processed. "Received" is the tool's own count (Netsonde:
/healthz datagrams; sfacctd: the packets in its output / samples per datagram), socket drops are the `drops`
column of /proc/net/udp for the tool's port. Rates per CPU-second = received / tool CPU seconds. Netsonde's
/healthz is polled every 0.5 s while waiting (each poll costs it ~0.3 ms of CPU, counted in its figure).
The ratio on each Netsonde row divides its datagrams per CPU-second by sfacctd's at the same offered rate, both
measured in this run (issue 19's goal: at least 3x at every rate); each row notes the 1-min load average at
its end. An in-process row gives the decoder alone (`_fastsflow.scan` into a SampleFold, one core, no socket).
"""

from __future__ import annotations

import csv
import gzip
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from netsonde.common.testing import free_port, start_nats

from .procstat import cpu_ns
from .result import Result

ROOT = Path(__file__).resolve().parents[1]
CORPUS = Path(__file__).resolve().parents[1] / "tests" / "data" / "sflow-ovs-corpus.bin.gz"
SLICE = ROOT / "tests" / "data" / "sflow-ovs-slice.bin.gz"


def load(path: Path) -> list[bytes]:
    data = gzip.decompress(path.read_bytes())
    out, off = [], 0
    while off < len(data):
        (n,) = struct.unpack_from(">I", data, off)
        out.append(data[off + 4:off + 4 + n])
        off += 4 + n
    return out


def udp_drops(port: int) -> int:
    total = 0
    hexport = f"{port:04X}"
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            lines = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if len(cols) > 12 and cols[1].endswith(":" + hexport):
                total += int(cols[12])
    return total


# --- the sender -----------------------------------------------------------------------------------------
SENDER = r"""
import gzip, socket, struct, sys, time
path, port, count, rate = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
data = gzip.decompress(open(path, 'rb').read())
dgs, off = [], 0
while off < len(data):
    (n,) = struct.unpack_from('>I', data, off); dgs.append(data[off + 4:off + 4 + n]); off += 4 + n
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
addr = ('127.0.0.1', port); send = s.sendto; n = len(dgs)
t0 = time.perf_counter(); i = 0; chunk = 64
while i < count:
    for j in range(i, min(i + chunk, count)):
        try:
            send(dgs[j % n], addr)
        except OSError:
            pass
    i += chunk
    if rate > 0:
        ahead = i / rate - (time.perf_counter() - t0)
        if ahead > 0:
            time.sleep(ahead)
print(time.perf_counter() - t0)
"""


def send(path: Path, port: int, count: int, rate: float) -> float:
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", SENDER, str(path), str(port), str(count),
                          str(rate)], capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(out.stderr[-2000:])
    return float(out.stdout.strip())


# --- the tools ------------------------------------------------------------------------------------------
def _health(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5) as r:
        return json.loads(r.read())  # type: ignore[no-any-return]


def _wait_stable(read: Any, target: int, timeout: float = 60) -> int:
    """Poll a counter until it reaches target or stops moving for 1.5 s."""
    last, last_change = -1, time.monotonic()
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = read()
        if v >= target:
            return int(v)
        if v != last:
            last, last_change = v, time.monotonic()
        elif time.monotonic() - last_change > 1.5:
            return int(v)
        time.sleep(0.5)
    return int(last)


def run_netsonde(nats_url: str, path: Path, count: int, rate: float, samples_per_dgram: float) -> dict[str, Any]:
    udp, http = free_port(), free_port()
    env = dict(os.environ, NETSONDE_NATS_URL=nats_url, NETSONDE_SUBJECT_PREFIX=f"bsf{udp}",
               NETSONDE_HTTP_PORT=str(http), NETSONDE_LISTEN_HOST="127.0.0.1", NETSONDE_LISTEN_PORT=str(udp),
               NETSONDE_MANAGE_OVS="false", NETSONDE_UPDATE_INTERVAL_S="1", NETSONDE_LOG_LEVEL="warning",
               NETSONDE_HOST_ID="bench")
    logf = tempfile.NamedTemporaryFile(prefix="netsonde-sflow-bench-", suffix=".log", delete=False)
    proc = subprocess.Popen(["taskset", "-c", "1", sys.executable, "-m", "netsonde.ovs_sflow_collector"], env=env,
                            stdout=logf, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                _health(http)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"collector did not start: {Path(logf.name).read_text()[-2000:]}")
                time.sleep(0.1)
        c0 = cpu_ns(proc.pid)
        elapsed = send(path, udp, count, rate)
        got = _wait_stable(lambda: _health(http)["datagrams"], count)
        time.sleep(1.2)  # one more flow update published
        c1 = cpu_ns(proc.pid)
        h = _health(http)
        return {"received": got, "elapsed": elapsed, "cpu_s": (c1 - c0) / 1e9, "drops": udp_drops(udp),
                "samples": h["flow_samples"]}
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
        os.unlink(logf.name)


def run_sfacctd(path: Path, count: int, rate: float, samples_per_dgram: float) -> dict[str, Any]:
    exe = shutil.which("sfacctd") or "/usr/sbin/sfacctd"
    d = Path(tempfile.mkdtemp(prefix="netsonde-sfacctd-bench-"))
    udp = free_port()
    out = d / "out.csv"
    (d / "sfacctd.conf").write_text(
        f"daemonize: false\nsfacctd_ip: 127.0.0.1\nsfacctd_port: {udp}\nplugins: print\n"
        "aggregate: src_host, dst_host, src_port, dst_port, proto\n"
        f"print_output: csv\nprint_output_file: {out}\nprint_output_file_append: true\nprint_refresh_time: 1\n"
        "sfacctd_pipe_size: 33554432\nplugin_pipe_size: 104857600\nplugin_buffer_size: 102400\n")
    proc = subprocess.Popen(["taskset", "-c", "1", exe, "-f", str(d / "sfacctd.conf")], stdout=open(d / "log", "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)

    def counted() -> int:
        if not out.exists():
            return 0
        with open(out) as f:
            return sum(int(r["PACKETS"]) for r in csv.DictReader(f) if r.get("PACKETS", "").isdigit())
    try:
        deadline = time.monotonic() + 10
        while "cache entries=" not in (d / "log").read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"sfacctd did not start: {(d / 'log').read_text()[-2000:]}")
            time.sleep(0.05)
        c0 = cpu_ns(proc.pid)
        elapsed = send(path, udp, count, rate)
        samples = _wait_stable(counted, int(count * samples_per_dgram * 0.999))
        c1 = cpu_ns(proc.pid)
        return {"received": round(samples / samples_per_dgram), "elapsed": elapsed, "cpu_s": (c1 - c0) / 1e9,
                "drops": udp_drops(udp), "samples": samples}
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


def decoder_rate(dgs: list[bytes], rounds: int) -> tuple[float, float]:
    from netsonde.flow.sflow._fastsflow import SampleFold, scan
    fold = SampleFold()
    samples = 0
    t0 = time.process_time()
    for _ in range(rounds):
        for d in dgs:
            samples += scan(d, fold, 1)[1]
        fold.drain()
    dt = time.process_time() - t0
    return rounds * len(dgs) / dt, samples / dt


def run(small: bool) -> Result:
    res = Result("sFlow collector: datagrams and flow samples per CPU-second (real OVS corpus, loopback replay)",
                 ["tool", "target dgram/s", "sent dgram/s", "datagrams", "received", "socket drops",
                  "dgrams per CPU-s", "samples per CPU-s", "x sfacctd (same run)", "load 1-min"])
    path = SLICE if small or not CORPUS.exists() else CORPUS
    dgs = load(path)
    from netsonde.flow.sflow.decode import FlowSample, RawPacketHeader, decode_datagram
    flow_samples = sum(isinstance(s, FlowSample) for d in dgs for s in decode_datagram(d).samples)
    ip_samples = 0
    for d in dgs:
        for s in decode_datagram(d).samples:
            if isinstance(s, FlowSample):
                raw = next(r for r in s.records if isinstance(r, RawPacketHeader))
                ip_samples += raw.header[12:14] in (b"\x08\x00", b"\x86\xdd")
    per_dgram = flow_samples / len(dgs)
    d_rate, s_rate = decoder_rate(dgs, 1 if small else 10)
    res.rows.append(["netsonde C scanner + sample fold, in-process (no socket, no flow tables)", "-", "-", len(dgs),
                     len(dgs), 0, round(d_rate), round(s_rate), "", _load()])
    plan = [(20_000, 3_000, ["netsonde"])] if small else \
        [(20_000, 200_000, ["netsonde", "sfacctd"]), (40_000, 200_000, ["netsonde", "sfacctd"]),
         (80_000, 300_000, ["netsonde", "sfacctd"]), (0, 300_000, ["netsonde", "sfacctd"])]
    nats = start_nats()
    ratios: list[str] = []
    try:
        for rate, count, tools in plan:
            per_cpu: dict[str, tuple[float, list[Any]]] = {}
            for tool in tools:
                if tool == "sfacctd":
                    if shutil.which("sfacctd") is None and not Path("/usr/sbin/sfacctd").exists():
                        res.notes.append("sfacctd is not installed (make bench installs pmacct): not measured")
                        continue
                    # sfacctd counts IP samples only (ARP is not accounted under IP primitives)
                    r = run_sfacctd(path, count, rate, ip_samples / len(dgs))
                    samples = r["received"] * per_dgram
                else:
                    r = run_netsonde(nats.url, path, count, rate, per_dgram)
                    samples = r["samples"]
                row = [tool, rate or "max (flat-out sender)", round(count / r["elapsed"]), count, r["received"],
                       r["drops"], round(r["received"] / r["cpu_s"]), round(samples / r["cpu_s"]), "", _load()]
                res.rows.append(row)
                per_cpu[tool] = (r["received"] / r["cpu_s"], row)
            if "netsonde" in per_cpu and "sfacctd" in per_cpu:
                ratio = per_cpu["netsonde"][0] / per_cpu["sfacctd"][0]
                per_cpu["netsonde"][1][8] = f"{ratio:.1f}x"
                ratios.append(f"{rate or 'max'}: {ratio:.1f}x {'(meets 3x)' if ratio >= 3 else '(BELOW 3x)'}")
    finally:
        nats.stop()
    if ratios:
        res.notes.append("Netsonde / sfacctd datagrams per CPU-second, same run, per offered rate (goal: 3x): "
                         + "; ".join(ratios) + ".")
    res.notes.append(f"Corpus: {path.name}, {len(dgs)} datagrams, {flow_samples} flow samples "
                     f"({per_dgram:.1f} per datagram), replayed cyclically; sender pinned to CPU0, tool to CPU1.")
    res.notes.append("Netsonde is measured end to end: socket reads (recvmmsg, every 50 ms while datagrams come), "
                     "C scanner and sample fold, probe-flow's FlowTable and FlowUpdateBatch publishes to JetStream "
                     "every second (nats-server CPU not included).")
    res.notes.append("For reference (baselines.md, not used in the ratios): a naive Python struct decoder does "
                     "41k datagrams per second without socket I/O.")
    return res


def _load() -> str:
    return Path("/proc/loadavg").read_text().split()[0]


if __name__ == "__main__":
    print(run(small="--small" in sys.argv).to_markdown())
