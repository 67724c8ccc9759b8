"""`netsonde allinone`: one supervised process tree running everything on this host.

NATS server -> ClickHouse store (unless NETSONDE_CLICKHOUSE_URL is set) -> graph-builder -> query-api ->
flow-enricher -> probes. Children die with the supervisor (PDEATHSIG); a child that exits is restarted with
backoff; SIGINT/SIGTERM stops everything in reverse order, letting each service flush its batches.
"""

from __future__ import annotations

import argparse
import ctypes
import importlib.util
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from netsonde.common.testing import find_nats_server

from .registry import SERVICES, STORE, command_names

ORDER = [s.command for s in SERVICES if s.supervised]
PACKAGES = {s.command: s.package for s in SERVICES}


def _die_with_parent() -> None:
    """Runs in the child before exec: get SIGTERM if the supervisor dies, whatever the cause."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    os.setpgid(0, 0)


@dataclass
class Child:
    name: str
    argv: list[str]
    env: dict[str, str]
    log: Path
    proc: subprocess.Popen[bytes] | None = None
    restarts: list[float] = field(default_factory=list)

    def start(self) -> None:
        self.proc = subprocess.Popen(self.argv, env=self.env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)

    def stop(self, timeout: float = 20.0) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            print(f"  {self.name} did not stop in {timeout:.0f}s, killing it")
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _wait_http(url: str, timeout: float, child: Child) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if child.proc is not None and child.proc.poll() is not None:
            return False
        try:
            with urllib.request.urlopen(url, timeout=1) as r:
                if r.status < 500:
                    return True
        except OSError:
            pass
        time.sleep(0.1)
    return False


def run_allinone(args: argparse.Namespace) -> int:
    state = Path(args.state_dir).resolve()
    logs = state / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    stop_requested = False

    def on_signal(signum: int, frame: object) -> None:
        nonlocal stop_requested
        stop_requested = True

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    base_env = dict(os.environ)
    base_env.setdefault("NETSONDE_LOG_FORMAT", "json")
    children: list[Child] = []
    started = time.monotonic()

    def fail(msg: str) -> int:
        print(f"netsonde allinone: {msg}", file=sys.stderr)
        for child in reversed(children):
            child.stop()
        return 1

    # 1. NATS
    if not _port_free(args.nats_port):
        return fail(f"port {args.nats_port} is taken (another NATS or allinone?); use --nats-port")
    nats = Child("nats-server", [find_nats_server(), "-a", "127.0.0.1", "-p", str(args.nats_port), "-js",
                                 "-sd", str(state / "nats")], base_env, logs / "nats.log")
    nats.start()
    children.append(nats)
    nats_url = f"nats://127.0.0.1:{args.nats_port}"
    deadline = time.monotonic() + 10
    while "Server is ready" not in (logs / "nats.log").read_text(errors="replace"):
        if time.monotonic() > deadline or (nats.proc and nats.proc.poll() is not None):
            return fail(f"nats-server did not start, see {logs / 'nats.log'}")
        time.sleep(0.05)

    # 2. ClickHouse: a configured server, or the embedded store
    ch_url = os.environ.get("NETSONDE_CLICKHOUSE_URL", "")
    if not ch_url:
        if not _port_free(args.store_port):
            return fail(f"port {args.store_port} is taken; use --store-port or set NETSONDE_CLICKHOUSE_URL")
        store = Child("store", [sys.executable, "-m", STORE.module, "--data-dir", str(state / "clickhouse"),
                                "--port", str(args.store_port)], base_env, logs / "store.log")
        store.start()
        children.append(store)
        ch_url = f"http://127.0.0.1:{args.store_port}"
        if not _wait_http(ch_url + "/ping", 60, store):
            return fail(f"the ClickHouse store did not start, see {logs / 'store.log'}")

    env = dict(base_env, NETSONDE_NATS_URL=nats_url, NETSONDE_CLICKHOUSE_URL=ch_url)
    names = command_names()
    only = {names[n].command if n in names else n for n in args.only.split(",")} if args.only else set()
    wanted = [s for s in ORDER if not only or s in only]
    services: list[Child] = []
    for name in wanted:
        module = f"netsonde.{PACKAGES[name]}"
        if importlib.util.find_spec(f"{module}.__main__") is None:
            print(f"  {name}: not available in this build, skipped")
            continue
        svc_env = dict(env, NETSONDE_HTTP_PORT=str(args.api_port) if name == "query-api" else "0")
        child = Child(name, [sys.executable, "-m", module], svc_env, logs / f"{name}.log")
        child.start()
        children.append(child)
        services.append(child)
        if name == "graph-builder":
            time.sleep(0.3)
    api = next((c for c in services if c.name == "query-api"), None)
    if api is not None and not _wait_http(f"http://127.0.0.1:{args.api_port}/healthz", 30, api):
        return fail(f"query-api did not start, see {logs / 'query-api.log'}")

    print(f"""
Netsonde is running ({time.monotonic() - started:.1f}s to start); Ctrl-C stops it.
  API        http://127.0.0.1:{args.api_port}/api/status
  Gremlin    netsonde client topology query --gremlin "G.V().Has('Type','veth')"
             curl -s -XPOST http://127.0.0.1:{args.api_port}/api/topology -d '{{"GremlinQuery":"G.V().Count()"}}'
  WebSocket  ws://127.0.0.1:{args.api_port}/ws/subscriber
  UI         http://127.0.0.1:{args.api_port}/
  NATS       {nats_url}
  ClickHouse {ch_url}
  Logs       {logs}/
""", flush=True)

    # Supervise: restart what dies (at most 5 times a minute), until a signal.
    while not stop_requested:
        time.sleep(0.2)
        for child in children:
            if stop_requested or child.proc is None or child.proc.poll() is None:
                continue
            now = time.monotonic()
            child.restarts = [t for t in child.restarts if now - t < 60]
            if len(child.restarts) >= 5:
                print(f"  {child.name} keeps exiting (code {child.proc.returncode}); see {child.log}. Stopping.")
                stop_requested = True
                break
            print(f"  {child.name} exited with code {child.proc.returncode}; restarting")
            child.restarts.append(now)
            child.start()

    print("stopping Netsonde ...", flush=True)
    for child in reversed(children):
        child.stop()
    print("stopped.")
    return 0
