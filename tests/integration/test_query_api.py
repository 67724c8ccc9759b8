"""query-api over real NATS: Skydive's REST shapes, errors, WebSocket events and captures in the KV bucket."""

from __future__ import annotations

import json

import aiohttp
import httpx
import msgpack
import nats
import pytest

from netsonde.common.service import wait_for
from netsonde.common.testing import free_port
from netsonde.graph_builder.config import GraphBuilderConfig
from netsonde.graph_builder.service import GraphBuilderService
from netsonde.query_api.config import QueryApiConfig
from netsonde.query_api.service import QueryApiService

NODES = {
    "host": {"Name": "h1", "Type": "host"},
    "ns": {"Name": "ns1", "Type": "netns", "Path": "/run/netns/ns1"},
    "br": {"Name": "br0", "Type": "bridge", "MTU": 1500},
    "va": {"Name": "va", "Type": "veth", "MTU": 1500, "IPV4": ["10.1.0.1/24"]},
    "vb": {"Name": "vb", "Type": "veth", "MTU": 9000, "IPV4": ["10.1.0.2/24"]},
}
EDGES = [
    ("e1", "host", "ns", "ownership"), ("e2", "host", "br", "ownership"), ("e3", "host", "va", "ownership"),
    ("e4", "ns", "vb", "ownership"), ("e5", "br", "va", "layer2"), ("e6", "va", "vb", "layer2"),
]


def full(seq: int, nodes: dict, edges: list) -> bytes:
    return msgpack.packb({"v": 1, "host": "h1", "kind": "full", "boot": "b", "seq": seq, "ts": 0,
                          "nodes": [{"ID": k, "Metadata": v} for k, v in nodes.items()],
                          "edges": [{"ID": i, "Parent": p, "Child": c, "Metadata": {"RelationType": r}}
                                    for i, p, c, r in edges]})


@pytest.fixture
async def stack(nats_url: str, unique: str):
    prefix = f"q{unique}"
    gb = GraphBuilderService(GraphBuilderConfig.load(env={}, nats_url=nats_url, subject_prefix=prefix, history=False))
    await gb.start()
    nc = await nats.connect(nats_url)
    await nc.publish(f"{prefix}.topology.h1", full(0, NODES, EDGES))
    assert await wait_for(lambda: len(gb.builder.graph.edges) == len(EDGES), 5)
    port = free_port()
    api = QueryApiService(QueryApiConfig.load(env={}, nats_url=nats_url, subject_prefix=prefix, http_port=port,
                                              history=False, flows=False))
    await api.start()
    assert await wait_for(lambda: len(api.replica.graph.edges) == len(EDGES), 5)
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
        yield http, nc, prefix, gb, api
    await api.stop()
    await nc.close()
    await gb.stop()


async def query(http: httpx.AsyncClient, q: str) -> httpx.Response:
    return await http.post("/api/topology", json={"GremlinQuery": q})


async def test_gremlin_over_http_in_skydive_shapes(stack) -> None:
    http, *_ = stack
    r = await query(http, "G.V().Count()")
    assert r.status_code == 200 and r.json() == 5
    r = await query(http, "G.V().Has('Name','va')")
    [va] = r.json()
    assert va["ID"] == "va" and va["Metadata"]["IPV4"] == ["10.1.0.1/24"] and va["Host"] == "h1"
    assert va["Revision"] == 1 and isinstance(va["CreatedAt"], int) and "Parent" not in va
    r = await query(http, "g.V().Has('Type','bridge').Out().Values('Name')")
    assert r.json() == ["va"]
    r = await query(http, "G.V().Has('Name','vb').In().Dedup().Values('Name')")
    assert sorted(r.json()) == ["ns1", "va"]
    r = await query(http, "G.V().Has('Name','va').Both().Count()")
    assert r.json() == 3
    r = await query(http, "G.V().Has('Name','va').OutE().Has('RelationType','layer2')")
    [edge] = r.json()
    assert (edge["Parent"], edge["Child"]) == ("va", "vb")
    r = await query(http, "G.V().Has('Name','va').InE().Values('RelationType')")
    assert sorted(r.json()) == ["layer2", "ownership"]
    r = await query(http, "G.E().Has('RelationType','ownership').Count()")
    assert r.json() == 4
    r = await query(http, "G.V().HasKey('IPV4').Limit(1).Count()")
    assert r.json() == 1
    r = await query(http, 'G.V().Has("MTU", 9000).Values("Name")')
    assert r.json() == ["vb"]


async def test_bad_queries_are_400_with_position(stack) -> None:
    http, *_ = stack
    r = await query(http, "G.V().Has('Name',")
    assert r.status_code == 400 and "position 17" in r.text and "expected an argument" in r.text
    r = await query(http, "G.V().Frobnicate()")
    assert r.status_code == 400 and "Frobnicate" in r.text
    r = await http.post("/api/topology", content=b"{not json")
    assert r.status_code == 400
    r = await query(http, "")
    assert r.status_code == 204


async def test_status_node_edge_and_full_topology(stack) -> None:
    http, *_ = stack
    status = (await http.get("/api/status")).json()
    assert status["Graph"]["Nodes"] == 5 and status["Graph"]["Synced"] is True and status["Probes"] == ["h1"]
    assert (await http.get("/api/node/br")).json()["Metadata"]["Name"] == "br0"
    assert (await http.get("/api/node/nope")).status_code == 404
    assert (await http.get("/api/edge/e6")).json()["Child"] == "vb"
    topo = (await http.get("/api/topology")).json()
    assert len(topo["Nodes"]) == 5 and len(topo["Edges"]) == 6
    health = (await http.get("/healthz")).json()
    assert health["ok"] is True and health["graph_synced"] is True
    metrics = (await http.get("/metrics")).text
    assert "netsonde_query_api_queries_total" in metrics


async def test_websocket_sync_and_events(stack) -> None:
    http, nc, prefix, gb, api = stack
    url = str(http.base_url).replace("http", "ws") + "/ws/subscriber"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        await ws.send_str(json.dumps({"Namespace": "Graph", "Type": "SyncRequest", "UUID": "u1", "Obj": {}}))
        reply = json.loads((await ws.receive(timeout=5)).data)
        assert reply["Type"] == "SyncReply" and reply["UUID"] == "u1" and len(reply["Obj"]["Nodes"]) == 5
        nodes = dict(NODES, va={**NODES["va"], "MTU": 1400})
        await nc.publish(f"{prefix}.topology.h1", full(1, nodes, EDGES))
        msg = json.loads((await ws.receive(timeout=5)).data)
        assert (msg["Namespace"], msg["Type"], msg["Status"]) == ("Graph", "NodeUpdated", 200)
        assert msg["Obj"]["ID"] == "va" and msg["Obj"]["Metadata"]["MTU"] == 1400 and msg["Obj"]["Revision"] == 2


async def test_captures_in_kv_bucket(stack) -> None:
    http, nc, prefix, gb, api = stack
    r = await http.post("/api/capture", json={"GremlinQuery": "G.V().Has('Name','va')", "BPFFilter": "icmp",
                                              "Name": "c1"})
    assert r.status_code == 200, r.text
    cap = r.json()
    assert cap["UUID"] and cap["BPFFilter"] == "icmp" and cap["LayerKeyMode"] == "L2"
    listed = (await http.get("/api/capture")).json()
    assert list(listed) == [cap["UUID"]]
    # what probes read: the KV entry, plain msgpack
    kv = await nc.jetstream().key_value(f"{prefix}_captures")
    entry = await kv.get(cap["UUID"])
    assert msgpack.unpackb(entry.value)["GremlinQuery"] == "G.V().Has('Name','va')"
    # a standing declaration: a query that selects nothing yet is stored, with a warning
    later = await http.post("/api/capture", json={"GremlinQuery": "G.V().Has('Name','nothing-here')"})
    assert later.status_code == 200 and "selects no node" in later.json()["Warning"]
    assert (await http.delete(f"/api/capture/{later.json()['UUID']}")).status_code == 200
    bad = await http.post("/api/capture", json={"GremlinQuery": "G.V().Has('Name',"})
    assert bad.status_code == 400 and "GremlinQuery" in bad.text
    bad = await http.post("/api/capture", json={"GremlinQuery": "G.V()", "Type": "banana"})
    assert bad.status_code == 400 and "unknown capture Type 'banana'" in bad.text
    bad = await http.post("/api/capture", json={"GremlinQuery": "G.V()", "Type": "ovssflow", "BPFFilter": "icmp"})
    assert bad.status_code == 400 and bad.text == "capture type ovssflow does not support option(s) BPFFilter"
    bad = await http.post("/api/capture", json={"GremlinQuery": "G.V()", "Type": "ebpf", "RawPacketLimit": 5})
    assert bad.status_code == 400 and bad.text == "capture type ebpf does not support option(s) RawPacketLimit"
    bad = await http.post("/api/capture", json={"GremlinQuery": "G.V()", "Type": "ovssflow", "ExtraTCPMetric": True})
    assert bad.status_code == 400 and bad.text == "capture type ovssflow does not support option(s) ExtraTCPMetric"
    bad = await http.post("/api/capture", json={"GremlinQuery": "G.V().Has('Name','va')", "BPFFilter": "icmp and ("})
    assert bad.status_code == 400 and "BPFFilter" in bad.text
    bad = await http.post("/api/capture", json={"BPFFilter": "icmp"})
    assert bad.status_code == 400 and "GremlinQuery" in bad.text
    assert (await http.delete(f"/api/capture/{cap['UUID']}")).status_code == 200
    assert (await http.get("/api/capture")).json() == {}
    assert (await http.delete(f"/api/capture/{cap['UUID']}")).status_code == 404
