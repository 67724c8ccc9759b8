"""The collector core: samples -> flows (probe-flow's FlowTable, scaled counts) and counter samples -> metrics."""

from __future__ import annotations

import struct
from collections import Counter

from netsonde.common.bus import decode, encode
from netsonde.common.bus.metrics import InterfaceMetricsBatch
from netsonde.flow.table import FlowTable
from netsonde.flow.sflow import collector as collector_mod
from netsonde.flow.sflow.collector import PortInfo, SFlowCollector, fallback_tid
from netsonde.flow.sflow.decode import FlowSample, RawPacketHeader, decode_datagram
from netsonde.ovs_sflow_collector.ovs import bridge_tid, port_tid

from tests.unit.test_sflow_decode import (
    DATAGRAMS, ETH_ICMP, counter_sample, datagram, flow_sample, generic_counters, record, u32,
)

TS = 1_700_000_000_000


def raw_record(frame: bytes, frame_length: int) -> bytes:
    return record(1, u32(1, frame_length, 4, len(frame)) + frame + b"\0" * (-len(frame) % 4))


def expected_totals(datagrams: list[bytes]) -> tuple[int, int]:
    packets = nbytes = 0
    for data in datagrams:
        for s in decode_datagram(data).samples:
            if isinstance(s, FlowSample):
                raw = next(r for r in s.records if isinstance(r, RawPacketHeader))
                packets += s.sampling_rate
                nbytes += s.sampling_rate * (raw.frame_length - raw.stripped)
    return packets, nbytes


def run(c: SFlowCollector, datagrams: list[bytes], batch: int = 20) -> list:  # type: ignore[type-arg]
    flows = []
    for i, data in enumerate(datagrams):
        assert c.feed(data, "127.0.0.1", TS)
        if i % batch == batch - 1:
            c.process(TS)
    c.process(TS)
    flows.extend(c.updates(TS + 1000))
    return flows


def totals(flows: list) -> tuple[int, int]:  # type: ignore[type-arg]
    return (sum(f.Metric.ABPackets + f.Metric.BAPackets for f in flows),
            sum(f.Metric.ABBytes + f.Metric.BABytes for f in flows))


def test_real_datagrams_to_flows_counts_every_sample() -> None:
    c = SFlowCollector()
    flows = run(c, DATAGRAMS)
    assert totals(flows) == expected_totals(DATAGRAMS)
    assert c.stats["127.0.0.1"].flow_samples == sum(
        isinstance(s, FlowSample) for d in DATAGRAMS for s in decode_datagram(d).samples)
    paths = Counter(f.LayersPath for f in flows)
    assert any(p.startswith("Ethernet/IPv4/TCP") for p in paths)
    assert any(p.startswith("Ethernet/IPv6") for p in paths)
    assert all(f.SamplingRate == 1 for f in flows)
    # samples of an agent with no known port go to one table per agent, with the documented fallback TID
    assert {f.NodeTID for f in flows} == {fallback_tid("127.0.0.1")}


def test_same_flow_logic_as_probe_flow() -> None:
    """Each sample through FlowTable.process_frame one by one gives the same flows (UUID, TrackingID, counts)."""
    c = SFlowCollector()
    flows = run(c, DATAGRAMS, batch=len(DATAGRAMS))
    t = FlowTable(fallback_tid("127.0.0.1"))
    for data in DATAGRAMS:
        for s in decode_datagram(data).samples:
            if isinstance(s, FlowSample):
                raw = next(r for r in s.records if isinstance(r, RawPacketHeader))
                assert t.process_frame(raw.header, TS, raw.frame_length - raw.stripped, s.sampling_rate)
    ref = t.updates(TS + 1000)

    def view(fl: list) -> set:  # type: ignore[type-arg]
        return {(f.UUID, f.TrackingID, f.L3TrackingID, f.NodeTID, f.LayersPath, f.Metric.ABPackets,
                 f.Metric.BAPackets, f.Metric.ABBytes, f.Metric.BABytes, f.Link.A if f.Link else "",
                 f.Network.A if f.Network else "") for f in fl}
    assert view(flows) == view(ref)


BR0, BR1 = "3c0f8a7e-0000-4000-8000-0000000000b0", "3c0f8a7e-0000-4000-8000-0000000000b1"
REPLY = ETH_ICMP[6:12] + ETH_ICMP[0:6] + ETH_ICMP[12:26] + ETH_ICMP[30:34] + ETH_ICMP[26:30] + b"\0" \
    + ETH_ICMP[35:]


def bridge_ports() -> dict[int, PortInfo]:
    """ifIndex 5, 6 on br0; 7, 8 on br1 (the two ends of a path through both bridges)."""
    out = {}
    for ifx, bridge in ((5, BR0), (6, BR0), (7, BR1), (8, BR1)):
        out[ifx] = PortInfo(bridge_tid("h1", bridge), "cap-1", f"p{ifx}", "br" + bridge[-1], ifx - 3,
                            port_tid=port_tid("h1", f"3c0f8a7e-0000-4000-8000-00000000000{ifx}"))
    return out


def test_counts_scaled_by_sampling_rate_and_keyed_per_bridge() -> None:
    """Requests enter br0 by port 5, replies by port 6: one flow on the bridge with both directions."""
    ports = bridge_ports()
    c = SFlowCollector(lambda agent, ifx: ports.get(ifx) if agent == "192.0.2.9" else None)
    dgs = [datagram("192.0.2.9", [flow_sample([raw_record(ETH_ICMP, 102)], rate=64, inp=5, outp=6)] * 3
                    + [flow_sample([raw_record(REPLY, 102)], rate=64, inp=6, outp=5)], seq=i) for i in range(5)]
    flows = run(c, dgs, batch=2)
    assert len(flows) == 1
    f = flows[0]
    assert (f.NodeTID, f.CaptureID, f.SamplingRate) == (bridge_tid("h1", BR0), "cap-1", 64)
    assert (f.Metric.ABPackets, f.Metric.BAPackets) == (5 * 3 * 64, 5 * 64)
    assert (f.Metric.ABBytes, f.Metric.BABytes) == (5 * 3 * 64 * 98, 5 * 64 * 98)
    assert f.ICMP is not None and f.ICMP.Type == "ECHO" and f.Network is not None and f.Network.A == "10.98.0.1"
    assert c.unresolved == 0 and len(c.tables) == 1


def test_two_bridges_give_two_flows_with_one_tracking_id() -> None:
    """A ping crossing br0 (ports 5, 6) and br1 (ports 7, 8): one flow per bridge, same TrackingID, own UUID."""
    ports = bridge_ports()
    c = SFlowCollector(lambda agent, ifx: ports.get(ifx))
    samples = []
    for inp, outp in ((5, 6), (7, 8)):  # the request enters each bridge
        samples.append(flow_sample([raw_record(ETH_ICMP, 102)], rate=1, inp=inp, outp=outp))
    for inp, outp in ((8, 7), (6, 5)):  # the reply comes back
        samples.append(flow_sample([raw_record(REPLY, 102)], rate=1, inp=inp, outp=outp))
    flows = run(c, [datagram("192.0.2.9", samples * 5)])
    assert len(flows) == 2
    assert {f.NodeTID for f in flows} == {bridge_tid("h1", BR0), bridge_tid("h1", BR1)}
    assert len({f.TrackingID for f in flows}) == 1 and len({f.UUID for f in flows}) == 2
    assert all((f.Metric.ABPackets, f.Metric.BAPackets, f.Metric.ABBytes, f.Metric.BABytes) == (5, 5, 490, 490)
               for f in flows)


def test_vlan_tag_on_one_bridge_keeps_the_l3_tracking_id() -> None:
    """The same ping tagged (VLAN 10) on br0 and untagged on br1: L3TrackingID is one, TrackingID differs."""
    ports = bridge_ports()
    c = SFlowCollector(lambda agent, ifx: ports.get(ifx))
    tagged = ETH_ICMP[:12] + bytes.fromhex("8100000a") + ETH_ICMP[12:]
    flows = run(c, [datagram("192.0.2.9", [flow_sample([raw_record(tagged, 106)], rate=1, inp=5, outp=6),
                                           flow_sample([raw_record(ETH_ICMP, 102)], rate=1, inp=7, outp=8)])])
    by_tid = {f.NodeTID: f for f in flows}
    one, two = by_tid[bridge_tid("h1", BR0)], by_tid[bridge_tid("h1", BR1)]
    assert one.L3TrackingID == two.L3TrackingID and one.TrackingID != two.TrackingID
    assert one.Link is not None and one.Link.ID == 10 and (one.Metric.ABBytes, two.Metric.ABBytes) == (102, 98)


def test_frames_from_the_bridge_port_go_by_output_port() -> None:
    """An input the collector cannot resolve (e.g. a patch port) with a known single output port."""
    ports = bridge_ports()
    c = SFlowCollector(lambda agent, ifx: ports.get(ifx))
    flows = run(c, [datagram("192.0.2.9", [flow_sample([raw_record(ETH_ICMP, 102)], rate=1, inp=99, outp=7)])])
    assert [f.NodeTID for f in flows] == [bridge_tid("h1", BR1)]


def test_python_fallback_gives_the_same_flows(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    fast = run(SFlowCollector(), DATAGRAMS[:60])
    monkeypatch.setattr(collector_mod, "_scan", None)
    slow = run(SFlowCollector(), DATAGRAMS[:60])
    assert sorted((f.TrackingID, f.Metric.ABPackets, f.Metric.ABBytes, f.Metric.BAPackets) for f in fast) == \
        sorted((f.TrackingID, f.Metric.ABPackets, f.Metric.ABBytes, f.Metric.BAPackets) for f in slow)


def test_bad_datagrams_are_counted_per_sender_and_dropped() -> None:
    c = SFlowCollector()
    assert not c.feed(DATAGRAMS[0][:50], "10.0.0.7")
    assert not c.feed(u32(4) + DATAGRAMS[0][4:], "10.0.0.7")
    assert not c.feed(struct.pack(">IIIIIIII", 5, 1, 0x7F000001, 0, 1, 2, 0xFFFFFFFF, 0), "10.0.0.8")
    assert c.feed(DATAGRAMS[0], "10.0.0.9")
    assert c.stats["10.0.0.7"].errors == {"count": 1, "version": 1}  # 50 bytes cannot hold 6 samples
    assert c.stats["10.0.0.8"].errors == {"count": 1}
    assert c.stats["10.0.0.9"].errors == {} and c.stats["10.0.0.9"].flow_samples > 0


def test_counter_samples_become_interface_metrics_with_deltas() -> None:
    ports = {3: PortInfo("tid-br0", "cap", "p3", "br0", 7, port_tid="tid-3")}  # counters go to the port
    c = SFlowCollector(lambda agent, ifx: ports.get(ifx))
    c.feed(datagram("192.0.2.9", [counter_sample([generic_counters(3, 1000, 2000)], index=3)]), "x", TS)
    c.feed(datagram("192.0.2.9", [counter_sample([generic_counters(3, 1500, 2600)], index=3)]), "x", TS + 10_000)
    first, second = c.counters()
    assert first.LastUpdateMetric == {} and first.Metric["IfInOctets"] == 1000
    assert (second.NodeTID, second.IfIndex, second.Name, second.OfPort, second.Agent) == \
        ("tid-3", 3, "p3", 7, "192.0.2.9")
    d = second.LastUpdateMetric
    assert (d["IfInOctets"], d["IfOutOctets"], d["Start"], d["Last"]) == (500, 600, TS, TS + 10_000)
    assert second.IfSpeed == 10_000_000_000 and second.IfStatus == 3
    batch = InterfaceMetricsBatch(host="h1", source="sflow", ts=TS, items=[first, second])
    assert decode(encode(batch), InterfaceMetricsBatch) == batch
    assert c.counters() == []


def test_real_counter_samples_resolve_by_ifindex() -> None:
    c = SFlowCollector()
    for data in DATAGRAMS:
        c.feed(data, "127.0.0.1", TS)
    items = c.counters()
    assert len(items) >= 9
    assert all(i.Key == "SFlow" and i.Name and i.OfPort > 0 and "IfInUcastPkts" in i.Metric for i in items)


def test_table_cap_drops_and_counts_samples_of_extra_agents() -> None:
    c = SFlowCollector(max_tables=2)
    dgs = [datagram(f"192.0.2.{i}", [flow_sample([raw_record(ETH_ICMP, 102)], rate=1, inp=i)]) for i in range(1, 5)]
    flows = run(c, dgs, batch=10)
    assert len(c.tables) == 2 and c.samples_dropped == 2
    assert totals(flows)[0] == 2


def test_raw_ipv4_and_ipv6_headers_become_flows() -> None:
    ip4 = ETH_ICMP[14:]
    ip6 = bytes.fromhex("6000000000103a40" + "fd00" + "00" * 13 + "01" + "fd00" + "00" * 13 + "02"
                        + "8000000000070001") + b"y" * 8

    def ip_record(proto: int, pkt: bytes) -> bytes:
        return record(1, u32(proto, len(pkt) + 4, 4, len(pkt)) + pkt + b"\0" * (-len(pkt) % 4))
    c = SFlowCollector()
    dg = datagram("192.0.2.9", [flow_sample([ip_record(11, ip4)], rate=10, inp=3),
                                flow_sample([ip_record(12, ip6)], rate=10, inp=3)] * 2)
    for variant in (True, False):  # C scanner, then the Python fallback
        collector_mod._scan, saved = (collector_mod._scan if variant else None), collector_mod._scan
        try:
            c = SFlowCollector()
            flows = run(c, [dg])
        finally:
            collector_mod._scan = saved
        by_path = {f.LayersPath: f for f in flows}
        assert set(by_path) == {"IPv4/ICMPv4", "IPv6/ICMPv6/ICMPv6Echo"}, by_path.keys()
        v4, v6 = by_path["IPv4/ICMPv4"], by_path["IPv6/ICMPv6/ICMPv6Echo"]
        assert (v4.Metric.ABPackets, v4.Metric.ABBytes, v4.SamplingRate) == (20, 20 * len(ip4), 10)
        assert (v6.Metric.ABPackets, v6.Network.A if v6.Network else "") == (20, "fd00::1")


def test_sequence_gaps_are_counted_as_lost_datagrams() -> None:
    c = SFlowCollector()
    for seq in (1, 2, 5, 6, 3, 7, 1):  # 3-4 missing; 3 arrives late (no loss); 1 again = agent restart
        assert c.feed(datagram("192.0.2.9", [], seq=seq), "10.0.0.1")
    assert c.feed(datagram("192.0.2.10", [], seq=100), "10.0.0.1")  # another agent: its own sequence
    assert c.stats["10.0.0.1"].lost == 2


def test_recvmmsg_path_equals_the_per_datagram_path() -> None:
    import socket as _socket
    from netsonde.flow.sflow.collector import recv_available
    assert recv_available
    rx = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    rx.setsockopt(_socket.SOL_SOCKET, _socket.SO_RCVBUF, 8 << 20)
    rx.bind(("127.0.0.1", 0))
    rx.setblocking(False)
    tx = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    sent = DATAGRAMS[:80:2] + DATAGRAMS[150:200] + [b"", u32(4) + DATAGRAMS[0][4:]]  # with sequence gaps
    try:
        for data in sent:
            tx.sendto(data, rx.getsockname())
        fast = SFlowCollector()
        got = 0
        for _ in range(100):
            got += fast.feed_socket(rx.fileno(), TS, 64)
            if got == len(sent):
                break
        assert got == len(sent) and fast.feed_socket(rx.fileno(), TS, 64) == 0
    finally:
        rx.close()
        tx.close()
    slow = SFlowCollector()
    for data in sent:
        slow.feed(data, "127.0.0.1", TS)
    assert fast.stats == slow.stats and fast.stats["127.0.0.1"].lost > 0
    assert fast._seqs == slow._seqs
    fast.process(TS)
    slow.process(TS)
    key = lambda f: (f.UUID, f.Metric.ABPackets, f.Metric.BAPackets, f.Metric.ABBytes)  # noqa: E731
    assert sorted(map(key, fast.updates(TS + 1))) == sorted(map(key, slow.updates(TS + 1)))
    assert len(fast.counters()) == len(slow.counters())
