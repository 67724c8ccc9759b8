"""The C fast path (batch folding) gives exactly the flows of the reference per-frame path."""

from __future__ import annotations

import random

from scapy.all import ICMP, IP, TCP, UDP, Dot1Q, Ether, ICMPv6EchoReply, ICMPv6EchoRequest, IPv6, fragment, raw
from scapy.layers.vxlan import VXLAN

from netsonde.flow import table as table_mod
from netsonde.flow.table import FlowTable


def _mix(n: int, seed: int = 3) -> list[tuple[bytes, int, int]]:
    rnd = random.Random(seed)
    e12 = Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02")
    e21 = Ether(src="02:00:00:00:00:02", dst="02:00:00:00:00:01")
    out = []
    t = 1_700_000_000_000_000_000
    for i in range(n):
        a, b = f"10.0.0.{rnd.randrange(1, 4)}", f"10.0.1.{rnd.randrange(1, 4)}"
        sp, dp = rnd.choice([1000, 2000]), rnd.choice([53, 80])
        k = rnd.randrange(9)
        fwd = rnd.random() < 0.6
        eth, (s, d), (ps, pd) = (e12, (a, b), (sp, dp)) if fwd else (e21, (b, a), (dp, sp))
        if k == 0:
            p = eth / IP(src=s, dst=d) / TCP(sport=ps, dport=pd, flags=rnd.choice(["S", "SA", "A", "PA", "FA", "R"]))
        elif k == 1:
            p = eth / IP(src=s, dst=d) / UDP(sport=ps, dport=pd) / (b"u" * rnd.randrange(100))
        elif k == 2:  # an echo request then its reply (the fast path times RTT on the first of each)
            ident = rnd.randrange(3)
            for q in (e12 / IP(src=a, dst=b) / ICMP(type=8, id=ident), e21 / IP(src=b, dst=a) / ICMP(type=0, id=ident)):
                t += rnd.randrange(1, 3_000_000)
                out.append((raw(q), t, len(raw(q))))
            continue
        elif k == 3:
            p = eth / IPv6(src="fd00::1" if fwd else "fd00::2", dst="fd00::2" if fwd else "fd00::1") / (
                ICMPv6EchoRequest(id=4) if fwd else ICMPv6EchoReply(id=4))
        elif k == 4:
            p = eth / Dot1Q(vlan=5) / IP(src=s, dst=d) / UDP(sport=ps, dport=pd)
        elif k == 5:
            p = eth / IP(src="192.168.0.1", dst="192.168.0.2") / UDP(sport=rnd.randrange(40000, 40010), dport=4789) \
                / VXLAN(vni=9) / Ether() / IP(src=s, dst=d) / ICMP()
        elif k == 6:
            fr = fragment(IP(src=s, dst=d, id=rnd.randrange(1 << 16)) / UDP(sport=ps, dport=pd) / (b"f" * 1500),
                          fragsize=800)
            for f in fr:
                t += 1_000_000
                out.append((raw(eth / f), t, len(raw(eth / f))))
            continue
        elif k == 7:
            p = raw(eth)[:12] + b"\x88\xcc" + b"lldp-payload"
            t += 1_000_000
            out.append((p, t, len(p)))
            continue
        else:
            b_ = raw(eth / IP(src=s, dst=d) / TCP(sport=ps, dport=pd))
            p = b_[: rnd.randrange(len(b_))]  # truncated
            t += 1_000_000
            out.append((p, t, len(p)))
            continue
        data = raw(p)
        t += rnd.randrange(1, 3_000_000)
        out.append((data, t, len(data) + rnd.choice([0, 0, 10])))
    return out


def _norm(flows):
    def key(f):
        return (f.TrackingID, f.ParentUUID != "")
    out = {}
    for f in flows:
        d = {k: getattr(f, k) for k in ("LayersPath", "Application", "TrackingID", "L3TrackingID", "Start",
                                          "Last", "Metric", "Link", "Network", "Transport", "ICMP",
                                          "TCPMetric", "FinishType", "UUID", "ParentUUID", "IPMetric")}
        out[key(f)] = d
    return out


def _split_rtt(flows: dict) -> dict:
    """RTT apart: the fast path times it on the first packet of each header combination, so a SYN-ACK or
    echo reply seen before the first request (a capture started mid-exchange) leaves it at 0 there."""
    import msgspec
    rtt = {}
    for k, d in flows.items():
        rtt[k] = d["Metric"].RTT
        d["Metric"] = msgspec.structs.replace(d["Metric"], RTT=0)
    return rtt


def test_fast_path_is_built():
    assert table_mod._fastpath is not None, "the C extension netsonde.flow._fastpath is not built"


def test_batch_equals_reference_path():
    frames = _mix(3000)
    ref = FlowTable("n", extra_tcp_metric=True)
    ref.process_frames_reference(frames)
    fast = FlowTable("n", extra_tcp_metric=True)
    for i in range(0, len(frames), 256):  # several batches, so the key table is exercised across them
        fast.process_frames(frames[i:i + 256])
    a, b = _norm(ref.updates(1)), _norm(fast.updates(1))
    assert ref.stats.packets == fast.stats.packets and ref.stats.bytes == fast.stats.bytes
    assert ref.stats.decode_errors == fast.stats.decode_errors and ref.stats.bad_packets > 0
    ra, rb = _split_rtt(a), _split_rtt(b)
    assert a == b
    assert len(a) > 20
    assert all(rb[k] in (0, ra[k]) for k in ra)
    assert sum(1 for k in ra if rb[k] and rb[k] == ra[k]) > 10  # ICMP pairs in order: timed the same



def test_aggregates_path_equals_reference_path():
    """process_aggregates (what the sFlow collector feeds) over single packets gives the reference flows."""
    from netsonde.flow.decode import DecodeError, decode_ethernet

    def fragment_(f: bytes) -> bool:  # sampled headers carry no reassembly context: fragments left out
        try:
            return any(s.fragment for s in decode_ethernet(f))
        except DecodeError:
            return False

    frames = [x for x in _mix(1500, seed=11) if not fragment_(x[0])]
    ref = FlowTable("n")
    ref.process_frames_reference(frames)
    agg = FlowTable("n")
    agg.process_aggregates([(f, f, 1, w, ts, ts) for f, ts, w in frames])
    a, b = _norm(ref.updates(1)), _norm(agg.updates(1))
    assert a.keys() == b.keys()
    for k in a:  # bad frames are skipped by both; metrics equal flow by flow
        assert a[k]["Metric"] == b[k]["Metric"], k


def test_updates_between_blocks_and_expiry_forget_keys():
    frames = _mix(600, seed=5)
    t = FlowTable("n", expire_ms=1)
    t.process_frames(frames[:300])
    first = {f.TrackingID: f.Metric.ABPackets + f.Metric.BAPackets for f in t.updates(1)}
    assert sum(first.values()) > 0
    # everything expires, then the same packets again: flows come back, counted from zero
    t.expire(10**13)
    assert len(t) == 0
    t.process_frames(frames[:300])
    again = {f.TrackingID: f.Metric.ABPackets + f.Metric.BAPackets for f in t.updates(2)}
    assert again == first


def test_raw_packet_limit_uses_the_per_frame_path():
    frames = _mix(200, seed=2)
    t = FlowTable("n", raw_packet_limit=2)
    t.process_frames(frames)
    flows = t.updates(1)
    assert flows and all(len(f.LastRawPackets) <= 2 for f in flows)
    assert sum(f.RawPacketsCaptured for f in flows) > 0


def _tpacket_v3_block(frames: list[tuple[bytes, int, int]], vlan_tci: int = -1) -> bytes:
    """A TPACKET_V3 block as the kernel lays it out (block descriptor, then packets 16-byte aligned)."""
    import struct
    out = bytearray(48)
    mac = 48 + 16
    for i, (f, ts, wire) in enumerate(frames):
        rec_len = mac + len(f)
        rec_len += -rec_len % 16
        status = 1 | (0x10 if vlan_tci >= 0 else 0)
        hdr = struct.pack("=IIIIIIHHIIHH", rec_len if i < len(frames) - 1 else 0, ts // 10**9, ts % 10**9, len(f),
                          wire, status, mac, mac + 14, 0, max(vlan_tci, 0), 0x8100 if vlan_tci >= 0 else 0, 0)
        rec = bytearray(rec_len)
        rec[:len(hdr)] = hdr
        rec[mac:mac + len(f)] = f
        out += rec
    struct.pack_into("=IIIII", out, 0, 1, 0, 1, len(frames), 48)
    return bytes(out)


def test_ring_block_c_and_python_walkers_agree(monkeypatch):
    frames = [f for f in _mix(800, seed=9) if len(f[0]) >= 14]
    blocks = [_tpacket_v3_block(frames[i:i + 100]) for i in range(0, len(frames), 100)]
    fast = FlowTable("n")
    assert sum(fast.process_block(memoryview(b)) for b in blocks) == len(frames)
    monkeypatch.setattr(table_mod, "_fastpath", None)
    slow = FlowTable("n")
    assert slow._acc is None
    assert sum(slow.process_block(b) for b in blocks) == len(frames)
    a, b = _norm(fast.updates(1)), _norm(slow.updates(1))
    _split_rtt(a), _split_rtt(b)
    assert a == b and fast.stats.packets == slow.stats.packets == len(frames) - fast.stats.bad_packets


def test_ring_block_vlan_metadata_is_put_back():
    from scapy.all import raw as raw_
    f = raw_(Ether(src="02:00:00:00:00:01", dst="02:00:00:00:00:02") / IP(src="1.1.1.1", dst="2.2.2.2") / UDP())
    blk = _tpacket_v3_block([(f, 1_700_000_000_000_000_000, len(f))], vlan_tci=(3 << 13) | 42)
    t = FlowTable("n")
    t.process_block(blk)
    fl = t.updates(1)
    assert [(x.LayersPath, x.Link.ID, x.Metric.ABBytes) for x in fl] == [("Ethernet/Dot1Q/IPv4/UDP", 42, len(f) + 4)]


def test_stateless_fold_feeds_process_aggregates():
    """`_fastpath.fold_frames` (no state) folds a batch into the aggregates `process_aggregates` takes."""
    frames = [f for f in _mix(500, seed=4) if len(f[0]) >= 14]
    aggs, slow, n = table_mod._fastpath.fold_frames(frames)
    assert n == len(frames) and sum(a[2] for a in aggs) + len(slow) == len(frames)
    assert len(aggs) < len(frames) - len(slow)  # packets of the same headers were folded
    t = FlowTable("n")
    t.process_aggregates(aggs)
    assert t.stats.packets == sum(a[2] for a in aggs)
