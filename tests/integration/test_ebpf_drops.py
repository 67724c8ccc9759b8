"""Kernel drop reasons on `ebpf` captures (issue 17 point 5, capture option DropReasons): real drops the
kernel labels (UDP to a closed port: NO_SOCKET; an nftables drop rule: NETFILTER_DROP) in a test namespace,
counted per flow by the kfree_skb program, exact per direction and reason; at the probe (capture + table) and
end to end through the services and Gremlin; a program the kernel refuses is a capture error, not a crash."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from netsonde.common.bus.captures import Capture
from netsonde.flow.capture import CaptureError
from netsonde.flow.ebpf import drops as drops_mod
from netsonde.flow.ebpf.drops import drop_reason_names
from netsonde.flow.table import FlowTable
from netsonde.probe_flow.controller import CaptureController
from netsonde.probe_flow.ebpfcapture import EbpfCapture
from tests.integration.test_captures_standing import (  # noqa: F401
    Pair,
    api_call,
    captures_of,
    create,
    delete,
    gremlin,
    pair,
    stack,
    wait_until,
)
from tests.integration.test_ebpf_capture import Veths, qdiscs, sh, veths  # noqa: F401

pytestmark = [pytest.mark.root]

CLOSED, FILTERED = 43000, 43100


def nft_drop(ns: str, port: int) -> None:
    """An nftables input rule in namespace `ns` that drops UDP to `port`."""
    sh(
        "ip",
        "netns",
        "exec",
        ns,
        "nft",
        "add table inet nsdrop; add chain inet nsdrop in "
        "{ type filter hook input priority 0; }; add rule inet nsdrop in udp dport " + str(port) + " drop",
    )


def udp_flows(flows: list[Any]) -> dict[int, Any]:
    return {f.Transport.B: f for f in flows if f.LayersPath == "Ethernet/IPv4/UDP"}


@pytest.fixture
def drop_capture(veths: Veths) -> Iterator[tuple[EbpfCapture, FlowTable]]:
    """ebpf + DropReasons on vb (the receiver, namespace b), polled by hand."""
    table = FlowTable("tid-vb", "c-drops")
    cap = EbpfCapture(veths.vb, table, f"/var/run/netns/{veths.b}", poll_s=3600, drop_reasons=True)
    cap.start()
    yield cap, table
    cap.stop()


def test_reason_names_come_from_this_kernels_btf() -> None:
    names = drop_reason_names()
    by_name = {v: k for k, v in names.items()}
    assert {"NO_SOCKET", "NETFILTER_DROP", "NOT_SPECIFIED", "SKB_CONSUMED"} <= set(by_name)
    assert not any(n.startswith("SKB_DROP_REASON_") for n in names.values())
    assert by_name["NOT_SPECIFIED"] == 2 and by_name["NO_SOCKET"] == 3  # this kernel's values (6.x)


def test_closed_port_and_netfilter_drops_counted_per_flow(
    veths: Veths, drop_capture: tuple[EbpfCapture, FlowTable]
) -> None:
    cap, table = drop_capture
    nft_drop(veths.b, FILTERED)
    veths.udp(range(CLOSED, CLOSED + 1), count=3)  # nobody listens: NO_SOCKET
    veths.udp(range(FILTERED, FILTERED + 1), count=4)  # the nft rule: NETFILTER_DROP
    veths.udp(range(FILTERED + 1, FILTERED + 2), count=2)  # reaches UDP: NO_SOCKET
    time.sleep(0.2)
    cap.poll()
    first = udp_flows(table.updates(int(time.time() * 1000)))
    got = {
        p: (f.Metric.ABPackets, f.Metric.ABDrops, f.Metric.BADrops, f.DropReasons) for p, f in first.items()
    }
    assert got == {
        CLOSED: (3, 3, 0, {"NO_SOCKET": 3}),
        FILTERED: (4, 4, 0, {"NETFILTER_DROP": 4}),
        FILTERED + 1: (2, 2, 0, {"NO_SOCKET": 2}),
    }
    assert first[CLOSED].LastUpdateMetric.ABDrops == 3
    # the ICMP port unreachable answers b sends are not drops
    assert all(
        not f.DropReasons and f.Metric.ABDrops == f.Metric.BADrops == 0
        for f in table.snapshot()
        if f.LayersPath != "Ethernet/IPv4/UDP"
    )
    # two more to the closed port from one socket: the same flow, totals and the delta of this update
    veths.in_a(
        "python3",
        "-c",
        "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
        f"s.bind(('{veths.ipa}', 40999))\n" + f"for i in range(2): s.sendto(b'y', ('{veths.ipb}', {CLOSED}))",
    )
    time.sleep(0.2)
    cap.poll()
    again = [f for f in table.updates(int(time.time() * 1000)) if f.Transport and f.Transport.A == 40999]
    assert [
        (f.Metric.ABPackets, f.Metric.ABDrops, f.LastUpdateMetric.ABDrops, f.DropReasons) for f in again
    ] == [(2, 2, 2, {"NO_SOCKET": 2})]
    assert cap.kernel_drops is not None and cap.kernel_drops.dropped == 11
    assert table.stats.events.get("drops_unmatched", 0) == 0


def test_ipv6_udp_and_tcp_to_closed_ports(veths: Veths, drop_capture: tuple[EbpfCapture, FlowTable]) -> None:
    """IPv6 headers and TCP ports are keyed too: 2 UDP datagrams and 1 TCP SYN to closed ports over IPv6."""
    cap, table = drop_capture
    for ns, v, ip in ((veths.a, veths.va, "fd00:77::1"), (veths.b, veths.vb, "fd00:77::2")):
        sh("ip", "netns", "exec", ns, "sysctl", "-qw", f"net.ipv6.conf.{v}.disable_ipv6=0")
        sh("ip", "-n", ns, "addr", "add", f"{ip}/64", "dev", v, "nodad")
    veths.in_a(
        "python3",
        "-c",
        "import socket\ns=socket.socket(socket.AF_INET6,socket.SOCK_DGRAM)\n"
        "for i in range(2): s.sendto(b'z', ('fd00:77::2', 43200))\n"
        "t=socket.socket(socket.AF_INET6,socket.SOCK_STREAM)\n"
        "try: t.connect(('fd00:77::2', 43201))\nexcept ConnectionRefusedError: pass\n",
    )
    time.sleep(0.2)
    cap.poll()
    got = {
        (f.Transport.Protocol, f.Transport.B): (f.Metric.ABPackets, f.Metric.ABDrops, f.DropReasons)
        for f in table.updates(int(time.time() * 1000))
        if f.Network and f.Network.Protocol == "IPV6" and f.Transport and f.Transport.B in (43200, 43201)
    }
    # the refused connect: one SYN, answered by a RST (not a drop) on the same flow
    assert got == {("UDP", 43200): (2, 2, {"NO_SOCKET": 2}), ("TCP", 43201): (1, 1, {"NO_SOCKET": 1})}


def test_local_output_drop_without_a_flow_is_counted_unmatched(
    veths: Veths, drop_capture: tuple[EbpfCapture, FlowTable]
) -> None:
    """A datagram b sends that its own nftables OUTPUT rule drops never reaches the interface (no TC program
    saw it, so no flow): the drop (found through the route's device) waits PENDING_POLLS polls, then counts in
    the table's drops_unmatched event."""
    cap, table = drop_capture
    sh(
        "ip",
        "netns",
        "exec",
        veths.b,
        "nft",
        "add table inet nsout; add chain inet nsout out "
        "{ type filter hook output priority 0; }; add rule inet nsout out udp dport 43300 drop",
    )
    send = (
        "import socket\ns=socket.socket(socket.AF_INET,"
        f"socket.SOCK_DGRAM)\nfor i in range(N):\n    try: s.sendto(b'o', ('{veths.ipa}', 43300))\n"
        "    except PermissionError: pass\n"
    )
    sh("ip", "netns", "exec", veths.b, "python3", "-c", "N = 5\n" + send)
    time.sleep(0.2)
    for _ in range(3):
        cap.poll()
    assert table.stats.events.get("drops_unmatched") == 5
    assert not [f for f in table.updates(int(time.time() * 1000)) if f.Transport and f.Transport.B == 43300]
    # still waiting when the capture stops: counted too
    sh("ip", "netns", "exec", veths.b, "python3", "-c", "N = 2\n" + send)
    time.sleep(0.2)
    cap.poll()
    assert table.stats.events.get("drops_unmatched") == 5
    cap.stop()
    assert table.stats.events.get("drops_unmatched") == 7


def test_without_the_option_no_drop_fields(veths: Veths) -> None:
    table = FlowTable("tid-vb", "c-plain")
    cap = EbpfCapture(veths.vb, table, f"/var/run/netns/{veths.b}", poll_s=3600)
    cap.start()
    try:
        assert cap.kernel_drops is None
        veths.udp(range(CLOSED, CLOSED + 1), count=3)
        time.sleep(0.2)
        cap.poll()
    finally:
        cap.stop()
    f = udp_flows(table.flush())[CLOSED]
    assert (f.Metric.ABPackets, f.Metric.ABDrops, f.DropReasons) == (3, 0, {})


def test_a_refused_program_is_a_capture_error(
    veths: Veths, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The object built for a tracepoint this kernel does not have (kfree_skb renamed in the ELF): the kernel
    refuses it; the capture reports why, the TC program it had attached is gone again."""
    bad = tmp_path / "drops.bpf.o"
    raw = drops_mod.OBJECT_PATH.read_bytes()
    assert raw.count(b"tp_btf/kfree_skb") >= 1
    bad.write_bytes(raw.replace(b"tp_btf/kfree_skb", b"tp_btf/kfree_skz"))
    monkeypatch.setattr(drops_mod, "OBJECT_PATH", bad)
    ns = f"/var/run/netns/{veths.b}"
    with pytest.raises(
        CaptureError, match=r"^ebpf on evb\w+: load the kfree_skb program \(kernel refused it\)"
    ):
        EbpfCapture(veths.vb, FlowTable("t"), ns, drop_reasons=True).start()
    assert "clsact" not in sh("ip", "netns", "exec", veths.b, "tc", "qdisc", "show", "dev", veths.vb)
    node = {
        "ID": "n-vb",
        "Host": "h1",
        "Metadata": {"Name": veths.vb, "Type": "veth", "TID": "t-vb", "NetNsPath": ns},
    }
    statuses: list[Any] = []
    ctl = CaptureController("h1", lambda q: [node], on_status=statuses.append)
    ctl.put(Capture(UUID="c-bad", GremlinQuery="G.V()", Type="ebpf", DropReasons=True))
    ctl.reconcile()
    assert ctl.running == {}
    assert [(s.state, s.type) for s in statuses] == [("error", "ebpf")]
    assert "load the kfree_skb program (kernel refused it)" in statuses[0].error
    # DropReasons where the node's default type (afpacket) runs: an error naming the option and the type
    statuses.clear()
    ctl.put(Capture(UUID="c-af", GremlinQuery="G.V()", DropReasons=True))
    ctl.reconcile()
    assert [(s.state, s.error) for s in statuses if s.capture_id == "c-af"] == [
        ("error", "capture type afpacket (default for node type veth) does not support option(s) DropReasons")
    ]


@pytest.mark.slow
def test_end_to_end_drops_through_gremlin(stack: tuple[int, int], pair: Pair) -> None:
    """ebpf + DropReasons on vb, every service a process: 3 datagrams to a closed port give one flow with
    Metric.ABDrops 3 and DropReasons {NO_SOCKET: 3}, found by Has('Metric.ABDrops', 3) and
    Has('DropReasons.NO_SOCKET', 3); afpacket with DropReasons is a 400 naming the option and the type."""
    api = stack[0]
    status, out = api_call(
        api, "/api/capture", {"GremlinQuery": "G.V()", "Type": "afpacket", "DropReasons": True}, "POST"
    )
    assert status == 400 and out == "capture type afpacket does not support option(s) DropReasons"
    # created with the CLI's flag
    cli = [
        sys.executable,
        "-m",
        "netsonde.cli",
        "client",
        "--analyzer",
        f"127.0.0.1:{api}",
        "capture",
        "create",
        "--gremlin",
        f"G.V().Has('Name', '{pair.vb}')",
        "--type",
        "ebpf",
        "--drop-reasons",
    ]
    cap = json.loads(subprocess.run(cli, check=True, capture_output=True, text=True, timeout=60).stdout)
    assert cap["DropReasons"] is True and cap["Type"] == "ebpf"
    try:
        pair.up()
        got = wait_until(lambda: captures_of(api, pair.vb), 30, f"the capture on {pair.vb}")
        assert [(c["ID"], c["State"], c["Type"]) for c in got] == [(cap["UUID"], "active", "ebpf")]
        code = (
            "import socket\ns=socket.socket(socket.AF_INET,socket.SOCK_DGRAM)\n"
            f"for i in range(3): s.sendto(b'x'*20, ('{pair.ipb}', {CLOSED}))"
        )
        sh("ip", "netns", "exec", pair.a, "python3", "-c", code)
        base = f"G.V().Has('Name', '{pair.vb}').Flows()"

        def dropped() -> list[dict[str, Any]] | None:
            flows = gremlin(api, f"{base}.Has('Metric.ABDrops', 3)") or []
            return flows if len(flows) == 1 else None

        flows = wait_until(dropped, 60, "the dropped flow in Gremlin")
        f = flows[0]
        assert f["Transport"]["B"] == CLOSED and f["Network"]["B"] == pair.ipb
        assert (f["Metric"]["ABPackets"], f["Metric"]["ABDrops"], f["Metric"].get("BADrops", 0)) == (3, 3, 0)
        assert f["DropReasons"] == {"NO_SOCKET": 3}
        assert [x["UUID"] for x in gremlin(api, f"{base}.Has('DropReasons.NO_SOCKET', 3)")] == [f["UUID"]]
        assert gremlin(api, f"{base}.Has('DropReasons.NETFILTER_DROP', 3)") == []
        assert [x["UUID"] for x in gremlin(api, f"{base}.Has('DropReasons')")] == [f["UUID"]]
        status, out = api_call(
            api, "/api/topology", {"GremlinQuery": f"{base}.Has('DropReasons', 3)"}, "POST"
        )
        assert status == 400 and "DropReasons is a set of counters" in out, (status, out)
        assert f["UUID"] not in [x["UUID"] for x in gremlin(api, f"{base}.HasNot('DropReasons')")]
        # the flow's path: its one hop (vb) carries the kernel's reasons
        status, path = api_call(api, f"/api/flowpath/{f['TrackingID']}?settle=1s")
        assert status == 200, path
        assert [(h["Name"], h["ABPackets"], h["DropReasons"]) for h in path["Hops"]] == [
            (pair.vb, 3, {"NO_SOCKET": 3})
        ]
        # flows without drops carry none of the fields
        others = gremlin(api, f"{base}.Has('Metric.ABDrops', 0)") or []
        assert all("DropReasons" not in o and "ABDrops" not in o["Metric"] for o in others)
    finally:
        delete(api, cap["UUID"])
