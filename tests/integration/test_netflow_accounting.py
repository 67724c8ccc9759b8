"""NetFlow v5 accounting end to end: every packet a capture counts reaches nfacctd's totals once, never twice.

Written while chasing a flaky double count in `test_flow_options_veth.py` (one echo reply's 3 fragments
counted twice in nfacctd's totals). Each test pins one link of that chain against a real nfacctd:

- the collector: records sent right around nfacctd's purge instants (the e2e test exports every 1 s and
  nfacctd purges every 1 s, so their phase is locked for a whole run) are each summed once over the CSV purges;
- the probe: a netflowv5 capture restarted mid-traffic by the capture controller (its node's TID changes)
  exports every packet once: each table exports exactly what it counted (no re-export from the start
  by the new table), the tables together export exactly what the wire carried (a stopping capture counts
  what its ring still holds), and nfacctd totals that.
"""

from __future__ import annotations

import subprocess
import threading
import time
from typing import Any

import pytest

from netsonde.common.bus.captures import Capture
from netsonde.common.bus.flows import Flow, FlowLayer, FlowMetric, ICMPLayer
from netsonde.flow.capture import AfPacketCapture
from netsonde.flow.table import FlowTable
from netsonde.flow.targets.netflow import NetFlowV5Exporter, NetFlowV5Table
from tests.integration.test_flow_targets import nfacctd, nfacctd_totals, veth  # noqa: F401

A, B = "10.9.1.1", "10.9.1.2"


def update(ab: int, ba: int) -> Flow:
    """One ICMP flow update with `ab` / `ba` packets of 100 B in the window (no link layer: IP bytes as is)."""
    now = int(time.time() * 1000)
    return Flow(UUID="u", LayersPath="IPv4/ICMPv4", Application="ICMPv4", TrackingID="t", L3TrackingID="t",
                NodeTID="n", Start=now, Last=now, Metric=FlowMetric(),
                Network=FlowLayer(Protocol="IPV4", A=A, B=B), ICMP=ICMPLayer(Type="ECHO"),
                LastUpdateMetric=FlowMetric(ABPackets=ab, ABBytes=ab * 100, BAPackets=ba, BABytes=ba * 100,
                                            Start=now - 5, Last=now))


def spin_until(t: float) -> None:
    while time.time() < t:
        pass


@pytest.mark.slow
def test_records_around_nfacctd_purges_are_counted_once(nfacctd) -> None:
    """nfacctd (print_refresh_time 1) purges a few ms after each wall-clock second: send an A->B record just
    before / during / after that instant and the B->A record of the same flow 0.3-3 ms later (as separate
    datagrams, and once as one datagram), and every one is summed exactly once over the CSV purges."""
    port, out = nfacctd
    ex = NetFlowV5Exporter(f"127.0.0.1:{port}")
    plan = [(-1.0, 0.3), (0.0, 0.3), (2.0, 1.0), (5.0, 0.3), (10.0, 3.0), (15.0, 1.0), (20.0, 0.3), (25.0, 0.0)]
    try:
        for k, (offset_ms, gap_ms) in enumerate(plan):
            second = int(time.time()) + 1
            spin_until(second + offset_ms / 1000)
            if gap_ms == 0:
                ex.export([update(k + 1, k + 1)])  # both directions in one datagram, as the table sends them
                continue
            ex.export([update(k + 1, 0)])
            spin_until(second + (offset_ms + gap_ms) / 1000)
            ex.export([update(0, k + 1)])
        sent = sum(k + 1 for k in range(len(plan)))  # per direction
        assert (ex.packets, ex.bytes, ex.send_errors) == (2 * sent, 2 * sent * 100, 0)
        totals = nfacctd_totals(out, 2)
        assert totals == {(A, B, "icmp"): (sent, sent * 100), (B, A, "icmp"): (sent, sent * 100)}, \
            out.read_text()
    finally:
        ex.close()


def big_ping(v: dict[str, str], count: int) -> None:
    subprocess.run(["ping", "-c", str(count), "-i", "0.2", "-W", "1", "-s", "3000", v["peer_ip"]], check=True,
                   capture_output=True, timeout=60)


@pytest.mark.root
@pytest.mark.slow
def test_restarted_netflow_capture_never_exports_a_packet_twice(veth, nfacctd, unique: str) -> None:
    """A netflowv5 capture restarted every 0.35 s by the controller while `ping -s 3000` runs (9 fragments
    each way per 3 echoes): each table exports exactly the packets it counted, and all tables together
    export exactly what a plain capture of the same veth saw (36 packets and their bytes: a stopped capture
    counts what its ring still held, and nothing twice), which nfacctd totals."""
    from netsonde.probe_flow.controller import CaptureController

    port, out = nfacctd
    node: dict[str, Any] = {"ID": f"n-{unique}", "Host": "h", "Metadata": {"Name": veth["host"], "Type": "veth",
                                                                              "TID": "tid-0"}}
    ctl = CaptureController("h", lambda q: [node], ovsdb="unix:/nonexistent", update_expire_ms=600_000)
    ctl.put(Capture(UUID=f"nf-{unique}", GremlinQuery="G.V()", BPFFilter="icmp", TargetType="netflowv5",
                    Target=f"127.0.0.1:{port}"))
    wire = FlowTable("wire")
    truth = AfPacketCapture(veth["host"], wire, bpf="icmp", block_timeout_ms=10)
    truth.start()
    tables: list[NetFlowV5Table] = []
    stop = threading.Event()

    def keep_tables() -> None:
        for rc in ctl.running.values():
            if isinstance(rc.table, NetFlowV5Table) and all(rc.table is not t for t in tables):
                tables.append(rc.table)

    def publisher() -> None:  # the service's 1 s publisher, faster: updates between the restarts too
        while not stop.is_set():
            ctl.collect(int(time.time() * 1000))
            time.sleep(0.1)

    try:
        ctl.reconcile()
        keep_tables()
        pub = threading.Thread(target=publisher)
        pub.start()
        ping = threading.Thread(target=big_ping, args=(veth, 6))
        ping.start()
        k = 0
        while ping.is_alive():
            time.sleep(0.35)
            k += 1
            node["Metadata"]["TID"] = f"tid-{k}"  # the node changed: the controller restarts the capture
            ctl.reconcile()
            keep_tables()
        ping.join()
        time.sleep(0.3)
    finally:
        stop.set()
        if "pub" in locals():
            pub.join()
        ctl.stop_all()
        truth.stop()
    flows = [f for f in wire.flush() if f.Application == "ICMPv4"]
    assert len(flows) == 1 and (flows[0].Metric.ABPackets, flows[0].Metric.BAPackets) == (18, 18)
    m = flows[0].Metric
    wire_bytes = m.ABBytes + m.BABytes - 36 * 14  # layer-3 bytes, as NetFlow's dOctets count them
    assert len(tables) >= 3, "the capture was not restarted during the ping"
    for t in tables:  # each table exports what it counted, once (a new table does not re-export an old one's)
        assert (t.exporter.packets, t.exporter.send_errors) == (t.stats.packets, 0), t.stats.events
    # a stopped capture counts what its ring still held (docs/flows.md): the tables export the wire exactly
    exported = (sum(t.exporter.packets for t in tables), sum(t.exporter.bytes for t in tables))
    assert exported == (36, wire_bytes), [(t.exporter.packets, t.exporter.bytes) for t in tables]
    totals = nfacctd_totals(out, 2)
    assert totals == {(veth["ip"], veth["peer_ip"], "icmp"): (18, m.ABBytes - 18 * 14),
                      (veth["peer_ip"], veth["ip"], "icmp"): (18, m.BABytes - 18 * 14)}, (totals, exported)


def test_exporter_counts_what_it_sent() -> None:
    """`netflow_packets` / `netflow_bytes`: dPkts / dOctets of the records sent; a datagram that cannot be sent
    is a send error and is not in them (it is not sent again either)."""
    import socket

    rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("127.0.0.1", 0))
    rx.settimeout(2)
    ex = NetFlowV5Exporter(f"127.0.0.1:{rx.getsockname()[1]}")
    try:
        ex.export([update(3, 2)])
        data = rx.recv(2048)
        assert len(data) == 24 + 2 * 48 and (ex.packets, ex.bytes, ex.records, ex.sequence) == (5, 500, 2, 2)
        ex.sock.close()  # a socket error: counted, nothing added to what was sent
        ex.export([update(1, 1)])
        assert (ex.packets, ex.bytes, ex.records, ex.send_errors, ex.sequence) == (5, 500, 2, 1, 2)
    finally:
        rx.close()
