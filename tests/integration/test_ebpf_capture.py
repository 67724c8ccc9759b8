"""The `ebpf` capture against AF_PACKET on the same traffic (issue 17): a TC program on a veth in a namespace,
an AF_PACKET capture on the same veth; both tables must give the same flows (same UUID, TrackingID) with the
same packet and byte counts. Then end to end through the services and Gremlin, and the error paths."""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any, Iterator

import pytest

from netsonde.common.bus.captures import Capture
from netsonde.flow.capture import AfPacketCapture, CaptureError
from netsonde.flow.table import FlowTable
from netsonde.probe_flow.controller import CaptureController
from netsonde.probe_flow.ebpfcapture import EbpfCapture
from tests.integration.test_captures_standing import (Pair, api_call, captures_of, create, delete,  # noqa: F401
                                                      gremlin, pair, stack, wait_until)

pytestmark = [pytest.mark.root]


def sh(*cmd: str) -> str:
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True, timeout=60).stdout


class Veths:
    """Namespaces a, b; veth va (a) - vb (b), 10.x.y.1 - .2."""

    def __init__(self, unique: str) -> None:
        u = unique[:6]
        self.a, self.b, self.va, self.vb = f"ea-{u}", f"eb-{u}", f"eva{u}", f"evb{u}"
        self.ipa, self.ipb = f"10.{60 + int(unique[-2:], 16) % 30}.{int(unique[-4:-2], 16)}.1", ""
        self.ipb = self.ipa[:-1] + "2"
        self.ns_path = f"/var/run/netns/{self.a}"
        sh("ip", "netns", "add", self.a)
        sh("ip", "netns", "add", self.b)
        sh("ip", "link", "add", self.va, "netns", self.a, "type", "veth", "peer", "name", self.vb, "netns", self.b)
        for ns, v, ip in ((self.a, self.va, self.ipa), (self.b, self.vb, self.ipb)):
            # no IPv6 link-local chatter (MLD, DAD) arriving at random times while one capture already stopped
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{v}.disable_ipv6=1")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", v)
            sh("ip", "-n", ns, "link", "set", v, "up")

    def in_a(self, *cmd: str) -> str:
        return sh("ip", "netns", "exec", self.a, *cmd)

    def udp(self, ports: range, count: int = 1) -> None:
        """`count` datagrams of 20 bytes from a to b to each port (nobody listens: b answers ICMP unreachable)."""
        code = ("import socket,sys\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
                f"for p in range({ports.start},{ports.stop}):\n"
                f"    for i in range({count}): s.sendto(b'x'*20,('{self.ipb}',p))\n")
        self.in_a("python3", "-c", code)

    def down(self) -> None:
        for ns in (self.a, self.b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.fixture
def veths(unique: str) -> Iterator[Veths]:
    v = Veths(unique)
    yield v
    v.down()


def ebpf_attached(ns: str, ifname: str) -> bool:
    """The capture's programs on the interface: TCX links (kernel 6.6+) or the clsact qdisc of the fallback."""
    code = f"from netsonde.flow.ebpf.loader import tcx_programs; print(len(tcx_programs('{ifname}')))"
    tcx = int(sh("ip", "netns", "exec", ns, sys.executable, "-c", code))
    return tcx > 0 or "clsact" in sh("ip", "netns", "exec", ns, "tc", "qdisc", "show", "dev", ifname)


def qdiscs(v: Veths) -> str:
    return v.in_a("tc", "qdisc", "show", "dev", v.va)


def by_tracking(flows: list[Any]) -> dict[str, tuple[str, int, int, int, int]]:
    return {f.TrackingID: (f.UUID, f.Metric.ABPackets, f.Metric.ABBytes, f.Metric.BAPackets, f.Metric.BABytes)
            for f in flows}


def run_both(v: Veths, traffic: Any, max_flows: int = 65536) -> tuple[list[Any], list[Any], EbpfCapture]:
    """AF_PACKET and ebpf on va at the same time; their flows once `traffic()` ran and both are drained."""
    t_af, t_eb = FlowTable("tid-va", "c-af"), FlowTable("tid-va", "c-eb")
    af = AfPacketCapture(v.va, t_af, v.ns_path)
    eb = EbpfCapture(v.va, t_eb, v.ns_path, poll_s=0.2, max_flows=max_flows)
    af.start()
    eb.start()
    try:
        assert ebpf_attached(v.a, v.va)
        time.sleep(0.3)
        traffic()
        time.sleep(0.5)
    finally:
        af.stop()
        eb.stop()
    assert not ebpf_attached(v.a, v.va), "the programs stay attached after the capture stopped"
    assert "clsact" not in qdiscs(v), "the clsact qdisc stays after the capture stopped"
    return t_af.flush(), t_eb.flush(), eb


@pytest.mark.slow
def test_ping_and_udp_counts_equal_afpacket(veths: Veths) -> None:
    def traffic() -> None:
        veths.in_a("ping", "-c", "5", "-i", "0.05", "-q", veths.ipb)
        veths.udp(range(40000, 40003), count=2)

    af, eb, cap = run_both(veths, traffic)
    want, got = by_tracking(af), by_tracking(eb)
    icmp = [f for f in eb if f.LayersPath == "Ethernet/IPv4/ICMPv4" and f.ICMP and f.ICMP.Type == "ECHO"]
    assert len(icmp) == 1 and (icmp[0].Metric.ABPackets, icmp[0].Metric.BAPackets) == (5, 5)
    assert (icmp[0].Metric.ABBytes, icmp[0].Metric.BABytes) == (490, 490)
    udp = [f for f in eb if f.LayersPath == "Ethernet/IPv4/UDP"]
    assert sorted((f.Transport.B, f.Metric.ABPackets, f.Metric.ABBytes) for f in udp) == [
        (40000, 2, 124), (40001, 2, 124), (40002, 2, 124)]
    assert got == want  # every flow (ARP, ICMP unreachable too): same UUID, TrackingID, counts
    assert cap.packets_received == sum(p[1] + p[3] for p in want.values()) and cap.packets_dropped == 0
    assert {f.Metric.Start for f in icmp} and abs(icmp[0].Metric.Start - time.time() * 1000) < 30_000


@pytest.mark.slow
def test_vxlan_outer_and_inner_flows_equal_afpacket(veths: Veths) -> None:
    """Two pings through one VXLAN tunnel with a fixed outer source port share the outer key; their inner
    flows stay apart, as with AF_PACKET (this kernel has no GRE/IPIP modules)."""
    for ns, ip, remote, inner in ((veths.a, veths.ipa, veths.ipb, "192.168.77.1/24"),
                                  (veths.b, veths.ipb, veths.ipa, "192.168.77.2/24")):
        sh("ip", "-n", ns, "link", "add", "vx0", "type", "vxlan", "id", "42", "dstport", "4789", "local", ip,
           "remote", remote, "srcport", "5000", "5001")
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.vx0.disable_ipv6=1")
        sh("ip", "-n", ns, "addr", "add", inner, "dev", "vx0")
        sh("ip", "-n", ns, "link", "set", "vx0", "up")

    def traffic() -> None:
        for _ in range(2):
            veths.in_a("ping", "-c", "3", "-i", "0.05", "-q", "192.168.77.2")

    af, eb, _ = run_both(veths, traffic)
    assert by_tracking(eb) == by_tracking(af)
    inner = [f for f in eb if f.ParentUUID and f.ICMP is not None and f.ICMP.Type == "ECHO"]
    assert sorted((f.Metric.ABPackets, f.Metric.BAPackets) for f in inner) == [(3, 3), (3, 3)]
    outer = [f for f in eb if f.LayersPath.startswith("Ethernet/IPv4/UDP") and not f.ParentUUID]
    assert sum(f.Metric.ABPackets + f.Metric.BAPackets for f in outer) >= 12


@pytest.mark.slow
def test_full_map_goes_through_the_ring_buffer(veths: Veths) -> None:
    """A map of 4 entries: the other flows' packets reach user space through the ring buffer, counts exact."""
    af, eb, cap = run_both(veths, lambda: veths.udp(range(41000, 41010), count=3), max_flows=4)
    assert by_tracking(eb) == by_tracking(af)
    udp = [f for f in eb if f.LayersPath == "Ethernet/IPv4/UDP"]
    assert len(udp) == 10 and all(f.Metric.ABPackets == 3 for f in udp)
    assert cap.program is None and cap.packets_dropped == 0


def test_map_pressure_evicts_the_oldest_down_to_half(veths: Veths) -> None:
    """A 16-entry map holding more than 12 keys: the oldest go until 8 are left, no count lost."""
    table = FlowTable("tid-va", "c-eb")
    cap = EbpfCapture(veths.va, table, veths.ns_path, poll_s=3600, idle_s=3600, max_flows=16)
    cap.start()
    try:
        veths.udp(range(42000, 42014))
        time.sleep(0.2)
        before = sum(1 for _ in cap.program.entries())  # type: ignore[union-attr]
        assert before > 12
        folded = cap.poll()
        assert sum(1 for _ in cap.program.entries()) == 8 and cap.evicted == before - 8  # type: ignore[union-attr]
        veths.udp(range(42000, 42014))
        time.sleep(0.2)
        folded += cap.poll(drain=True)
    finally:
        cap.stop()
    per_port: dict[int, int] = {}
    for f in table.flush():
        if f.LayersPath == "Ethernet/IPv4/UDP":  # each round is a new socket: a new source port, a new flow
            per_port[f.Transport.B] = per_port.get(f.Transport.B, 0) + f.Metric.ABPackets
    assert per_port == {p: 2 for p in range(42000, 42014)}
    assert folded == table.stats.packets


def test_idle_entries_leave_the_map_without_losing_counts(veths: Veths) -> None:
    table = FlowTable("tid-va", "c-eb")
    cap = EbpfCapture(veths.va, table, veths.ns_path, poll_s=3600, idle_s=0.2)
    cap.start()
    try:
        veths.in_a("ping", "-c", "2", "-i", "0.05", "-q", veths.ipb)
        time.sleep(0.4)
        assert cap.poll() >= 4 and cap.evicted >= 2
        assert cap.poll() == 0  # taken out of the map: nothing left to fold
        assert sum(1 for _ in cap.program.entries()) == 0  # type: ignore[union-attr]
        veths.in_a("ping", "-c", "1", "-q", veths.ipb)
        assert cap.poll() == 2
    finally:
        cap.stop()
    icmp = [f for f in table.flush() if f.LayersPath == "Ethernet/IPv4/ICMPv4" and f.ICMP.Type == "ECHO"]
    assert sorted((f.Metric.ABPackets, f.Metric.BAPackets) for f in icmp) == [(1, 1), (2, 2)]  # two ping ids


def test_vanished_interface_is_an_error_state_not_a_crash() -> None:
    with pytest.raises(CaptureError, match="ebpf on nsgone0: interface nsgone0: no interface with this name"):
        EbpfCapture("nsgone0", FlowTable("t")).start()
    node = {"ID": "n-gone", "Host": "h1", "Metadata": {"Name": "nsgone0", "Type": "veth", "TID": "t-gone"}}
    statuses: list[Any] = []
    ctl = CaptureController("h1", lambda q: [node], on_status=statuses.append)
    ctl.put(Capture(UUID="c-gone", GremlinQuery="G.V()", Type="ebpf"))
    ctl.reconcile()
    assert ctl.running == {}
    assert ctl.errors == {("c-gone", "n-gone"): "ebpf on nsgone0: interface nsgone0: no interface with this name"}
    assert [(s.state, s.type, s.error) for s in statuses] == [
        ("error", "ebpf", "ebpf on nsgone0: interface nsgone0: no interface with this name")]


@pytest.mark.slow
def test_end_to_end_through_gremlin_equals_afpacket(stack: tuple[int, int], pair: Pair) -> None:
    """ebpf on va, afpacket on vb (the two ends of the ping), every service a process: Flows() of each node
    gives the ping with 5/5 packets and 490/490 bytes, the same TrackingID (the UUID differs: it includes the
    node; two captures of one node would publish the same UUID). DELETE removes the TC program and qdisc."""
    api = stack[0]
    eb = create(api, GremlinQuery=f"G.V().Has('Name', '{pair.va}')", Type="ebpf")
    af = create(api, GremlinQuery=f"G.V().Has('Name', '{pair.vb}')", Type="afpacket")
    status, out = api_call(api, "/api/capture", {"GremlinQuery": "G.V()", "Type": "ebpf", "BPFFilter": "icmp"},
                           "POST")
    assert status == 400 and out == "capture type ebpf does not support option(s) BPFFilter"
    try:
        pair.up()
        for name, cap, kind in ((pair.va, eb, "ebpf"), (pair.vb, af, "afpacket")):
            got = wait_until(lambda: captures_of(api, name), 30, f"the capture on {name}")
            assert [(c["ID"], c["State"], c["Type"]) for c in got] == [(cap["UUID"], "active", kind)]
        assert ebpf_attached(pair.a, pair.va)
        pair.ping(5)

        def ping_flow(name: str) -> dict[str, Any] | None:
            q = (f"G.V().Has('Name', '{name}').Flows().Has('LayersPath', 'Ethernet/IPv4/ICMPv4', "
                 f"'Network.A', '{pair.ipa}')")
            flows = gremlin(api, q) or []
            if len(flows) == 1 and flows[0]["Metric"]["ABPackets"] == 5 and flows[0]["Metric"]["BAPackets"] == 5:
                return flows[0]
            return None

        f_eb = wait_until(lambda: ping_flow(pair.va), 60, "the ping in the ebpf capture")
        f_af = wait_until(lambda: ping_flow(pair.vb), 60, "the ping in the afpacket capture")
        for f, cap in ((f_eb, eb), (f_af, af)):
            m = f["Metric"]
            assert (m["ABPackets"], m["BAPackets"], m["ABBytes"], m["BABytes"]) == (5, 5, 490, 490)
            assert f["CaptureID"] == cap["UUID"]
        assert f_eb["TrackingID"] == f_af["TrackingID"] and f_eb["L3TrackingID"] == f_af["L3TrackingID"]
        assert f_eb["ICMP"] == f_af["ICMP"] and f_eb["Metric"]["RTT"] > 0
    finally:
        delete(api, eb["UUID"])
        delete(api, af["UUID"])
    wait_until(lambda: not ebpf_attached(pair.a, pair.va), 30, "the programs detached after DELETE")
    assert "clsact" not in sh("ip", "netns", "exec", pair.a, "tc", "qdisc", "show", "dev", pair.va)
    assert "bpf" not in sh("ip", "netns", "exec", pair.a, "tc", "filter", "show", "dev", pair.va, "ingress")
