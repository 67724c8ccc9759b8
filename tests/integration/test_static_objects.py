"""Static nodes and edges (Skydive's /api/node and /api/edge) on real NATS, ClickHouse and services: validation,
JSON Patch, ownership, graph events, history, and persistence across restarts of query-api and graph-builder."""

from __future__ import annotations

import asyncio
import json
import subprocess
import time
import uuid

import aiohttp
import pytest

from netsonde.common.service import wait_for
from tests.integration.static_stack import Stack, client, gremlin


@pytest.fixture
async def stack(nats_url: str, clickhouse_url: str, unique: str):
    common = dict(env={}, nats_url=nats_url, subject_prefix=f"s{unique}", host_id=f"host-{unique}",
                  clickhouse_url=clickhouse_url, clickhouse_database=f"static_{unique}")
    s = Stack(common)
    await s.start_gb()
    await s.start_api()
    yield s
    await s.stop()


async def test_node_validation_create_get_patch_delete(stack: Stack) -> None:
    async with client(stack) as http:
        # Skydive's required fields, each named in the 400
        r = await http.post("/api/node", json={"Metadata": {"Name": "n", "Type": "t"}})
        assert r.status_code == 400 and r.text == "ID is required (a non-empty string)"
        r = await http.post("/api/node", json={"ID": "x", "Metadata": {"Type": "t"}})
        assert r.status_code == 400 and "Metadata.Name" in r.text
        r = await http.post("/api/node", json={"ID": "x", "Metadata": {"Name": "n"}})
        assert r.status_code == 400 and "Metadata.Type" in r.text
        r = await http.post("/api/node", content=b"{not json")
        assert r.status_code == 400

        nid = f"static-{uuid.uuid4()}"
        r = await http.post("/api/node", json={"ID": nid, "Host": "h1", "Metadata": {"Name": "tor1", "Type": "switch"}})
        assert r.status_code == 201, r.text
        created = r.json()
        assert created["ID"] == nid and created["Host"] == "h1" and created["Revision"] == 1
        assert created["Origin"] == f"api.{stack.common['host_id']}"
        assert created["Metadata"] == {"Name": "tor1", "Type": "switch"}
        # same ID again: conflict
        r = await http.post("/api/node", json={"ID": nid, "Metadata": {"Name": "tor1", "Type": "switch"}})
        assert r.status_code == 409

        # part of the graph at once (read-your-writes through the replica)
        assert await gremlin(http, "G.V().Has('Type','switch').Values('Name')") == ["tor1"]
        r = await http.get(f"/api/node/{nid}")
        assert r.status_code == 200 and r.json()["Metadata"]["Name"] == "tor1"
        assert nid in (await http.get("/api/node")).json()

        # JSON Patch on Metadata bumps Revision and UpdatedAt
        await asyncio.sleep(0.01)
        r = await http.patch(f"/api/node/{nid}", json=[{"op": "add", "path": "/Metadata/Rack", "value": "r12"}])
        assert r.status_code == 200, r.text
        patched = r.json()
        assert patched["Metadata"] == {"Name": "tor1", "Type": "switch", "Rack": "r12"}
        assert patched["Revision"] == 2 and patched["UpdatedAt"] > created["UpdatedAt"]
        assert await gremlin(http, "G.V().Has('Rack','r12').Count()") == 1
        # Name/Type cannot change (ignored: 304), cannot be removed (400), outside Metadata ignored (304)
        r = await http.patch(f"/api/node/{nid}", json=[{"op": "replace", "path": "/Metadata/Name", "value": "x"}])
        assert r.status_code == 304
        r = await http.patch(f"/api/node/{nid}", json=[{"op": "replace", "path": "/Host", "value": "other"}])
        assert r.status_code == 304
        r = await http.patch(f"/api/node/{nid}", json=[{"op": "remove", "path": "/Metadata/Name"}])
        assert r.status_code == 400 and "Metadata.Name is required" in r.text
        # malformed patches
        r = await http.patch(f"/api/node/{nid}", json={"op": "add"})
        assert r.status_code == 400 and r.text.startswith("incorrect JSON patch")
        r = await http.patch(f"/api/node/{nid}", json=[{"op": "jump", "path": "/Metadata/a"}])
        assert r.status_code == 400 and "op must be one of" in r.text
        r = await http.patch(f"/api/node/{nid}", json=[{"op": "remove", "path": "/Metadata/nothere"}])
        assert r.status_code == 400 and r.text.startswith("incorrect JSON patch")
        r = await http.patch("/api/node/nope", json=[{"op": "add", "path": "/Metadata/a", "value": 1}])
        assert r.status_code == 404

        r = await http.delete(f"/api/node/{nid}")
        assert r.status_code == 200
        assert await gremlin(http, "G.V().Has('Type','switch').Count()") == 0
        r = await http.delete(f"/api/node/{nid}")
        assert r.status_code == 404
        r = await http.get(f"/api/node/{nid}")
        assert r.status_code == 404


async def test_edges_events_and_history(stack: Stack) -> None:
    async with client(stack) as http, aiohttp.ClientSession() as session:
        async with session.ws_connect(f"ws://127.0.0.1:{stack.port}/ws/subscriber") as ws:
            for name in ("a", "b"):
                r = await http.post("/api/node", json={"ID": f"n-{name}", "Metadata": {"Name": name, "Type": "box"}})
                assert r.status_code == 201
            r = await http.post("/api/edge", json={"ID": "e1", "Metadata": {}})
            assert r.status_code == 400 and "Metadata.RelationType" in r.text
            r = await http.post("/api/edge", json={"ID": "e1", "Metadata": {"RelationType": "cable"}})
            assert r.status_code == 400 and r.text.startswith("Parent")
            r = await http.post("/api/edge", json={"ID": "e1", "Parent": "n-a", "Child": "missing",
                                                   "Metadata": {"RelationType": "cable"}})
            assert r.status_code == 400 and r.text == "Child: node 'missing' does not exist"
            r = await http.post("/api/edge", json={"ID": "e1", "Parent": "n-a", "Child": "n-b",
                                                   "Metadata": {"RelationType": "cable", "Speed": 10}})
            assert r.status_code == 201, r.text
            assert r.json()["Parent"] == "n-a" and r.json()["Child"] == "n-b"
            assert await gremlin(http, "G.V().Has('Name','a').Out().Values('Name')") == ["b"]
            assert await gremlin(http, "G.E().Has('RelationType','cable').Count()") == 1
            r = await http.patch("/api/edge/e1", json=[{"op": "replace", "path": "/Metadata/Speed", "value": 100}])
            assert r.status_code == 200 and r.json()["Metadata"]["Speed"] == 100 and r.json()["Revision"] == 2
            r = await http.patch("/api/edge/e1", json=[{"op": "remove", "path": "/Metadata/RelationType"}])
            assert r.status_code == 400 and "RelationType" in r.text
            r = await http.delete("/api/edge/e1")
            assert r.status_code == 200
            r = await http.delete("/api/edge/e1")
            assert r.status_code == 404
            before_delete = int(time.time() * 1000)
            await asyncio.sleep(0.05)
            r = await http.delete("/api/node/n-a")
            assert r.status_code == 200

            seen: list[tuple[str, str]] = []
            while ("NodeDeleted", "n-a") not in seen:
                msg = json.loads((await ws.receive(timeout=5)).data)
                seen.append((msg["Type"], msg["Obj"]["ID"]))
            assert [e for e in seen if e[1] in ("n-a", "n-b", "e1")] == [
                ("NodeAdded", "n-a"), ("NodeAdded", "n-b"), ("EdgeAdded", "e1"), ("EdgeUpdated", "e1"),
                ("EdgeDeleted", "e1"), ("NodeDeleted", "n-a")]

        # history: the deleted static node is in the past graph
        async def in_past() -> bool:
            r = await http.post("/api/topology",
                                json={"GremlinQuery": f"G.At({before_delete}).V().Has('Type','box').Values('Name')"})
            return r.status_code == 200 and sorted(r.json()) == ["a", "b"]
        assert await wait_for(in_past, 15, interval=0.3)


async def test_static_objects_survive_restarts(stack: Stack) -> None:
    async with client(stack) as http:
        for name in ("p", "q"):
            r = await http.post("/api/node", json={"ID": f"r-{name}", "Metadata": {"Name": name, "Type": "rack"}})
            assert r.status_code == 201
        r = await http.post("/api/edge", json={"ID": "r-e", "Parent": "r-p", "Child": "r-q",
                                               "Metadata": {"RelationType": "layer2"}})
        assert r.status_code == 201
        r = await http.patch("/api/node/r-p", json=[{"op": "add", "path": "/Metadata/Row", "value": 3}])
        assert r.status_code == 200
    gb = stack.gb
    assert gb is not None
    await wait_for(lambda: not gb.writer.pending, 10)  # type: ignore[union-attr]
    # graph-builder restarts (history restored, bucket reloaded), then query-api restarts too
    await gb.stop()
    await stack.start_gb()
    assert stack.api is not None
    await stack.api.stop()
    await stack.start_api()
    async with client(stack) as http:
        [node] = await gremlin(http, "G.V().Has('Type','rack','Name','p')")
        assert node["ID"] == "r-p" and node["Metadata"]["Row"] == 3 and node["Revision"] == 2
        assert await gremlin(http, "G.V('r-p').Out('Name','q').Count()") == 1
        r = await http.delete("/api/edge/r-e")
        assert r.status_code == 200
        r = await http.delete("/api/node/r-q")
        assert r.status_code == 200
    # and a deletion is remembered across a restart too
    await stack.gb.stop()  # type: ignore[union-attr]
    await stack.start_gb()
    async with client(stack) as http:
        async def settled() -> bool:
            r = await http.post("/api/topology", json={"GremlinQuery": "G.V().Has('Type','rack').Values('Name')"})
            return r.status_code == 200 and r.json() == ["p"]
        assert await wait_for(settled, 15, interval=0.2)
        assert await gremlin(http, "G.E().Has('RelationType','layer2').Count()") == 0


@pytest.mark.root
async def test_static_edge_to_a_real_interface(stack: Stack, unique: str) -> None:
    """A static edge to a veth node: a probe restart (full state) does not remove it; it leaves the graph with the
    veth, and its definition is still deleted through the API."""
    veth, peer = f"sv{unique}", f"sp{unique}"
    await stack.start_probe()
    subprocess.run(["ip", "link", "add", veth, "type", "veth", "peer", "name", peer], check=True)
    try:
        async with client(stack) as http:
            async def veth_id() -> str:
                r = await http.post("/api/topology", json={"GremlinQuery": f"G.V().Has('Name','{veth}')"})
                return r.json()[0]["ID"] if r.status_code == 200 and r.json() else ""
            assert await wait_for(veth_id, 10)
            vid = await veth_id()
            r = await http.post("/api/node", json={"ID": f"sw-{unique}", "Metadata": {"Name": "sw", "Type": "switch"}})
            assert r.status_code == 201
            r = await http.post("/api/edge", json={"ID": f"cable-{unique}", "Parent": f"sw-{unique}", "Child": vid,
                                                   "Metadata": {"RelationType": "cable"}})
            assert r.status_code == 201, r.text
            # a probe-owned node cannot be patched or deleted here
            r = await http.delete(f"/api/node/{vid}")
            assert r.status_code == 409 and "probe-topology" in r.text
            r = await http.patch(f"/api/node/{vid}", json=[{"op": "add", "path": "/Metadata/x", "value": 1}])
            assert r.status_code == 409
            # the probe restarts and sends its full state: the static node and edge stay
            assert stack.probe is not None
            await stack.probe.stop()
            await stack.start_probe()
            await asyncio.sleep(1.0)
            assert await gremlin(http, f"G.V('sw-{unique}').Out().Values('Name')") == [veth]
            subprocess.run(["ip", "link", "del", veth], check=True)

            async def count(q: str, n: int) -> bool:
                r = await http.post("/api/topology", json={"GremlinQuery": q})
                return r.status_code == 200 and r.json() == n
            assert await wait_for(lambda: count(f"G.V('sw-{unique}').Out().Count()", 0), 10)
            r = await http.delete(f"/api/edge/cable-{unique}")
            assert r.status_code == 200
            r = await http.delete(f"/api/edge/cable-{unique}")
            assert r.status_code == 404
    finally:
        subprocess.run(["ip", "link", "del", veth], capture_output=True)


async def test_subscriber_filter(stack: Stack) -> None:
    """Skydive's X-Gremlin-Filter: a bad filter refuses the connection; a filtered subscriber gets Added/Deleted as
    elements enter and leave its sub-graph, and only its elements' updates."""
    url = f"ws://127.0.0.1:{stack.port}/ws/subscriber"
    async with aiohttp.ClientSession() as session, client(stack) as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await session.ws_connect(url, headers={"X-Gremlin-Filter": "G.V().Nope()"})
        assert exc.value.status == 400
        async with session.ws_connect(url, headers={"X-Gremlin-Filter": "G.V().Has('Zone','red')"}) as ws:
            for name in ("x", "y"):
                r = await http.post("/api/node", json={"ID": f"f-{name}", "Metadata": {"Name": name, "Type": "box"}})
                assert r.status_code == 201
            for op in ("add", "replace"):
                r = await http.patch("/api/node/f-x", json=[{"op": op, "path": "/Metadata/Zone", "value": "red"}])
            r = await http.patch("/api/node/f-y", json=[{"op": "add", "path": "/Metadata/Rack", "value": 1}])
            r = await http.patch("/api/node/f-x", json=[{"op": "add", "path": "/Metadata/Rack", "value": 2}])
            assert r.status_code == 200
            r = await http.patch("/api/node/f-x", json=[{"op": "remove", "path": "/Metadata/Zone"}])
            assert r.status_code == 200
            got = []
            while len(got) < 3:
                msg = json.loads((await ws.receive(timeout=5)).data)
                got.append((msg["Type"], msg["Obj"]["ID"], msg["Obj"]["Metadata"].get("Rack")))
            assert got == [("NodeAdded", "f-x", None), ("NodeUpdated", "f-x", 2), ("NodeDeleted", "f-x", 2)]
            # a SyncRequest with another filter replaces the subscription's
            await ws.send_json({"Namespace": "Graph", "Type": "SyncRequest", "UUID": "u1",
                                "Obj": {"GremlinFilter": "G.V().Has('Name','y')"}})
            reply = json.loads((await ws.receive(timeout=5)).data)
            assert reply["Type"] == "SyncReply" and [n["ID"] for n in reply["Obj"]["Nodes"]] == ["f-y"]
            r = await http.delete("/api/node/f-y")
            msg = json.loads((await ws.receive(timeout=5)).data)
            assert (msg["Type"], msg["Obj"]["ID"]) == ("NodeDeleted", "f-y")


async def test_subscriber_partial_update_policy(stack: Stack, unique: str) -> None:
    """Skydive's X-Update-Policy: partial: updates arrive as NodePartiallyUpdated with the changed keys as ops
    (Type 1 add/change, Type 2 delete), additions and deletions whole; a full subscriber at the same time still
    gets NodeUpdated; an unknown policy refuses the connection; the filter and the policy combine."""
    url = f"ws://127.0.0.1:{stack.port}/ws/subscriber"
    nid = f"p-{unique}"
    async with aiohttp.ClientSession() as session, client(stack) as http:
        with pytest.raises(aiohttp.WSServerHandshakeError) as exc:
            await session.ws_connect(url, headers={"X-Update-Policy": "some"})
        assert exc.value.status == 400
        async with session.ws_connect(url, headers={"X-Update-Policy": "partial"}) as part, \
                session.ws_connect(url) as full, \
                session.ws_connect(f"{url}?x-update-policy=Partial&x-gremlin-filter=G.V().Has('Name','pn')") as filt:
            r = await http.post("/api/node", json={"ID": nid, "Metadata": {"Name": "pn", "Type": "box", "Rack": 1}})
            assert r.status_code == 201, r.text
            r = await http.patch(f"/api/node/{nid}", json=[{"op": "replace", "path": "/Metadata/Rack", "value": 2},
                                                          {"op": "add", "path": "/Metadata/Zone", "value": "red"}])
            assert r.status_code == 200, r.text
            r = await http.patch(f"/api/node/{nid}", json=[{"op": "remove", "path": "/Metadata/Zone"}])
            assert r.status_code == 200, r.text
            r = await http.delete(f"/api/node/{nid}")
            assert r.status_code == 200, r.text

            async def mine(ws: aiohttp.ClientWebSocketResponse, n: int) -> list[dict]:
                out: list[dict] = []
                while len(out) < n:
                    msg = json.loads((await ws.receive(timeout=5)).data)
                    if msg["Obj"].get("ID") == nid:
                        out.append(msg)
                return out

            got = await mine(part, 4)
            assert [m["Type"] for m in got] == ["NodeAdded", "NodePartiallyUpdated", "NodePartiallyUpdated",
                                                "NodeDeleted"]
            assert got[0]["Obj"]["Metadata"] == {"Name": "pn", "Type": "box", "Rack": 1}
            assert got[1]["Obj"]["Ops"] == [{"Type": 1, "Key": "Rack", "Value": 2},
                                            {"Type": 1, "Key": "Zone", "Value": "red"}]
            assert got[2]["Obj"]["Ops"] == [{"Type": 2, "Key": "Zone", "Value": None}]
            assert (got[1]["Obj"]["Revision"], got[2]["Obj"]["Revision"]) == (2, 3)
            assert set(got[1]["Obj"]) == {"ID", "UpdatedAt", "Revision", "Ops"}
            assert [m["Type"] for m in await mine(full, 4)] == ["NodeAdded", "NodeUpdated", "NodeUpdated",
                                                                 "NodeDeleted"]
            fgot = await mine(filt, 4)
            assert [m["Type"] for m in fgot] == [m["Type"] for m in got]
            assert [m["Obj"].get("Ops") for m in fgot] == [m["Obj"].get("Ops") for m in got]
