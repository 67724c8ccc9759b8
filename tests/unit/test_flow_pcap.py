"""pcap import: flows from files equal tshark's conversation statistics of the same file."""

from __future__ import annotations

from pathlib import Path

import pytest
from scapy.all import ICMP, IP, TCP, UDP, Ether, wrpcap
from scapy.utils import PcapNgWriter

from netsonde.flow.pcap import PcapError, flows_from_pcap, read_pcap
from tests.integration.probe_flow_tools import tshark_conversations

PCAP = Path(__file__).resolve().parents[1] / "data" / "eth-ip4-arp-dns-req-http-google.pcap"


def flow_counts(flows, proto: str) -> dict[tuple, tuple[int, int]]:
    out = {}
    for f in flows:
        if f.Transport is None or f.Transport.Protocol != proto.upper():
            continue
        k = tuple(sorted([(f.Network.A, f.Transport.A), (f.Network.B, f.Transport.B)]))
        m = f.Metric
        out[k] = (m.ABPackets + m.BAPackets, m.ABBytes + m.BABytes)
    return out


def test_testdata_pcap_matches_tshark():
    flows = flows_from_pcap(PCAP, node_tid="pcap")
    for proto in ("tcp", "udp"):
        assert flow_counts(flows, proto) == tshark_conversations(PCAP, proto)
    apps = sorted(f.Application for f in flows)
    assert apps == ["ARP", "ARP", "DNS", "DNS", "TCP", "TCP"]
    http = [f for f in flows if f.Transport and f.Transport.B == 80]
    assert all(f.Metric.RTT > 0 and f.FinishType == "TCP_FIN" for f in http)
    assert all(f.NodeTID == "pcap" for f in flows)


def test_generated_mix_matches_tshark(tmp_path):
    import random
    rnd = random.Random(1)
    pk = []
    for i in range(400):
        a, b = f"10.0.{rnd.randrange(3)}.{rnd.randrange(1, 5)}", f"10.9.0.{rnd.randrange(1, 5)}"
        sp, dp = rnd.choice([1000, 2000, 3000]), rnd.choice([53, 80, 443])
        l4 = rnd.choice([TCP(sport=sp, dport=dp, flags="A"), UDP(sport=sp, dport=dp)])
        p = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src=a, dst=b) / l4
        if rnd.random() < 0.4:  # reverse direction
            p = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01") / IP(src=b, dst=a) / type(l4)(
                sport=dp, dport=sp)
        p = p / (b"p" * rnd.randrange(0, 400))
        p.time = 1700000000 + i / 1000
        pk.append(p)
    path = tmp_path / "mix.pcap"
    wrpcap(str(path), pk)
    flows = flows_from_pcap(path)
    for proto in ("tcp", "udp"):
        assert flow_counts(flows, proto) == tshark_conversations(path, proto)
    assert sum(f.Metric.ABPackets + f.Metric.BAPackets for f in flows) == 400


def test_pcapng_and_timestamps(tmp_path):
    p = Ether() / IP(src="1.1.1.1", dst="2.2.2.2") / ICMP()
    p.time = 1700000000.5
    path = tmp_path / "x.pcapng"
    with PcapNgWriter(str(path)) as w:
        w.write(p)
    pkts = list(read_pcap(path))
    assert len(pkts) == 1 and pkts[0][0] == 1 and pkts[0][1] == 1700000000_500_000_000
    flows = flows_from_pcap(path)
    assert flows[0].Start == 1700000000_500 and flows[0].Application == "ICMPv4"


def test_not_a_pcap_is_rejected(tmp_path):
    path = tmp_path / "bad.pcap"
    path.write_bytes(b"hello world, not a capture")
    with pytest.raises(PcapError, match="not a pcap"):
        flows_from_pcap(path)


def test_ndpi_application_names():
    from netsonde.flow.dpi import available
    assert available(), "nDPI (the nfstream wheel's engine) is not installed"
    flows = flows_from_pcap(PCAP, ndpi=True)
    apps = sorted(f.Application for f in flows)
    assert apps == ["ARP", "ARP", "DNS.Google", "DNS.Google", "HTTP.Google", "HTTP.Google"]
    dns = [f for f in flows if f.Application == "DNS.Google"][0]
    assert dns.Extra["NDPI"] == {"Protocol": "DNS.Google", "Category": "Network"}
    # the counts do not change with DPI on
    plain = {f.TrackingID: f.Metric for f in flows_from_pcap(PCAP)}
    assert {f.TrackingID: f.Metric for f in flows} == plain
