"""A 3-node NATS cluster for fault tests: three nats-server processes on free local ports, joined by cluster
routes, JetStream on each (its own store dir). Nodes can be SIGKILLed and started again on the same ports and
store dirs, which is what a node crash and its return look like to the rest of the cluster.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from . import find_nats_server, free_port


@dataclass
class ClusterNode:
    """One nats-server of the cluster: its ports, its store dir and (while it runs) its process."""

    name: str
    client_port: int
    cluster_port: int
    monitor_port: int
    workdir: Path
    popen: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.client_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "nats.log"

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def log_tail(self, n: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return ""


@dataclass
class NatsCluster:
    """Three (or `size`) nats-server processes with JetStream, fully meshed by routes."""

    size: int = 3
    name: str = "netsonde-test"
    workdir: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="netsonde-natscluster-")))
    nodes: list[ClusterNode] = field(default_factory=list)

    def __post_init__(self) -> None:
        for i in range(self.size):
            d = self.workdir / f"n{i}"
            d.mkdir(parents=True, exist_ok=True)
            self.nodes.append(ClusterNode(f"n{i}", free_port(), free_port(), free_port(), d))

    @property
    def url(self) -> str:
        """Every node's client URL, comma separated (what `natsconn.connect` and NETSONDE_NATS_URL take)."""
        return ",".join(n.url for n in self.nodes)

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            self.start_node(node, wait=False)
        self.wait_ready(timeout)

    def start_node(self, node: ClusterNode, wait: bool = True, timeout: float = 30.0) -> None:
        routes = ",".join(f"nats://127.0.0.1:{n.cluster_port}" for n in self.nodes if n is not node)
        cmd = [
            find_nats_server(), "-a", "127.0.0.1", "-p", str(node.client_port), "-n", node.name,
            "-m", str(node.monitor_port), "-js", "-sd", str(node.workdir / "js"),
            "--cluster_name", self.name, "--cluster", f"nats://127.0.0.1:{node.cluster_port}",
            "--routes", routes,
        ]  # fmt: skip
        with open(node.log_path, "ab") as log:
            node.popen = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        if wait:
            self.wait_ready(timeout)

    def kill(self, node: ClusterNode) -> None:
        """SIGKILL: no shutdown, no flush (the store dir stays as the crash left it)."""
        if node.popen is not None and node.popen.poll() is None:
            node.popen.send_signal(signal.SIGKILL)
            node.popen.wait(10)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Every running node answers `/healthz?js-enabled-only=true`... and the JetStream meta group has a
        leader (`/jsz` reports one), so streams can be created."""
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            running = [n for n in self.nodes if n.running()]
            dead = [n for n in self.nodes if n.popen is not None and n.popen.poll() is not None]
            if dead and len(running) == 0:
                raise RuntimeError(f"nats cluster: every node exited:\n{dead[0].log_tail()}")
            try:
                leaders = {self._meta_leader(n) for n in running}
                if running and len(leaders) == 1 and "" not in leaders:
                    return
                last = f"meta leaders seen: {leaders}"
            except OSError as exc:
                last = repr(exc)
            time.sleep(0.2)
        raise RuntimeError(f"nats cluster not ready in {timeout} s ({last}):\n{self.nodes[0].log_tail()}")

    @staticmethod
    def _meta_leader(node: ClusterNode) -> str:
        import json

        with urllib.request.urlopen(f"http://127.0.0.1:{node.monitor_port}/jsz", timeout=1) as r:
            info = json.loads(r.read())
        leader: str = (info.get("meta_cluster") or {}).get("leader", "")
        return leader

    def stop(self) -> None:
        for node in self.nodes:
            if node.popen is not None and node.popen.poll() is None:
                node.popen.terminate()
        for node in self.nodes:
            if node.popen is not None:
                try:
                    node.popen.wait(15)
                except subprocess.TimeoutExpired:
                    node.popen.kill()
                    node.popen.wait(5)
        shutil.rmtree(self.workdir, ignore_errors=True)
