"""Container connector (probe-topology docker.py) on a real engine: rootful podman and its Docker-compatible
API, set up by deploy/podman-setup.sh (packages, config, the local busybox image, the API service).

A container on two networks appears owning its namespace, its two interfaces linked to the podman bridges;
stop, start and remove follow; containers started before the probe are in its first full state (one with
`--network=none`, whose SandboxKey is empty); a missing, refusing or killed engine is a state, counted, while
the rest of the host is still reported, and a restarted engine is resynced; Gremlin and flows through every
service as a process, on a capture of a container interface with real pings.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any, Iterator

import pytest

from bench.services import ServiceProcs
from tests.integration.flow_stack import start_flow_stack
from tests.integration.query_api_http import api_get, gremlin
from netsonde.probe_topology.testing import Mirror, sh, start_probe, until
from netsonde.common.testing import wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
ENGINE = "unix:///run/podman/podman.sock"
IMAGE = "localhost/local/busybox:min"
SLEEPER = ["sh", "-c", "trap 'exit 0' TERM; sleep 300 & wait"]
"""PID 1 that stops at once on SIGTERM (a bare `sleep` ignores it: 10 s per stop)."""


@pytest.fixture(scope="module")
def engine() -> str:
    """Podman with its Docker API on ENGINE, installed and started by the project's own script."""
    p = subprocess.run(["bash", str(REPO / "deploy" / "podman-setup.sh")], capture_output=True, text=True,
                       timeout=1200)
    assert p.returncode == 0, f"deploy/podman-setup.sh failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return ENGINE


def podman(*args: str) -> str:
    return sh("podman", *args)


class Podman:
    """Containers and networks a test made, removed at teardown."""

    def __init__(self, unique: str) -> None:
        self.unique = unique
        self.containers: list[str] = []
        self.networks: list[str] = []

    def run(self, name: str, *opts: str) -> dict[str, Any]:
        self.containers.append(name)
        podman("run", "-d", "--name", name, "--label", f"netsonde.test={self.unique}", *opts, IMAGE, *SLEEPER)
        return self.inspect(name)

    def inspect(self, name: str) -> dict[str, Any]:
        info: dict[str, Any] = json.loads(podman("container", "inspect", name))[0]
        return info

    def network(self, name: str) -> str:
        """Create a network; its Linux bridge's name."""
        self.networks.append(name)
        podman("network", "create", name)
        return str(json.loads(podman("network", "inspect", name))[0]["network_interface"])

    def cleanup(self) -> None:
        if self.containers:
            sh("podman", "rm", "-f", "-i", "-t", "0", *self.containers, check=False)  # -i: some are gone
        for net in self.networks:
            sh("podman", "network", "rm", "-f", net, check=False)


@pytest.fixture
def pm(engine: str, unique: str) -> Iterator[Podman]:
    p = Podman(unique)
    yield p
    p.cleanup()


def children(m: Mirror, parent: str, relation: str = "ownership") -> list[dict[str, Any]]:
    return [m.nodes[e["Child"]] for e in m.edges.values()
            if e["Parent"] == parent and e["Metadata"]["RelationType"] == relation and e["Child"] in m.nodes]


def container_view(m: Mirror, name: str, interfaces: int) -> tuple[dict[str, Any], dict[str, Any],
                                                                     dict[str, dict[str, Any]]] | None:
    """(container node, its netns node, interfaces by name) once all `interfaces` are in, else None."""
    c = m.one(Type="container", Name=name)
    if c is None:
        return None
    ns = [n for n in children(m, c["ID"]) if n["Metadata"]["Type"] == "netns"]
    if len(ns) != 1:
        return None
    intfs = {n["Metadata"]["Name"]: n for n in children(m, ns[0]["ID"])}
    return (c, ns[0], intfs) if len(intfs) == interfaces else None


def host_engine(m: Mirror) -> dict[str, Any]:
    host = m.one(Type="host")
    return host["Metadata"].get("ContainerEngine", {}) if host else {}


def sample(svc: Any, name: str, **labels: str) -> float:
    value = svc.metrics.registry.get_sample_value(f"netsonde_probe_topology_{name}", labels)
    return float(value or 0)


async def test_two_networks_stop_start_remove(engine: str, nats_url: str, unique: str, pm: Podman) -> None:
    bridge2 = pm.network(f"nsd{unique}")
    bridges = {"podman": "cni-podman0", f"nsd{unique}": bridge2}
    svc, m = await start_probe(nats_url, unique, docker_socket=engine)
    try:
        name = f"nsd-{unique}-web"
        info = pm.run(name, "--network", "podman", "--network", f"nsd{unique}", "--label", "app=web")
        pid = info["State"]["Pid"]
        assert await until(lambda: container_view(m, name, 3), 15), "container, netns and 3 interfaces"
        c, ns, intfs = container_view(m, name, 3)  # type: ignore[misc]
        host = m.one(Type="host")
        assert host is not None
        labels = {"app": "web", "netsonde.test": unique}
        image_id = "sha256:" + info["Image"].removeprefix("sha256:")  # the podman CLI leaves the prefix out
        assert c["Metadata"]["Container"] == {"ID": info["Id"], "Image": IMAGE, "ImageID": image_id,
                                              "Runtime": "podman", "Status": "running", "InitProcessPID": pid,
                                              "Labels": labels}
        assert c["Metadata"]["Docker"] == {"ContainerID": info["Id"], "ContainerName": f"/{name}",
                                           "ContainerPID": pid, "Labels": labels}
        assert c["Metadata"]["Manager"] == "docker" and c["Metadata"]["Host"] == f"h{unique}"
        host_tid = str(uuid.uuid5(uuid.NAMESPACE_OID, f"h{unique}"))
        assert c["Metadata"]["TID"] == str(uuid.uuid5(uuid.NAMESPACE_OID, host_tid + name + "container"))
        # host -> container -> netns -> interfaces; the netns is no longer the host's direct child
        assert m.edge(host["ID"], c["ID"], RelationType="ownership")
        assert m.edge(c["ID"], ns["ID"], RelationType="ownership")
        assert not m.edge(host["ID"], ns["ID"], RelationType="ownership")
        sandbox = info["NetworkSettings"]["SandboxKey"]
        assert ns["Metadata"]["Inode"] == os.stat(f"/proc/{pid}/ns/net").st_ino == os.stat(sandbox).st_ino
        assert ns["Metadata"]["Path"] == "/var/run/netns/" + os.path.basename(sandbox)
        assert ns["Metadata"]["Manager"] == "docker"
        assert sorted(intfs) == ["eth0", "eth1", "lo"]
        # each network's interface: its MAC and address, a veth whose peer is a port of that network's bridge
        networks = info["NetworkSettings"]["Networks"]
        assert set(networks) == set(bridges)
        for net, settings in networks.items():
            (intf,) = [i for i in intfs.values() if i["Metadata"].get("MAC") == settings["MacAddress"]]
            assert intf["Metadata"]["Type"] == "veth"
            assert intf["Metadata"]["IPV4"] == [f"{settings['IPAddress']}/{settings['IPPrefixLen']}"]
            (peer,) = [m.nodes[({e["Parent"], e["Child"]} - {intf["ID"]}).pop()] for e in m.edges.values()
                       if intf["ID"] in (e["Parent"], e["Child"]) and e["Metadata"].get("Type") == "veth"]
            br = m.one(Type="bridge", Name=bridges[net])
            assert br is not None, bridges[net]
            assert peer["Metadata"]["MasterIndex"] == br["Metadata"]["IfIndex"]
            assert m.edge(br["ID"], peer["ID"], RelationType="layer2")
            assert m.edge(host["ID"], peer["ID"], RelationType="ownership")
        assert host_engine(m)["State"] == "connected"
        assert host_engine(m)["Engine"].startswith("Podman Engine")

        # stop: the container node and its namespace go; start: back with the new pid, same node ID
        podman("stop", "-t", "2", name)
        assert await until(lambda: not m.find(Type="container", Name=name) and ns["ID"] not in m.nodes, 15)
        podman("start", name)
        pid2 = pm.inspect(name)["State"]["Pid"]
        assert await until(lambda: (v := container_view(m, name, 3)) is not None
                           and v[0]["Metadata"]["Container"]["InitProcessPID"] == pid2, 15)
        assert container_view(m, name, 3)[0]["ID"] == c["ID"]  # type: ignore[index]
        # remove
        podman("rm", "-f", "-t", "0", name)
        assert await until(lambda: not m.find(Type="container", Name=name), 15)
        assert sample(svc, "container_events_total", handling="gone") >= 2
        assert sample(svc, "container_resyncs_total") == 1
    finally:
        await svc.stop()
        await m.close()


async def test_containers_found_at_start(engine: str, nats_url: str, unique: str, pm: Podman) -> None:
    bridged = pm.run(f"nsd-{unique}-a")
    isolated = pm.run(f"nsd-{unique}-none", "--network", "none")
    assert isolated["NetworkSettings"]["SandboxKey"] == ""  # podman: nothing to read there, the pid is used
    svc, m = await start_probe(nats_url, unique, docker_socket=engine)
    try:
        first = next(msg for msg in m.messages if msg["kind"] == "full")
        names = {n["Metadata"]["Name"] for n in first["nodes"] if n["Metadata"]["Type"] == "container"}
        assert {f"nsd-{unique}-a", f"nsd-{unique}-none"} <= names, names
        view = container_view(m, f"nsd-{unique}-a", 2)
        assert view is not None and sorted(view[2]) == ["eth0", "lo"]
        assert view[0]["Metadata"]["Container"]["ID"] == bridged["Id"]
        view = container_view(m, f"nsd-{unique}-none", 1)
        assert view is not None and list(view[2]) == ["lo"]
        ns = view[1]["Metadata"]
        pid = isolated["State"]["Pid"]
        assert ns["Inode"] == os.stat(f"/proc/{pid}/ns/net").st_ino and ns["Manager"] == "docker"
        assert ns["Path"].startswith("/proc/") and ns["Path"].endswith("/ns/net")
    finally:
        await svc.stop()
        await m.close()


def start_engine(sock: str) -> subprocess.Popen[bytes]:
    """A second API service of the same podman, on a private socket (the shared one stays untouched)."""
    proc = subprocess.Popen(["podman", "system", "service", "--time=0", f"unix://{sock}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        probe = socket.socket(socket.AF_UNIX)
        try:
            probe.connect(sock)
            return proc
        except OSError:
            time.sleep(0.05)
        finally:
            probe.close()
    proc.kill()
    raise AssertionError(f"podman system service on {sock} did not come up")


async def test_engine_missing_killed_and_back(engine: str, nats_url: str, unique: str, pm: Podman) -> None:
    ns = f"nsdns{unique}"
    missing = f"unix:///run/netsonde-missing-{unique}.sock"
    svc, m = await start_probe(nats_url, unique, docker_socket=missing, docker_reconnect_max_s=1)
    try:
        assert host_engine(m) == {"Endpoint": missing, "State": "disconnected",
                                  "Error": "missing: No such file or directory"}
        assert await until(lambda: sample(svc, "container_engine_errors_total", reason="missing") >= 2, 5)
        sh("ip", "netns", "add", ns)  # the rest of the host is still reported
        assert await until(lambda: m.one(Type="netns", Name=ns), 10)
    finally:
        sh("ip", "netns", "del", ns, check=False)
        await svc.stop()
        await m.close()

    sock = f"/run/podman/netsonde-{unique}.sock"
    proc = start_engine(sock)
    svc, m = await start_probe(nats_url, f"{unique}b", docker_socket=f"unix://{sock}", docker_reconnect_max_s=1)
    try:
        a, b = f"nsd-{unique}-a", f"nsd-{unique}-b"
        pm.run(a)
        assert await until(lambda: container_view(m, a, 2), 15)
        assert sample(svc, "container_resyncs_total") == 1
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert await until(lambda: host_engine(m).get("Error") == "lost: the event stream ended", 10)
        assert host_engine(m)["State"] == "disconnected"
        # its socket file stays: the next attempts are refused
        assert await until(lambda: host_engine(m).get("Error") == "refused: Connection refused", 10), host_engine(m)
        assert sample(svc, "container_engine_errors_total", reason="lost") == 1
        assert sample(svc, "container_engine_errors_total", reason="refused") >= 1
        assert m.one(Type="container", Name=a), "containers last seen stay while the engine is away"
        # changes while the engine is away: a removed, b started (the podman CLI does not need the service)
        podman("rm", "-f", "-t", "0", a)
        pm.run(b)
        sh("ip", "netns", "add", ns)
        assert await until(lambda: m.one(Type="netns", Name=ns), 10)
        assert m.one(Type="container", Name=a) and not m.one(Type="container", Name=b)
        proc = start_engine(sock)
        assert await until(lambda: host_engine(m).get("State") == "connected", 10), host_engine(m)
        assert await until(lambda: container_view(m, b, 2) and not m.one(Type="container", Name=a), 10)
        assert "Error" not in host_engine(m)
        assert sample(svc, "container_resyncs_total") == 2
        assert sample(svc, "container_engine_connected") == 1
    finally:
        sh("ip", "netns", "del", ns, check=False)
        await svc.stop()
        await m.close()
        proc.kill()
        proc.wait(10)
        if os.path.exists(sock):
            os.unlink(sock)


def test_gremlin_and_flows_of_a_container(engine: str, nats_url: str, clickhouse_url: str, unique: str,
                                          pm: Podman) -> None:
    name = f"nsd-{unique}-web"
    procs = ServiceProcs(nats_url, clickhouse_url, prefix=f"c{unique}")
    procs.env["NETSONDE_CLICKHOUSE_DATABASE"] = f"containers_{unique}"
    try:
        api, _ = start_flow_stack(procs, topology={"ovsdb": "", "docker_socket": engine})
        info = pm.run(name, "--label", "app=web", "--cap-add", "NET_RAW")  # NET_RAW: ping in the container
        web = f"G.V().Has('Type','container','Docker.Labels.app','web','Name','{name}')"
        wait_until(lambda: gremlin(api, f"{web}.Out().Out().Count()") == 2, 30, "the container's interfaces")
        assert gremlin(api, f"{web}.Values('Container.ID')") == [info["Id"]]
        assert gremlin(api, f"{web}.Out().Values('Type')") == ["netns"]
        assert sorted(gremlin(api, f"{web}.Out().Out().Values('Name')")) == ["eth0", "lo"]
        assert gremlin(api, f"{web}.Out().Out().Has('Name','eth0').Both().Both().Has('Type','bridge')"
                            ".Values('Name')") == ["cni-podman0"]
        assert gremlin(api, f"G.V().Has('Type','container','Container.Labels.netsonde.test','{unique}')"
                            ".Values('Name')") == [name]
        status = api_get(api, "/api/status")
        host = next(h for h, e in status["ContainerEngines"].items() if e["Endpoint"] == engine and h)
        assert status["ContainerEngines"][host]["State"] == "connected"

        body = json.dumps({"GremlinQuery": f"{web}.Out().Out().Has('Name','eth0')", "Type": "afpacket",
                           "BPFFilter": "icmp"}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{api}/api/capture", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            capture = json.loads(r.read())
        wait_until(lambda: gremlin(api, f"G.V().Has('Captures.ID','{capture['UUID']}').Count()") == 1, 30,
                   "the capture on the container's eth0")
        time.sleep(1)  # the capture socket is bound once Captures shows; leave it a moment to be reading
        gateway = info["NetworkSettings"]["Networks"]["podman"]["Gateway"]
        podman("exec", name, "ping", "-c", "5", "-i", "0.2", "-W", "2", gateway)

        q = f"{web}.Out().Out().Flows().Has('LayersPath','Ethernet/IPv4/ICMPv4')"
        flows = wait_until(lambda: [f for f in gremlin(api, q) or [] if f["Metric"]["BAPackets"] == 5], 60,
                           "the ping flow")
        assert len(flows) == 1, flows
        (f,) = flows
        ip = info["NetworkSettings"]["Networks"]["podman"]["IPAddress"]
        assert f["Network"]["A"] == ip and f["Network"]["B"] == gateway
        assert f["Metric"]["ABPackets"] == 5 and f["Metric"]["BAPackets"] == 5
        assert f["Metric"]["ABBytes"] == 5 * 98 and f["Metric"]["BABytes"] == 5 * 98
        eth0_tid = gremlin(api, f"{web}.Out().Out().Has('Name','eth0').Values('TID')")
        assert [f["NodeTID"]] == eth0_tid
        assert gremlin(api, f"{web}.Out().Out().Flows().Has('LayersPath','Ethernet/IPv4/ICMPv4').Count()") == 1
    finally:
        procs.stop()
