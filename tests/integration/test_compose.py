"""deploy/compose.yml for real: the stack built and run by a compose client on rootful podman.

Debian's docker-compose drives podman's Docker API (deploy/podman-setup.sh installs and starts it, and makes
the base image without a registry); deploy/compose.podman.yml runs NATS from the Netsonde image and the
embedded store as `clickhouse`. The test sees a veth created on the host through the composed query-api,
scales flow-enricher to 3 and query-api to 2 (each replica answers on its own host port), and checks that
`down` leaves no container, network or volume. It prints its wall time and the image size.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from netsonde.common.testing import free_port

pytestmark = [pytest.mark.root, pytest.mark.slow, pytest.mark.compose,
              pytest.mark.timeout(1200)]  # a fresh machine: apt + debootstrap ~2 min, the first build ~3-4 min

REPO = Path(__file__).resolve().parents[2]
SOCK = "/run/podman/podman.sock"
COMPOSE_FILES = ["-f", str(REPO / "deploy/compose.yml"), "-f", str(REPO / "deploy/compose.podman.yml")]
SERVICES = ("nats", "clickhouse", "graph-builder", "query-api", "flow-enricher", "probe-topology",
            "probe-flow", "sflow-collector")


def _ping() -> bool:
    r = subprocess.run(["curl", "-fs", "--unix-socket", SOCK, "http://d/_ping"], capture_output=True)
    return r.returncode == 0


@pytest.fixture(scope="module")
def podman() -> Iterator[None]:
    """podman, its Docker API and the local base image (idempotent setup); the API service is stopped
    afterwards if this test started it."""
    was_running = _ping()
    r = subprocess.run(["bash", str(REPO / "deploy/podman-setup.sh")], capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, f"deploy/podman-setup.sh failed:\n{r.stdout}\n{r.stderr}"
    yield
    pid_file = Path("/run/podman/service.pid")
    if not was_running and pid_file.exists():
        os.kill(int(pid_file.read_text()), 15)
        pid_file.unlink()


class Compose:
    """docker-compose on one project, with the ports of this run in its environment."""

    def __init__(self, project: str) -> None:
        self.project = project
        self.env = {
            **os.environ,
            "DOCKER_HOST": f"unix://{SOCK}",
            "COMPOSE_DOCKER_CLI_BUILD": "0",
            "NETSONDE_NATS_PORT": str(free_port()),
            "NETSONDE_CLICKHOUSE_PORT": str(free_port()),
            "NETSONDE_SFLOW_PORT": str(free_port()),
            "NETSONDE_PROBE_TOPOLOGY_HEALTH_PORT": str(free_port()),
            "NETSONDE_PROBE_FLOW_HEALTH_PORT": str(free_port()),
            "NETSONDE_API_PUBLISH": "8082",  # podman 4.3 rejects host port ranges: ephemeral host ports
            "NETSONDE_AUTH": "off",  # the API on a host port of this test machine only
        }

    def run(self, *args: str, timeout: float = 120) -> str:
        cmd = ["docker-compose", "-p", self.project, *COMPOSE_FILES, *args]
        r = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        assert r.returncode == 0, f"{' '.join(args)} failed ({r.returncode}):\n{r.stdout}\n{r.stderr}"
        return r.stdout

    def containers(self, service: str | None = None) -> list[dict[str, object]]:
        """podman's view of this project's containers (all states)."""
        label = f"label=com.docker.compose.project={self.project}"
        cmd = ["podman", "ps", "-a", "--format", "json", "--filter", label]
        if service:
            cmd += ["--filter", f"label=com.docker.compose.service={service}"]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        return list(json.loads(out or "[]"))

    def api_ports(self) -> list[int]:
        """The host port of every query-api replica."""
        ports = []
        for index in range(1, len(self.containers("query-api")) + 1):
            out = self.run("port", f"--index={index}", "query-api", "8082").strip()
            ports.append(int(out.rsplit(":", 1)[1]))
        return ports


HEALTH_IN_CONTAINER = (
    "import json, sys, urllib.request\n"
    "try:\n"
    "    body = urllib.request.urlopen(f'http://127.0.0.1:{sys.argv[1]}/healthz', timeout=5).read()\n"
    "except OSError as exc:\n"
    "    body = getattr(exc, 'read', lambda: b'{}')()\n"
    "print(json.dumps(json.loads(body or b'{}')))\n"
)


def _wait_healthy(compose: Compose, service: str, count: int, port: int, timeout: float = 90) -> None:
    """Every replica of `service` answers /healthz with ok (asked from inside its container)."""
    deadline = time.monotonic() + timeout
    while True:
        answers = {}
        for c in compose.containers(service):
            r = subprocess.run(["podman", "exec", str(c["Id"]), "python3", "-c", HEALTH_IN_CONTAINER, str(port)],
                               capture_output=True, text=True, timeout=30)
            answers[str(c["Names"])] = json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr[-300:]}
        if len(answers) == count and all(a.get("ok") is True for a in answers.values()):
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"{service}: not {count} healthy replicas: {answers}")
        time.sleep(1)


def _wait_for_node(port: int, name: str, timeout: float = 90) -> dict[str, object]:
    """POST /api/topology until the node named `name` is there; its Metadata."""
    query = {"GremlinQuery": f"G.V().Has('Name', '{name}')"}
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            r = httpx.post(f"http://127.0.0.1:{port}/api/topology", json=query, timeout=5)
            last = f"{r.status_code} {r.text[:300]}"
            if r.status_code == 200 and r.json():
                nodes = r.json()
                assert len(nodes) == 1, nodes
                return dict(nodes[0]["Metadata"])
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(1)
    raise AssertionError(f"{name} never appeared through query-api on port {port}; last answer: {last}")


def test_compose_stack_on_podman(podman: None, unique: str, capsys: pytest.CaptureFixture[str]) -> None:
    started = time.monotonic()
    compose = Compose(f"nstest{unique}")
    veth, peer = f"cmp{unique}", f"cmq{unique}"
    try:
        compose.run("build", timeout=900)
        built = time.monotonic()
        compose.run("up", "-d", timeout=180)
        for service in SERVICES:
            states = [c["State"] for c in compose.containers(service)]
            assert states == ["running"], f"{service}: {states}"

        subprocess.run(["ip", "link", "add", veth, "type", "veth", "peer", "name", peer], check=True)
        (port,) = compose.api_ports()
        meta = _wait_for_node(port, veth)
        assert meta["Type"] == "veth" and meta["Name"] == veth
        peer_index = int(Path(f"/sys/class/net/{peer}/ifindex").read_text())
        assert meta["PeerIfIndex"] == peer_index

        compose.run("up", "-d", "--scale", "flow-enricher=3", "--scale", "query-api=2", timeout=180)
        enrichers = compose.containers("flow-enricher")
        assert [c["State"] for c in enrichers] == ["running"] * 3, enrichers
        ports = compose.api_ports()
        assert len(ports) == 2 and len(set(ports)) == 2, ports
        for p in ports:  # every replica has the live graph, the host veth included
            assert _wait_for_node(p, veth)["PeerIfIndex"] == peer_index
        for service, count, port in (("flow-enricher", 3, 8080), ("query-api", 2, 8082), ("graph-builder", 1, 8080),
                                     ("sflow-collector", 1, 8080)):
            _wait_healthy(compose, service, count, port)
        for probe in ("TOPOLOGY", "FLOW"):  # host network: their health ports are on the host
            port = compose.env[f"NETSONDE_PROBE_{probe}_HEALTH_PORT"]
            health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5).json()
            assert health["ok"] is True, health
        scaled = time.monotonic()
    finally:
        subprocess.run(["ip", "link", "del", veth], capture_output=True)
        compose.run("down", "-v", "--remove-orphans", "-t", "5", timeout=180)

    assert compose.containers() == []
    networks = subprocess.run(["podman", "network", "ls", "--format", "{{.Name}}"], capture_output=True,
                              text=True, check=True).stdout.split()
    assert not [n for n in networks if n.startswith(compose.project)], networks
    volumes = subprocess.run(["podman", "volume", "ls", "--format", "{{.Name}}"], capture_output=True,
                             text=True, check=True).stdout.split()
    assert not [v for v in volumes if v.startswith(compose.project)], volumes
    size = subprocess.run(["podman", "image", "inspect", "--format", "{{.Size}}", "localhost/netsonde:latest"],
                          capture_output=True, text=True, check=True).stdout.strip()
    with capsys.disabled():
        print(f"\ncompose on podman: wall {time.monotonic() - started:.1f} s (build {built - started:.1f} s, "
              f"up + veth seen + scale {scaled - built:.1f} s), image netsonde:latest {int(size) / 1e6:.0f} MB")
