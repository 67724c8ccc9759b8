"""The host-state builder, diffing, splitting and the shared digest, on in-memory watcher contents."""

from __future__ import annotations

import hashlib
import json
import uuid
from dataclasses import dataclass, field
from typing import Any

import msgspec

from netsonde.common import ids
from netsonde.common.bus.topology import DigestCache, ProbeEdge, ProbeNode, TopologyMessage, state_digest
from netsonde.probe_topology.builder import build
from netsonde.probe_topology.netns import NetNs
from netsonde.probe_topology.ovsdb import OvsBridge, OvsInterface, OvsPort, OvsState
from netsonde.probe_topology.publish import Delta, diff, split

OID = uuid.NAMESPACE_OID


@dataclass
class Src:
    """The data an NsWatcher holds for one namespace."""

    ns: NetNs
    links: dict[int, dict[str, Any]] = field(default_factory=dict)
    addrs: dict[int, set[tuple[str, str]]] = field(default_factory=dict)
    metrics: dict[int, dict[str, int]] = field(default_factory=dict)
    metric_ts: dict[int, int] = field(default_factory=dict)
    first_seen: dict[int, int] = field(default_factory=dict)
    drv: dict[int, tuple[str, dict[str, Any]]] = field(default_factory=dict)
    nsids: dict[int, int] = field(default_factory=dict)

    def add(self, index: int, name: str, type_: str, kind: str | None = None, **md: Any) -> None:
        self.links[index] = {"Name": name, "IfIndex": index, "Type": type_, "Kind": kind if kind is not None
                             else ("" if type_ == "device" else type_), "State": "UP", **md}


def root() -> Src:
    return Src(NetNs(4026531840, "/proc/self/ns/net", "", "root"))


def named(name: str, inode: int) -> Src:
    return Src(NetNs(inode, f"/run/netns/{name}", name, "named"))


def by_name(state, name, type_=None):
    found = [n for n in state.nodes.values() if n.Metadata["Name"] == name
             and (type_ is None or n.Metadata["Type"] == type_)]
    assert len(found) == 1, (name, found)
    return found[0]


def edge(state, parent, child, **md):
    return [e for e in state.edges.values() if e.Parent == parent.ID and e.Child == child.ID
            and all(e.Metadata.get(k) == v for k, v in md.items())]


def test_host_netns_interfaces_and_tids():
    r, ns = root(), named("blue", 4026532001)
    r.add(1, "lo", "device")
    r.add(10, "veth-a", "veth", PeerIfIndex=2, LinkNetNsID=0)
    ns.add(2, "eth0", "veth", PeerIfIndex=10, LinkNetNsID=0)
    ns.addrs[2] = {("IPV4", "10.1.0.2/24"), ("IPV6", "fd00::2/64"), ("IPV4", "10.1.0.3/24")}
    ns.metrics[2] = {"RxPackets": 1}
    ns.first_seen[2], ns.metric_ts[2] = 100, 200
    ns.drv[2] = ("eth0", {"Driver": "veth", "Speed": 10000})
    s = build("h1", "machine", [r, ns], None)

    host = by_name(s, "h1", "host")
    assert host.ID == ids.host_node_id("h1") and host.Metadata["Hostname"] == "machine"
    host_tid = str(uuid.uuid5(OID, "h1"))
    assert host.Metadata["TID"] == host_tid
    netns = by_name(s, "blue", "netns")
    assert netns.Metadata == {"Name": "blue", "Type": "netns", "Path": "/run/netns/blue", "Inode": 4026532001,
                              "Manager": "netns", "Host": "h1",
                              "TID": str(uuid.uuid5(OID, host_tid + "/run/netns/blue" + "netns"))}
    eth0 = by_name(s, "eth0")
    assert eth0.ID == ids.interface_node_id("h1", 4026532001, 2)
    md = eth0.Metadata
    assert md["IPV4"] == ["10.1.0.2/24", "10.1.0.3/24"] and md["IPV6"] == ["fd00::2/64"]
    assert md["Metric"] == {"RxPackets": 1, "Start": 100, "Last": 200}
    assert md["Driver"] == "veth" and md["Speed"] == 10000 and md["Host"] == "h1"
    assert md["NetNsPath"] == "/run/netns/blue" and "Kind" not in md
    assert md["TID"] == str(uuid.uuid5(OID, netns.Metadata["TID"] + "eth0" + "veth"))
    lo = by_name(s, "lo")
    assert lo.Metadata["TID"] == str(uuid.uuid5(OID, host_tid + "lo" + "device"))
    assert "NetNsPath" not in lo.Metadata
    assert edge(s, host, netns, RelationType="ownership")
    assert edge(s, netns, eth0, RelationType="ownership")
    assert edge(s, host, lo, RelationType="ownership")
    veth_a = by_name(s, "veth-a")
    (peer_edge,) = [e for e in s.edges.values() if e.Metadata.get("Type") == "veth"]
    assert {peer_edge.Parent, peer_edge.Child} == {veth_a.ID, eth0.ID}
    assert peer_edge.Metadata == {"RelationType": "layer2", "Type": "veth"}
    assert peer_edge.ID == ids.edge_id(peer_edge.Parent, peer_edge.Child, "layer2")
    assert veth_a.Metadata["LinkNetNsName"] == "blue" and "LinkNetNsName" not in md


def test_veth_peers_with_colliding_indexes_are_told_apart():
    r, a, b = root(), named("a", 11), named("b", 12)
    r.add(10, "to-a", "veth", PeerIfIndex=2, LinkNetNsID=0)
    r.add(11, "to-b", "veth", PeerIfIndex=2, LinkNetNsID=1)
    a.add(2, "eth0", "veth", PeerIfIndex=10, LinkNetNsID=0)
    b.add(2, "eth0", "veth", PeerIfIndex=11, LinkNetNsID=0)
    s = build("h", "h", [r, a, b], None)
    ea, eb = s.nodes[ids.interface_node_id("h", 11, 2)], s.nodes[ids.interface_node_id("h", 12, 2)]
    to_a, to_b = by_name(s, "to-a"), by_name(s, "to-b")
    pairs = {frozenset((e.Parent, e.Child)) for e in s.edges.values() if e.Metadata.get("Type") == "veth"}
    assert pairs == {frozenset((to_a.ID, ea.ID)), frozenset((to_b.ID, eb.ID))}
    assert to_a.Metadata["LinkNetNsName"] == "a" and to_b.Metadata["LinkNetNsName"] == "b"


def test_nsid_resolution_wins_over_index_matching():
    r, a, b = root(), named("a", 11), named("b", 12)
    r.nsids = {5: 12}
    r.add(10, "to-b", "veth", PeerIfIndex=2, LinkNetNsID=5)
    a.add(2, "decoy", "veth", PeerIfIndex=10, LinkNetNsID=0)  # would match by indexes alone
    b.add(2, "eth0", "veth", PeerIfIndex=10)  # b has no nsid for the root namespace: no LinkNetNsID
    s = build("h", "h", [r, a, b], None)
    to_b = by_name(s, "to-b")
    pairs = {frozenset((e.Parent, e.Child)) for e in s.edges.values() if e.Metadata.get("Type") == "veth"}
    assert frozenset((to_b.ID, by_name(s, "eth0").ID)) in pairs
    assert frozenset((to_b.ID, by_name(s, "decoy").ID)) not in pairs
    assert to_b.Metadata["LinkNetNsName"] == "b"
    # a macvlan moved into a namespace finds its parent through the nsid too
    b.nsids = {3: 11}
    a.add(7, "uplink", "device")
    b.add(9, "mv", "macvlan", ParentIndex=7, LinkNetNsID=3)
    s = build("h", "h", [r, a, b], None)
    assert edge(s, by_name(s, "uplink"), by_name(s, "mv"), RelationType="layer2", Type="macvlan")


def test_bridge_bond_vlan_macvlan_relations():
    r = root()
    r.add(2, "eth0", "device", MasterIndex=5)
    r.add(3, "eth1", "device", MasterIndex=5)
    r.add(5, "bond0", "bond", BondMode="802.3ad", MasterIndex=6)
    r.add(6, "br0", "bridge")
    r.add(7, "bond0.10", "vlan", ParentIndex=5, Vlan=10)
    r.add(8, "mv0", "macvlan", ParentIndex=2)
    r.add(9, "ovs-system", "openvswitch")
    r.add(12, "tap9", "tun", MasterIndex=9)
    s = build("h", "h", [r], None)
    bond, br = by_name(s, "bond0"), by_name(s, "br0")
    assert edge(s, bond, by_name(s, "eth0"), RelationType="layer2")
    assert edge(s, bond, by_name(s, "eth1"), RelationType="layer2")
    assert edge(s, br, bond, RelationType="layer2")
    assert edge(s, bond, by_name(s, "bond0.10"), RelationType="layer2", Type="vlan")
    assert edge(s, by_name(s, "eth0"), by_name(s, "mv0"), RelationType="layer2", Type="macvlan")
    assert not edge(s, by_name(s, "ovs-system"), by_name(s, "tap9"))  # OVS membership comes from OVSDB


def ovs_state() -> OvsState:
    st = OvsState(version="3.1.0")
    st.bridges["b1"] = OvsBridge("b1", "br-int", ("p1", "p2", "p3", "p4"), {"k": "v"}, "netdev")
    st.bridges["b2"] = OvsBridge("b2", "br-ex", ("p5",))
    st.ports["p1"] = OvsPort("p1", "br-int", ("i1",))
    st.ports["p2"] = OvsPort("p2", "vm1", ("i2",), tag=10)
    st.ports["p3"] = OvsPort("p3", "patch-ex", ("i3",))
    st.ports["p4"] = OvsPort("p4", "vx1", ("i4",))
    st.ports["p5"] = OvsPort("p5", "patch-int", ("i5",))
    st.interfaces["i1"] = OvsInterface("i1", "br-int", "internal", 65534, {"iface-id": "x"})
    st.interfaces["i2"] = OvsInterface("i2", "vm1", "", 1)
    st.interfaces["i3"] = OvsInterface("i3", "patch-ex", "patch", 2, options={"peer": "patch-int"})
    st.interfaces["i4"] = OvsInterface("i4", "vx1", "vxlan", 3, options={"remote_ip": "10.0.0.2"})
    st.interfaces["i5"] = OvsInterface("i5", "patch-int", "patch", 1, options={"peer": "patch-ex"})
    return st


def test_ovs_merge_and_relations():
    r = root()
    r.add(20, "br-int", "tun", kind="tun", TunType="tap")
    r.add(21, "vm1", "veth", PeerIfIndex=22)
    r.add(22, "vm1-peer", "veth", PeerIfIndex=21)
    s = build("h", "h", [r], ovs_state())
    host = by_name(s, "h", "host")
    brn = by_name(s, "br-int", "ovsbridge")
    assert brn.ID == ids.ovs_node_id("h", "b1")
    assert brn.Metadata["TID"] == str(uuid.uuid5(OID, str(uuid.uuid5(OID, "h")) + "b1" + "ovsbridge"))
    assert brn.Metadata["ExtID"] == {"k": "v"} and brn.Metadata["Ovs"]["DatapathType"] == "netdev"
    assert edge(s, host, brn, RelationType="ownership")
    internal = by_name(s, "br-int", "internal")  # netlink tap + OVS internal = one node
    assert internal.ID == ids.interface_node_id("h", r.ns.inode, 20)
    assert internal.Metadata["UUID"] == "i1" and internal.Metadata["OfPort"] == 65534
    assert internal.Metadata["Driver"] == "openvswitch" and internal.Metadata["IfIndex"] == 20
    assert edge(s, host, internal, RelationType="ownership")
    vm1 = by_name(s, "vm1", "veth")  # system port keeps the netlink type
    assert vm1.Metadata["UUID"] == "i2"
    port = by_name(s, "vm1", "ovsport")
    assert port.Metadata["Vlans"] == [10]
    assert edge(s, brn, port, RelationType="ownership") and edge(s, brn, port, RelationType="layer2")
    assert edge(s, port, vm1, RelationType="layer2")
    pe, pi = by_name(s, "patch-ex", "patch"), by_name(s, "patch-int", "patch")
    assert edge(s, brn, pe, RelationType="ownership")
    assert edge(s, by_name(s, "br-ex", "ovsbridge"), pi, RelationType="ownership")
    assert len([e for e in s.edges.values() if {e.Parent, e.Child} == {pe.ID, pi.ID}
                and e.Metadata == {"RelationType": "layer2", "Type": "patch"}]) == 1
    vx = by_name(s, "vx1", "vxlan")
    assert vx.Metadata["RemoteIP"] == "10.0.0.2" and edge(s, brn, vx, RelationType="ownership")
    assert vx.Metadata["TID"] == str(uuid.uuid5(OID, brn.Metadata["TID"] + "vx1" + "vxlan"))
    assert len(s.nodes) == len({n.ID for n in s.nodes.values()})


def test_ids_are_deterministic():
    r = root()
    r.add(3, "x", "device")
    assert build("h", "h", [r], ovs_state()).nodes.keys() == build("h", "h", [r], ovs_state()).nodes.keys()
    assert ids.interface_node_id("h", 1, 3) != ids.interface_node_id("h", 2, 3)
    assert ids.interface_node_id("h", 1, 3) != ids.interface_node_id("g", 1, 3)


def test_diff_and_split():
    r = root()
    for i in range(1, 101):
        r.add(i, f"if{i}", "device")
    a = build("h", "h", [r], None)
    r.links[5]["MTU"] = 9000
    del r.links[7]
    r.add(200, "new", "device")
    b = build("h", "h", [r], None)
    d = diff(a, b)
    assert sorted(n.Metadata["Name"] for n in d.nodes) == ["if5", "new"]
    assert d.deleted_nodes == [ids.interface_node_id("h", r.ns.inode, 7)]
    assert len(d.edges) == 1 and len(d.deleted_edges) == 1
    assert len(diff(b, b)) == 0
    whole = Delta(list(b.nodes.values()), list(b.edges.values()), deleted_edges=["x" * 36] * 3,
                  deleted_nodes=["y" * 36] * 2)
    parts = split(whole, 50, 1_000_000)
    assert [len(p) for p in parts] == [50, 50, 50, 50, 6] and sum(len(p) for p in parts) == len(whole)
    # order kept: node upserts first, node deletions last
    flat = [x for p in parts for x in (*p.nodes, *p.edges, *p.deleted_edges, *p.deleted_nodes)]
    assert flat[:len(whole.nodes)] == whole.nodes and flat[-2:] == ["y" * 36] * 2
    small = split(whole, 10_000, 12_000)
    enc = msgspec.msgpack.Encoder()
    for p in small:
        msg = TopologyMessage(host="h", kind="delta", boot="b", seq=1, ts=1, nodes=p.nodes, edges=p.edges,
                              deleted_nodes=p.deleted_nodes, deleted_edges=p.deleted_edges)
        assert len(enc.encode(msg)) <= 12_000
    assert len(small) > 1


def test_state_digest_matches_its_documented_algorithm():
    nodes = [ProbeNode(ID="n2", Metadata={"b": [1, 2], "a": {"z": 1, "y": "é"}}), ProbeNode(ID="n1", Metadata={})]
    edges = [ProbeEdge(ID="e1", Parent="n1", Child="n2", Metadata={"RelationType": "ownership"})]
    c = lambda x: json.dumps(x, sort_keys=True, separators=(",", ":"), ensure_ascii=False)  # noqa: E731
    lines = sorted([f"N|n2|{c(nodes[0].Metadata)}", "N|n1|{}", f"E|e1|n1|n2|{c(edges[0].Metadata)}"])
    assert state_digest(nodes, edges) == hashlib.sha1("\n".join(lines).encode()).hexdigest()
    assert state_digest(reversed(nodes), edges) == state_digest(nodes, edges)
    assert state_digest([], []) == hashlib.sha1(b"").hexdigest()
    changed = [ProbeNode(ID="n2", Metadata={"b": [2, 1], "a": {"z": 1, "y": "é"}}), nodes[1]]
    assert state_digest(changed, edges) != state_digest(nodes, edges)


def test_digest_cache_matches_state_digest_across_changes():
    """The cached digest (probe and graph-builder) equals the documented algorithm after replacements,
    additions and deletions of nodes and edges, and sees a replaced element whose content changed."""
    cache = DigestCache()
    nodes = {f"n{i}": ProbeNode(ID=f"n{i}", Metadata={"Name": f"x{i}", "F": {"b": 1, "a": [1, 2]}}) for i in range(50)}
    edges = {f"e{i}": ProbeEdge(ID=f"e{i}", Parent=f"n{i}", Child=f"n{i + 1}", Metadata={"RelationType": "layer2"})
             for i in range(40)}
    digests = set()
    for step in range(20):
        got = cache.digest(nodes.values(), edges.values())
        assert got == state_digest(nodes.values(), edges.values()), step
        digests.add(got)
        nodes[f"n{step}"] = ProbeNode(ID=f"n{step}", Metadata={**nodes[f"n{step}"].Metadata, "v": step})
        nodes.pop(f"n{49 - step}")
        edges[f"x{step}"] = ProbeEdge(ID=f"x{step}", Parent="a", Child="b", Metadata={})
        edges[f"e{step}"] = ProbeEdge(ID=f"e{step}", Parent="p", Child="q", Metadata={"RelationType": "ownership"})
    assert len(digests) == 20
