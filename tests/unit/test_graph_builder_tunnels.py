"""graph-builder's cross-host tunnel links (tunnels.py): derived from LocalIP/RemoteIP and key, per host."""

from __future__ import annotations

from typing import Any

from netsonde.common.bus.topology import ProbeNode, TopologyMessage
from netsonde.graph_builder.builder import GraphBuilder
from netsonde.graph_builder.tunnels import ORIGIN, TunnelLinks, tunnel_key


def full(host: str, seq: int, nodes: dict[str, dict[str, Any]], boot: str = "b1") -> TopologyMessage:
    return TopologyMessage(host=host, kind="full", boot=boot, seq=seq, ts=0,
                           nodes=[ProbeNode(ID=k, Metadata={**v, "Host": host}) for k, v in nodes.items()])


def ovs_vxlan(local: str, remote: str, key: str | None = "42") -> dict[str, Any]:
    options = {"local_ip": local, "remote_ip": remote, **({"key": key} if key is not None else {})}
    return {"Name": "vxlan0", "Type": "vxlan", "LocalIP": local, "RemoteIP": remote, "Ovs": {"Options": options}}


def linux_vxlan(local: str, remote: str, vni: int = 42) -> dict[str, Any]:
    return {"Name": "vx0", "Type": "vxlan", "LocalIP": local, "RemoteIP": remote, "VNI": vni}


def setup(a: dict[str, Any], b: dict[str, Any]) -> tuple[GraphBuilder, TunnelLinks]:
    gb = GraphBuilder()
    links = TunnelLinks(gb)
    gb.apply(full("host-a", 0, {"ta": a}))
    links.sync()
    gb.apply(full("host-b", 0, {"tb": b}))
    links.sync()
    return gb, links


def tunnel_edges(gb: GraphBuilder) -> list[tuple[str, str, dict[str, Any]]]:
    return [(e.Parent, e.Child, e.Metadata) for e in gb.graph.edges.values() if e.Origin == ORIGIN]


def test_ovs_endpoints_on_two_hosts_are_linked_once() -> None:
    gb, links = setup(ovs_vxlan("192.168.50.1", "192.168.50.2"), ovs_vxlan("192.168.50.2", "192.168.50.1"))
    assert tunnel_edges(gb) == [("ta", "tb", {"RelationType": "layer2", "Type": "tunnel", "TunnelType": "vxlan",
                                              "Key": 42})]
    events, _ = gb.take()
    assert [e.type for e in events if e.obj.Origin == ORIGIN] == ["EdgeAdded"]
    # the same fulls again (a probe restart, a resync): no event
    gb.apply(full("host-a", 0, {"ta": ovs_vxlan("192.168.50.1", "192.168.50.2")}, boot="b2"))
    assert links.sync() == 0
    assert gb.take()[0] == []


def test_linux_vni_matches_ovs_key_and_hex_keys() -> None:
    gb, _ = setup(linux_vxlan("10.1.0.1", "10.1.0.2", 4096), ovs_vxlan("10.1.0.2", "10.1.0.1", "0x1000"))
    assert [m["Key"] for _, _, m in tunnel_edges(gb)] == [4096]


def test_mismatched_key_address_or_family_is_not_linked() -> None:
    assert tunnel_edges(setup(ovs_vxlan("10.1.0.1", "10.1.0.2", "42"), ovs_vxlan("10.1.0.2", "10.1.0.1", "43"))[0]) == []
    assert tunnel_edges(setup(ovs_vxlan("10.1.0.1", "10.1.0.2"), ovs_vxlan("10.1.0.3", "10.1.0.1"))[0]) == []
    gre = {"Name": "gre0", "Type": "gre", "LocalIP": "10.1.0.2", "RemoteIP": "10.1.0.1",
           "Ovs": {"Options": {"key": "42"}}}
    assert tunnel_edges(setup(ovs_vxlan("10.1.0.1", "10.1.0.2"), gre)[0]) == []


def test_flow_key_matches_any_and_missing_local_ip_is_not_guessed() -> None:
    gb, _ = setup(ovs_vxlan("10.1.0.1", "10.1.0.2", "flow"), ovs_vxlan("10.1.0.2", "10.1.0.1", "7"))
    assert [m["Key"] for _, _, m in tunnel_edges(gb)] == [7]
    no_local = {"Name": "vxlan0", "Type": "vxlan", "RemoteIP": "10.1.0.1", "Ovs": {"Options": {"key": "42"}}}
    assert tunnel_edges(setup(ovs_vxlan("10.1.0.1", "10.1.0.2"), no_local)[0]) == []


def test_same_host_endpoints_are_not_linked() -> None:
    gb = GraphBuilder()
    links = TunnelLinks(gb)
    gb.apply(full("host-a", 0, {"t1": ovs_vxlan("10.1.0.1", "10.1.0.2"), "t2": ovs_vxlan("10.1.0.2", "10.1.0.1")}))
    assert links.sync() == 0


def test_link_follows_endpoint_changes_and_deletion() -> None:
    gb, links = setup(ovs_vxlan("10.1.0.1", "10.1.0.2"), ovs_vxlan("10.1.0.2", "10.1.0.1"))
    gb.take()
    gb.apply(full("host-b", 1, {"tb": ovs_vxlan("10.1.0.2", "10.1.0.1", "99")}))
    assert links.sync() == 1
    assert tunnel_edges(gb) == []
    assert [e.type for e in gb.take()[0] if e.obj.Origin == ORIGIN] == ["EdgeDeleted"]
    gb.apply(full("host-b", 2, {"tb": ovs_vxlan("10.1.0.2", "10.1.0.1")}))
    links.sync()
    assert len(tunnel_edges(gb)) == 1
    gb.apply(full("host-b", 3, {}))  # the endpoint goes: its edges go with it
    assert links.sync() == 0 and tunnel_edges(gb) == []


def test_tunnel_key_reading() -> None:
    assert tunnel_key({"VNI": 5}) == 5
    assert tunnel_key({"Key": 7}) == 7
    assert tunnel_key({"Ovs": {"Options": {}}}) == 0
    assert tunnel_key({"Ovs": {"Options": {"key": "bogus"}}}) is None
