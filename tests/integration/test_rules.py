"""Node and edge rules (Skydive's /api/noderule and /api/edgerule) applied by graph-builder on real NATS and
ClickHouse, on real veths: create/update rules, edge rules kept up to date, limits, persistence across restarts."""

from __future__ import annotations

import subprocess
import uuid

import httpx
import pytest

from netsonde.common.service import wait_for

from tests.integration.static_stack import Stack, client, gremlin


def oid(text: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_OID, text))


@pytest.fixture
async def stack(nats_url: str, clickhouse_url: str, unique: str):
    common = dict(env={}, nats_url=nats_url, subject_prefix=f"r{unique}", host_id=f"host-{unique}",
                  clickhouse_url=clickhouse_url, clickhouse_database=f"rules_{unique}", rule_max_results=50)
    s = Stack(common)
    await s.start_gb()
    await s.start_api()
    yield s
    await s.stop()


async def eventually(http: httpx.AsyncClient, q: str, expected: object, timeout: float = 10) -> None:
    last: list[object] = []

    async def check() -> bool:
        r = await http.post("/api/topology", json={"GremlinQuery": q})
        last[:] = [r.status_code, r.text]
        return r.status_code == 200 and r.json() == expected
    assert await wait_for(check, timeout, interval=0.1), f"{q} -> {last}, expected {expected!r}"


async def test_rule_validation_and_limits(stack: Stack) -> None:
    async with client(stack) as http:
        r = await http.post("/api/noderule", json={"Action": "delete", "Metadata": {"Name": "a", "Type": "b"}})
        assert r.status_code == 400 and r.text == "Action must be 'create' or 'update'"
        r = await http.post("/api/noderule", json={"Action": "create", "Metadata": {"Name": "a"}})
        assert r.status_code == 400 and "Metadata.Type" in r.text
        r = await http.post("/api/noderule", json={"Action": "create", "Query": "G.V()",
                                                   "Metadata": {"Name": "a", "Type": "b"}})
        assert r.status_code == 400 and r.text.startswith("Query is only used by Action 'update'")
        r = await http.post("/api/noderule", json={"Action": "create", "Metadata": {"Name": "a", "Type": "b"}},
                            headers={"X-Resource-TTL": "10s"})
        assert r.status_code == 400 and "X-Resource-TTL" in r.text
        r = await http.post("/api/noderule", json={"Action": "update", "Metadata": {"Zone": "x"}})
        assert r.status_code == 400 and "Query" in r.text
        r = await http.post("/api/noderule", json={"Action": "update", "Query": "G.V()", "Metadata": {"Name": "x"}})
        assert r.status_code == 400 and "Name and Type fields can not be changed" in r.text
        r = await http.post("/api/noderule", json={"Action": "update", "Query": "G.V().Nope()", "Metadata": {"a": 1}})
        assert r.status_code == 400 and r.text.startswith("Query:")
        r = await http.post("/api/noderule", json={"Action": "update", "Query": "G.V().Count()", "Metadata": {"a": 1}})
        assert r.status_code == 400 and "not nodes" in r.text
        r = await http.post("/api/edgerule", json={"Src": "G.V()", "Dst": "G.V()", "Metadata": {}})
        assert r.status_code == 400 and "Metadata.RelationType" in r.text
        r = await http.post("/api/edgerule", json={"Dst": "G.V()", "Metadata": {"RelationType": "x"}})
        assert r.status_code == 400 and r.text.startswith("Src")
        r = await http.delete(f"/api/noderule/{uuid.uuid4()}")
        assert r.status_code == 404
        r = await http.delete(f"/api/edgerule/{uuid.uuid4()}")
        assert r.status_code == 404

        # a rule bigger than the query limits (rule_max_results=50 here) is refused, and nothing is stored
        for i in range(8):
            r = await http.post("/api/node", json={"ID": f"lim-{i}", "Metadata": {"Name": f"l{i}", "Type": "lim"}})
            assert r.status_code == 201
        r = await http.post("/api/edgerule", json={"Src": "G.V().Has('Type','lim')", "Dst": "G.V().Has('Type','lim')",
                                                   "Metadata": {"RelationType": "mesh"}})
        assert r.status_code == 413 and "56 edges, more than the limit of 50" in r.text
        assert (await http.get("/api/edgerule")).json() == {}
        assert await gremlin(http, "G.E().Has('RelationType','mesh').Count()") == 0


async def test_create_rule_and_persistence(stack: Stack) -> None:
    async with client(stack) as http:
        r = await http.post("/api/noderule", json={"Action": "create", "Name": "tor",
                                                   "Metadata": {"Name": "TOR1", "Type": "fabric"}})
        assert r.status_code == 201, r.text
        rule = r.json()
        assert rule["Action"] == "create" and rule["Name"] == "tor" and uuid.UUID(rule["UUID"])
        nid = oid("fabric/TOR1")
        [node] = await gremlin(http, "G.V().Has('Type','fabric')")
        assert node["ID"] == nid and node["Metadata"] == {"Name": "TOR1", "Type": "fabric", "TID": nid}
        assert node["Origin"] == f"graph-builder.{stack.common['host_id']}"
        assert (await http.get("/api/noderule")).json() == {rule["UUID"]: rule}
        assert (await http.get(f"/api/noderule/{rule['UUID']}")).json() == rule
        # rule-made nodes belong to the rule
        r = await http.delete(f"/api/node/{nid}")
        assert r.status_code == 409

        # an edge rule from the TOR to static servers, and an update rule on the servers
        for i in range(3):
            r = await http.post("/api/node", json={"ID": f"srv-{i}", "Metadata": {"Name": f"srv{i}", "Type": "server"}})
            assert r.status_code == 201
        r = await http.post("/api/edgerule", json={"Src": "G.V().Has('Type','fabric','Name','TOR1')",
                                                   "Dst": "G.V().Has('Type','server')",
                                                   "Metadata": {"RelationType": "layer2", "Cable": "cat6"}})
        assert r.status_code == 201, r.text
        erule = r.json()
        edges = await gremlin(http, "G.E().Has('Cable','cat6')")
        assert sorted(e["ID"] for e in edges) == sorted(oid(nid + f"srv-{i}" + "layer2") for i in range(3))
        r = await http.post("/api/noderule", json={"Action": "update", "Query": "G.V().Has('Type','server')",
                                                   "Metadata": {"Rack": "R7"}})
        assert r.status_code == 201
        urule = r.json()
        assert await gremlin(http, "G.V().Has('Rack','R7').Count()") == 3

    # graph-builder and query-api restart: rules are read back and still applied, nothing duplicated
    assert stack.gb is not None and stack.api is not None
    await stack.gb.stop()
    await stack.start_gb()
    await stack.api.stop()
    await stack.start_api()
    async with client(stack) as http:
        assert await gremlin(http, "G.V().Has('Type','fabric').Count()") == 1
        assert await gremlin(http, "G.E().Has('Cable','cat6').Count()") == 3
        assert await gremlin(http, "G.V().Has('Rack','R7').Count()") == 3
        assert set((await http.get("/api/noderule")).json()) == {rule["UUID"], urule["UUID"]}
        assert set((await http.get("/api/edgerule")).json()) == {erule["UUID"]}
        assert stack.gb is not None
        assert stack.gb.health()["static"] == {"nodes": 3, "edges": 0, "noderules": 2, "edgerules": 1,
                                               "rule_errors": {}}
        # later changes still follow the rules: a new server gets the rack and a link
        r = await http.post("/api/node", json={"ID": "srv-9", "Metadata": {"Name": "srv9", "Type": "server"}})
        assert r.status_code == 201
        await eventually(http, "G.V('srv-9').Values('Rack')", ["R7"])
        await eventually(http, f"G.V('{nid}').Out('Name','srv9').Count()", 1)
        # deleting the rules takes everything they made away again
        assert (await http.delete(f"/api/noderule/{urule['UUID']}")).status_code == 200
        assert await gremlin(http, "G.V().Has('Rack').Count()") == 0
        assert (await http.delete(f"/api/edgerule/{erule['UUID']}")).status_code == 200
        assert await gremlin(http, "G.E().Has('Cable','cat6').Count()") == 0
        assert (await http.delete(f"/api/noderule/{rule['UUID']}")).status_code == 200
        assert await gremlin(http, "G.V().Has('Type','fabric').Count()") == 0
        assert (await http.get("/api/noderule")).json() == {}


@pytest.mark.root
async def test_rules_follow_real_interfaces(stack: Stack, unique: str) -> None:
    """An update rule and an edge rule over veths: a veth added later is selected, a deleted one drops out; a rule
    selects an interface inside a network namespace."""
    u = unique[:6]
    pairs = [(f"ra{u}{i}", f"rb{u}{i}") for i in range(3)]
    ns = f"rns{u}"
    await stack.start_probe()
    try:
        for a, b in pairs[:2]:
            subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)
        async with client(stack) as http:
            q = f"G.V().Has('Type','veth','Name',Regex('ra{u}.*'))"
            await eventually(http, f"{q}.Count()", 2)
            r = await http.post("/api/noderule", json={"Action": "update", "Query": q, "Metadata": {"Zone": "blue"}})
            assert r.status_code == 201, r.text
            urule = r.json()
            assert sorted(await gremlin(http, "G.V().Has('Zone','blue').Values('Name')")) == [pairs[0][0], pairs[1][0]]
            r = await http.post("/api/noderule", json={"Action": "create", "Metadata": {"Name": f"sw{u}", "Type": "switch"}})
            assert r.status_code == 201
            r = await http.post("/api/edgerule", json={"Src": f"G.V().Has('Type','switch','Name','sw{u}')", "Dst": q,
                                                       "Metadata": {"RelationType": "cable"}})
            assert r.status_code == 201
            assert await gremlin(http, f"G.V().Has('Name','sw{u}').Out().Count()") == 2

            # a third veth appears: the rules pick it up
            subprocess.run(["ip", "link", "add", pairs[2][0], "type", "veth", "peer", "name", pairs[2][1]], check=True)
            await eventually(http, f"G.V().Has('Name','{pairs[2][0]}').Values('Zone')", ["blue"])
            await eventually(http, f"G.V().Has('Name','sw{u}').Out().Count()", 3)
            # the probe's own updates keep the rule's key (MTU change = a new probe revision)
            subprocess.run(["ip", "link", "set", pairs[0][0], "mtu", "1400"], check=True)
            await eventually(http, f"G.V().Has('Name','{pairs[0][0]}').Values('MTU')", [1400])
            assert await gremlin(http, f"G.V().Has('Name','{pairs[0][0]}').Values('Zone')") == ["blue"]
            # one veth goes away: its link goes with it
            subprocess.run(["ip", "link", "del", pairs[1][0]], check=True)
            await eventually(http, f"G.V().Has('Name','sw{u}').Out().Count()", 2)
            assert sorted(await gremlin(http, f"G.V().Has('Name','sw{u}').Out().Values('Name')")) == [
                pairs[0][0], pairs[2][0]]
            # deleting the update rule removes the key from every node it had touched
            assert (await http.delete(f"/api/noderule/{urule['UUID']}")).status_code == 200
            assert await gremlin(http, "G.V().Has('Zone').Count()") == 0

            # an interface inside a network namespace, selected through its namespace
            subprocess.run(["ip", "netns", "add", ns], check=True)
            subprocess.run(["ip", "link", "set", pairs[0][1], "netns", ns], check=True)
            inside = f"G.V().Has('Type','netns','Name','{ns}').Out().Has('Name','{pairs[0][1]}')"
            await eventually(http, f"{inside}.Count()", 1)
            r = await http.post("/api/noderule", json={"Action": "update", "Query": inside,
                                                       "Metadata": {"Tenant": "t1"}})
            assert r.status_code == 201
            assert await gremlin(http, "G.V().Has('Tenant','t1').Values('Name')") == [pairs[0][1]]
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        for a, _ in pairs:
            subprocess.run(["ip", "link", "del", a], capture_output=True)
