"""Each probe as a whole process with only the Linux capabilities docs/reliability.md lists, as in a container
that runs as root with `cap_add` (root whose bounding set holds those and nothing else, set with `setpriv`):
probe-topology reports a veth and its address inside a network namespace, probe-flow captures a ping there with
exact packet counts. Without CAP_SYS_ADMIN the namespace's interfaces stay invisible; without CAP_NET_RAW the
capture reports an error state; a namespace held only by a process (a container's) needs CAP_SYS_PTRACE,
for probe-topology to see it and for probe-flow to capture in it.
Real nats-server, graph-builder and query-api (in-process), real namespaces."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from netsonde.common.bus import Subjects, encode
from netsonde.common.bus.captures import Capture
from netsonde.common.service import wait_for
from netsonde.common.testing import free_port, stop_process
from netsonde.graph_builder.config import GraphBuilderConfig
from netsonde.graph_builder.service import GraphBuilderService
from netsonde.query_api.config import QueryApiConfig
from netsonde.query_api.service import QueryApiService
from tests.integration.capture_bus import CaptureBus, flow_batches
from tests.integration.netns_veth import Topo
from tests.integration.netns_veth import shell as sh

pytestmark = [pytest.mark.root, pytest.mark.slow]

PROBE_TOPOLOGY_CAPS = ("net_admin", "sys_admin")
"""What docs/reliability.md lists for probe-topology (no OVSDB socket, no container namespaces here)."""
PROBE_FLOW_CAPS = ("net_raw", "sys_admin")
CAP_BITS = {"net_admin": 12, "net_raw": 13, "sys_admin": 21, "sys_ptrace": 19}


@dataclass
class Probe:
    """A probe process started under `setpriv` with a bounding set of `caps` only (root, every other
    capability dropped: what Docker's `cap_add` gives a root container)."""

    package: str
    caps: tuple[str, ...]
    env: dict[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        bounding = ",".join(["-all", *(f"+{c}" for c in self.caps)])
        with open(self.log_path, "wb") as log:
            self.popen = subprocess.Popen(
                ["setpriv", f"--bounding-set={bounding}", "--inh-caps=-all", "--",
                 sys.executable, "-m", f"netsonde.{self.package}"],
                env=self.env, stdout=log, stderr=subprocess.STDOUT)

    def effective_caps(self) -> int:
        """CapEff of the running probe, read from /proc."""
        assert self.popen is not None and self.popen.poll() is None, self.log()
        for line in Path(f"/proc/{self.popen.pid}/status").read_text().splitlines():
            if line.startswith("CapEff:"):
                return int(line.split()[1], 16)
        raise AssertionError("no CapEff line")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-3000:]

    def stop(self) -> None:
        stop_process(self.popen, 20)


@dataclass
class Bench:
    nats_url: str
    prefix: str
    host: str
    api_port: int
    logdir: Path

    def probe(self, package: str, caps: tuple[str, ...], **settings: str) -> Probe:
        env = dict(os.environ, NETSONDE_NATS_URL=self.nats_url, NETSONDE_SUBJECT_PREFIX=self.prefix,
                   NETSONDE_HOST_ID=self.host, NETSONDE_HTTP_PORT=str(free_port()), NETSONDE_OVSDB="",
                   NETSONDE_LOG_LEVEL="info",
                   **{f"NETSONDE_{k.upper()}": v for k, v in settings.items()})
        proc = Probe(package, caps, env, self.logdir / f"{package}-{'-'.join(caps)}.log")
        proc.start()
        return proc

    async def gremlin(self, query: str) -> object:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{self.api_port}", timeout=10) as http:
            r = await http.post("/api/topology", json={"GremlinQuery": query})
            assert r.status_code == 200, r.text
            return r.json()


@pytest.fixture
async def bench(nats_url: str, unique: str, tmp_path: Path) -> AsyncIterator[Bench]:
    prefix, host = f"pc{unique}", f"hc{unique}"
    gb = GraphBuilderService(GraphBuilderConfig.load(env={}, nats_url=nats_url, subject_prefix=prefix,
                                                     history=False))
    await gb.start()
    api = QueryApiService(QueryApiConfig.load(env={}, nats_url=nats_url, subject_prefix=prefix,
                                              http_port=free_port(), history=False, flows=False))
    await api.start()
    try:
        yield Bench(nats_url, prefix, host, api.http_port, tmp_path)
    finally:
        await api.stop()
        await gb.stop()


@pytest.fixture
def namespaces(unique: str) -> Iterator[tuple[Topo, str, str, str, str]]:
    """Two namespaces joined by a veth pair, 10.79.0.1/24 <-> 10.79.0.2/24."""
    with Topo(unique) as topo:
        yield topo, *topo.joined_pair("c", "10.79.0")


def _mask(caps: tuple[str, ...]) -> int:
    return sum(1 << CAP_BITS[c] for c in caps)


async def _addresses(bench: Bench, name: str, timeout: float) -> list[str]:
    """IPV4 of the interface named `name` in the API's graph once it shows ([] if it never does)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = await bench.gremlin(f"G.V().Has('Name', '{name}').Values('IPV4')")
        if found:
            return [ip for ips in found for ip in ips]  # type: ignore[union-attr]
        await asyncio.sleep(0.3)
    return []


async def test_probe_topology_with_only_its_capabilities(bench: Bench, namespaces) -> None:
    topo, a, ia, b, ib = namespaces
    probe = bench.probe("probe_topology", PROBE_TOPOLOGY_CAPS, process_netns="false", netns_scan_interval_s="0.5")
    try:
        seen = await _addresses(bench, ib, 30)
        assert probe.effective_caps() == _mask(PROBE_TOPOLOGY_CAPS), probe.log()
        print(f"\nprobe-topology with {PROBE_TOPOLOGY_CAPS} only: {ib} in netns {b}: IPV4 {seen}")
        assert seen == ["10.79.0.2/24"], probe.log()
        assert await bench.gremlin(f"G.V().Has('Name', '{b}', 'Type', 'netns').Count()") == 1
    finally:
        probe.stop()
    assert "Traceback" not in probe.log(), probe.log()


async def test_probe_topology_without_sys_admin_cannot_enter_namespaces(bench: Bench, namespaces) -> None:
    topo, a, ia, b, ib = namespaces
    probe = bench.probe("probe_topology", ("net_admin",), process_netns="false", netns_scan_interval_s="0.5")
    try:
        seen = await _addresses(bench, ib, 8)
        print(f"\nprobe-topology with net_admin only: {ib} in graph: {seen}")
        assert seen == []
    finally:
        probe.stop()
    assert "setns" in probe.log() or "Operation not permitted" in probe.log(), probe.log()


async def _capture_ping(bench: Bench, probe: Probe, a: str, b: str, ib: str, unique: str,
                        count: int, target: str = "10.79.0.2") -> tuple[list[dict], tuple[int, int]]:
    """Capture ICMP on `ib` (selected by a Gremlin query in the graph), ping `count` times from `a`; returns
    the capture statuses and the (AB, BA) packets of the ping's flow read from the flow stream."""
    subjects = Subjects(bench.prefix)
    bus = await CaptureBus.open(bench.nats_url, subjects)
    nc, js, kv, statuses = bus.nc, bus.js, bus.kv, bus.statuses
    cap = Capture(UUID=f"cap-{unique}", GremlinQuery=f"G.V().Has('Name', '{ib}')", BPFFilter="icmp")
    await kv.put(cap.UUID, encode(cap))
    try:
        await wait_for(lambda: any(s["state"] in ("active", "error") for s in statuses), 30)
        if not any(s["state"] == "active" for s in statuses):
            return statuses, (0, 0)
        sh(f"ip netns exec {a} ping -c {count} -i 0.2 -W 1 {target}")
        sub = await js.pull_subscribe(subjects.flows(bench.host), durable=f"w{unique}", stream=subjects.flow_stream)
        ab = ba = 0
        async for _, batch in flow_batches(sub, lambda: (ab, ba) == (count, count)):
            for f in batch["flows"]:
                if f.get("Application") == "ICMPv4" or f.get("ICMP"):
                    ab += f["LastUpdateMetric"].get("ABPackets", 0)
                    ba += f["LastUpdateMetric"].get("BAPackets", 0)
        return statuses, (ab, ba)
    finally:
        await kv.delete(cap.UUID)
        await nc.close()


async def test_probe_flow_with_only_its_capabilities(bench: Bench, namespaces, unique: str) -> None:
    topo, a, ia, b, ib = namespaces
    topology = bench.probe("probe_topology", PROBE_TOPOLOGY_CAPS, process_netns="false", netns_scan_interval_s="0.5")
    flow = bench.probe("probe_flow", PROBE_FLOW_CAPS, update_interval_s="0.5", reconcile_interval_s="0.5")
    try:
        assert await _addresses(bench, ib, 30) == ["10.79.0.2/24"], topology.log()
        assert flow.effective_caps() == _mask(PROBE_FLOW_CAPS), flow.log()
        statuses, (ab, ba) = await _capture_ping(bench, flow, a, b, ib, unique, 4)
        print(f"\nprobe-flow with {PROBE_FLOW_CAPS} only: capture {[s['state'] for s in statuses]}, "
              f"ping -c 4 captured AB {ab} BA {ba} packets")
        assert (ab, ba) == (4, 4), (statuses, flow.log())
    finally:
        flow.stop()
        topology.stop()
    assert "Traceback" not in flow.log(), flow.log()


async def test_probe_flow_without_net_raw_reports_an_error(bench: Bench, namespaces, unique: str) -> None:
    topo, a, ia, b, ib = namespaces
    topology = bench.probe("probe_topology", PROBE_TOPOLOGY_CAPS, process_netns="false", netns_scan_interval_s="0.5")
    flow = bench.probe("probe_flow", ("sys_admin",), update_interval_s="0.5", reconcile_interval_s="0.5")
    try:
        assert await _addresses(bench, ib, 30) == ["10.79.0.2/24"], topology.log()
        statuses, counts = await _capture_ping(bench, flow, a, b, ib, unique, 1)
        print(f"\nprobe-flow with sys_admin only: {statuses}")
        assert "error" in [s["state"] for s in statuses] and "active" not in [s["state"] for s in statuses]
        assert counts == (0, 0)
        assert any("not permitted" in str(s).lower() for s in statuses), statuses
    finally:
        flow.stop()
        topology.stop()


@pytest.fixture
def process_namespace(unique: str) -> Iterator[str]:
    """A namespace held only by a process (as a container's is), with a veth end addressed 10.79.1.2/24 in it;
    yields that end's name."""
    holder = subprocess.Popen(["unshare", "-n", "sleep", "300"])
    outside, inside = f"po{unique[:6]}", f"pi{unique[:6]}"
    try:
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{holder.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline, "unshare did not make a namespace"
            time.sleep(0.02)
        sh(f"ip link add {outside} type veth peer name {inside} netns {holder.pid}")
        sh(f"nsenter -t {holder.pid} -n ip addr add 10.79.1.2/24 dev {inside}")
        sh(f"nsenter -t {holder.pid} -n ip link set {inside} up")
        yield inside
    finally:
        subprocess.run(["ip", "link", "del", outside], capture_output=True)
        holder.kill()
        holder.wait(5)


async def test_container_namespaces_need_sys_ptrace(bench: Bench, process_namespace: str) -> None:
    """/proc/<pid>/ns/net of a process with more capabilities than the probe is refused without SYS_PTRACE."""
    seen: dict[str, list[str]] = {}
    for caps in (PROBE_TOPOLOGY_CAPS, (*PROBE_TOPOLOGY_CAPS, "sys_ptrace")):
        probe = bench.probe("probe_topology", caps, process_netns="true", netns_scan_interval_s="0.5")
        try:
            seen["+".join(caps)] = await _addresses(bench, process_namespace, 8 if len(caps) == 2 else 30)
        finally:
            probe.stop()
    print(f"\n{process_namespace} in a process-held namespace, as probe-topology saw it: {seen}")
    assert seen == {"net_admin+sys_admin": [], "net_admin+sys_admin+sys_ptrace": ["10.79.1.2/24"]}


@pytest.fixture
def container_pair(unique: str) -> Iterator[tuple[str, str]]:
    """A named namespace (yielded first) joined by a veth pair to a namespace held only by a process, as a
    container's is (its end's name yielded second): 10.79.3.1/24 <-> 10.79.3.2/24."""
    topo = Topo(unique)
    holder = subprocess.Popen(["unshare", "-n", "sleep", "300"])
    try:
        a = topo.ns("p")
        deadline = time.monotonic() + 5
        while os.readlink(f"/proc/{holder.pid}/ns/net") == os.readlink("/proc/self/ns/net"):
            assert time.monotonic() < deadline, "unshare did not make a namespace"
            time.sleep(0.02)
        outside, inside = f"qo{unique[:6]}", f"qi{unique[:6]}"
        sh(f"ip link add {outside} netns {a} type veth peer name {inside} netns {holder.pid}")
        sh(f"ip -n {a} addr add 10.79.3.1/24 dev {outside} && ip -n {a} link set {outside} up")
        sh(f"nsenter -t {holder.pid} -n sh -c 'ip addr add 10.79.3.2/24 dev {inside} && ip link set {inside} up "
           "&& ip link set lo up'")
        yield a, inside
    finally:
        holder.kill()
        holder.wait(5)
        topo.close()


async def test_probe_flow_in_a_container_namespace_needs_sys_ptrace(bench: Bench, container_pair,
                                                                     unique: str) -> None:
    """Capturing on an interface whose namespace only a process holds (a container's) opens
    /proc/<pid>/ns/net: refused without CAP_SYS_PTRACE, exact with it."""
    a, inside = container_pair
    topology = bench.probe("probe_topology", (*PROBE_TOPOLOGY_CAPS, "sys_ptrace"), process_netns="true",
                           netns_scan_interval_s="0.5")
    results: dict[str, tuple[str, tuple[int, int]]] = {}
    try:
        assert await _addresses(bench, inside, 30) == ["10.79.3.2/24"], topology.log()
        for n, caps in enumerate((PROBE_FLOW_CAPS, (*PROBE_FLOW_CAPS, "sys_ptrace"))):
            flow = bench.probe("probe_flow", caps, update_interval_s="0.5", reconcile_interval_s="0.5")
            try:
                statuses, counts = await _capture_ping(bench, flow, a, "", inside, f"{unique}{n}", 3,
                                                       target="10.79.3.2")
                # the state the capture took on the node (a "stopped" may follow when the test deletes it)
                state = next((s["state"] for s in statuses if s["state"] in ("active", "error")), "none")
                results["+".join(caps)] = (state, counts)
            finally:
                flow.stop()
    finally:
        topology.stop()
    print(f"\nprobe-flow on {inside} in a process-held namespace (state, (AB, BA) of ping -c 3): {results}")
    assert results == {"net_raw+sys_admin": ("error", (0, 0)),
                       "net_raw+sys_admin+sys_ptrace": ("active", (3, 3))}
