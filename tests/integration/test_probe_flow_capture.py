"""Live capture on real veths in namespaces: AF_PACKET TPACKET_V3 and libpcap into flow tables.

Accuracy against tshark (tcpreplay into a veth), TrackingID across a bridge, VXLAN outer/inner flows with
a real vxlan device, and GRE/GENEVE/MPLS/802.1Q with crafted frames injected into a veth under capture.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import pytest
from scapy.all import GRE, ICMP, IP, TCP, UDP, Dot1Q, Ether, raw, wrpcap
from scapy.contrib.geneve import GENEVE
from scapy.contrib.mpls import MPLS

from netsonde.flow.capture import AfPacketCapture, BPFError, PcapCapture
from netsonde.flow.inject import inject_packets
from netsonde.flow.table import FlowTable

from tests.integration.netns_veth import Topo
from tests.integration.netns_veth import shell as sh
from tests.integration.probe_flow_tools import tshark_conversations


pytestmark = [pytest.mark.root]


@pytest.fixture
def topo(unique: str) -> Iterator[Topo]:
    with Topo(unique) as t:
        yield t


@pytest.fixture
def pair(topo: Topo) -> tuple[Topo, str, str, str, str]:
    """Two namespaces joined by a veth pair: (topo, nsA, ifA, nsB, ifB), 10.77.0.1/24 <-> 10.77.0.2/24."""
    return topo, *topo.joined_pair("v", "10.77.0")


def _wait_packets(cap, n: int, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while cap.packets_received < n and time.monotonic() < deadline:
        time.sleep(0.05)


def _flows(cap) -> list:
    with cap.lock:
        return cap.table.updates(int(time.time() * 1000))


@pytest.mark.parametrize("cls", [AfPacketCapture, PcapCapture])
def test_ping_is_one_flow_with_both_directions(pair, cls):
    topo, a, ia, b, ib = pair
    cap = cls(ib, FlowTable("node-b"), netns_path=topo.path(b), bpf="icmp")
    cap.start()
    try:
        sent = inject_packets(ia, topo.path(a), "10.77.0.1", "10.77.0.2", type="icmp4", count=5, interval_ms=20,
                              icmp_id=4242, size=100)
        assert sent == 5
        _wait_packets(cap, 10)
    finally:
        cap.stop()
    flows = _flows(cap)
    assert len(flows) == 1, flows
    f = flows[0]
    assert f.LayersPath == "Ethernet/IPv4/ICMPv4" and f.ICMP.ID == 4242 and f.ICMP.Type == "ECHO"
    assert (f.Network.A, f.Network.B) == ("10.77.0.1", "10.77.0.2")
    assert (f.Metric.ABPackets, f.Metric.BAPackets) == (5, 5)
    assert f.Metric.ABBytes == 500 and f.Metric.BABytes == 500
    assert f.Metric.RTT > 0 and f.NodeTID == "node-b"
    assert cap.packets_dropped == 0


def test_bpf_filter_runs_in_kernel(pair):
    topo, a, ia, b, ib = pair
    cap = AfPacketCapture(ib, FlowTable("n"), netns_path=topo.path(b), bpf="udp port 9999")
    cap.start()
    try:
        inject_packets(ia, topo.path(a), "10.77.0.1", "10.77.0.2", type="icmp4", count=3)
        inject_packets(ia, topo.path(a), "10.77.0.1", "10.77.0.2", type="udp4", count=4, dst_port=9999,
                       src_port=1111)
        _wait_packets(cap, 4)
        time.sleep(0.3)
    finally:
        cap.stop()
    flows = _flows(cap)
    assert [(f.Transport.B, f.Metric.ABPackets) for f in flows] == [(9999, 4)]


def test_invalid_filter_and_missing_interface_are_refused(pair):
    topo, a, ia, b, ib = pair
    with pytest.raises(BPFError, match="invalid BPF filter 'tcp port banana'"):
        AfPacketCapture(ib, FlowTable("n"), netns_path=topo.path(b), bpf="tcp port banana")
    from netsonde.flow.capture import CaptureError
    with pytest.raises(CaptureError, match="no interface"):
        AfPacketCapture("nosuch0", FlowTable("n"), netns_path=topo.path(b)).start()


@pytest.mark.slow
def test_tcpreplay_counts_equal_tshark(pair, tmp_path: Path):
    topo, a, ia, b, ib = pair
    import random
    rnd = random.Random(7)
    pk = []
    for i in range(3000):
        src, dst = f"198.18.{rnd.randrange(4)}.{rnd.randrange(1, 6)}", f"198.19.0.{rnd.randrange(1, 6)}"
        sp, dp = rnd.choice([1000, 2000, 3000]), rnd.choice([53, 80, 5000])
        l4 = TCP(sport=sp, dport=dp, flags="A") if rnd.random() < 0.5 else UDP(sport=sp, dport=dp)
        # the destination MAC is not the receiver's: its kernel drops the frame after the capture tap
        p = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:99") / IP(src=src, dst=dst) / l4
        pk.append(p / (b"r" * rnd.randrange(0, 1200)))
    path = tmp_path / "replay.pcap"
    wrpcap(str(path), pk)
    cap = AfPacketCapture(ib, FlowTable("n"), netns_path=topo.path(b), bpf="ip")
    cap.start()
    try:
        sh(f"ip netns exec {a} tcpreplay -q -i {ia} --pps 20000 {path}")
        _wait_packets(cap, len(pk), timeout=15)
    finally:
        cap.stop()
    flows = _flows(cap)
    got = {}
    for f in flows:
        k = tuple(sorted([(f.Network.A, f.Transport.A), (f.Network.B, f.Transport.B)]))
        got[(f.Transport.Protocol.lower(), k)] = (f.Metric.ABPackets + f.Metric.BAPackets,
                                                  f.Metric.ABBytes + f.Metric.BABytes)
    want = {}
    for proto in ("tcp", "udp"):
        for k, v in tshark_conversations(path, proto).items():
            want[(proto, k)] = v
    assert got == want
    assert cap.packets_dropped == 0 and cap.table.stats.packets == 3000


def test_tracking_id_same_at_both_veth_ends_and_bridge(topo: Topo):
    a, b, br = topo.ns("a"), topo.ns("b"), topo.ns("r")
    u = topo.u
    topo.veth(a, f"ea{u}", br, f"pa{u}")
    topo.veth(b, f"eb{u}", br, f"pb{u}")
    sh(f"ip -n {br} link add br{u} type bridge && ip -n {br} link set br{u} up")
    sh(f"ip -n {br} link set pa{u} master br{u} && ip -n {br} link set pb{u} master br{u}")
    sh(f"ip -n {a} addr add 10.78.0.1/24 dev ea{u} && ip -n {b} addr add 10.78.0.2/24 dev eb{u}")
    points = [(f"ea{u}", a), (f"pa{u}", br), (f"br{u}", br), (f"pb{u}", br), (f"eb{u}", b)]
    caps = [AfPacketCapture(ifn, FlowTable(ifn), netns_path=topo.path(ns), bpf="icmp") for ifn, ns in points]
    for c in caps:
        c.start()
    try:
        sh(f"ip netns exec {a} ping -c 3 -i 0.2 -W 2 10.78.0.2")
        for c in caps:
            _wait_packets(c, 6)
    finally:
        for c in caps:
            c.stop()
    flows = {c.ifname: _flows(c) for c in caps}
    for ifn, fl in flows.items():
        assert len(fl) == 1, (ifn, fl)
        assert (fl[0].Metric.ABPackets, fl[0].Metric.BAPackets) == (3, 3), ifn
    assert len({fl[0].TrackingID for fl in flows.values()}) == 1
    assert len({fl[0].UUID for fl in flows.values()}) == len(points)


def test_vxlan_tunnel_outer_and_inner_flows(topo: Topo):
    a, b = topo.ns("a"), topo.ns("b")
    u = topo.u
    topo.veth(a, f"ua{u}", b, f"ub{u}")
    sh(f"ip -n {a} addr add 192.168.77.1/24 dev ua{u} && ip -n {b} addr add 192.168.77.2/24 dev ub{u}")
    for ns, me, peer, ov in ((a, "1", "2", "10.79.0.1"), (b, "2", "1", "10.79.0.2")):
        dev = f"u{'a' if me == '1' else 'b'}{u}"
        sh(f"ip -n {ns} link add vx{u} type vxlan id 42 remote 192.168.77.{peer} local 192.168.77.{me} "
           f"dstport 4789 dev {dev} && ip -n {ns} addr add {ov}/24 dev vx{u} && ip -n {ns} link set vx{u} up")
    under = AfPacketCapture(f"ub{u}", FlowTable("underlay"), netns_path=topo.path(b), bpf="udp port 4789")
    over = AfPacketCapture(f"vx{u}", FlowTable("overlay"), netns_path=topo.path(b), bpf="icmp")
    under.start()
    over.start()
    try:
        sh(f"ip netns exec {a} ping -c 3 -i 0.2 -W 2 10.79.0.2")
        _wait_packets(under, 6)
        _wait_packets(over, 6)
    finally:
        under.stop()
        over.stop()
    fl = _flows(under)
    outer = [f for f in fl if f.ParentUUID == ""]
    inner = [f for f in fl if f.ParentUUID]
    assert [f.LayersPath for f in outer] == ["Ethernet/IPv4/UDP/VXLAN"]
    # the tunnel also carries the overlay's ARP and IPv6 neighbour discovery: at least the 6 pings
    assert outer[0].Network.ID == 42 and outer[0].Metric.ABPackets + outer[0].Metric.BAPackets >= 6
    assert sum(f.Metric.ABPackets + f.Metric.BAPackets for f in inner) == \
        outer[0].Metric.ABPackets + outer[0].Metric.BAPackets
    icmp = [f for f in inner if f.Application == "ICMPv4"]
    assert len(icmp) == 1 and icmp[0].ParentUUID == outer[0].UUID
    assert (icmp[0].Metric.ABPackets, icmp[0].Metric.BAPackets) == (3, 3)
    # the inner flow is the same stream as the one seen on the vxlan device itself
    ov = [f for f in _flows(over) if f.Application == "ICMPv4"]
    assert len(ov) == 1 and ov[0].TrackingID == icmp[0].TrackingID


def test_crafted_encapsulations_injected_into_a_veth(pair):
    topo, a, ia, b, ib = pair
    e = Ether(src="02:00:00:00:00:0a", dst="02:00:00:00:00:0b")
    inner = IP(src="10.1.1.1", dst="10.1.1.2") / ICMP(type=8, id=99)
    frames = {
        "gre": e / IP(src="172.16.0.1", dst="172.16.0.2") / GRE(key_present=1, key=7) / inner,
        "geneve": e / IP(src="172.16.0.1", dst="172.16.0.2") / UDP(sport=5000, dport=6081) / GENEVE(vni=66, proto=0x6558)
        / Ether(src="02:00:00:00:01:01", dst="02:00:00:00:01:02") / inner,
        "mpls": e / MPLS(label=300, s=1) / inner,
        "vlan": e / Dot1Q(vlan=123) / inner,
    }
    cap = AfPacketCapture(ib, FlowTable("n"), netns_path=topo.path(b))
    cap.start()
    try:
        for f in frames.values():
            inject_packets(ia, topo.path(a), raw_frames=[raw(f)] * 2)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and cap.table.stats.packets < 8:
            time.sleep(0.05)
    finally:
        cap.stop()
    fl = _flows(cap)
    by_path = {f.LayersPath: f for f in fl if f.Network is None or not f.Network.A.startswith("fe80")}
    gre = by_path["Ethernet/IPv4/GRE"]
    assert gre.Network.ID == 7 and gre.Metric.ABPackets == 2
    assert [(f.LayersPath, f.ICMP.ID) for f in fl if f.ParentUUID == gre.UUID] == [("IPv4/ICMPv4", 99)]
    gen = by_path["Ethernet/IPv4/UDP/Geneve"]
    assert gen.Network.ID == 66
    gen_inner = [f for f in fl if f.ParentUUID == gen.UUID]
    assert [f.LayersPath for f in gen_inner] == ["Ethernet/IPv4/ICMPv4"]
    mpls = by_path["Ethernet/MPLS"]
    assert mpls.Network.ID == 300
    assert [f.Network.A for f in fl if f.ParentUUID == mpls.UUID] == ["10.1.1.1"]
    vlan = by_path["Ethernet/Dot1Q/IPv4/ICMPv4"]
    assert vlan.Link.ID == 123 and vlan.Metric.ABPackets == 2


def test_ndpi_on_live_capture(pair):
    topo, a, ia, b, ib = pair
    pcap = str(Path(__file__).resolve().parents[1] / "data" / "eth-ip4-arp-dns-req-http-google.pcap")
    cap = AfPacketCapture(ib, FlowTable("n", ndpi=True), netns_path=topo.path(b), bpf="ip", snaplen=1600)
    cap.start()
    try:
        sh(f"ip netns exec {a} tcpreplay -q -i {ia} --pps 1000 {pcap}")
        _wait_packets(cap, 56)
    finally:
        cap.stop()
    apps = sorted(f.Application for f in _flows(cap))
    assert apps == ["DNS.Google", "DNS.Google", "HTTP.Google", "HTTP.Google"]
