"""Skydive's two-host demo end to end on two simulated hosts (netsonde.common.simhost): each host its own
network/mount/UTS/PID namespaces, OVS daemons and probes; NATS, graph-builder, query-api, flow-enricher and
the store shared. Checks: each host's part of the graph and nothing of the other; the tunnel link derived
across hosts and a path through it; one capture on both hosts; a 5-ping flow with one TrackingID at 6 capture
points (5/5 each), the VXLAN outer flow as parent on the underlay; Hops() across both hosts in path order;
history; a probe restart on one host that leaves the other host's part untouched; nothing left behind."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from bench.services import ServiceProcs
from netsonde.cli import demo as D
from netsonde.common.simhost import start_host
from netsonde.common.testing import wait_until as _wait_until

pytestmark = [pytest.mark.root, pytest.mark.ovs, pytest.mark.slow]


def api(port: int, path: str, body: Any = None) -> Any:
    return D._api(f"127.0.0.1:{port}", path, body)


def gremlin(port: int, q: str) -> Any:
    return D.gremlin(f"127.0.0.1:{port}", q)


def wait_until(fn: Any, timeout: float, what: str) -> Any:
    return _wait_until(fn, timeout, what, interval=0.2)


def where(node: dict) -> tuple[str, str]:
    """(host, name) of a node, with the vm1 side of a veth named `vm1/eth0`."""
    md = node["Metadata"]
    return node["Host"], (f"{md['NetNsName']}/{md['Name']}" if md.get("NetNsName") else md["Name"])


def test_two_hosts_tunnel_flow_hops_restart(
    nats_url: str, clickhouse_url: str, unique: str, tmp_path: Path
) -> None:
    u = unique[:6]
    prefix = f"th{u}"
    procs = ServiceProcs(nats_url, clickhouse_url, prefix=prefix)
    procs.env["NETSONDE_CLICKHOUSE_DATABASE"] = f"two_hosts_{u}"
    netns_before = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    demo = None
    try:
        procs.start("graph_builder")
        port = procs.start("query_api")
        procs.start("flow_enricher")
        nats_port = int(nats_url.rsplit(":", 1)[1])
        demo = D.start(
            tmp_path / "hosts",
            nats_port,
            underlay_ends=(f"ul{u}a", f"ul{u}b"),
            env={
                "NETSONDE_SUBJECT_PREFIX": prefix,
                "NETSONDE_UPDATE_INTERVAL_S": "1",
                "NETSONDE_RECONCILE_INTERVAL_S": "1",
                "NETSONDE_LOG_LEVEL": "warning",
            },
        )
        host_a, host_b = demo.host("host-a"), demo.host("host-b")
        assert host_a.run("hostname").strip() == "host-a"

        # 1. each host its own part of the graph; the tunnel endpoints linked across hosts
        wait_until(
            lambda: (
                gremlin(port, "G.E().Has('Type','tunnel').Count()") == 1
                and gremlin(port, D.capture_query() + ".Count()") == 6
            ),
            30,
            "both hosts and the tunnel link",
        )
        status = api(port, "/api/status")
        assert status["Probes"] == ["host-a", "host-b"]
        for i, name in enumerate(("host-a", "host-b")):
            peer = f"{D.UNDERLAY}.{2 - i}"
            interfaces = gremlin(
                port, f"G.V().Has('Host','{name}', 'Type', Without('host','netns','ovsport','ovsbridge'))"
            )
            assert sorted(where(n)[1] for n in interfaces) == sorted(
                ["lo", "eth0", "br-phy", "br-int", "ovs-netdev", "vm1-eth0", "vm1/eth0", "vm1/lo", "vxlan0"]
            ), interfaces
            addrs = {a for n in interfaces for a in n["Metadata"].get("IPV4", [])}
            assert addrs == {"127.0.0.1/8", f"{D.UNDERLAY}.{i + 1}/24", f"{D.VMS}.{i + 1}/24"}
            host_node = gremlin(port, f"G.V().Has('Host','{name}','Type','host')")
            assert [n["Metadata"]["Hostname"] for n in host_node] == [name]
            assert gremlin(port, f"G.V().Has('Host','{name}','Type','netns').Values('Name')") == ["vm1"]
            tunnel = gremlin(port, f"G.V().Has('Host','{name}','Type','vxlan')")
            assert [(t["Metadata"]["LocalIP"], t["Metadata"]["RemoteIP"]) for t in tunnel] == [
                (f"{D.UNDERLAY}.{i + 1}", peer)
            ]
        [edge] = gremlin(port, "G.E().Has('Type','tunnel')")
        assert edge["Metadata"] == {
            "RelationType": "layer2",
            "Type": "tunnel",
            "TunnelType": "vxlan",
            "Key": 42,
        }
        ends = {gremlin(port, f"G.V('{edge[k]}')")[0]["Host"] for k in ("Parent", "Child")}
        assert ends == {"host-a", "host-b"}
        path = gremlin(
            port,
            "G.V().Has('Host','host-a','Type','netns','Name','vm1').Out('Name','eth0')"
            ".ShortestPathTo(Metadata('Host','host-b','Name','eth0','NetNsName','vm1'), "
            "Metadata('RelationType','layer2'))",
        )
        assert [[(n["Host"], n["Metadata"]["Name"], n["Metadata"]["Type"]) for n in p] for p in path] == [
            [
                ("host-a", "eth0", "veth"),
                ("host-a", "vm1-eth0", "veth"),
                ("host-a", "vm1-eth0", "ovsport"),
                ("host-a", "br-int", "ovsbridge"),
                ("host-a", "vxlan0", "ovsport"),
                ("host-a", "vxlan0", "vxlan"),
                ("host-b", "vxlan0", "vxlan"),
                ("host-b", "vxlan0", "ovsport"),
                ("host-b", "br-int", "ovsbridge"),
                ("host-b", "vm1-eth0", "ovsport"),
                ("host-b", "vm1-eth0", "veth"),
                ("host-b", "eth0", "veth"),
            ]
        ]

        # 2. one capture, started by both hosts' probes
        cap = api(port, "/api/capture", {"GremlinQuery": D.capture_query(), "Name": "two-hosts"})
        wait_until(
            lambda: (
                gremlin(port, f"G.V().Has('Captures.ID','{cap['UUID']}','Captures.State','active').Count()")
                == 6
            ),
            30,
            "the capture active on 6 interfaces on 2 hosts",
        )
        out = D.ping(demo)
        assert "5 received" in out, out

        # 3. one TrackingID at 6 capture points, 5 requests and 5 replies at each
        q = f"G.Flows().Has('Network.A','{D.VMS}.1','Network.B','{D.VMS}.2','Application','ICMPv4')"

        def pings(packets: int, exclude: str = "") -> list[dict] | None:
            """The ping's flows once all six capture points report `packets` each way (None before)."""
            got = [f for f in gremlin(port, q) or [] if f["TrackingID"] != exclude]
            done = [
                f for f in got if (f["Metric"]["ABPackets"], f["Metric"]["BAPackets"]) == (packets, packets)
            ]
            return got if len(got) == len(done) == 6 else None

        flows = wait_until(lambda: pings(5), 30, "the ping at six capture points, 5/5 at each")
        assert {(f["Metric"]["ABBytes"], f["Metric"]["BABytes"]) for f in flows} == {(490, 490)}
        [tracking] = {f["TrackingID"] for f in flows}
        assert len({f["NodeTID"] for f in flows}) == 6

        # 4. inside the tunnel: on each underlay, the ICMP flow's parent is the VXLAN flow between the hosts
        parents = [f["ParentUUID"] for f in flows if f.get("ParentUUID")]
        assert len(parents) == 2
        for puuid in parents:
            [outer] = gremlin(port, f"G.Flows().Has('UUID','{puuid}')")
            assert outer["LayersPath"] == "Ethernet/IPv4/UDP/VXLAN"
            assert {outer["Network"]["A"], outer["Network"]["B"]} == {f"{D.UNDERLAY}.1", f"{D.UNDERLAY}.2"}
            assert outer["Metric"]["ABPackets"] + outer["Metric"]["BAPackets"] >= 10
        [outer_a] = gremlin(port, f"G.Flows().Has('UUID','{parents[0]}')")
        [outer_b] = gremlin(port, f"G.Flows().Has('UUID','{parents[1]}')")
        assert outer_a["TrackingID"] == outer_b["TrackingID"]
        assert (
            outer_a["Metric"]["ABPackets"] + outer_a["Metric"]["BAPackets"]
            == outer_b["Metric"]["ABPackets"] + outer_b["Metric"]["BAPackets"]
        )

        # 5. Hops across both hosts, in path order: a capture point nearer the requester sees a longer RTT
        hops = gremlin(port, f"G.Flows().Has('TrackingID','{tracking}').Hops()")
        assert [where(n) for n in hops] == [
            ("host-a", "vm1/eth0"),
            ("host-a", "vm1-eth0"),
            ("host-a", "eth0"),
            ("host-b", "eth0"),
            ("host-b", "vm1-eth0"),
            ("host-b", "vm1/eth0"),
        ]
        by_rtt = gremlin(port, f"G.Flows().Has('TrackingID','{tracking}').Sort(DESC,'Metric.RTT').Hops()")
        assert [where(n) for n in by_rtt] == [where(n) for n in hops]

        # the queries `make demo` prints answer as docs/demo.md shows
        answers = {title: gremlin(port, query.replace("<id>", tracking)) for title, query in D.QUERIES}
        assert sorted(list(answers.values())[0]) == ["host-a", "host-b"]
        assert list(answers.values())[3] == [tracking]
        assert [where(n) for n in list(answers.values())[4]] == [where(n) for n in hops]
        assert sorted(f["UUID"] for f in list(answers.values())[5]) == sorted(parents)
        assert all(answers.values()), answers

        # 6. history covers both hosts
        converged_ms = int(time.time() * 1000)
        past = f"G.At({converged_ms}).V().Has('Type','netns','Name','vm1')"
        vms = wait_until(lambda: [n["Host"] for n in gremlin(port, past)], 20, "the history at that instant")
        assert sorted(vms) == ["host-a", "host-b"], gremlin(port, past)

        # 7. restart host-b's probes: host-a's part stays as it was, host-b's comes back (plus a new link)
        def state_a() -> dict[str, Any]:
            """host-a's nodes and edges, without what moves on its own (capture and link counters, and the ARP
            entries the kernel ages from REACHABLE to STALE)."""
            moving = ("Captures", "Metric", "LastUpdateMetric", "Neighbors")
            nodes = {
                n["ID"]: (n["CreatedAt"], {k: v for k, v in n["Metadata"].items() if k not in moving})
                for n in gremlin(port, "G.V().Has('Host','host-a')")
            }
            edges = {
                e["ID"]: (e["Revision"], e["Parent"], e["Child"])
                for e in gremlin(port, "G.V().Has('Host','host-a').BothE()")
            }
            return {"nodes": nodes, "edges": edges}

        before_a = state_a()
        ids_b = {n["ID"] for n in gremlin(port, "G.V().Has('Host','host-b')")}
        host_b.restart_probes()
        wait_until(lambda: host_b.probe_restarts() == 1, 30, "host-b's probes restarted")
        host_b.run("ip", "link", "add", "late0", "type", "veth", "peer", "name", "late1")
        wait_until(
            lambda: gremlin(port, "G.V().Has('Host','host-b','Name',Within('late0','late1')).Count()") == 2,
            30,
            "host-b's new probe reporting",
        )
        after_b = {n["ID"] for n in gremlin(port, "G.V().Has('Host','host-b')")}
        assert after_b - ids_b == {
            n["ID"] for n in gremlin(port, "G.V().Has('Name',Within('late0','late1'))")
        }
        assert ids_b <= after_b, "host-b's nodes keep their IDs across the probe restart"
        assert gremlin(port, "G.E().Has('Type','tunnel').Count()") == 1

        def tracks() -> dict[str, list[tuple[int, int]]]:
            out: dict[str, list[tuple[int, int]]] = {}
            for f in gremlin(port, q) or []:
                out.setdefault(f["TrackingID"], []).append(
                    (f["Metric"]["ABPackets"], f["Metric"]["BAPackets"])
                )
            return out

        # host-b's new probe-flow starts its captures on its own time: single pings (each a new ICMP id, so a
        # new TrackingID) until one is seen at all six points, then 3 pings counted exactly
        before_singles = set(tracks())

        def probe_ping() -> bool:
            D.ping(demo, 1)
            deadline = time.monotonic() + 3
            while time.monotonic() < deadline:
                if any(v == [(1, 1)] * 6 for t, v in tracks().items() if t not in before_singles):
                    return True
                time.sleep(0.3)
            return False

        wait_until(probe_ping, 40, "host-b's captures started again by its new probe-flow")
        assert state_a() == before_a, "host-a's part of the graph changed while host-b's probes restarted"
        known = set(tracks())
        out = D.ping(demo, 3)
        assert "3 received" in out, out
        [third] = wait_until(
            lambda: [t for t, v in tracks().items() if t not in known and v == [(3, 3)] * 6],
            30,
            "the 3 pings at six points, 3/3 at each",
        )
        second = gremlin(port, f"G.Flows().Has('TrackingID','{third}')")
        assert sorted(f["NodeTID"] for f in second) == sorted(f["NodeTID"] for f in flows)
        assert (
            sorted(
                (f["Metric"]["ABPackets"], f["Metric"]["BAPackets"])
                for f in gremlin(port, f"G.Flows().Has('TrackingID','{tracking}')")
            )
            == [(5, 5)] * 6
        )
    finally:
        if demo is not None:
            D.stop(demo)
        procs.stop()

    # 8. nothing left behind
    assert demo is not None
    for h in demo.hosts:
        assert not h.alive()
    for end in demo.underlay_ends:
        assert subprocess.run(["ip", "link", "show", end], capture_output=True).returncode != 0
    after = set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set()
    assert not {n for n in after - netns_before if n in ("vm1", "host-a", "host-b")}
    procs_left = subprocess.run(
        ["ps", "-eo", "stat=,comm="], capture_output=True, text=True
    ).stdout.splitlines()
    assert not [p for p in procs_left if p.split()[-1] in ("host-a", "host-b", "simhost-init")], procs_left


def test_simulated_host_is_isolated_and_leaves_nothing(nats_url: str, unique: str, tmp_path: Path) -> None:
    """A simulated host sees only its own namespaces, processes, mounts and OVS; its named namespaces and
    bridges do not exist on the machine, and stopping it ends every process and namespace it had."""
    nats_port = int(nats_url.rsplit(":", 1)[1])
    host = start_host("iso-a", tmp_path / "iso-a", nats_port, env={"NETSONDE_SUBJECT_PREFIX": f"iso{unique}"})
    try:
        assert host.run("hostname").strip() == "iso-a"
        host.run("ip", "netns", "add", f"v{unique}")
        host.run(
            "ovs-vsctl", "add-br", f"b{unique}", "--", "set", "bridge", f"b{unique}", "datapath_type=netdev"
        )
        assert host.run("ls", "/run/netns").split() == [f"v{unique}"]
        assert f"v{unique}" not in (set(os.listdir("/run/netns")) if os.path.isdir("/run/netns") else set())
        assert host.run("ip", "-br", "link", "show", f"b{unique}").split()[0] == f"b{unique}"
        assert subprocess.run(["ip", "link", "show", f"b{unique}"], capture_output=True).returncode != 0
        inside = sorted(line.split(None, 1)[1] for line in host.run("ps", "-eo", "pid=,comm=").splitlines())
        # its PID 1, OVS, both probes and the ps itself: nothing of the machine
        assert inside == sorted(["simhost-init", "ovsdb-server", "ovs-vswitchd", "python", "python", "ps"]), (
            inside
        )
        links = host.run("ip", "-br", "link").split("\n")
        assert sorted(line.split()[0] for line in links if line) == sorted(["lo", "ovs-netdev", f"b{unique}"])
    finally:
        host.stop()
    assert not host.alive()
    assert f"v{unique}" not in (os.listdir("/run/netns") if os.path.isdir("/run/netns") else [])
    procs_left = subprocess.run(["ps", "-eo", "pid="], capture_output=True, text=True).stdout.split()
    assert str(host.pid) not in procs_left and str(host.launcher) not in procs_left
