"""A fixed topology with its revision history and a fixed flow set, for the conformance suite and benchmarks.

Everything is deterministic: IDs, names, MACs, times (relative to `T0` for history, to a given `now` for
live flows). `revisions()` is the source of truth; `live_graph()` is the state after the last revision, i.e.
what graph-builder's live graph would hold.

Timeline (ms after T0):
    0       every node and edge created (revision 1)
    10_000  eth0 goes DOWN (revision 2)
    20_000  eth0 back UP, MTU 9000 (revision 3); node tmp0 + edge host->tmp0 created
    30_000  tmp0 and its edge deleted
    40_000  lo gets a new metric (revision 2)
"""

from __future__ import annotations

import random
import struct
from datetime import datetime, timezone
from typing import Any, Iterable

import msgspec

from netsonde.common import graphschema
from netsonde.common.bus.flows import Flow, FlowLayer, FlowMetric, ICMPLayer, RawPacket
from netsonde.common.bus.graph import GraphElement
from netsonde.common.graph import Graph

T0 = 1_767_225_600_000
"""2026-01-01T00:00:00Z in Unix ms: creation time of the fixed topology."""

HOST = "h1"
ORIGIN = "graph-builder.h1"


def _metric(base: int, start: int, last: int) -> dict[str, int]:
    return {"RxPackets": base, "TxPackets": base * 2, "RxBytes": base * 100, "TxBytes": base * 200,
            "Start": start, "Last": last}


def _nodes() -> list[tuple[str, dict[str, Any]]]:
    """(ID, metadata) of the fixed topology, revision 1."""
    rt = [{"ID": 254, "Src": "", "Routes": [
        {"Protocol": 2, "Prefix": "10.0.0.0/24", "NextHops": [{"Priority": 0, "IfIndex": 2}]},
        {"Protocol": 3, "Prefix": "0.0.0.0/0", "NextHops": [{"Priority": 10, "IP": "10.0.0.254", "IfIndex": 2},
                                                            {"Priority": 5, "IP": "10.0.0.253", "IfIndex": 2}]},
        {"Protocol": 3, "Prefix": "192.168.0.0/16", "NextHops": [{"Priority": 0, "IP": "10.0.0.1", "IfIndex": 2}]},
    ]}]
    neigh = [{"MAC": "aa:bb:cc:00:00:fd", "IP": "10.0.0.253", "IfIndex": 2, "State": ["REACHABLE"]},
             {"MAC": "aa:bb:cc:00:00:fe", "IP": "10.0.0.254", "IfIndex": 2, "State": ["REACHABLE"]},
             {"MAC": "aa:bb:cc:00:00:07", "IP": "10.0.0.7", "IfIndex": 2, "State": ["STALE"]}]
    return [
        ("n-host", {"Name": "h1", "Type": "host", "TID": "tid-host", "Hostname": "h1.example",
                    "CPU": [{"Cores": 2}], "RoutingTables": rt, "Neighbors": neigh}),
        ("n-eth0", {"Name": "eth0", "Type": "device", "TID": "tid-eth0", "MAC": "02:00:00:00:00:01",
                    "IfIndex": 2, "MTU": 1500, "State": "UP", "IPV4": ["10.0.0.1/24"], "IPV6": ["fe80::1/64"],
                    "Driver": "virtio_net", "LinkFlags": ["UP", "BROADCAST", "MULTICAST", "LOWER_UP"],
                    "Features": {"highdma": True, "tso": False}, "Speed": 10000,
                    "LastUpdateMetric": _metric(10, T0 - 30_000, T0)}),
        ("n-lo", {"Name": "lo", "Type": "device", "TID": "tid-lo", "IfIndex": 1, "MTU": 65536, "State": "UP",
                  "IPV4": ["127.0.0.1/8"], "EncapType": "loopback",
                  "LastUpdateMetric": _metric(1, T0 - 30_000, T0)}),
        ("n-brint", {"Name": "br-int", "Type": "ovsbridge", "TID": "tid-brint", "UUID": "u-brint"}),
        ("n-port1", {"Name": "port1", "Type": "ovsport", "UUID": "u-port1", "OfPort": 1}),
        ("n-port2", {"Name": "port2", "Type": "ovsport", "UUID": "u-port2", "OfPort": 2}),
        ("n-brintif", {"Name": "br-int", "Type": "internal", "Driver": "openvswitch", "TID": "tid-brintif",
                       "MAC": "02:00:00:00:00:0b", "IfIndex": 5, "MTU": 1500, "State": "UP"}),
        ("n-vm1veth", {"Name": "vm1-veth", "Type": "veth", "TID": "tid-vm1veth", "MAC": "02:00:00:00:01:01",
                       "IfIndex": 6, "MTU": 1500, "State": "UP", "PeerIfIndex": 2, "LinkNetNsName": "ns1",
                       "Captures": [{"ID": "cap-1", "State": "active", "Type": "afpacket"}]}),
        ("n-vm2veth", {"Name": "vm2-veth", "Type": "veth", "TID": "tid-vm2veth", "MAC": "02:00:00:00:02:01",
                       "IfIndex": 7, "MTU": 1500, "State": "DOWN", "PeerIfIndex": 2, "LinkNetNsName": "ns2"}),
        ("n-ns1", {"Name": "ns1", "Type": "netns", "TID": "tid-ns1", "Path": "/var/run/netns/ns1", "Inode": 4001}),
        ("n-ns2", {"Name": "ns2", "Type": "netns", "TID": "tid-ns2", "Path": "/var/run/netns/ns2", "Inode": 4002}),
        ("n-vm1eth0", {"Name": "eth0", "Type": "veth", "TID": "tid-vm1eth0", "MAC": "02:00:00:00:01:02",
                       "IfIndex": 2, "MTU": 1450, "State": "UP", "IPV4": ["192.168.1.10/24"],
                       "PeerIntfMAC": "02:00:00:00:01:01"}),
        ("n-vm2eth0", {"Name": "eth0", "Type": "veth", "TID": "tid-vm2eth0", "MAC": "02:00:00:00:02:02",
                       "IfIndex": 2, "MTU": 1450, "State": "UP", "IPV4": ["192.168.1.20/24", "10.1.0.20/16"],
                       "PeerIntfMAC": "02:00:00:00:02:01"}),
        ("n-vm1lo", {"Name": "lo", "Type": "device", "TID": "tid-vm1lo", "IfIndex": 1, "MTU": 65536,
                     "IPV4": ["127.0.0.1/8"]}),
        ("n-ctr", {"Name": "web", "Type": "container", "Docker": {"Labels": {
            "io.kubernetes.pod.namespace": "my-ns", "app": "web"}, "Image": "nginx:1.25"}}),
    ]


def _edges() -> list[tuple[str, str, str, dict[str, Any]]]:
    own = {"RelationType": "ownership"}
    l2 = {"RelationType": "layer2"}
    return [
        ("e-host-eth0", "n-host", "n-eth0", own), ("e-host-lo", "n-host", "n-lo", own),
        ("e-host-brint", "n-host", "n-brint", own), ("e-host-ns1", "n-host", "n-ns1", own),
        ("e-host-ns2", "n-host", "n-ns2", own), ("e-host-vm1veth", "n-host", "n-vm1veth", own),
        ("e-host-vm2veth", "n-host", "n-vm2veth", own),
        ("e-brint-port1-o", "n-brint", "n-port1", own), ("e-brint-port1-l", "n-brint", "n-port1", l2),
        ("e-brint-port2-o", "n-brint", "n-port2", own), ("e-brint-port2-l", "n-brint", "n-port2", l2),
        ("e-port1-vm1veth", "n-port1", "n-vm1veth", l2), ("e-port2-vm2veth", "n-port2", "n-vm2veth", l2),
        ("e-brint-brintif", "n-brint", "n-brintif", own),
        ("e-ns1-vm1eth0", "n-ns1", "n-vm1eth0", own), ("e-ns1-vm1lo", "n-ns1", "n-vm1lo", own),
        ("e-ns2-vm2eth0", "n-ns2", "n-vm2eth0", own),
        ("e-veth1", "n-vm1veth", "n-vm1eth0", {"RelationType": "layer2", "Type": "veth"}),
        ("e-veth2", "n-vm2veth", "n-vm2eth0", {"RelationType": "layer2", "Type": "veth"}),
        ("e-ctr-ns1", "n-ctr", "n-ns1", {"RelationType": "association", "Weight": 3}),
    ]


def revisions() -> list[dict[str, Any]]:
    """Every revision row of the fixed topology's history (see the module docstring), as dicts with the
    columns of graph_revisions (times in Unix ms, metadata as a dict)."""
    rows: list[dict[str, Any]] = []

    def row(kind: str, id_: str, rev: int, created: int, updated: int, md: dict[str, Any],
            parent: str = "", child: str = "", deleted: int | None = None) -> None:
        rows.append({"kind": kind, "id": id_, "revision": rev, "host": HOST, "origin": ORIGIN,
                     "created_at": created, "updated_at": updated, "deleted_at": deleted, "parent": parent,
                     "child": child, "metadata": md})

    nodes = dict(_nodes())
    for i, (nid, md) in enumerate(_nodes()):
        row("node", nid, 1, T0 + i, T0 + i, md)
    for i, (eid, p, c, md) in enumerate(_edges()):
        row("edge", eid, 1, T0 + 100 + i, T0 + 100 + i, md, p, c)
    eth0 = nodes["n-eth0"]
    row("node", "n-eth0", 2, T0 + 1, T0 + 10_000, dict(eth0, State="DOWN", LastUpdateMetric=_metric(20, T0, T0 + 10_000)))
    row("node", "n-eth0", 3, T0 + 1, T0 + 20_000,
        dict(eth0, State="UP", MTU=9000, LastUpdateMetric=_metric(30, T0 + 10_000, T0 + 20_000)))
    tmp = {"Name": "tmp0", "Type": "veth", "MTU": 1500, "State": "UP"}
    row("node", "n-tmp0", 1, T0 + 20_000, T0 + 20_000, tmp)
    row("edge", "e-host-tmp0", 1, T0 + 20_000, T0 + 20_000, {"RelationType": "ownership"}, "n-host", "n-tmp0")
    row("edge", "e-host-tmp0", 2, T0 + 20_000, T0 + 30_000, {"RelationType": "ownership"}, "n-host", "n-tmp0",
        deleted=T0 + 30_000)
    row("node", "n-tmp0", 2, T0 + 20_000, T0 + 30_000, tmp, deleted=T0 + 30_000)
    lo = nodes["n-lo"]
    row("node", "n-lo", 2, T0 + 2, T0 + 40_000, dict(lo, LastUpdateMetric=_metric(5, T0 + 10_000, T0 + 40_000)))
    return rows


def to_element(r: dict[str, Any]) -> GraphElement:
    return GraphElement(ID=r["id"], Metadata=r["metadata"], Host=r["host"], Origin=r["origin"],
                        CreatedAt=r["created_at"], UpdatedAt=r["updated_at"], Revision=r["revision"],
                        DeletedAt=r["deleted_at"], Parent=r["parent"], Child=r["child"])


def live_graph(rows: Iterable[dict[str, Any]] | None = None) -> Graph:
    """The graph after the last revision (deleted elements gone), as a live graph holds it."""
    latest: dict[tuple[str, str], dict[str, Any]] = {}
    for r in rows if rows is not None else revisions():
        k = (r["kind"], r["id"])
        if k not in latest or r["revision"] > latest[k]["revision"]:
            latest[k] = r
    g = Graph()
    for (kind, _), r in sorted(latest.items()):
        if r["deleted_at"] is None and kind == "node":
            g.upsert_node(to_element(r))
    for (kind, _), r in sorted(latest.items()):
        if r["deleted_at"] is None and kind == "edge":
            g.upsert_edge(to_element(r))
    return g


REVISION_COLUMNS = tuple(name for name, _ in graphschema.COLUMNS)


def _dt(ms: int | None) -> datetime | None:
    return None if ms is None else datetime.fromtimestamp(ms / 1000, tz=timezone.utc)


def revision_columns(rows: list[dict[str, Any]]) -> list[list[Any]]:
    """Column-oriented data for `client.insert('graph_revisions', data, column_names=REVISION_COLUMNS,
    column_oriented=True)`."""
    enc = msgspec.json.encode
    return [
        [r["kind"] for r in rows], [r["id"] for r in rows], [r["revision"] for r in rows],
        [r["host"] for r in rows], [r["origin"] for r in rows], [_dt(r["created_at"]) for r in rows],
        [_dt(r["updated_at"]) for r in rows], [_dt(r["deleted_at"]) for r in rows],
        [r["parent"] for r in rows], [r["child"] for r in rows], [enc(r["metadata"]).decode() for r in rows],
    ]


def insert_revisions(client: Any, rows: list[dict[str, Any]], table: str = "graph_revisions") -> None:
    client.insert(table, revision_columns(rows), column_names=list(REVISION_COLUMNS), column_oriented=True)


# --- flows ------------------------------------------------------------------------------------------------
def icmp_packet(src_mac: str, dst_mac: str, src_ip: str, dst_ip: str, icmp_type: int, ident: int) -> bytes:
    """An Ethernet/IPv4/ICMP echo frame (checksums left zero: enough for BPF and decoders that don't check)."""
    mac = lambda m: bytes(int(x, 16) for x in m.split(":"))  # noqa: E731
    ip = lambda a: bytes(int(x) for x in a.split("."))  # noqa: E731
    icmp = struct.pack("!BBHHH", icmp_type, 0, 0, ident, 1) + b"netsonde"
    iph = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(icmp), 1, 0, 64, 1, 0, ip(src_ip), ip(dst_ip))
    return mac(dst_mac) + mac(src_mac) + b"\x08\x00" + iph + icmp


def flows(now: int) -> list[Flow]:
    """The fixed flow set: six live flows (Last a few seconds before `now`) and three historical ones
    around T0 + 15 s. Two live flows share a TrackingID (one ICMP conversation seen at two capture points)."""
    def mk(uuid: str, tid: str, tracking: str, path: str, app: str, link: tuple[str, str],
           net: tuple[str, str] | None, tr: tuple[str, int, int] | None, metric: tuple[int, int, int, int],
           start: int, last: int, icmp: str | None = None, rtt: int = 0, parent: str = "",
           raw: list[RawPacket] | None = None) -> Flow:
        m = FlowMetric(ABPackets=metric[0], ABBytes=metric[1], BAPackets=metric[2], BABytes=metric[3],
                       Start=start, Last=last, RTT=rtt)
        return Flow(UUID=uuid, LayersPath=path, Application=app, TrackingID=tracking, L3TrackingID="l3-" + tracking,
                    NodeTID=tid, Start=start, Last=last, Metric=m,
                    LastUpdateMetric=FlowMetric(ABPackets=metric[0] // 2, ABBytes=metric[1] // 2,
                                                BAPackets=metric[2] // 2, BABytes=metric[3] // 2,
                                                Start=last - 10_000, Last=last),
                    Link=FlowLayer("ETHERNET", link[0], link[1]),
                    Network=FlowLayer("IPV4", net[0], net[1]) if net else None,
                    Transport=FlowLayer(tr[0], tr[1], tr[2]) if tr else None,
                    ICMP=ICMPLayer(icmp, 0, 7) if icmp else None, ParentUUID=parent,
                    LastRawPackets=raw or [], RawPacketsCaptured=len(raw or []), Host=HOST)

    vm1, vm2, veth1 = "02:00:00:00:01:02", "02:00:00:00:02:02", "02:00:00:00:01:01"
    req = icmp_packet(vm1, vm2, "192.168.1.10", "192.168.1.20", 8, 7)
    rep = icmp_packet(vm2, vm1, "192.168.1.20", "192.168.1.10", 0, 7)
    raw = [RawPacket(Timestamp=now - 5_000, Index=0, Data=req), RawPacket(Timestamp=now - 4_999, Index=1, Data=rep)]
    return [
        mk("f-icmp-a", "tid-vm1eth0", "trk-icmp", "Ethernet/IPv4/ICMPv4", "ICMPv4", (vm1, vm2),
           ("192.168.1.10", "192.168.1.20"), None, (5, 490, 5, 490), now - 20_000, now - 4_000, icmp="ECHO",
           rtt=120_000, raw=raw),
        mk("f-icmp-b", "tid-vm1veth", "trk-icmp", "Ethernet/IPv4/ICMPv4", "ICMPv4", (vm1, vm2),
           ("192.168.1.10", "192.168.1.20"), None, (5, 490, 5, 490), now - 20_000, now - 4_000, icmp="ECHO",
           rtt=150_000),
        mk("f-tcp", "tid-eth0", "trk-tcp", "Ethernet/IPv4/TCP", "TCP", ("02:00:00:00:00:01", "aa:bb:cc:00:00:fe"),
           ("10.0.0.1", "93.184.216.34"), ("TCP", 43210, 443), (12, 1500, 10, 9000), now - 60_000, now - 2_000,
           rtt=3_000_000),
        mk("f-udp", "tid-eth0", "trk-udp", "Ethernet/IPv4/UDP/DNS", "DNS", ("02:00:00:00:00:01", "aa:bb:cc:00:00:fe"),
           ("10.0.0.1", "10.0.0.254"), ("UDP", 53000, 53), (1, 80, 1, 120), now - 30_000, now - 29_000),
        mk("f-vxlan", "tid-brint", "trk-vxlan", "Ethernet/IPv4/UDP/VXLAN", "VXLAN", ("02:00:00:00:00:0b", "aa:bb:cc:00:00:fe"),
           ("10.0.0.1", "10.0.0.9"), ("UDP", 40000, 4789), (100, 150_000, 0, 0), now - 50_000, now - 1_000),
        mk("f-arp", "tid-vm2eth0", "trk-arp", "Ethernet/ARP", "ARP", (vm2, "ff:ff:ff:ff:ff:ff"), None, None,
           (1, 42, 0, 0), now - 40_000, now - 40_000),
        # historical (around T0 + 15 s)
        mk("f-old-1", "tid-eth0", "trk-old-1", "Ethernet/IPv4/TCP", "TCP", ("02:00:00:00:00:01", "aa:bb:cc:00:00:fe"),
           ("10.0.0.1", "10.0.0.50"), ("TCP", 40001, 22), (50, 5000, 40, 8000), T0 + 5_000, T0 + 15_000),
        mk("f-old-2", "tid-vm1eth0", "trk-old-2", "Ethernet/IPv4/ICMPv4", "ICMPv4", (vm1, vm2),
           ("192.168.1.10", "192.168.1.20"), None, (3, 294, 3, 294), T0 + 12_000, T0 + 14_000, icmp="ECHO"),
        mk("f-old-3", "tid-eth0", "trk-old-3", "Ethernet/IPv4/UDP", "UDP", ("02:00:00:00:00:01", "aa:bb:cc:00:00:fe"),
           ("10.0.0.1", "10.0.0.60"), ("UDP", 5000, 5001), (7, 700, 0, 0), T0 + 25_000, T0 + 35_000),
    ]


def flow_updates(now: int) -> list[Flow]:
    """`flows(now)` plus an earlier update of two flows (so that latest-state selection is exercised):
    f-tcp had fewer packets 20 s before its last update, f-old-1 at T0 + 10 s."""
    out = flows(now)
    by = {f.UUID: f for f in out}
    extra = []
    for uuid, at in (("f-tcp", now - 22_000), ("f-old-1", T0 + 10_000)):
        f = by[uuid]
        m = msgspec.structs.replace(f.Metric, ABPackets=f.Metric.ABPackets // 2, Last=at)
        lum = FlowMetric(ABPackets=m.ABPackets, ABBytes=m.ABBytes // 2, Start=at - 10_000, Last=at)
        extra.append(msgspec.structs.replace(f, Last=at, Metric=m, LastUpdateMetric=lum, LastRawPackets=[]))
    return extra + out


def insert_flows(client: Any, flow_list: list[Flow]) -> None:
    """Write flows the way flow-enricher does (columnar inserts into flows, flow_metrics, flow_raw_packets)."""
    from netsonde.common import flowschema as fs
    for table, cols in ((fs.FLOWS_TABLE, fs.flows_to_columns(flow_list, "test")),
                        (fs.METRICS_TABLE, fs.metrics_to_columns(flow_list, "test")),
                        (fs.RAW_PACKETS_TABLE, fs.raw_packets_to_columns(flow_list, "test"))):
        if not cols["UUID"]:
            continue
        names = list(cols)
        client.insert(table, [cols[n] for n in names], column_names=names, column_oriented=True)


# --- generated graphs (benchmarks) ------------------------------------------------------------------------
def generated_graph(n_nodes: int, n_edges: int, seed: int = 1) -> Graph:
    """A random graph shaped like a big deployment: hosts own interfaces (ownership tree), plus random
    layer2 links, `n_edges` edges in all. Node i has Name `intf-i`, Type from a small set, a unique MAC."""
    rnd = random.Random(seed)
    g = Graph()
    types = ("veth", "device", "ovsport", "internal", "bridge")
    hosts = max(n_nodes // 100, 1)
    for i in range(n_nodes):
        md: dict[str, Any] = {"Name": f"intf-{i}", "Type": "host" if i < hosts else types[i % len(types)],
                              "MAC": f"02:{(i >> 24) & 255:02x}:{(i >> 16) & 255:02x}:{(i >> 8) & 255:02x}:{i & 255:02x}:00",
                              "TID": f"tid-{i}", "MTU": 1500 + (i % 3) * 50, "IfIndex": i % 1000}
        g.upsert_node(GraphElement(ID=f"n{i}", Metadata=md, Host=f"h{i % hosts}", Origin="bench",
                                   CreatedAt=T0 + i, UpdatedAt=T0 + i, Revision=1))
    e = 0
    for i in range(hosts, n_nodes):
        if e >= n_edges:
            break
        g.upsert_edge(GraphElement(ID=f"e{e}", Metadata={"RelationType": "ownership"}, Host="h", Origin="bench",
                                   CreatedAt=T0, UpdatedAt=T0, Revision=1, Parent=f"n{i % hosts}", Child=f"n{i}"))
        e += 1
    while e < n_edges:
        a, b = rnd.randrange(hosts, n_nodes), rnd.randrange(hosts, n_nodes)
        if a == b:
            continue
        g.upsert_edge(GraphElement(ID=f"e{e}", Metadata={"RelationType": "layer2"}, Host="h", Origin="bench",
                                   CreatedAt=T0, UpdatedAt=T0, Revision=1, Parent=f"n{a}", Child=f"n{b}"))
        e += 1
    return g


def graph_revision_rows(g: Graph, updates_per_node: int = 1, step_ms: int = 1000) -> list[dict[str, Any]]:
    """Revision rows for a graph: revision 1 of everything at its CreatedAt, then `updates_per_node` metadata
    updates per node spaced `step_ms` apart (the last state equals the graph)."""
    rows = []
    for n in g.nodes.values():
        for r in range(1, updates_per_node + 2):
            md = dict(n.Metadata, Seq=r) if r <= updates_per_node else n.Metadata
            rows.append({"kind": "node", "id": n.ID, "revision": r, "host": n.Host, "origin": n.Origin,
                         "created_at": n.CreatedAt, "updated_at": n.CreatedAt + (r - 1) * step_ms,
                         "deleted_at": None, "parent": "", "child": "", "metadata": md})
    for e in g.edges.values():
        rows.append({"kind": "edge", "id": e.ID, "revision": 1, "host": e.Host, "origin": e.Origin,
                     "created_at": e.CreatedAt, "updated_at": e.CreatedAt, "deleted_at": None,
                     "parent": e.Parent, "child": e.Child, "metadata": e.Metadata})
    return rows
