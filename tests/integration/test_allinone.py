"""`netsonde allinone`: everything starts as one supervised tree, answers, and stops cleanly on SIGTERM."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import pytest

from netsonde.common.testing import free_port


pytestmark = [pytest.mark.root, pytest.mark.slow]


def children_of(pid: int) -> set[int]:
    out = set()
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == pid:
                    out.add(int(entry))
            except OSError:
                pass
    return out


def test_allinone_starts_answers_and_stops_without_orphans(tmp_path, unique: str) -> None:
    api, nats_port, store_port = free_port(), free_port(), free_port()
    env = dict(os.environ, NETSONDE_SUBJECT_PREFIX=f"a{unique}", NETSONDE_PROCESS_NETNS="false",
               NETSONDE_OVSDB="")
    env.pop("NETSONDE_CLICKHOUSE_URL", None)
    proc = subprocess.Popen([sys.executable, "-m", "netsonde.cli", "allinone", "--state-dir", str(tmp_path),
                             "--api-port", str(api), "--nats-port", str(nats_port), "--store-port", str(store_port)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = ""
        deadline = time.monotonic() + 120
        while "Logs" not in banner:
            line = proc.stdout.readline()
            assert line or proc.poll() is None, f"allinone exited: {banner}"
            banner += line
            assert time.monotonic() < deadline, banner
        assert f"http://127.0.0.1:{api}/api/status" in banner
        kids = children_of(proc.pid)
        assert len(kids) >= 5  # nats, store, graph-builder, query-api, probes ...

        deadline = time.monotonic() + 30
        count = 0
        while time.monotonic() < deadline:
            req = urllib.request.Request(f"http://127.0.0.1:{api}/api/topology", method="POST",
                                         data=json.dumps({"GremlinQuery": "G.V().Has('Type','host').Count()"}).encode())
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    count = json.loads(r.read())
            except OSError:
                count = 0
            if count == 1:
                break
            time.sleep(0.2)
        assert count == 1, "the host node of this machine never reached the API"

        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
        assert proc.returncode == 0, out
        assert "stopped." in out
        time.sleep(0.5)
        alive = [k for k in kids if os.path.exists(f"/proc/{k}") and
                 open(f"/proc/{k}/stat").read().rsplit(")", 1)[1].split()[0] != "Z"]
        assert alive == [], f"orphans left: {alive}"
        assert (tmp_path / "logs" / "graph-builder.log").stat().st_size > 0
    finally:
        if proc.poll() is None:
            proc.kill()
