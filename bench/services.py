"""Start Netsonde services as real processes for benchmarks (same way `netsonde allinone` does)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from netsonde.common.testing import free_port


class ServiceProcs:
    """graph-builder, probe-topology, query-api ... as child processes sharing one NATS (and store)."""

    def __init__(self, nats_url: str, clickhouse_url: str = "", prefix: str = "bench") -> None:
        self.env = dict(os.environ, NETSONDE_NATS_URL=nats_url, NETSONDE_SUBJECT_PREFIX=prefix,
                        NETSONDE_LOG_LEVEL="warning")
        if clickhouse_url:
            self.env["NETSONDE_CLICKHOUSE_URL"] = clickhouse_url
        self.procs: list[subprocess.Popen[bytes]] = []
        self.logdir = Path(tempfile.mkdtemp(prefix="netsonde-bench-"))

    def start(self, package: str, wait_http: bool = True, **env: str) -> int:
        port = free_port()
        penv = dict(self.env, NETSONDE_HTTP_PORT=str(port), **{f"NETSONDE_{k.upper()}": v for k, v in env.items()})
        log = open(self.logdir / f"{package}.log", "wb")
        proc = subprocess.Popen([sys.executable, "-m", f"netsonde.{package}"], env=penv, stdout=log,
                                stderr=subprocess.STDOUT)
        self.procs.append(proc)
        if wait_http:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                if proc.poll() is not None:
                    raise RuntimeError(f"{package} exited: {(self.logdir / f'{package}.log').read_text()[-2000:]}")
                try:
                    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                        if r.status == 200:
                            return port
                except OSError:
                    pass
                time.sleep(0.1)
            raise RuntimeError(f"{package} not healthy in 60 s")
        return port

    def stop(self) -> None:
        for proc in reversed(self.procs):
            proc.terminate()
        for proc in self.procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, int(round(q * (len(s) - 1))))]
