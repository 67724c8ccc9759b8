"""Static nodes/edges and rules in graph-builder's merge logic, without I/O: ownership against probe states,
JSON Patch semantics, rule layers over probe updates, edge rules following their queries, bus key encoding."""

from __future__ import annotations

import uuid

import msgspec
import pytest

from netsonde.common.bus import topology as topo
from netsonde.common.bus.graph import GraphElement
from netsonde.common.bus.static import (EdgeRule, NodeRule, StaticError, edge_from_json, node_from_json,
                                        noderule_from_json, static_key)
from netsonde.graph_builder.builder import GraphBuilder
from netsonde.graph_builder.rules import RuleEngine
from netsonde.graph_builder.static import StaticTopology
from netsonde.gremlin import QueryLimits


def full(host: str, seq: int, nodes: dict[str, dict], edges: list[topo.ProbeEdge] | None = None) -> topo.TopologyMessage:
    return topo.TopologyMessage(host=host, kind="full", boot="b", seq=seq, ts=0,
                                nodes=[topo.ProbeNode(ID=k, Metadata=v) for k, v in nodes.items()], edges=edges or [])


def el(ident: str, **meta: object) -> GraphElement:
    return GraphElement(ID=ident, Metadata=dict(meta), Host="", Origin="", CreatedAt=0, UpdatedAt=0, Revision=0)


def test_probe_full_state_keeps_static_nodes_of_the_same_host() -> None:
    b = GraphBuilder()
    b.apply(full("h1", 0, {"eth0": {"Name": "eth0", "Type": "device"}}))
    t = StaticTopology(b, "api.gb", "h1")
    t.add_node(t.new_node(el("s1", Name="tor", Type="switch")))
    t.add_edge(t.new_edge(GraphElement(ID="e1", Metadata={"RelationType": "cable"}, Host="", Origin="", CreatedAt=0,
                                       UpdatedAt=0, Revision=0, Parent="s1", Child="eth0")))
    assert b.graph.nodes["s1"].Host == "h1" and b.graph.nodes["s1"].Origin == "api.gb"
    b.apply(full("h1", 1, {"eth0": {"Name": "eth0", "Type": "device", "MTU": 9000}}))
    assert "s1" in b.graph.nodes and "e1" in b.graph.edges
    # the interface goes: the static edge leaves the graph, its definition stays and comes back with it
    b.apply(full("h1", 2, {}))
    assert "e1" not in b.graph.edges and "e1" in t.edges
    b.apply(full("h1", 3, {"eth0": {"Name": "eth0", "Type": "device"}}))
    t.materialize_all()
    assert b.graph.edges["e1"].Parent == "s1"


def test_patch_semantics() -> None:
    b = GraphBuilder()
    t = StaticTopology(b, "api.gb", "h1")
    t.add_node(t.new_node(el("s1", Name="tor", Type="switch", TID="t1")))
    new = t.patched_node("s1", [{"op": "add", "path": "/Metadata/Rack", "value": 3},
                                {"op": "replace", "path": "/Metadata/TID", "value": "other"}])
    assert new is not None and new.Metadata == {"Name": "tor", "Type": "switch", "TID": "t1", "Rack": 3}
    t.add_node(new)
    assert b.graph.nodes["s1"].Revision == 2
    assert t.patched_node("s1", [{"op": "replace", "path": "/Metadata/Type", "value": "x"}]) is None
    assert t.patched_node("s1", [{"op": "replace", "path": "/Origin", "value": "x"}]) is None
    with pytest.raises(StaticError, match="Metadata.Type is required"):
        t.patched_node("s1", [{"op": "remove", "path": "/Metadata/Type"}])
    with pytest.raises(StaticError, match="incorrect JSON patch"):
        t.patched_node("s1", [{"op": "test", "path": "/Metadata/Rack", "value": 4}])
    with pytest.raises(StaticError) as exc:
        t.patched_node("nope", [])
    assert exc.value.status == 404
    with pytest.raises(StaticError, match="reserved"):
        t.new_node(msgspec.structs.replace(el("s2", Name="a", Type="b"), Origin="probe-topology.h1"))


def test_update_rule_layer_survives_probe_updates_and_goes_with_the_rule() -> None:
    b = GraphBuilder()
    b.apply(full("h1", 0, {"v1": {"Name": "v1", "Type": "veth", "MTU": 1500},
                           "v2": {"Name": "v2", "Type": "veth", "MTU": 1500}}))
    r = RuleEngine(b, "graph-builder.gb", QueryLimits())
    rule = NodeRule(UUID="u1", Action="update", Query="G.V().Has('MTU',1500)", Metadata={"Zone": "blue"})
    r.add_noderule(rule)
    assert [b.graph.nodes[n].Metadata.get("Zone") for n in ("v1", "v2")] == ["blue", "blue"]
    # a probe update keeps the layer; the node leaves the selection on the next evaluation
    b.apply(full("h1", 1, {"v1": {"Name": "v1", "Type": "veth", "MTU": 9000},
                           "v2": {"Name": "v2", "Type": "veth", "MTU": 1500}}))
    assert b.graph.nodes["v1"].Metadata == {"Name": "v1", "Type": "veth", "MTU": 9000, "Zone": "blue"}
    r.reevaluate()
    assert "Zone" not in b.graph.nodes["v1"].Metadata and b.graph.nodes["v2"].Metadata["Zone"] == "blue"
    r.remove_noderule("u1")
    assert all("Zone" not in n.Metadata for n in b.graph.nodes.values())


def test_create_rule_and_edge_rule_ids_follow_skydive() -> None:
    b = GraphBuilder()
    b.apply(full("h1", 0, {"v1": {"Name": "v1", "Type": "veth"}, "v2": {"Name": "v2", "Type": "veth"}}))
    r = RuleEngine(b, "graph-builder.gb", QueryLimits(max_results=3))
    r.add_noderule(NodeRule(UUID="c1", Action="create", Metadata={"Name": "tor", "Type": "switch"}))
    tor = str(uuid.uuid5(uuid.NAMESPACE_OID, "switch/tor"))
    assert b.graph.nodes[tor].Metadata == {"Name": "tor", "Type": "switch", "TID": tor}
    r.add_edgerule(EdgeRule(UUID="e1", Src="G.V().Has('Type','switch')", Dst="G.V().Has('Type','veth')",
                            Metadata={"RelationType": "layer2"}))
    ids = {str(uuid.uuid5(uuid.NAMESPACE_OID, tor + v + "layer2")) for v in ("v1", "v2")}
    assert {e for e in b.graph.edges if b.graph.edges[e].Origin == "graph-builder.gb"} == ids
    # the selection changes: v2 goes, its edge goes
    b.apply(full("h1", 1, {"v1": {"Name": "v1", "Type": "veth"}}))
    r.reevaluate()
    assert len([e for e in b.graph.edges.values() if e.Origin == "graph-builder.gb"]) == 1
    # over the limit: refused at creation
    with pytest.raises(StaticError) as exc:
        RuleEngine(b, "graph-builder.gb", QueryLimits(max_results=1)).check_edgerule(
            EdgeRule(UUID="e2", Src="G.V()", Dst="G.V()", Metadata={"RelationType": "x"}))
    assert exc.value.status == 413 and str(exc.value).startswith("Src: query result too large")
    r.remove_edgerule("e1")
    r.remove_noderule("c1")
    assert tor not in b.graph.nodes and not any(e.Origin == "graph-builder.gb" for e in b.graph.edges.values())


def test_request_validation_and_keys() -> None:
    with pytest.raises(StaticError, match="^ID is required"):
        node_from_json({"Metadata": {"Name": "a", "Type": "b"}})
    with pytest.raises(StaticError, match="Metadata must be a JSON object"):
        node_from_json({"ID": "x", "Metadata": []})
    with pytest.raises(StaticError, match="^Parent is required"):
        edge_from_json({"ID": "e", "Child": "c", "Metadata": {"RelationType": "l"}})
    with pytest.raises(StaticError, match="CreatedAt"):
        node_from_json({"ID": "x", "CreatedAt": "yesterday", "Metadata": {"Name": "a", "Type": "b"}})
    assert noderule_from_json({"Action": "create", "Metadata": {"Name": "a", "Type": "b"}}).Query == ""
    assert static_key("node", "abc-1_2") == "node.abc-1_2"
    assert static_key("node", "a/b c") == "node.=YS9iIGM"


def test_rule_over_the_time_limit_is_refused_then_keeps_its_last_result() -> None:
    b = GraphBuilder()
    b.apply(full("h1", 0, {f"v{i}": {"Name": f"v{i}", "Type": "veth"} for i in range(50)}))
    slow = RuleEngine(b, "graph-builder.gb", QueryLimits(timeout_s=1e-9))
    rule = NodeRule(UUID="u1", Action="update", Query="G.V().Has('Type','veth')", Metadata={"Zone": "x"})
    with pytest.raises(StaticError) as exc:
        slow.check_noderule(rule)
    assert exc.value.status == 408 and "time limit" in str(exc.value)
    # a rule applied before keeps its result when a later evaluation fails, and says why
    r = RuleEngine(b, "graph-builder.gb", QueryLimits())
    r.add_noderule(rule)
    r.engine.limits = QueryLimits(timeout_s=1e-9)
    assert r.reevaluate() == 1 and "time limit" in r.errors["u1"]
    assert sum(1 for n in b.graph.nodes.values() if n.Metadata.get("Zone") == "x") == 50
