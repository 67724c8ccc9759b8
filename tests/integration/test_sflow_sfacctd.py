"""Netsonde's sFlow decoding against pmacct's sfacctd on the same real OVS datagrams.

sfacctd (print plugin, CSV) aggregates the replayed datagrams by every field it decodes from a flow sample;
the same aggregation built from `decode_datagram` must match it row for row (field by field, with packet and
byte totals). Then the collector's flows (FlowTable over the C aggregator) must carry the same packet and byte
counts per direction and capture port as sfacctd's 5-tuple + MAC rows.
"""

from __future__ import annotations

import contextlib
import csv
import ipaddress
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path


from netsonde.common.testing import free_port
from netsonde.flow.sflow.collector import SFlowCollector, fallback_tid
from netsonde.flow.sflow.decode import ExtendedSwitch, FlowSample, RawPacketHeader, decode_datagram
from tests.unit.test_sflow_decode import DATAGRAMS

AGG = "src_mac, dst_mac, vlan, in_iface, out_iface, src_host, dst_host, src_port, dst_port, tcpflags, proto, tos, " \
      "sampling_rate"
"""sfacctd ORs the TCP flags of the packets it aggregates: they are compared as an OR per key, not as a key."""
PROTO = {1: "icmp", 6: "tcp", 17: "udp", 58: "ipv6-icmp", 2: "igmp"}


def run_sfacctd(datagrams: list[bytes], aggregate: str, expect_packets: int) -> list[dict[str, str]]:
    exe = shutil.which("sfacctd") or "/usr/sbin/sfacctd"
    if not Path(exe).exists():
        raise RuntimeError("sfacctd not found: apt-get install pmacct (BENCH_APT_PACKAGES in the Makefile)")
    d = Path(tempfile.mkdtemp(prefix="netsonde-sfacctd-"))
    port = free_port()
    out = d / "out.csv"
    (d / "sfacctd.conf").write_text(
        f"daemonize: false\nsfacctd_ip: 127.0.0.1\nsfacctd_port: {port}\nplugins: print\naggregate: {aggregate}\n"
        f"print_output: csv\nprint_output_file: {out}\nprint_output_file_append: true\nprint_refresh_time: 1\n"
        "sfacctd_renormalize: false\n")
    proc = subprocess.Popen([exe, "-f", str(d / "sfacctd.conf")], stdout=open(d / "log", "wb"),
                            stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 10
        while "cache entries=" not in (d / "log").read_text(errors="replace") and time.monotonic() < deadline:
            assert proc.poll() is None, (d / "log").read_text()
            time.sleep(0.05)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for data in datagrams:
                s.sendto(data, ("127.0.0.1", port))
                time.sleep(0.0005)
        rows: list[dict[str, str]] = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            time.sleep(0.3)
            if out.exists():
                with open(out) as f:
                    rows = [r for r in csv.DictReader(f) if r.get("PACKETS", "").isdigit()]
                if sum(int(r["PACKETS"]) for r in rows) >= expect_packets or (not expect_packets and rows):
                    return rows
        raise AssertionError(f"sfacctd counted {sum(int(r['PACKETS']) for r in rows)} of {expect_packets} packets:"
                             f"\n{(d / 'log').read_text()[-2000:]}")
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # its own session: the core and plugin processes
        proc.wait(10)
        shutil.rmtree(d, ignore_errors=True)


def header_fields(h: bytes) -> dict[str, object]:
    """The L2-L4 fields sfacctd reports, read from a raw Ethernet header (test-side parser)."""
    out: dict[str, object] = {"dst_mac": h[0:6].hex(":"), "src_mac": h[6:12].hex(":"), "vlan": 0}
    et, p = struct.unpack_from(">H", h, 12)[0], 14
    if et == 0x8100:
        out["vlan"] = struct.unpack_from(">H", h, 14)[0] & 0xFFF
        et, p = struct.unpack_from(">H", h, 16)[0], 18
    out.update(src_ip="0.0.0.0", dst_ip="0.0.0.0", proto=0, tos=0, sport=0, dport=0, flags=0)
    if et == 0x0800:
        ihl = (h[p] & 15) * 4
        out.update(tos=h[p + 1], proto=h[p + 9], src_ip=str(ipaddress.IPv4Address(h[p + 12:p + 16])),
                   dst_ip=str(ipaddress.IPv4Address(h[p + 16:p + 20])))
        l4 = p + ihl
    elif et == 0x86DD:
        out.update(tos=(struct.unpack_from(">I", h, p)[0] >> 20) & 0xFF, proto=h[p + 6],
                   src_ip=str(ipaddress.IPv6Address(h[p + 8:p + 24])),
                   dst_ip=str(ipaddress.IPv6Address(h[p + 24:p + 40])))
        l4 = p + 40
        while out["proto"] in (0, 43, 60):  # hop-by-hop, routing, destination options (MLD has hop-by-hop)
            out["proto"], l4 = h[l4], l4 + (h[l4 + 1] + 1) * 8
    else:
        return out
    if out["proto"] in (6, 17):
        out["sport"], out["dport"] = struct.unpack_from(">HH", h, l4)
        if out["proto"] == 6:
            out["flags"] = h[l4 + 13]
    return out


def is_ip(s: FlowSample) -> bool:
    raw = next(r for r in s.records if isinstance(r, RawPacketHeader))
    return header_fields(raw.header)["src_ip"] != "0.0.0.0"


def expected_packets(datagrams: list[bytes]) -> int:
    """Sampled IP packets: sfacctd does not account non-IP frames (ARP) under IP primitives."""
    return sum(s.sampling_rate for d in datagrams for s in decode_datagram(d).samples
               if isinstance(s, FlowSample) and is_ip(s))


def test_decoded_fields_match_sfacctd_field_by_field() -> None:
    rows = run_sfacctd(DATAGRAMS, AGG, expected_packets(DATAGRAMS))
    theirs: Counter[tuple[object, ...]] = Counter()
    for r in rows:
        key = (r["SRC_MAC"], r["DST_MAC"], int(r["VLAN"]), int(r["IN_IFACE"]), int(r["OUT_IFACE"]),
               r["SRC_IP"], r["DST_IP"], int(r["SRC_PORT"]), int(r["DST_PORT"]), r["PROTOCOL"], int(r["TOS"]),
               int(r["SAMPLING_RATE"]))
        theirs[key + ("packets",)] += int(r["PACKETS"])
        theirs[key + ("bytes",)] += int(r["BYTES"])
        theirs[key + ("tcp_flags",)] |= int(r["TCP_FLAGS"])
    ours: Counter[tuple[object, ...]] = Counter()
    for data in DATAGRAMS:
        for s in decode_datagram(data).samples:
            if not isinstance(s, FlowSample) or not is_ip(s):
                continue
            raw = next(r for r in s.records if isinstance(r, RawPacketHeader))
            sw = next((r for r in s.records if isinstance(r, ExtendedSwitch)), None)
            f = header_fields(raw.header)
            vlan = f["vlan"] or (sw.src_vlan if sw else 0)
            key = (f["src_mac"], f["dst_mac"], vlan, (s.input_format << 30) | s.input,
                   (s.output_format << 30) | s.output, f["src_ip"], f["dst_ip"], f["sport"], f["dport"],
                   PROTO.get(int(f["proto"]), str(f["proto"])), f["tos"], s.sampling_rate)  # type: ignore[call-overload]
            ours[key + ("packets",)] += s.sampling_rate
            ours[key + ("bytes",)] += raw.frame_length * s.sampling_rate
            ours[key + ("tcp_flags",)] |= int(f["flags"])  # type: ignore[call-overload]
    assert len(ours) > 80  # 29 keys x (packets, bytes, flags)
    assert ours == theirs


def test_collector_flows_match_sfacctd_counts() -> None:
    rows = run_sfacctd(DATAGRAMS, "src_mac, dst_mac, in_iface, src_host, dst_host, src_port, dst_port, proto",
                       expected_packets(DATAGRAMS))
    theirs: Counter[tuple[object, ...]] = Counter()
    for r in rows:
        # one flow table per agent (no port of the corpus' agent is known here): sfacctd's in_iface rows add up
        key = (fallback_tid("127.0.0.1"), r["SRC_MAC"], r["DST_MAC"], r["SRC_IP"], r["DST_IP"],
               int(r["SRC_PORT"]), int(r["DST_PORT"]))
        theirs[key + ("packets",)] += int(r["PACKETS"])
        theirs[key + ("bytes",)] += int(r["BYTES"]) - 4 * int(r["PACKETS"])  # Netsonde counts frames without FCS
    c = SFlowCollector()
    for data in DATAGRAMS:
        assert c.feed(data, "127.0.0.1", 1_700_000_000_000)
    c.process(1_700_000_000_000)
    ours: Counter[tuple[object, ...]] = Counter()
    for f in c.updates(1_700_000_001_000):
        if f.Network is None or f.Link is None:
            continue
        tr = f.Transport
        pa, pb = (tr.A, tr.B) if tr is not None else (0, 0)
        m = f.Metric
        for src, dst, sip, dip, sp, dp, pk, by in (
                (f.Link.A, f.Link.B, f.Network.A, f.Network.B, pa, pb, m.ABPackets, m.ABBytes),
                (f.Link.B, f.Link.A, f.Network.B, f.Network.A, pb, pa, m.BAPackets, m.BABytes)):
            if pk:
                key = (f.NodeTID, src, dst, sip, dip, sp, dp)
                ours[key + ("packets",)] += pk
                ours[key + ("bytes",)] += by
    theirs = Counter({k: v for k, v in theirs.items() if k[3] != "0.0.0.0"})  # non-IP frames: no Network layer
    assert len(ours) > 50
    assert ours == theirs
