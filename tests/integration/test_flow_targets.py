"""Capture targets against real receivers on loopback: a capture on a real veth (ping from the host to a
namespace) exports its flows as NetFlow v5 to pmacct's `nfacctd`, and mirrors its packets as ERSPAN (GRE) to a
raw GRE socket that decodes the GRE and ERSPAN headers; exact counts."""

from __future__ import annotations

import shutil
import socket
import struct
import subprocess
import time
from pathlib import Path
from typing import Iterator

import pytest

from netsonde.common.bus.captures import Capture
from netsonde.common.testing import free_port
from netsonde.flow.capture import AfPacketCapture
from netsonde.flow.targets import TargetError, check_target, table_for_capture
from tests.integration.netns_veth import sh, veth_into_namespace

pytestmark = pytest.mark.root


@pytest.fixture
def veth(unique: str) -> Iterator[dict[str, str]]:
    """A veth pair: `host` end in this namespace (10.<n>.0.1), peer in namespace `ns` (10.<n>.0.2)."""
    with veth_into_namespace(unique, "tg", 0) as v:
        yield v


def ping(v: dict[str, str], count: int = 5) -> None:
    sh("ping", "-c", str(count), "-i", "0.2", "-W", "1", v["peer_ip"])


def capture_ping(v: dict[str, str], cap: Capture, snaplen: int = 256):
    table = table_for_capture(cap, "tid-" + v["host"])
    reader = AfPacketCapture(v["host"], table, bpf="icmp", snaplen=snaplen, block_timeout_ms=10)
    reader.start()
    try:
        ping(v)
        time.sleep(0.3)  # the ring's block timeout hands the last packets over
    finally:
        reader.stop()
    return table


# --- NetFlow v5 -> nfacctd --------------------------------------------------------------------------------
@pytest.fixture
def nfacctd(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    if shutil.which("nfacctd") is None:
        pytest.fail("nfacctd (Debian package pmacct, in the Makefile's APT_PACKAGES) is not installed")
    port = free_port()
    out = tmp_path / "flows.csv"
    conf = tmp_path / "nfacctd.conf"
    conf.write_text(f"daemonize: false\nnfacctd_ip: 127.0.0.1\nnfacctd_port: {port}\nplugins: print\n"
                    "aggregate: src_host, dst_host, src_port, dst_port, proto\nprint_output: csv\n"
                    f"print_output_file: {out}\nprint_output_file_append: true\nprint_refresh_time: 1\n")
    log = tmp_path / "nfacctd.log"
    proc = subprocess.Popen(["nfacctd", "-f", str(conf)], stdout=log.open("wb"), stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 10
        while "waiting for NetFlow" not in log.read_text():
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        yield port, out
    finally:
        proc.kill()  # its print plugin has written every purge already
        proc.wait(10)


def nfacctd_totals(out: Path, expect_rows: int, timeout: float = 10) -> dict[tuple[str, str, str], tuple[int, int]]:
    """(src, dst, proto) -> (packets, bytes) summed over nfacctd's CSV purges, once `expect_rows` keys show."""
    def read() -> dict[tuple[str, str, str], tuple[int, int]]:
        totals: dict[tuple[str, str, str], tuple[int, int]] = {}
        for line in out.read_text().splitlines() if out.exists() else []:
            if line and not line.startswith("SRC_IP"):
                src, dst, _sp, _dp, proto, pkts, nbytes = line.split(",")
                p, b = totals.get((src, dst, proto), (0, 0))
                totals[(src, dst, proto)] = (p + int(pkts), b + int(nbytes))
        return totals

    deadline = time.monotonic() + timeout
    while len(read()) < expect_rows and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.5)  # one more purge: whatever else arrived is counted too
    return read()


def test_netflow_v5_target_feeds_nfacctd(veth, nfacctd) -> None:
    port, out = nfacctd
    cap = Capture(UUID="nf", GremlinQuery="G.V()", TargetType="netflowv5", Target=f"127.0.0.1:{port}")
    table = capture_ping(veth, cap)
    flows = table.updates(int(time.time() * 1000))
    icmp = [f for f in flows if f.Application == "ICMPv4"]
    assert len(icmp) == 1 and (icmp[0].Metric.ABPackets, icmp[0].Metric.BAPackets) == (5, 5)
    totals = nfacctd_totals(out, 2)
    assert totals == {(veth["ip"], veth["peer_ip"], "icmp"): (5, 5 * 84),
                      (veth["peer_ip"], veth["ip"], "icmp"): (5, 5 * 84)}
    assert table.stats.events == {"netflow_records": 2, "netflow_datagrams": 1, "netflow_packets": 10,
                                  "netflow_bytes": 10 * 84}
    # a second update with no new packet exports nothing more; a new ping exports only its delta
    table.updates(int(time.time() * 1000))
    assert table.exporter.records == 2
    table.flush()


def test_netflow_v5_records_only_deltas(veth, nfacctd) -> None:
    port, out = nfacctd
    cap = Capture(UUID="nf2", GremlinQuery="G.V()", TargetType="netflowv5", Target=f"127.0.0.1:{port}")
    table = table_for_capture(cap, "tid")
    reader = AfPacketCapture(veth["host"], table, bpf="icmp", block_timeout_ms=10)
    reader.start()
    try:
        ping(veth, 3)
        time.sleep(0.3)
        with reader.lock:
            table.updates(int(time.time() * 1000))
        ping(veth, 2)
        time.sleep(0.3)
    finally:
        reader.stop()
    table.flush()
    assert (table.exporter.records, table.exporter.datagrams, table.exporter.sequence) == (4, 2, 4)
    totals = nfacctd_totals(out, 2)
    assert totals[(veth["ip"], veth["peer_ip"], "icmp")] == (5, 5 * 84)
    assert totals[(veth["peer_ip"], veth["ip"], "icmp")] == (5, 5 * 84)


# --- ERSPAN -> a raw GRE socket ----------------------------------------------------------------------------
@pytest.fixture
def gre_receiver() -> Iterator[socket.socket]:
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, 47)
    s.bind(("127.0.0.1", 0))
    s.settimeout(0.5)
    yield s
    s.close()


def receive_erspan(s: socket.socket, max_wait: float = 2.0) -> list[dict]:
    """Every ERSPAN II packet received: GRE and ERSPAN header fields plus the inner frame."""
    out = []
    deadline = time.monotonic() + max_wait
    while time.monotonic() < deadline:
        try:
            pkt = s.recv(65535)
        except socket.timeout:
            continue
        ihl = (pkt[0] & 0x0F) * 4
        flags, proto, seq = struct.unpack_from("!HHI", pkt, ihl)
        if proto != 0x88BE:
            continue
        w1, w2, w3 = struct.unpack_from("!HHI", pkt, ihl + 8)
        out.append({"gre_flags": flags, "seq": seq, "version": w1 >> 12, "vlan": w1 & 0xFFF, "en": (w2 >> 11) & 3,
                    "t": (w2 >> 10) & 1, "session": w2 & 0x3FF, "index": w3 & 0xFFFFF, "frame": pkt[ihl + 16:]})
    return out


def test_erspan_target_mirrors_every_packet(veth, gre_receiver) -> None:
    cap = Capture(UUID="er", GremlinQuery="G.V()", TargetType="erspanv1", Target="127.0.0.1")
    table = capture_ping(veth, cap)
    got = receive_erspan(gre_receiver)
    assert len(got) == 10  # 5 echo requests + 5 replies, nothing else (BPF icmp)
    assert [g["seq"] for g in got] == list(range(10))
    assert {(g["gre_flags"], g["version"], g["session"], g["t"], g["en"], g["vlan"]) for g in got} == \
        {(0x1000, 1, 1, 0, 3, 0)}
    frames = [g["frame"] for g in got]
    assert all(len(f) == 98 and f[12:14] == b"\x08\x00" and f[23] == 1 for f in frames)  # Ethernet/IPv4/ICMP
    assert [f[34] for f in frames] == [8, 0] * 5  # echo request, reply, ...
    assert socket.inet_ntoa(frames[0][26:30]) == veth["ip"] and socket.inet_ntoa(frames[0][30:34]) == veth["peer_ip"]
    flows = table.flush()
    assert table.stats.events["erspan_packets"] == 10
    icmp = [f for f in flows if f.Application == "ICMPv4"]
    assert len(icmp) == 1 and (icmp[0].Metric.ABPackets, icmp[0].Metric.BAPackets) == (5, 5)


def test_erspan_truncated_frames_carry_the_t_bit(veth, gre_receiver) -> None:
    cap = Capture(UUID="er2", GremlinQuery="G.V()", TargetType="erspanv1", Target="127.0.0.1:4789")
    table = capture_ping(veth, cap, snaplen=64)
    got = receive_erspan(gre_receiver)
    table.flush()
    assert len(got) == 10 and all(g["t"] == 1 and len(g["frame"]) == 64 for g in got)


def test_bad_targets_are_refused() -> None:
    for kw, msg in (({"TargetType": "sflow5", "Target": "127.0.0.1:1"}, "not supported"),
                    ({"TargetType": "netflowv5"}, "needs a Target"),
                    ({"TargetType": "netflowv5", "Target": "127.0.0.1"}, "needs a port"),
                    ({"Target": "127.0.0.1:2055"}, "TargetType is empty"),
                    ({"TargetType": "erspanv1", "Target": "no-such-host.invalid"}, "cannot resolve")):
        with pytest.raises(TargetError, match=msg):
            check_target(Capture(UUID="x", GremlinQuery="G.V()", **kw))
