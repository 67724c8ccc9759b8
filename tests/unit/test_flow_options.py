"""Capture options in the flow table, on packets crafted with scapy: IPDefrag (IPv4 and IPv6, out of order,
timeouts, bounds), ReassembleTCP (Skydive's TCPMetric reassembly fields, DNS over TCP) and ExtraLayers
(DNS, DHCPv4, VRRPv2 fields as Skydive fills them)."""

from __future__ import annotations

import pytest
from scapy.layers.dhcp import BOOTP, DHCP
from scapy.layers.dns import DNS, DNSQR, DNSRR
from scapy.layers.inet import ICMP, IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrFragment, fragment6
from scapy.layers.l2 import Ether
from scapy.layers.vrrp import VRRP

from netsonde.flow import applayers
from netsonde.flow.defrag import IPDefragmenter
from netsonde.flow.table import FlowTable

MAC_A, MAC_B = "02:00:00:00:00:0a", "02:00:00:00:00:0b"
T0 = 1_700_000_000_000_000_000


def eth(pkt) -> Ether:
    return Ether(src=MAC_A, dst=MAC_B) / pkt


def feed(table: FlowTable, pkts, start_ns: int = T0, step_ns: int = 1_000_000) -> None:
    table.process_frames([(bytes(p), start_ns + i * step_ns, len(bytes(p))) for i, p in enumerate(pkts)])


def only(flows):
    assert len(flows) == 1, flows
    return flows[0]


# --- IPDefrag -------------------------------------------------------------------------------------------
def ping_fragments() -> list:
    big = IP(src="10.0.0.1", dst="10.0.0.2", id=4242) / ICMP(type=8, id=7, seq=1) / (b"x" * 3000)
    frags = fragment(big, fragsize=1480)
    assert len(frags) == 3
    return [eth(f) for f in frags]


def test_ipv4_fragments_reassembled_into_one_packet() -> None:
    t = FlowTable("n", ip_defrag=True)
    feed(t, ping_fragments())
    f = only(t.flush())
    assert f.LayersPath == "Ethernet/IPv4/ICMPv4"
    assert f.ICMP.Type == "ECHO" and f.ICMP.ID == 7
    assert (f.Metric.ABPackets, f.Metric.ABBytes) == (1, 14 + 20 + 8 + 3000)
    assert f.IPMetric.Fragments == 3 and f.IPMetric.FragmentErrors == 0
    assert t.stats.events == {"defrag_reassembled": 1}


def test_fragments_cut_by_the_snap_length_still_reassemble() -> None:
    t = FlowTable("n", ip_defrag=True)
    t.process_frames([(bytes(p)[:128], T0 + i, len(bytes(p))) for i, p in enumerate(ping_fragments())])
    f = only(t.flush())
    assert f.LayersPath == "Ethernet/IPv4/ICMPv4" and f.ICMP.ID == 7
    assert (f.Metric.ABPackets, f.Metric.ABBytes) == (1, 3042)
    assert f.IPMetric.Fragments == 3


def test_without_defrag_each_fragment_counts() -> None:
    t = FlowTable("n")
    feed(t, ping_fragments())
    f = only(t.flush())
    assert f.Metric.ABPackets == 3 and f.IPMetric.Fragments == 3


def test_ipv4_fragments_out_of_order_and_duplicated() -> None:
    frags = ping_fragments()
    t = FlowTable("n", ip_defrag=True)
    feed(t, [frags[2], frags[1], frags[1], frags[0]])
    f = only(t.flush())
    assert (f.Metric.ABPackets, f.Metric.ABBytes) == (1, 3042)
    assert f.IPMetric.Fragments == 4  # every fragment seen, the duplicate included


def test_ipv6_fragments_reassembled() -> None:
    pkt = IPv6(src="fd00::1", dst="fd00::2") / IPv6ExtHdrFragment(id=99) / UDP(sport=5000, dport=6000) / (b"y" * 3000)
    frags = [eth(f) for f in fragment6(pkt, 1280)]
    assert len(frags) == 3
    t = FlowTable("n", ip_defrag=True)
    feed(t, frags)
    f = only(t.flush())
    assert f.LayersPath == "Ethernet/IPv6/UDP"
    assert (f.Transport.A, f.Transport.B) == (5000, 6000)
    assert (f.Metric.ABPackets, f.Metric.ABBytes) == (1, 14 + 40 + 8 + 3000)
    assert f.IPMetric.Fragments == 3


def test_incomplete_datagram_times_out_and_its_fragments_still_count() -> None:
    frags = ping_fragments()
    t = FlowTable("n", ip_defrag=True)
    feed(t, frags[:2])
    assert t.updates(T0 // 1_000_000 + 1000) == []  # held, nothing to report yet
    flows = t.updates(T0 // 1_000_000 + 31_000)  # past the 30 s reassembly timeout
    assert t.stats.events == {"defrag_timeouts": 1}
    f = only(flows)
    assert f.Metric.ABPackets == 2 and f.IPMetric.Fragments == 2


def test_defragmenter_memory_is_bounded() -> None:
    d = IPDefragmenter(max_datagrams=2)
    for ident in (1, 2, 3):
        first = fragment(IP(src="10.0.0.1", dst="10.0.0.2", id=ident) / ICMP() / (b"z" * 3000), fragsize=1480)[0]
        assert d.feed(bytes(eth(first)), T0, len(eth(first))) is None
    assert (len(d.pending), d.evicted, len(d.given_up)) == (2, 1, 1)
    d = IPDefragmenter(max_bytes=4000)
    for ident in (1, 2, 3):
        first = fragment(IP(src="10.0.0.1", dst="10.0.0.2", id=ident) / ICMP() / (b"z" * 3000), fragsize=1480)[0]
        d.feed(bytes(eth(first)), T0, 0)
    assert d.held_bytes <= 4000 and d.evicted == 2


def test_conflicting_overlap_is_an_error() -> None:
    frags = ping_fragments()
    bad = frags[1].copy()
    bad[IP].remove_payload()
    bad = bad / (b"Q" * 1480)
    bad[IP].len = None
    bad[IP].chksum = None
    bad[IP].proto = 1
    t = FlowTable("n", ip_defrag=True)
    feed(t, [frags[1], bad])
    assert t.stats.events == {"defrag_errors": 1}
    f = only(t.flush())
    assert f.Metric.ABPackets == 2  # given up: counted as the fragments they are


# --- ReassembleTCP --------------------------------------------------------------------------------------
def tcp_session(payloads_ab: list[bytes], order: list[int] | None = None, dport: int = 8080) -> list:
    a, b = dict(src="10.0.0.1", dst="10.0.0.2"), dict(src="10.0.0.2", dst="10.0.0.1")
    pkts = [eth(IP(**a) / TCP(sport=40000, dport=dport, flags="S", seq=1000)),
            Ether(src=MAC_B, dst=MAC_A) / IP(**b) / TCP(sport=dport, dport=40000, flags="SA", seq=5000, ack=1001),
            eth(IP(**a) / TCP(sport=40000, dport=dport, flags="A", seq=1001, ack=5001))]
    seq = 1001
    data = []
    for p in payloads_ab:
        data.append(eth(IP(**a) / TCP(sport=40000, dport=dport, flags="PA", seq=seq, ack=5001) / p))
        seq += len(p)
    for i in order or range(len(data)):
        pkts.append(data[i])
    pkts.append(eth(IP(**a) / TCP(sport=40000, dport=dport, flags="FA", seq=seq, ack=5001)))
    return pkts


def test_tcp_reassembly_counts_in_order_out_of_order() -> None:
    t = FlowTable("n", reassemble_tcp=True)
    feed(t, tcp_session([b"a" * 100, b"b" * 200, b"c" * 300], order=[0, 2, 1]))
    f = only(t.flush())
    m = f.TCPMetric
    assert f.Metric.ABPackets == 6 and f.Metric.BAPackets == 1
    assert (m.ABPackets, m.ABBytes, m.ABSegmentOutOfOrder, m.ABSegmentSkipped) == (3, 600, 1, 0)
    assert (m.ABSawStart, m.ABSawEnd, m.BASawStart, m.BASawEnd) == (1, 1, 1, 0)
    assert (m.BAPackets, m.BABytes) == (0, 0)


def test_tcp_reassembly_skips_a_gap_when_the_buffer_is_full() -> None:
    t = FlowTable("n", reassemble_tcp=True)
    t._opts.streams.max_buffer = 250
    feed(t, tcp_session([b"a" * 100, b"b" * 200, b"c" * 300], order=[1, 2]))  # the first segment is lost
    m = only(t.flush()).TCPMetric
    assert (m.ABSegmentOutOfOrder, m.ABSegmentSkipped, m.ABSegmentSkippedBytes) == (2, 1, 100)
    assert (m.ABPackets, m.ABBytes) == (2, 500)
    assert t.stats.events.get("tcp_buffer_overflows") == 1


def test_dns_over_tcp_through_reassembly() -> None:
    msg = bytes(DNS(id=77, rd=1, qd=DNSQR(qname="split.example.org", qtype="AAAA")))
    framed = len(msg).to_bytes(2, "big") + msg
    t = FlowTable("n", reassemble_tcp=True, extra_layers=applayers.DNS)
    feed(t, tcp_session([framed[:7], framed[7:]], order=[1, 0], dport=53))
    f = only(t.flush())
    assert f.Extra["DNS"]["ID"] == 77
    assert f.Extra["DNS"]["questions"] == [{"name": "split.example.org", "type": "AAAA", "class": "IN"}]


# --- ExtraLayers ----------------------------------------------------------------------------------------
def dns_exchange() -> list:
    q = eth(IP(src="10.0.0.1", dst="10.0.0.53") / UDP(sport=33333, dport=53)
            / DNS(id=4660, rd=1, qd=DNSQR(qname="www.example.com", qtype="A")))
    r = Ether(src=MAC_B, dst=MAC_A) / IP(src="10.0.0.53", dst="10.0.0.1") / UDP(sport=53, dport=33333) / DNS(
        id=4660, qr=1, rd=1, ra=1, qd=DNSQR(qname="www.example.com", qtype="A"),
        an=[DNSRR(rrname="www.example.com", type="A", ttl=300, rdata="93.184.216.34"),
            DNSRR(rrname="www.example.com", type="CNAME", ttl=60, rdata="edge.example.net")])
    return [q, r]


def test_dns_fields_as_skydive() -> None:
    t = FlowTable("n", extra_layers=applayers.DNS)
    feed(t, dns_exchange())
    f = only(t.flush())
    assert f.Application == "DNS"
    d = f.Extra["DNS"]
    assert (d["ID"], d["QR"], d["RD"], d["RA"], d["op_code"], d["response_code"]) == \
        (4660, True, True, True, "Query", "No Error")
    assert (d["q_d_count"], d["a_n_count"]) == (1, 2)
    assert d["questions"] == [{"name": "www.example.com", "type": "A", "class": "IN"}]
    assert d["answers"][0] == {"name": "www.example.com", "type": "A", "class": "IN", "TTL": 300, "data_length": 4,
                               "IP": "93.184.216.34"}
    assert d["answers"][1]["c_name"] == "edge.example.net"
    assert d["timestamp"] == {"seconds": (T0 + 1_000_000) // 10**9, "nanos": (T0 + 1_000_000) % 10**9}


def test_extra_layers_off_or_other_bits_leave_dns_alone() -> None:
    for mask in (0, applayers.VRRP | applayers.DHCPV4):
        t = FlowTable("n", extra_layers=mask)
        feed(t, dns_exchange())
        assert "DNS" not in only(t.flush()).Extra


def test_dhcpv4_fields() -> None:
    disc = Ether(src=MAC_A, dst="ff:ff:ff:ff:ff:ff") / IP(src="0.0.0.0", dst="255.255.255.255") / UDP(
        sport=68, dport=67) / BOOTP(chaddr=bytes.fromhex("02000000000a"), xid=0xABCD, secs=3, flags=0x8000,
                                    sname=b"boot-server") / DHCP(options=[("message-type", "discover"), "end"])
    t = FlowTable("n", extra_layers=applayers.DHCPV4)
    feed(t, [disc])
    f = only(t.flush())
    assert f.Application == "DHCPv4"
    assert f.Extra["DHCPv4"] == {"hardware_len": 6, "xid": 0xABCD, "secs": 3, "flags": 0x8000,
                                 "server_name": "boot-server"}


def test_vrrpv2_fields() -> None:
    adv = Ether(src="00:00:5e:00:01:05", dst="01:00:5e:00:00:12") / IP(src="10.0.0.1", dst="224.0.0.18", ttl=255) \
        / VRRP(vrid=5, priority=200, adv=1, addrlist=["10.0.0.254"])
    t = FlowTable("n", extra_layers=applayers.ALL)
    feed(t, [adv, adv])
    f = only(t.flush())
    assert f.LayersPath == "Ethernet/IPv4/VRRPv2"
    assert f.Extra["VRRPv2"] == {"version": 2, "virtual_rtrID": 5, "priority": 200, "count_ipaddr": 1,
                                 "adver_int": 1}


def test_bad_dns_payload_is_counted_not_raised() -> None:
    junk = eth(IP(src="10.0.0.1", dst="10.0.0.53") / UDP(sport=1234, dport=53) / (b"\x12\x34\x01\x00\x00\x05" + b"\xff" * 9))
    t = FlowTable("n", extra_layers=applayers.DNS)
    feed(t, [junk])
    f = only(t.flush())
    assert "DNS" not in f.Extra and f.Metric.ABPackets == 1
    assert t.stats.events == {"layer_errors": 1}


def test_extra_layers_values() -> None:
    assert applayers.parse_extra_layers(["DNS", "VRRP"]) == 3
    assert applayers.parse_extra_layers("DNS|DHCPv4") == 6
    assert applayers.parse_extra_layers(255) == 255
    with pytest.raises(ValueError, match="unknown extra layer 'SIP'"):
        applayers.parse_extra_layers("SIP")
    with pytest.raises(ValueError):
        applayers.parse_extra_layers(256)


def test_options_off_keep_the_fast_path() -> None:
    t = FlowTable("n")
    assert t._opts is None and t._per_frame is (t._acc is None)
    assert FlowTable("n", extra_layers=2)._per_frame


def test_tcp_reassembly_of_skydive_test_pcap_matches_tshark_follow() -> None:
    """Payload bytes per direction equal `tshark -z follow,tcp,raw,N` on the file: (112, 488), (147, 19884)."""
    from pathlib import Path

    from netsonde.flow.pcap import flows_from_pcap

    pcap = Path(__file__).resolve().parents[1] / "data" / "eth-ip4-arp-dns-req-http-google.pcap"
    flows = flows_from_pcap(pcap, table=FlowTable("n", reassemble_tcp=True))
    tcp = sorted((f.TCPMetric.ABBytes, f.TCPMetric.BABytes, f.TCPMetric.ABSawStart, f.TCPMetric.BASawEnd)
                 for f in flows if f.Application == "TCP")
    assert tcp == [(112, 488, 1, 1), (147, 19884, 1, 1)]
