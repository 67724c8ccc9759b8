"""probe-flow's node selection through the Gremlin engine on a graph, and the controller's filtering."""

from __future__ import annotations

from netsonde.common.bus.captures import Capture
from netsonde.common.bus.graph import GraphElement
from netsonde.common.graph import Graph
from netsonde.gremlin.engine import GremlinEngine
from netsonde.probe_flow.config import ProbeFlowConfig
from netsonde.probe_flow.controller import CaptureController
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


def test_non_capturable_nodes_skipped_foreign_types_in_error():
    svc = ProbeFlowService(ProbeFlowConfig.load(env={}, host_id="h1", use_graph=False))
    svc.engine = GremlinEngine(_graph())
    ctl = CaptureController("h1", svc.select_nodes)
    ctl.put(Capture(UUID="c1", GremlinQuery="G.V().Has('Type', 'host')"))
    ctl.put(Capture(UUID="c2", GremlinQuery="G.V()", Type="ovssflow"))
    ctl.put(Capture(UUID="c3", GremlinQuery="G.V().Nonsense("))
    ctl.reconcile()
    assert ctl.running == {}
    # ovssflow is not allowed on Linux interfaces: visible on those nodes (the host node is skipped)
    assert sorted(ctl.errors) == [("c2", "n1"), ("c2", "n2")]
    assert list(ctl.query_errors) == ["c3"]


def test_type_by_node_type_and_errors_on_nodes():
    """Skydive's defaults; a type not allowed on the node type, an option the default type cannot honour and
    a type with no implementation are errors on that node, never silent."""
    g = _graph()
    g.upsert_node(_node("n5", "br0", "ovsbridge", "h1", UUID="u5"))
    svc = ProbeFlowService(ProbeFlowConfig.load(env={}, host_id="h1", use_graph=False))
    svc.engine = GremlinEngine(g)
    statuses = []
    ctl = CaptureController("h1", svc.select_nodes, on_status=statuses.append)
    assert ctl.resolve(Capture(UUID="c", GremlinQuery=""), {"Metadata": {"Type": "veth"}}) == "afpacket"
    assert ctl.resolve(Capture(UUID="c", GremlinQuery=""), {"Metadata": {"Type": "ovsbridge"}}) is None  # collector's
    assert ctl.resolve(Capture(UUID="c", GremlinQuery="", Type="pcapsocket"),
                       {"Metadata": {"Type": "ovsbridge"}}) == "pcapsocket"
    assert ctl.resolve(Capture(UUID="c", GremlinQuery=""), {"Metadata": {"Type": "host"}}) is None
    ctl.put(Capture(UUID="c1", GremlinQuery="G.V().Has('Name', 'br0')", Type="afpacket"))
    ctl.put(Capture(UUID="c2", GremlinQuery="G.V().Has('Name', 'eth0')", Type="dpdk"))
    ctl.put(Capture(UUID="c3", GremlinQuery="G.V().Has('Name', 'br0')", BPFFilter="icmp"))
    ctl.reconcile()
    assert ctl.running == {}
    assert ctl.errors == {
        ("c1", "n5"): "capture type afpacket not allowed on node type ovsbridge (allowed: ovssflow, pcapsocket)",
        ("c2", "n1"): "capture type dpdk not allowed on node type device (allowed: afpacket, pcap, pcapsocket, "
                      "sflow, ebpf)",
        ("c3", "n5"): "capture type ovssflow (default for node type ovsbridge) does not support option(s) BPFFilter"}
    assert sorted((s.capture_id, s.node_id, s.state) for s in statuses) == [
        ("c1", "n5", "error"), ("c2", "n1", "error"), ("c3", "n5", "error")]
    ctl.delete("c2")
    ctl.reconcile()
    assert ("c2", "n1") not in ctl.errors and statuses[-1].state == "stopped"


def test_one_pcapsocket_per_node_as_skydive():
    """Only afpacket and pcap allow several captures on one node; a second pcapsocket is an error there."""
    g = _graph()
    svc = ProbeFlowService(ProbeFlowConfig.load(env={}, host_id="h1", use_graph=False))
    svc.engine = GremlinEngine(g)
    ctl = CaptureController("h1", svc.select_nodes)
    ctl.put(Capture(UUID="a1", GremlinQuery="G.V().Has('Name', 'eth0')", Type="pcapsocket"))
    ctl.put(Capture(UUID="a2", GremlinQuery="G.V().Has('Name', 'eth0')", Type="pcapsocket"))
    try:
        ctl.reconcile()
        assert list(ctl.running) == [("a1", "n1")]
        assert ctl.errors == {("a2", "n1"): "only one pcapsocket capture per node: capture a1 runs on this node"}
        assert ctl.running[("a1", "n1")].reader.pcap_socket.startswith("127.0.0.1:")
    finally:
        ctl.stop_all()
    assert ctl.running == {}


def test_nodes_of_paths_and_subgraphs_are_selected():
    """A capture query may return paths (ShortestPathTo) or a SubGraph(): their nodes are captured."""
    from netsonde.common.bus.graph import GraphElement as E

    g = _graph()
    g.upsert_edge(E(ID="e1", Metadata={"RelationType": "layer2"}, Host="h1", Origin="t", CreatedAt=1, UpdatedAt=1,
                    Revision=1, Parent="n1", Child="n2"))
    svc = ProbeFlowService(ProbeFlowConfig.load(env={}, host_id="h1", use_graph=False))
    svc.engine = GremlinEngine(g)
    path = "G.V().Has('Name', 'eth0').ShortestPathTo(Metadata('Name', 'veth1', 'Host', 'h1'))"
    assert [n["ID"] for n in svc.select_nodes(path)] == ["n1", "n2"]
    assert sorted(n["ID"] for n in svc.select_nodes("G.V().Has('Host', 'h1').SubGraph()")) == ["n1", "n2", "n4"]
    assert svc.select_nodes("G.V().Count()") == []
