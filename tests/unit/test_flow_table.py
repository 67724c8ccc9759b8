"""Flow table on crafted frames (scapy): keys, A/B, metrics, encapsulation, bad input."""

from __future__ import annotations

from scapy.all import (DNS, DNSQR, GRE, ICMP, IP, TCP, UDP, Dot1AD, Dot1Q, Ether, ICMPv6EchoReply,
                       ICMPv6EchoRequest, IPv6, fragment, raw)
from scapy.contrib.geneve import GENEVE
from scapy.contrib.mpls import MPLS
from scapy.layers.vxlan import VXLAN

from netsonde.flow.decode import decode_ethernet
from netsonde.flow.table import FlowTable

MAC1, MAC2, MAC3 = "02:00:00:00:00:01", "02:00:00:00:00:02", "02:00:00:00:00:03"


def e12():
    return Ether(src=MAC1, dst=MAC2)


def e21():
    return Ether(src=MAC2, dst=MAC1)


def run(pkts, table=None, t0=1000):
    t = table if table is not None else FlowTable("node-1", "cap-1")
    for i, p in enumerate(pkts):
        assert t.process_frame(raw(p), t0 + i)
    return t, {f.UUID: f for f in t.updates(t0 + 5000)}


def only(flows, **kw):
    out = [f for f in flows.values() if all(getattr(f, k) == v for k, v in kw.items())]
    assert len(out) == 1, (kw, list(flows.values()))
    return out[0]


def test_icmp_echo_ab_ba_rtt_and_layers():
    req = e12() / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8, id=77, seq=1) / (b"x" * 56)
    rep = e21() / IP(src="10.0.0.2", dst="10.0.0.1") / ICMP(type=0, id=77, seq=1) / (b"x" * 56)
    t, flows = run([req, rep, req, rep])
    assert len(flows) == 1
    f = only(flows)
    assert f.LayersPath == "Ethernet/IPv4/ICMPv4" and f.Application == "ICMPv4"
    assert (f.Link.A, f.Link.B) == (MAC1, MAC2)
    assert (f.Network.Protocol, f.Network.A, f.Network.B) == ("IPV4", "10.0.0.1", "10.0.0.2")
    assert (f.ICMP.Type, f.ICMP.Code, f.ICMP.ID) == ("ECHO", 0, 77)
    m = f.Metric
    assert (m.ABPackets, m.ABBytes, m.BAPackets, m.BABytes) == (2, 196, 2, 196)
    assert (m.Start, m.Last) == (1000, 1003)
    assert m.RTT == 1_000_000  # 1 ms between request and reply, in ns
    assert f.NodeTID == "node-1" and f.CaptureID == "cap-1" and f.ParentUUID == ""
    assert len(f.UUID) == 16 and len(f.TrackingID) == 16 and f.TrackingID != f.L3TrackingID


def test_different_icmp_ids_are_different_flows():
    pk = [e12() / IP(src="10.0.0.1", dst="10.0.0.2") / ICMP(type=8, id=i) for i in (1, 2, 3)]
    _, flows = run(pk)
    assert sorted(f.ICMP.ID for f in flows.values()) == [1, 2, 3]


def test_tracking_id_same_at_every_capture_point_uuid_differs():
    pk = [e12() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=4000, dport=5000) / b"hello"]
    _, a = run(pk, FlowTable("veth-a"))
    # the same stream seen on another node, in the other order of arrival and later
    _, b = run(pk, FlowTable("bridge"), t0=2000)
    fa, fb = only(a), only(b)
    assert fa.TrackingID == fb.TrackingID and fa.L3TrackingID == fb.L3TrackingID
    assert fa.UUID != fb.UUID


def test_tracking_id_direction_independent():
    ab = e12() / IP(src="10.0.0.1", dst="10.0.0.2") / TCP(sport=1000, dport=80, flags="S")
    ba = e21() / IP(src="10.0.0.2", dst="10.0.0.1") / TCP(sport=80, dport=1000, flags="SA")
    _, f1 = run([ab])
    _, f2 = run([ba])
    assert only(f1).TrackingID == only(f2).TrackingID


def test_l3_tracking_id_survives_l2_rewrite_and_vlan_tagging():
    ip = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2)
    _, f1 = run([Ether(src=MAC1, dst=MAC2) / ip])
    _, f2 = run([Ether(src=MAC3, dst=MAC2) / Dot1Q(vlan=7) / ip])
    a, b = only(f1), only(f2)
    assert a.L3TrackingID == b.L3TrackingID
    assert a.TrackingID != b.TrackingID
    assert b.Link.ID == 7 and b.LayersPath == "Ethernet/Dot1Q/IPv4/UDP"


def test_layer_key_mode_l3_merges_l2_variants():
    ip = IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2)
    t = FlowTable("n", layer_key_mode="L3")
    _, flows = run([Ether(src=MAC1, dst=MAC2) / ip, Ether(src=MAC3, dst=MAC2) / ip], t)
    f = only(flows)
    assert f.Metric.ABPackets == 2 and f.TrackingID == f.L3TrackingID


def test_qinq_link_id_packs_vlans():
    p = e12() / Dot1AD(vlan=10) / Dot1Q(vlan=20) / IP(src="1.1.1.1", dst="2.2.2.2") / ICMP()
    _, flows = run([p])
    f = only(flows)
    assert f.Link.ID == (10 << 12) | 20
    assert f.LayersPath == "Ethernet/Dot1Q/Dot1Q/IPv4/ICMPv4"


def test_tcp_metrics_rtt_and_fin():
    c = e12() / IP(src="10.0.0.1", dst="10.0.0.2", ttl=64)
    s = e21() / IP(src="10.0.0.2", dst="10.0.0.1", ttl=63)
    pk = [c / TCP(sport=5555, dport=80, flags="S"), s / TCP(sport=80, dport=5555, flags="SA"),
          c / TCP(sport=5555, dport=80, flags="A"), c / TCP(sport=5555, dport=80, flags="PA") / b"GET /",
          s / TCP(sport=80, dport=5555, flags="FA"), c / TCP(sport=5555, dport=80, flags="FA")]
    t = FlowTable("n", extra_tcp_metric=True)
    _, flows = run(pk, t)
    f = only(flows)
    assert f.Transport.Protocol == "TCP" and (f.Transport.A, f.Transport.B) == (5555, 80)
    assert f.Metric.ABPackets == 4 and f.Metric.BAPackets == 2
    assert f.Metric.RTT == 1_000_000
    tm = f.TCPMetric
    assert (tm.ABSynStart, tm.BASynStart, tm.ABSynTTL, tm.BASynTTL) == (1000, 1001, 64, 63)
    assert (tm.BAFinStart, tm.ABFinStart) == (1004, 1005)
    assert f.FinishType == "TCP_FIN"


def test_tcp_rst_finishes():
    _, flows = run([e12() / IP(src="1.0.0.1", dst="1.0.0.2") / TCP(flags="R")])
    assert only(flows).FinishType == "TCP_RST"


def test_dns_application_and_udp():
    p = e12() / IP(src="10.0.0.1", dst="8.8.8.8") / UDP(sport=3333, dport=53) / DNS(qd=DNSQR(qname="x.org"))
    _, flows = run([p])
    f = only(flows)
    assert f.Application == "DNS" and f.LayersPath == "Ethernet/IPv4/UDP/DNS"


def test_ipv6_echo():
    pk = [e12() / IPv6(src="fd00::1", dst="fd00::2") / ICMPv6EchoRequest(id=9),
          e21() / IPv6(src="fd00::2", dst="fd00::1") / ICMPv6EchoReply(id=9)]
    _, flows = run(pk)
    f = only(flows)
    assert f.LayersPath == "Ethernet/IPv6/ICMPv6/ICMPv6Echo"
    assert (f.Network.Protocol, f.Network.A) == ("IPV6", "fd00::1")
    assert f.ICMP.Type == "ECHO" and f.ICMP.ID == 9 and f.Metric.BAPackets == 1


def _inner():
    return Ether(src=MAC1, dst=MAC2) / IP(src="10.1.0.1", dst="10.1.0.2") / ICMP(type=8, id=5)


def test_vxlan_outer_and_inner_linked_by_parent_uuid():
    outer = Ether(src=MAC3, dst=MAC2) / IP(src="192.168.0.1", dst="192.168.0.2") / UDP(sport=41000, dport=4789)
    pk = outer / VXLAN(vni=42) / _inner()
    _, flows = run([pk])
    o = only(flows, ParentUUID="")
    i = only(flows, ParentUUID=o.UUID)
    assert o.LayersPath == "Ethernet/IPv4/UDP/VXLAN" and o.Network.ID == 42
    assert i.LayersPath == "Ethernet/IPv4/ICMPv4" and i.Network.A == "10.1.0.1"
    # the inner flow's TrackingID equals that of the same packet seen un-encapsulated elsewhere
    _, plain = run([_inner()])
    assert only(plain).TrackingID == i.TrackingID
    # outer flows with a varying source port (per inner flow hash) stay one flow per VNI
    _, again = run([outer / VXLAN(vni=42) / _inner(),
                    Ether(src=MAC3, dst=MAC2) / IP(src="192.168.0.1", dst="192.168.0.2")
                    / UDP(sport=41999, dport=4789) / VXLAN(vni=42) / _inner()])
    assert only(again, ParentUUID="").Metric.ABPackets == 2


def test_gre_with_key_and_inner_ip():
    pk = e12() / IP(src="192.168.0.1", dst="192.168.0.2") / GRE(key_present=1, key=1234) / _inner()[IP]
    _, flows = run([pk])
    o = only(flows, ParentUUID="")
    i = only(flows, ParentUUID=o.UUID)
    assert o.LayersPath == "Ethernet/IPv4/GRE" and o.Network.ID == 1234
    assert i.LayersPath == "IPv4/ICMPv4" and i.Link is None


def test_gretap_inner_ethernet():
    pk = e12() / IP(src="192.168.0.1", dst="192.168.0.2") / GRE(proto=0x6558) / _inner()
    _, flows = run([pk])
    o = only(flows, ParentUUID="")
    i = only(flows, ParentUUID=o.UUID)
    assert i.LayersPath == "Ethernet/IPv4/ICMPv4" and i.Link.A == MAC1


def test_gre_mpls_splits_at_mpls():
    pk = (e12() / IP(src="192.168.0.1", dst="192.168.0.2") / GRE(proto=0x8847) / MPLS(label=100, s=1)
          / _inner()[IP])
    _, flows = run([pk])
    o = only(flows, ParentUUID="")
    i = only(flows, ParentUUID=o.UUID)
    assert o.LayersPath == "Ethernet/IPv4/GRE/MPLS"
    assert i.LayersPath == "IPv4/ICMPv4"


def test_mpls_over_ethernet_label_stack():
    pk = e12() / MPLS(label=16, s=0) / MPLS(label=17, s=1) / _inner()[IP]
    _, flows = run([pk])
    o = only(flows, ParentUUID="")
    i = only(flows, ParentUUID=o.UUID)
    assert o.LayersPath == "Ethernet/MPLS" and o.Network.ID == 16
    assert i.Network.A == "10.1.0.1"


def test_geneve():
    pk = (e12() / IP(src="192.168.0.1", dst="192.168.0.2") / UDP(sport=1234, dport=6081)
          / GENEVE(vni=77, proto=0x6558) / _inner())
    _, flows = run([pk])
    o = only(flows, ParentUUID="")
    i = only(flows, ParentUUID=o.UUID)
    assert o.LayersPath == "Ethernet/IPv4/UDP/Geneve" and o.Network.ID == 77
    assert i.LayersPath == "Ethernet/IPv4/ICMPv4"


def test_ip_fragments_attributed_to_first_fragment_flow():
    big = IP(src="10.0.0.1", dst="10.0.0.2", id=999) / UDP(sport=7, dport=9) / (b"z" * 3000)
    frags = [e12() / f for f in fragment(big, fragsize=1000)]
    _, flows = run(frags)
    f = only(flows)
    assert f.Metric.ABPackets == len(frags) == 4 and f.IPMetric.Fragments == 4
    assert f.Metric.ABBytes == sum(len(raw(p)) for p in frags)


def test_bad_input_is_counted_never_raises():
    t = FlowTable("n")
    good = raw(e12() / IP(src="1.1.1.1", dst="2.2.2.2") / TCP())
    assert not t.process_frame(b"", 1)
    assert not t.process_frame(b"\x01" * 13, 1)
    assert not t.process_frame(good[:30], 1)  # IPv4 header cut
    assert not t.process_frame(good[:14] + b"\x45" + good[15:20], 1)
    bad_ihl = bytearray(good)
    bad_ihl[14] = 0x41
    assert not t.process_frame(bytes(bad_ihl), 1)
    assert t.process_frame(raw(e12() / b"\x99\x99unknown-ethertype"), 1)  # unknown protocol: a flow, not an error
    assert t.stats.decode_errors == {"truncated": 4, "malformed": 1}
    assert t.stats.bad_packets == 5
    f = t.updates(10)[0]
    assert f.LayersPath == "Ethernet/Unknown"


def test_fuzz_random_bytes_never_raise():
    import random
    rnd = random.Random(5)
    base = [raw(_inner()), raw(e12() / IP(src="192.168.0.1", dst="192.168.0.2") / UDP(dport=4789) / VXLAN()
                               / _inner())]
    t = FlowTable("n")
    for i in range(3000):
        b = bytearray(rnd.choice(base))
        for _ in range(rnd.randint(1, 6)):
            b[rnd.randrange(len(b))] = rnd.randrange(256)
        b = b[: rnd.randint(0, len(b))]
        t.process_frame(bytes(b), i)
    assert t.stats.packets + t.stats.bad_packets == 3000


def test_updates_deltas_and_expiry():
    t = FlowTable("n", expire_ms=10_000)
    p = raw(e12() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2))
    t.process_frame(p, 1000)
    t.process_frame(p, 1500)
    u1 = t.updates(2000)
    assert len(u1) == 1 and u1[0].LastUpdateMetric.ABPackets == 2
    assert t.updates(3000) == []  # untouched: nothing to send
    t.process_frame(p, 3500)
    u2 = t.updates(4000)
    assert u2[0].LastUpdateMetric.ABPackets == 1 and u2[0].Metric.ABPackets == 3
    assert (u2[0].LastUpdateMetric.Start, u2[0].LastUpdateMetric.Last) == (3000, 4000)
    exp = t.updates(20_000)
    assert len(exp) == 1 and exp[0].FinishType == "TIMEOUT" and exp[0].LastUpdateMetric.ABPackets == 0
    assert len(t) == 0 and t.stats.flows_expired == 1


def test_dns_early_expiry_and_finished_hold():
    t = FlowTable("n", finished_hold_ms=1000)
    t.process_frame(raw(e12() / IP(src="1.0.0.1", dst="1.0.0.2") / UDP(sport=9, dport=53) / DNS()), 0)
    t.process_frame(raw(e12() / IP(src="1.0.0.1", dst="1.0.0.2") / TCP(flags="R")), 0)
    t.updates(500)
    assert len(t) == 2
    t.updates(1500)
    assert len(t) == 1  # the reset TCP flow is gone after the hold time
    assert [f.Application for f in t.updates(11_000)] == ["DNS"]
    assert len(t) == 0


def test_sampling_rate_scales_counts():
    t = FlowTable("n")
    p = raw(e12() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2))
    t.process_frame(p, 1, sampling_rate=100)
    f = t.updates(2)[0]
    assert f.Metric.ABPackets == 100 and f.Metric.ABBytes == 100 * len(p) and f.SamplingRate == 100


def test_max_entries_drops_and_counts():
    t = FlowTable("n", max_entries=2)
    for i in range(5):
        t.process_frame(raw(e12() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=i, dport=2)), 1)
    assert len(t) == 2 and t.stats.flows_dropped == 3


def test_raw_packets_kept_up_to_limit():
    t = FlowTable("n", raw_packet_limit=3)
    p = raw(e12() / IP(src="10.0.0.1", dst="10.0.0.2") / UDP(sport=1, dport=2))
    for i in range(5):
        t.process_frame(p, i)
    f = t.updates(10)[0]
    assert f.RawPacketsCaptured == 3 and [r.Data for r in f.LastRawPackets] == [p] * 3


def test_decode_reports_lengths_per_segment():
    pk = raw(e12() / IP(src="192.168.0.1", dst="192.168.0.2") / UDP(dport=4789) / VXLAN(vni=1) / _inner())
    segs = decode_ethernet(pk)
    assert [s.length for s in segs] == [len(pk), len(pk) - 50]
