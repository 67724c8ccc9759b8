"""probe-flow's node selection through the Gremlin engine on a graph, and the controller's filtering."""

from __future__ import annotations

from netsonde.common.bus.captures import Capture
from netsonde.common.bus.graph import GraphElement
from netsonde.common.graph import Graph
from netsonde.gremlin.engine import GremlinEngine
from netsonde.probe_flow.config import ProbeFlowConfig
from netsonde.probe_flow.controller import CaptureController, check_capture
from netsonde.probe_flow.service import ProbeFlowService


def _node(i: str, name: str, typ: str, host: str, **md) -> GraphElement:
    return GraphElement(ID=i, Metadata={"Name": name, "Type": typ, "Host": host, "TID": f"tid-{i}", **md},
                        Host=host, Origin="test", CreatedAt=1, UpdatedAt=1, Revision=1)


def _graph() -> Graph:
    g = Graph()
    g.upsert_node(_node("n1", "eth0", "device", "h1"))
    g.upsert_node(_node("n2", "veth1", "veth", "h1", NetNsPath="/var/run/netns/x"))
    g.upsert_node(_node("n3", "veth1", "veth", "h2"))
    g.upsert_node(_node("n4", "h1", "host", "h1"))
    return g


def test_select_nodes_with_gremlin_and_host_filter():
    svc = ProbeFlowService(ProbeFlowConfig.load(env={}, host_id="h1", use_graph=False))
    svc.engine = GremlinEngine(_graph())
    nodes = svc.select_nodes("G.V().Has('Name', 'veth1')")
    assert sorted(n["ID"] for n in nodes) == ["n2", "n3"]
    ctl = CaptureController("h1", svc.select_nodes)
    mine = [n["ID"] for n in nodes if ctl._mine(n)]
    assert mine == ["n2"]
    assert [n["ID"] for n in check_capture(Capture(UUID="c", GremlinQuery="G.V().Has('Type', 'device')"),
                                           svc.select_nodes)] == ["n1"]


def test_non_capturable_nodes_and_foreign_types_are_skipped():
    svc = ProbeFlowService(ProbeFlowConfig.load(env={}, host_id="h1", use_graph=False))
    svc.engine = GremlinEngine(_graph())
    ctl = CaptureController("h1", svc.select_nodes)
    ctl.put(Capture(UUID="c1", GremlinQuery="G.V().Has('Type', 'host')"))
    ctl.put(Capture(UUID="c2", GremlinQuery="G.V()", Type="ovssflow"))
    ctl.put(Capture(UUID="c3", GremlinQuery="G.V().Nonsense("))
    ctl.reconcile()
    assert ctl.running == {} and ctl.errors == {}
    assert list(ctl.query_errors) == ["c3"]
