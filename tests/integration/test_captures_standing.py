"""Captures are standing declarations, end to end with every service a real process: each capture is created
BEFORE its namespaces and veths exist, then the topology comes up, then real traffic, and the flows are checked
through the API with exact packet counts (afpacket, pcap, a ShortestPathTo query, pcapsocket, a wrong type in
State error, Skydive's own Python client)."""

from __future__ import annotations

import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest
from scapy.all import ICMP, IP, UDP, Ether, wrpcap

from bench.services import ServiceProcs
from tests.integration.flow_stack import start_flow_stack
from tests.integration.query_api_http import api_call, gremlin, wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]

PCAP = Path(__file__).resolve().parents[1] / "data" / "eth-ip4-arp-dns-req-http-google.pcap"


def sh(*cmd: str) -> str:
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True, timeout=60).stdout


@pytest.fixture(scope="module")
def stack(nats_url: str, clickhouse_url: str) -> Iterator[tuple[int, int]]:
    """graph-builder, probe-topology, query-api, flow-enricher, probe-flow as processes; yields the ports of
    the API and of probe-flow."""
    tag = f"{int(time.time() * 1000) % 10**9:09d}"
    procs = ServiceProcs(nats_url, clickhouse_url, prefix=f"cs{tag}")
    procs.env["NETSONDE_CLICKHOUSE_DATABASE"] = f"captures_{tag}"
    try:
        api, probe = start_flow_stack(procs)
        wait_until(lambda: gremlin(api, "G.V().Has('Type','host').Count()") == 1, 30, "the host in the API")
        yield api, probe
    finally:
        procs.stop()


class Pair:
    """Namespaces a/b, veths va (in a) - pa and vb (in b) - pb, pa and pb on bridge br: created on `up()`."""

    def __init__(self, unique: str, subnet: str) -> None:
        u = unique[:6]
        self.a, self.b, self.br = f"ca-{u}", f"cb-{u}", f"cbr{u}"
        self.va, self.vb, self.pa, self.pb = f"cva{u}", f"cvb{u}", f"cpa{u}", f"cpb{u}"
        self.ipa, self.ipb = f"{subnet}.1", f"{subnet}.2"

    def up(self) -> None:
        sh("ip", "netns", "add", self.a)
        sh("ip", "netns", "add", self.b)
        sh("ip", "link", "add", self.br, "type", "bridge")
        sh("ip", "link", "set", self.br, "up")
        for ns, v, p, ip in ((self.a, self.va, self.pa, self.ipa), (self.b, self.vb, self.pb, self.ipb)):
            sh("ip", "link", "add", v, "netns", ns, "type", "veth", "peer", "name", p)
            sh("ip", "link", "set", p, "master", self.br, "up")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", v)
            sh("ip", "-n", ns, "link", "set", v, "up")

    def ping(self, count: int = 5) -> None:
        sh("ip", "netns", "exec", self.a, "ping", "-c", str(count), "-i", "0.2", "-W", "1", self.ipb)

    def down(self) -> None:
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.br], capture_output=True)


@pytest.fixture
def pair(unique: str) -> Iterator[Pair]:
    p = Pair(unique, f"10.{90 + int(unique[-2:], 16) % 30}.{int(unique[-4:-2], 16)}")
    yield p
    p.down()


def create(api: int, **body: Any) -> dict[str, Any]:
    status, cap = api_call(api, "/api/capture", body, "POST")
    assert status == 200, cap
    return cap


def delete(api: int, capture_id: str) -> None:
    status, out = api_call(api, f"/api/capture/{capture_id}", method="DELETE")
    assert status == 200, out


def captures_of(api: int, name: str) -> list[dict[str, Any]]:
    nodes = gremlin(api, f"G.V().Has('Name', '{name}')")
    return [c for n in nodes for c in n["Metadata"].get("Captures") or []]


def icmp_flows(api: int, capture_id: str, ipa: str, total: int = 5) -> list[dict[str, Any]]:
    """The ping's flows of one capture, once every one of them counts `total` packets each way."""
    q = f"G.Flows().Has('CaptureID', '{capture_id}', 'Network.A', '{ipa}', 'LayersPath', 'Ethernet/IPv4/ICMPv4')"
    flows = gremlin(q=q, port=api) or []
    if flows and all(f["Metric"]["ABPackets"] == total and f["Metric"]["BAPackets"] == total for f in flows):
        return flows
    return []


def test_afpacket_and_pcap_created_before_the_topology(stack: tuple[int, int], pair: Pair) -> None:
    api = stack[0]
    by_default = create(api, GremlinQuery=f"G.V().Has('Name', Within('{pair.va}', '{pair.vb}'))", BPFFilter="icmp")
    with_pcap = create(api, GremlinQuery=f"G.V().Has('Name', '{pair.pa}')", Type="pcap", BPFFilter="icmp")
    assert "selects no node" in by_default["Warning"] and "selects no node" in with_pcap["Warning"]
    try:
        pair.up()
        wait_until(lambda: len(captures_of(api, pair.va)) == 1 and len(captures_of(api, pair.vb)) == 1
                   and len(captures_of(api, pair.pa)) == 1, 30, "Captures on the new veths")
        assert [(c["ID"], c["Type"], c["State"]) for c in captures_of(api, pair.va)] == \
            [(by_default["UUID"], "afpacket", "active")]
        assert [(c["ID"], c["Type"], c["State"]) for c in captures_of(api, pair.pa)] == \
            [(with_pcap["UUID"], "pcap", "active")]
        pair.ping(5)
        flows = wait_until(lambda: len(icmp_flows(api, by_default["UUID"], pair.ipa)) == 2, 60,
                           "the ping at va and vb")
        flows = icmp_flows(api, by_default["UUID"], pair.ipa)
        assert len(flows) == 2 and len({f["TrackingID"] for f in flows}) == 1
        for f in flows:
            assert (f["Network"]["B"], f["Metric"]["ABBytes"], f["Metric"]["BABytes"]) == (pair.ipb, 490, 490)
        tids = {n["Metadata"]["TID"] for n in gremlin(api, f"G.V().Has('Name', Within('{pair.va}', '{pair.vb}'))")}
        assert {f["NodeTID"] for f in flows} == tids
        pcap_flows = wait_until(lambda: icmp_flows(api, with_pcap["UUID"], pair.ipa), 30, "the ping at pa (pcap)")
        assert len(pcap_flows) == 1 and pcap_flows[0]["TrackingID"] == flows[0]["TrackingID"]
        assert gremlin(api, f"G.V().Has('Name', '{pair.pa}').Values('TID')") == [pcap_flows[0]["NodeTID"]]
        counted = captures_of(api, pair.va)[0]
        assert counted["PacketsDropped"] == 0
    finally:
        delete(api, by_default["UUID"])
        delete(api, with_pcap["UUID"])
    wait_until(lambda: not captures_of(api, pair.va) and not captures_of(api, pair.pa), 30,
               "Captures gone after DELETE")


def test_shortest_path_query_captures_every_interface_of_the_path(stack: tuple[int, int], pair: Pair) -> None:
    api = stack[0]
    q = (f"G.V().Has('Name', '{pair.va}').ShortestPathTo(Metadata('Name', '{pair.vb}'), "
         "Metadata('RelationType', 'layer2'))")
    cap = create(api, GremlinQuery=q, BPFFilter="icmp")
    try:
        pair.up()
        path = [pair.va, pair.pa, pair.br, pair.pb, pair.vb]
        wait_until(lambda: all(len(captures_of(api, n)) == 1 for n in path), 30, "Captures on the whole path")
        pair.ping(5)
        wait_until(lambda: len(icmp_flows(api, cap["UUID"], pair.ipa)) == 5, 60, "the ping at the five hops")
        flows = icmp_flows(api, cap["UUID"], pair.ipa)
        assert len({f["NodeTID"] for f in flows}) == 5 and len({f["TrackingID"] for f in flows}) == 1
    finally:
        delete(api, cap["UUID"])


def test_a_wrong_type_is_a_visible_error_and_an_unknown_type_a_400(stack: tuple[int, int], pair: Pair) -> None:
    """(ebpf captures, end to end: tests/integration/test_ebpf_capture.py.)"""
    api = stack[0]
    status, out = api_call(api, "/api/capture", {"GremlinQuery": "G.V()", "Type": "ebpfx"}, "POST")
    assert status == 400 and "unknown capture Type 'ebpfx'" in out
    wrong = create(api, GremlinQuery=f"G.V().Has('Name', '{pair.br}')", Type="ovsmirror")
    try:
        pair.up()
        got = wait_until(lambda: captures_of(api, pair.br), 30, "the ovsmirror capture's state on a Linux bridge")
        assert [(c["ID"], c["State"], c["Error"]) for c in got] == [
            (wrong["UUID"], "error", "capture type ovsmirror not allowed on node type bridge (allowed: afpacket, "
                                     "pcap, pcapsocket, sflow, ebpf)")]
    finally:
        delete(api, wrong["UUID"])
    wait_until(lambda: not captures_of(api, pair.br), 30, "errors cleared")


def send_stream(address: str, data: bytes) -> None:
    host, port = address.rsplit(":", 1)
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(data)
        s.shutdown(socket.SHUT_WR)
        s.settimeout(10)
        while s.recv(4096):
            pass


def test_pcapsocket_stream_becomes_flows_of_the_node(stack: tuple[int, int], pair: Pair, tmp_path: Path) -> None:
    api, probe_port = stack
    cap = create(api, GremlinQuery=f"G.V().Has('Name', '{pair.br}')", Type="pcapsocket", BPFFilter="udp")
    try:
        pair.up()
        got = wait_until(lambda: [c for c in captures_of(api, pair.br) if c.get("PCAPSocket")], 30,
                         "the PCAPSocket address on the bridge")
        assert got[0]["State"] == "active" and got[0]["Type"] == "pcapsocket"
        address = got[0]["PCAPSocket"]
        now = time.time()
        pkts = [Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.250.0.1", dst="10.250.0.2")
                / UDP(sport=4000, dport=5000) / (b"x" * 50) for _ in range(7)]
        pkts += [Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="10.250.0.1", dst="10.250.0.2")
                 / ICMP() for _ in range(3)]  # dropped by the BPF filter
        for i, p in enumerate(pkts):
            p.time = now + i * 0.01
        path = tmp_path / "s.pcap"
        wrpcap(str(path), pkts)
        stream = path.read_bytes()
        send_stream(address, b"this is not a pcap stream at all")  # refused, counted, the listener stays up
        send_stream(address, stream[:-20])  # cut inside the last record: its 7 UDP packets count, then an error
        send_stream(address, stream)
        tid = gremlin(api, f"G.V().Has('Name', '{pair.br}').Values('TID')")[0]
        q = f"G.Flows().Has('CaptureID', '{cap['UUID']}')"
        flows = wait_until(lambda: [f for f in gremlin(api, q) if f["Metric"]["ABPackets"] == 14], 30,
                           "the streamed packets as one flow")
        assert len(gremlin(api, q)) == 1
        f = flows[0]
        assert (f["NodeTID"], f["Transport"]["A"], f["Transport"]["B"]) == (tid, 4000, 5000)
        assert f["Metric"]["ABBytes"] == 14 * 92
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{probe_port}/metrics", timeout=10).read().decode()
        assert "netsonde_probe_flow_pcapsocket_stream_errors_total 2.0" in metrics
        got = captures_of(api, pair.br)[0]
        assert got["State"] == "active"
    finally:
        delete(api, cap["UUID"])


def test_skydive_python_client_on_a_node_that_does_not_exist_yet(stack: tuple[int, int], pair: Pair) -> None:
    """Skydive's own client (`skydive-client` from PyPI), unchanged, against Netsonde."""
    from skydive.rest.client import RESTClient

    api = stack[0]
    client = RESTClient(f"127.0.0.1:{api}")
    cap = client.capture_create(f"G.V().Has('Name', '{pair.vb}')", name="skydive-client", bpf_filter="icmp")
    assert cap.uuid and cap.name == "skydive-client" and cap.bpf_filter == "icmp"
    try:
        assert [c.uuid for c in client.capture_list() if c.uuid == cap.uuid] == [cap.uuid]
        pair.up()
        wait_until(lambda: len(captures_of(api, pair.vb)) == 1, 30, "the capture on the new veth")
        pair.ping(5)
        flows = wait_until(lambda: icmp_flows(api, cap.uuid, pair.ipa), 60, "the ping through skydive-client")
        assert len(flows) == 1 and flows[0]["Metric"]["ABBytes"] == 490
        nodes = client.lookup_nodes(f"G.V().Has('Captures.ID', '{cap.uuid}')")
        assert [n.metadata["Name"] for n in nodes] == [pair.vb]
    finally:
        client.capture_delete(cap.uuid)
    assert cap.uuid not in [c.uuid for c in client.capture_list()]
    wait_until(lambda: not captures_of(api, pair.vb), 30, "the capture stopped after capture_delete")


def test_capture_follows_the_query_as_nodes_stop_and_start_matching(stack: tuple[int, int], pair: Pair) -> None:
    """The capture stops on a node whose metadata no longer matches, and starts again when it does."""
    api = stack[0]
    cap = create(api, GremlinQuery=f"G.V().Has('Name', '{pair.pa}', 'MTU', 1500)", BPFFilter="icmp")
    try:
        pair.up()
        wait_until(lambda: [c["State"] for c in captures_of(api, pair.pa)] == ["active"], 30, "the capture on pa")
        sh("ip", "link", "set", pair.pa, "mtu", "1400")
        wait_until(lambda: captures_of(api, pair.pa) == [], 30, "the capture gone from pa (MTU 1400)")
        pair.ping(2)  # not captured: no flow of this capture
        sh("ip", "link", "set", pair.pa, "mtu", "1500")
        wait_until(lambda: [c["State"] for c in captures_of(api, pair.pa)] == ["active"], 30, "the capture back")
        pair.ping(3)
        flows = wait_until(lambda: icmp_flows(api, cap["UUID"], pair.ipa, total=3), 60, "the second ping only")
        assert len(flows) == 1
    finally:
        delete(api, cap["UUID"])
