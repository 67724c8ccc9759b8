"""Diff, FlowChanges, FlowPath and LossReport on the real ClickHouse engine with revisions and flow updates
written the way graph-builder and flow-enricher write them (exact answers; the end-to-end versions on real
namespaces are in test_diff_and_path.py)."""

from __future__ import annotations

import time
from typing import Any

import pytest

from netsonde.common.bus.flows import Flow, FlowLayer, FlowMetric
from netsonde.common.clickhouse import connect, run_migrations
from netsonde.common.flowschema import COMPONENT as FLOW_COMPONENT
from netsonde.common.flowschema import migrations as flow_migrations
from netsonde.gremlin import FlowStore, GremlinEngine, HistoryStore
from tests import gremlin_testdata as td
from netsonde.gremlin.diff import flatten, format_change
from netsonde.graph_builder.schema import MIGRATIONS

NOW = int(time.time() * 1000)
T0, T1, T2 = NOW - 3_600_000, NOW - 1_800_000, NOW - 300_000


def rev(kind: str, eid: str, revision: int, at: int, md: dict[str, Any], deleted: bool = False,
        parent: str = "", child: str = "") -> dict[str, Any]:
    return {"kind": kind, "id": eid, "revision": revision, "host": "h1", "origin": "test", "created_at": T0,
            "updated_at": at, "deleted_at": at if deleted else None, "parent": parent, "child": child,
            "metadata": md}


ROUTES = [{"ID": 254, "Src": "", "Routes": [{"Protocol": 2, "Prefix": "10.1.0.0/24", "NextHops": [{"IfIndex": 2}]}]}]
ROUTES2 = [{"ID": 254, "Src": "", "Routes": [*ROUTES[0]["Routes"],
                                             {"Protocol": 4, "Prefix": "10.9.0.0/24", "NextHops": [{"IP": "10.1.0.2"}]}]}]


@pytest.fixture(scope="module")
def engine(clickhouse_url: str) -> GremlinEngine:
    db = f"diff_{NOW}"
    run_migrations(clickhouse_url, db, "graph-builder", MIGRATIONS)
    run_migrations(clickhouse_url, db, FLOW_COMPONENT, flow_migrations())
    client = connect(clickhouse_url, db)
    ns = {"Name": "ns1", "Type": "netns"}
    veth = {"Name": "v1", "Type": "veth", "MTU": 1500, "State": "UP", "RoutingTables": ROUTES,
            "LastUpdateMetric": {"RxPackets": 1}}
    rows = [
        rev("node", "ns", 1, T0, ns),
        rev("node", "v1", 1, T0, veth),
        rev("node", "v2", 1, T0, {"Name": "v2", "Type": "veth", "MTU": 1500}),
        rev("node", "other", 1, T0, {"Name": "other", "Type": "device", "MTU": 9000}),
        rev("edge", "e1", 1, T0, {"RelationType": "ownership"}, parent="ns", child="v1"),
        rev("edge", "e2", 1, T0, {"RelationType": "ownership"}, parent="ns", child="v2"),
        # in the window: MTU, State, a route, a counter refresh; v2 deleted with its edge; v3 created
        rev("node", "v1", 2, T1, {**veth, "MTU": 1400, "LastUpdateMetric": {"RxPackets": 9}}),
        rev("node", "v1", 3, T1 + 1000, {**veth, "MTU": 1400, "State": "DOWN", "RoutingTables": ROUTES2,
                                         "LastUpdateMetric": {"RxPackets": 12}}),
        rev("node", "v2", 2, T1, {"Name": "v2", "Type": "veth", "MTU": 1500}, deleted=True),
        rev("edge", "e2", 2, T1, {"RelationType": "ownership"}, deleted=True, parent="ns", child="v2"),
        rev("node", "v3", 1, T1, {"Name": "v3", "Type": "veth", "MTU": 1500}),
        rev("edge", "e3", 1, T1, {"RelationType": "ownership"}, parent="ns", child="v3"),
        rev("node", "other", 2, T2, {"Name": "other", "Type": "device", "MTU": 1280}),
    ]
    td.insert_revisions(client, rows)
    # one ICMP stream seen at three capture points; 3 echo requests lost between the first and the second
    flows = []
    for i, (tid, ab, ba) in enumerate((("tid-a", 10, 7), ("tid-r", 7, 7), ("tid-b", 7, 7))):
        m = FlowMetric(ABPackets=ab, ABBytes=ab * 98, BAPackets=ba, BABytes=ba * 98, Start=T2 + i, Last=T2 + 9000,
                       RTT=1000 - i)
        flows.append(Flow(UUID=f"u{i}", NodeTID=tid, TrackingID="stream1", L3TrackingID="l3s1", Start=T2 + i,
                          Last=T2 + 9000, LayersPath="Ethernet/IPv4/ICMPv4", Application="ICMPv4",
                          Link=FlowLayer(Protocol="ETHERNET", A="aa:00:00:00:00:01", B="aa:00:00:00:00:02"),
                          Network=FlowLayer(Protocol="IPV4", A="10.1.0.1", B="10.2.0.1"), Metric=m,
                          LastUpdateMetric=m, NodeID=f"cap{i}", Host="h1"))
    td.insert_flows(client, flows)
    # the capture nodes on a path: cap0 - x - cap1 - cap2 (cap0 holds Network.A, cap2 Network.B)
    live = td.live_graph(rows + [
        rev("node", "cap0", 1, T0, {"Name": "a", "Type": "veth", "TID": "tid-a", "IPV4": ["10.1.0.1/24"]}),
        rev("node", "x", 1, T0, {"Name": "x", "Type": "veth"}),
        rev("node", "cap1", 1, T0, {"Name": "r", "Type": "veth", "TID": "tid-r"}),
        rev("node", "cap2", 1, T0, {"Name": "b", "Type": "veth", "TID": "tid-b", "IPV4": ["10.2.0.1/24"]}),
        rev("edge", "l1", 1, T0, {"RelationType": "layer2"}, parent="cap0", child="x"),
        rev("edge", "l2", 1, T0, {"RelationType": "layer2"}, parent="x", child="cap1"),
        rev("edge", "l3", 1, T0, {"RelationType": "layer2"}, parent="cap2", child="cap1"),
    ])
    return GremlinEngine(live, history=HistoryStore(lambda: connect(clickhouse_url, db)),
                         flows=FlowStore(lambda: connect(clickhouse_url, db)))


def test_flatten_keys_routes_and_lists() -> None:
    flat = flatten({"MTU": 1500, "Ovs": {"Status": "up"}, "RoutingTables": ROUTES2, "IPV4": ["10.0.0.1/24"],
                    "LastUpdateMetric": {"RxPackets": 1}})
    assert flat == {"MTU": 1500, "Ovs.Status": "up", "RoutingTables[254].Src": "", "IPV4": ["10.0.0.1/24"],
                    "RoutingTables[254].Routes[10.1.0.0/24]": ROUTES[0]["Routes"][0],
                    "RoutingTables[254].Routes[10.9.0.0/24]": ROUTES2[0]["Routes"][1]}


def test_diff_whole_graph(engine: GremlinEngine) -> None:
    [d] = engine.execute(f"G.Diff({T0 + 1000}, {T2 + 1000})")
    assert [n["ID"] for n in d["Nodes"]["Added"]] == ["v3"]
    assert [n["ID"] for n in d["Nodes"]["Removed"]] == ["v2"]
    assert [e["ID"] for e in d["Edges"]["Added"]] == ["e3"]
    assert [e["ID"] for e in d["Edges"]["Removed"]] == ["e2"]
    assert d["Edges"]["Removed"][0]["Parent"] == "ns" and d["Edges"]["Removed"][0]["Child"] == "v2"
    changed = {n["ID"]: [format_change(c) for c in n["Changes"]] for n in d["Nodes"]["Changed"]}
    assert changed == {
        "v1": ["MTU: 1500 -> 1400",
               'RoutingTables[254].Routes[10.9.0.0/24]: - -> {"Protocol":4,"Prefix":"10.9.0.0/24",'
               '"NextHops":[{"IP":"10.1.0.2"}]}',
               "State: UP -> DOWN"],
        "other": ["MTU: 9000 -> 1280"],
    }
    assert d["Edges"]["Changed"] == []


def test_diff_scoped_pushes_down(engine: GremlinEngine) -> None:
    [d] = engine.execute(f"G.V().Has('Name','ns1').Descendants().Diff({T0 + 1000}, {T2 - 1000})")
    assert [n["ID"] for n in d["Nodes"]["Added"]] == ["v3"]
    assert [n["ID"] for n in d["Nodes"]["Removed"]] == ["v2"]  # no longer in the live scope: via its edge
    assert [n["ID"] for n in d["Nodes"]["Changed"]] == ["v1"]
    assert {e["ID"] for e in d["Edges"]["Added"] + d["Edges"]["Removed"]} == {"e2", "e3"}
    # an unrelated scope: nothing
    [u] = engine.execute(f"G.V().Has('Name','a').Diff({T0 + 1000}, {T2 + 1000})")
    assert u["Nodes"] == {"Added": [], "Removed": [], "Changed": []}
    assert u["Edges"] == {"Added": [], "Removed": [], "Changed": []}
    # At(t1)...Diff(t2): from t1 to t2; an empty window has no change
    [w] = engine.execute(f"G.At({T2 + 1000}).V().Has('Name','ns1').Diff({T2 + 2000})")
    assert w["Nodes"]["Changed"] == [] and w["From"] == T2 + 1000


def test_flow_path_and_loss_report(engine: GremlinEngine) -> None:
    [paths] = engine.execute("G.Flows().Has('TrackingID','stream1').FlowPath()")
    p = paths["l3s1"]  # the stream is the L3TrackingID (the same across routed hops)
    assert p["Order"] == "path"
    assert [h["Name"] for h in p["Hops"]] == ["a", "r", "b"]
    assert [(h["ABPackets"], h["BAPackets"]) for h in p["Hops"]] == [(10, 7), (7, 7), (7, 7)]
    assert [(link["ABLost"], link["BALost"], link["Uncertainty"]) for link in p["Links"]] == [(3, 0, 0), (0, 0, 0)]
    assert p["Links"][0]["LatencyMs"] == 1 and p["Links"][0]["LatencyEstimate"] is False
    [report] = engine.execute("G.LossReport('1h')")
    assert report["Streams"] == 1
    assert [(link["From"], link["To"], link["Lost"]) for link in report["Links"]] == [("a", "r", 3)]
    assert report["Links"][0]["Flows"][0]["TrackingID"] == "l3s1"
    # one L2 TrackingID leads to its whole L3 stream
    assert [h["Name"] for h in engine.execute("G.Flows().Has('NodeTID','tid-b').FlowPath()")[0]["l3s1"]["Hops"]] \
        == ["a", "r", "b"]


def test_flow_changes(engine: GremlinEngine) -> None:
    [c] = engine.execute(f"G.FlowChanges({T2 - 1000}, {NOW})")
    assert sorted(f["UUID"] for f in c["Started"]) == ["u0", "u1", "u2"]
    assert sorted(f["UUID"] for f in c["Stopped"]) == ["u0", "u1", "u2"]
    [c2] = engine.execute(f"G.V().Has('Name','r').FlowChanges({T2 - 1000}, {NOW})")
    assert [f["UUID"] for f in c2["Started"]] == ["u1"]


def test_flow_rate_changes(engine: GremlinEngine) -> None:
    """Two flows active at both instants: one 5x faster at the second (reported), one 1.5x (not)."""
    a, b = NOW - 200_000, NOW - 100_000
    updates = []
    for uuid, before, after in (("rate1", 1000, 5000), ("rate2", 1000, 1500)):
        total = 0
        for at, nbytes in ((a - 30_000, before), (b - 20_000, after)):
            total += nbytes
            lum = FlowMetric(ABPackets=nbytes // 100, ABBytes=nbytes, Start=at - 1000, Last=at)
            m = FlowMetric(ABPackets=total // 100, ABBytes=total, Start=a - 60_000, Last=at)
            updates.append(Flow(UUID=uuid, NodeTID="tid-rate", TrackingID=uuid, L3TrackingID=uuid, Start=a - 60_000, Last=at,
                                LayersPath="Ethernet/IPv4/UDP", Application="UDP", Metric=m, LastUpdateMetric=lum,
                                Network=FlowLayer(Protocol="IPV4", A="10.5.0.1", B="10.5.0.2"), Host="h1"))
    td.insert_flows(engine.flows.client_factory(), updates)
    [c] = engine.execute(f"G.FlowChanges({a}, {b})")
    assert c["Started"] == [] and c["Stopped"] == []
    assert [(f["UUID"], f["BytesPerSecBefore"], f["BytesPerSecAfter"]) for f in c["RateChanged"]] == [
        ("rate1", 1000 / 60, 5000 / 60)
    ]
    [c3] = engine.execute(f"G.FlowChanges({a}, {b}, 1.4)")
    assert sorted(f["UUID"] for f in c3["RateChanged"]) == ["rate1", "rate2"]
