"""Real components for tests: a NATS server and the ClickHouse store on free ports, with temp dirs.

Used by tests/conftest.py and by `make bench`. A component that cannot start raises, loudly: tests never
silently skip a missing dependency.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

# re-exported: the tests import them from here
from netsonde.common.childproc import stop_process as stop_process
from netsonde.common.childproc import wait_until as wait_until


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def find_nats_server() -> str:
    for candidate in (shutil.which("nats-server"), "/usr/sbin/nats-server", "/usr/bin/nats-server"):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise RuntimeError("nats-server not found: run `make deps` (apt-get install nats-server)")


@dataclass
class Proc:
    """A child process with its data dir; `stop()` terminates it and removes the dir."""

    popen: subprocess.Popen[bytes]
    url: str
    workdir: Path
    log_path: Path
    keep: bool = False
    extra: dict[str, object] = field(default_factory=dict)

    def stop(self) -> None:
        stop_process(self.popen, 15)
        if not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def log_tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


JETSTREAM_TEST_STORE = "10TB"
"""The test server's JetStream storage limit. Each stream reserves its `max_bytes` against it (2 GiB per flow
stream), and by default nats-server takes 75 % of the free disk: a suite creating a few dozen streams on a
smaller disk would be refused with "insufficient storage resources" though it writes a few MB."""


def start_nats(workdir: Path | None = None, port: int | None = None) -> Proc:
    """nats-server with JetStream on a free port; ready when it accepts connections."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="netsonde-nats-"))
    port = port or free_port()
    log_path = workdir / "nats.log"
    conf = workdir / "nats.conf"
    conf.write_text(
        f'listen: "127.0.0.1:{port}"\n'
        f'jetstream {{\n  store_dir: "{workdir / "js"}"\n  max_file_store: {JETSTREAM_TEST_STORE}\n}}\n'
    )
    popen = subprocess.Popen(
        [find_nats_server(), "-c", str(conf)],
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
    )
    proc = Proc(popen, f"nats://127.0.0.1:{port}", workdir, log_path)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"nats-server exited with {popen.returncode}:\n{proc.log_tail()}")
        if "Server is ready" in log_path.read_text(errors="replace"):
            return proc
        time.sleep(0.05)
    proc.stop()
    raise RuntimeError("nats-server did not become ready in 15 s")


def start_store(workdir: Path | None = None, port: int | None = None) -> Proc:
    """The embedded ClickHouse store (`netsonde clickhouse-store`) on a free port; ready on GET /ping."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="netsonde-store-"))
    port = port or free_port()
    log_path = workdir / "store.log"
    popen = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "netsonde.clickhouse_store",
            "--data-dir",
            str(workdir / "data"),
            "--port",
            f"{port}",
        ],
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    proc = Proc(popen, url, workdir, log_path)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if popen.poll() is not None:
            raise RuntimeError(f"the store exited with {popen.returncode}:\n{proc.log_tail()}")
        try:
            with urllib.request.urlopen(url + "/ping", timeout=1) as r:
                if r.status == 200:
                    return proc
        except OSError:
            pass
        time.sleep(0.1)
    proc.stop()
    raise RuntimeError(f"the store did not answer /ping in 60 s:\n{proc.log_tail()}")
