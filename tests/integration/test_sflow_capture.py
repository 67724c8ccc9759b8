"""The `sflow` capture type (an external sFlow agent): probe-flow's capture controller opens a UDP listener in the
selected interface's namespace, on its address, and real sFlow datagrams sent to it from the other end of a veth
become flows whose NodeTID is that interface's TID, with exact counts.

The capture is defined before the namespace and the interface exist (a standing declaration)."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import time
import uuid
from functools import partial
from typing import Any, Callable, Iterator

import pytest

from netsonde.common.bus.captures import Capture, CaptureStatus
from netsonde.flow.sflow.collector import PortInfo, SFlowCollector
from netsonde.probe_flow.controller import CaptureController
from netsonde.probe_flow.sflowsocket import SFlowSocketCapture

from tests.unit.test_sflow_collector import ETH_ICMP, REPLY, expected_totals, raw_record
from tests.unit.test_sflow_decode import DATAGRAMS, datagram, flow_sample, u32
from tests.integration.static_stack import gremlin as http_gremlin

pytestmark = [pytest.mark.root]


def sh(*cmd: str) -> None:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, f"{' '.join(cmd)}: {p.stderr}"


class Link:
    """A namespace `ns` with `inner` (<subnet>.1/24) and its veth peer `outer` (<subnet>.2/24) in the root namespace:
    the sFlow agent sends from the root namespace to the node's address."""

    def __init__(self, unique: str, subnet: str) -> None:
        self.ns, self.inner, self.outer = f"sc{unique}", f"sc{unique}i", f"sc{unique}o"
        self.ip, self.peer_ip = f"{subnet}.1", f"{subnet}.2"

    def create(self) -> None:
        sh("ip", "netns", "add", self.ns)
        sh("ip", "link", "add", self.inner, "type", "veth", "peer", "name", self.outer)
        sh("ip", "link", "set", self.inner, "netns", self.ns)
        sh("ip", "-n", self.ns, "addr", "add", f"{self.ip}/24", "dev", self.inner)
        sh("ip", "-n", self.ns, "link", "set", self.inner, "up")
        sh("ip", "addr", "add", f"{self.peer_ip}/24", "dev", self.outer)
        sh("ip", "link", "set", self.outer, "up")
        sh("ping", "-c", "1", "-W", "2", self.ip)  # resolve ARP first: datagrams queued behind it may be dropped

    def delete(self) -> None:
        subprocess.run(["ip", "link", "del", self.outer], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)

    def node(self, host: str, tid: str) -> dict[str, Any]:
        return {"ID": f"node-{self.inner}", "Host": host,
                "Metadata": {"Name": self.inner, "Type": "veth", "TID": tid, "IPV4": [f"{self.ip}/24"],
                             "NetNsPath": f"/var/run/netns/{self.ns}"}}


@pytest.fixture
def link(unique: str) -> Iterator[Link]:
    lk = Link(unique, f"10.251.{int(unique, 16) % 250}")  # a /24 of its own in the root namespace
    yield lk
    lk.delete()


def poll(check: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def send(datagrams: list[bytes], target: tuple[str, int]) -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as tx:
        for i, data in enumerate(datagrams):
            tx.sendto(data, target)
            if i % 50 == 49:
                time.sleep(0.005)  # stay well inside the receive buffer


def test_sflow_capture_listens_on_the_node_and_its_flows_carry_the_node_tid(link: Link, unique: str) -> None:
    host, tid = f"h{unique}", str(uuid.uuid4())
    nodes: list[dict[str, Any]] = []
    statuses: list[CaptureStatus] = []
    ctl = CaptureController(host, lambda q: list(nodes), update_expire_ms=60_000, on_status=statuses.append)
    cap = Capture(UUID=str(uuid.uuid4()), GremlinQuery=f"G.V().Has('Name', '{link.inner}')", Type="sflow")
    ctl.put(cap)
    ctl.reconcile()
    assert ctl.running == {} and ctl.errors == {}  # nothing selected yet: the capture just stands
    link.create()
    nodes.append(link.node(host, tid))
    try:
        ctl.reconcile()
        rc = ctl.running[(cap.UUID, f"node-{link.inner}")]
        reader = rc.reader
        assert isinstance(reader, SFlowSocketCapture)
        addr, port = reader.sflow_socket.rsplit(":", 1)
        assert addr == link.ip and int(port) > 0  # the node's only IPv4 address, a free port (Port 0)
        [active] = [s for s in statuses if s.state == "active"]
        assert (active.type, active.sflow_socket, active.node_id) == ("sflow", reader.sflow_socket,
                                                                       f"node-{link.inner}")

        # the real OVS slice, plus 5 pings sampled 1 in 64 by the agent (3 requests and 1 reply sampled each)
        pings = [datagram("192.0.2.77", [flow_sample([raw_record(ETH_ICMP, 102)], rate=64, inp=5, outp=6)] * 3
                          + [flow_sample([raw_record(REPLY, 102)], rate=64, inp=6, outp=5)], seq=i)
                 for i in range(1, 6)]
        send(DATAGRAMS + pings, (link.ip, int(port)))
        want_packets, want_bytes = expected_totals(DATAGRAMS + pings)
        flows: dict[str, Any] = {}

        def all_counted() -> bool:
            for f in ctl.collect(int(time.time() * 1000)):
                flows[f.UUID] = f  # the latest update of each flow
            return sum(f.Metric.ABPackets + f.Metric.BAPackets for f in flows.values()) >= want_packets
        assert poll(all_counted, 10), (reader.datagrams, reader.error)

        assert reader.datagrams == len(DATAGRAMS) + 5 and reader.datagrams_dropped == 0
        assert (sum(f.Metric.ABPackets + f.Metric.BAPackets for f in flows.values()),
                sum(f.Metric.ABBytes + f.Metric.BABytes for f in flows.values())) == (want_packets, want_bytes)
        assert {(f.NodeTID, f.CaptureID) for f in flows.values()} == {(tid, cap.UUID)}
        # as many flows as the shared sFlow code makes of the same datagrams in one table (the corpus has 27)
        ref = SFlowCollector(lambda agent, ifx: PortInfo(tid, cap.UUID))
        for d in DATAGRAMS + pings:
            assert ref.feed(d, link.peer_ip)
        ref.process(int(time.time() * 1000))
        def view(fl: Any) -> list[tuple[Any, ...]]:
            return sorted((f.TrackingID, f.LayersPath, f.Metric.ABPackets, f.Metric.BAPackets, f.Metric.ABBytes,
                           f.Metric.BABytes) for f in fl)
        assert view(flows.values()) == view(ref.updates(int(time.time() * 1000)))
        assert len(flows) == 28
        icmp = [f for f in flows.values() if f.Network is not None and f.Network.A == "10.98.0.1"]
        assert len(icmp) == 1
        m = icmp[0].Metric
        assert (m.ABPackets, m.BAPackets, m.ABBytes, m.BABytes) == (5 * 3 * 64, 5 * 64, 5 * 3 * 64 * 98, 5 * 64 * 98)
        assert icmp[0].SamplingRate == 64 and icmp[0].ICMP is not None and icmp[0].ICMP.Type == "ECHO"

        # a malformed datagram is counted and dropped; the listener goes on
        send([u32(4) + DATAGRAMS[0][4:]], (link.ip, int(port)))
        assert poll(lambda: reader.datagrams_dropped == 1, 5)
        assert reader.running

        # the node no longer selected: the capture stops, its listener closes, its last flows are handed out
        nodes.clear()
        ctl.reconcile()
        assert ctl.running == {} and statuses[-1].state == "stopped" and not reader.running
    finally:
        ctl.stop_all()


def test_sflow_capture_on_a_busy_port_is_in_error_with_the_reason(link: Link, unique: str) -> None:
    """An explicit Port that something else holds: `State: error` naming the listener, nothing silent."""
    link.create()
    busy = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    busy.bind(("0.0.0.0", 0))
    port = busy.getsockname()[1]
    host = f"h{unique}"
    node = {"ID": f"node-{link.outer}", "Host": host,  # in the root namespace, no IPv4 known: 0.0.0.0
            "Metadata": {"Name": link.outer, "Type": "veth", "TID": str(uuid.uuid4())}}
    statuses: list[CaptureStatus] = []
    ctl = CaptureController(host, lambda q: [node], on_status=statuses.append)
    cap = Capture(UUID=str(uuid.uuid4()), GremlinQuery="G.V()", Type="sflow", Port=port)
    ctl.put(cap)
    try:
        ctl.reconcile()
        assert ctl.running == {}
        [err] = [s for s in statuses if s.state == "error"]
        assert err.type == "sflow" and err.error == f"{link.outer}: sflow listener on 0.0.0.0:{port}: Address already in use"
        busy.close()
        ok = Capture(UUID=str(uuid.uuid4()), GremlinQuery="G.V()", Type="sflow", Port=port)
        ctl.put(ok)
        ctl.reconcile()
        reader = ctl.running[(ok.UUID, node["ID"])].reader
        assert isinstance(reader, SFlowSocketCapture) and reader.sflow_socket == f"0.0.0.0:{port}"
    finally:
        busy.close()
        ctl.stop_all()


@pytest.mark.slow
async def test_sflow_capture_end_to_end_through_the_api(link: Link, unique: str, nats_url: str,
                                                         clickhouse_url: str) -> None:
    """POST /api/capture Type sflow before the interface exists -> probe-topology sees it -> probe-flow listens on
    its address (`Captures[].SFlowSocket`) -> datagrams -> flow-enricher -> ClickHouse -> Gremlin on the node."""
    import httpx

    from netsonde.common.service import wait_for
    from netsonde.common.testing import free_port
    from netsonde.flow_enricher.config import FlowEnricherConfig
    from netsonde.flow_enricher.service import FlowEnricherService
    from netsonde.graph_builder.config import GraphBuilderConfig
    from netsonde.graph_builder.service import GraphBuilderService
    from netsonde.probe_flow.config import ProbeFlowConfig
    from netsonde.probe_flow.service import ProbeFlowService
    from netsonde.probe_topology.config import ProbeTopologyConfig
    from netsonde.probe_topology.service import ProbeTopologyService
    from netsonde.query_api.config import QueryApiConfig
    from netsonde.query_api.service import QueryApiService

    host = f"host-{unique}"
    common: dict[str, Any] = dict(env={}, nats_url=nats_url, subject_prefix=f"c{unique}", host_id=host,
                                  clickhouse_url=clickhouse_url, clickhouse_database=f"sfc_{unique}",
                                  log_format="text")
    port = free_port()
    services: list[Any] = []
    try:
        for svc in (
            GraphBuilderService(GraphBuilderConfig.load(**common, history_flush_interval_s=0.2)),
            ProbeTopologyService(ProbeTopologyConfig.load(**common, process_netns=False)),
            FlowEnricherService(FlowEnricherConfig.load(**common, insert_interval_s=0.1, retry_max_s=0.5,
                                                        stream_max_bytes=64 * 1024 * 1024)),
            ProbeFlowService(ProbeFlowConfig.load(**common, update_interval_s=0.5, reconcile_interval_s=0.5,
                                                  stream_max_bytes=64 * 1024 * 1024)),
            QueryApiService(QueryApiConfig.load(**common, http_port=port)),
        ):
            await svc.start()
            services.append(svc)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as http:
            gremlin = partial(http_gremlin, http)  # one Gremlin query, answered 200

            node_q = f"G.V().Has('Name', '{link.inner}', 'Type', 'veth')"
            r = await http.post("/api/capture", json={"GremlinQuery": node_q, "Type": "sflow"})
            assert r.status_code in (200, 201), r.text
            link.create()  # the interface appears after the capture
            sockets: list[str] = []

            async def listening() -> bool:
                nodes = await gremlin(node_q)
                caps = nodes[0]["Metadata"].get("Captures") or [] if nodes else []
                sockets[:] = [c.get("SFlowSocket", "") for c in caps if c.get("State") == "active"]
                return bool(sockets and sockets[0])
            assert await wait_for(listening, 20, interval=0.3), await gremlin(node_q)
            addr, sport = sockets[0].rsplit(":", 1)
            assert addr == link.ip

            await asyncio.to_thread(send, DATAGRAMS, (link.ip, int(sport)))
            want_packets, want_bytes = expected_totals(DATAGRAMS)
            flows_q = f"{node_q}.Flows()"

            async def stored() -> bool:
                r1 = await http.post("/api/topology", json={"GremlinQuery": f"{flows_q}.Sum('Metric.ABPackets')"})
                r2 = await http.post("/api/topology", json={"GremlinQuery": f"{flows_q}.Sum('Metric.BAPackets')"})
                return r1.status_code == r2.status_code == 200 and r1.json() + r2.json() == want_packets
            assert await wait_for(stored, 30, interval=0.5)
            [node] = await gremlin(node_q)
            flows = await gremlin(flows_q)
            assert len(flows) == 27 and {f["NodeTID"] for f in flows} == {node["Metadata"]["TID"]}
            assert sum(f["Metric"].get("ABBytes", 0) + f["Metric"].get("BABytes", 0) for f in flows) == want_bytes
            assert await gremlin(f"{flows_q}.Limit(1).CaptureNode().Values('Name')") == [link.inner]

            # the agent's counter samples, summed over its interfaces, on the node (Skydive's SFlow metadata)
            ref = SFlowCollector()
            for d in DATAGRAMS:
                ref.feed(d, link.peer_ip)
            latest = {(i.Agent, i.IfIndex): i.Metric for i in ref.counters()}
            want: dict[str, int] = {}
            for values in latest.values():
                for k, v in values.items():
                    want[k] = want.get(k, 0) + v
            assert len(latest) == 3 and want["IfInUcastPkts"] > 0  # three interfaces report in the slice

            async def summed() -> bool:
                [n] = await gremlin(node_q)
                return (n["Metadata"].get("SFlow") or {}).get("Metric") == want
            assert await wait_for(summed, 15, interval=0.5), (await gremlin(node_q))[0]["Metadata"].get("SFlow")
    finally:
        for svc in reversed(services):
            await svc.stop()
