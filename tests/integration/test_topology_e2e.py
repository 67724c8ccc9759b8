"""The whole topology slice on real parts: kernel change -> probe-topology -> NATS -> graph-builder ->
ClickHouse history + query-api replica -> HTTP, WebSocket and the `netsonde` CLI."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time

import aiohttp
import httpx
import pytest

from netsonde.common.service import wait_for
from tests.integration.static_stack import Stack, client


pytestmark = [pytest.mark.root, pytest.mark.slow]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
async def host_stack(nats_url: str, clickhouse_url: str, unique: str):
    s = Stack(dict(env={}, nats_url=nats_url, subject_prefix=f"e{unique}", host_id=f"host-{unique}",
                   clickhouse_url=clickhouse_url, clickhouse_database=f"e2e_{unique}"))
    await s.start_host()
    async with client(s, timeout=10) as http:
        yield http, s.port, s.gb
    await s.stop()


@pytest.fixture
def names(unique: str):
    n = {"ns": f"ns-{unique}", "br": f"br{unique}", "va": f"va{unique}", "vb": f"vb{unique}"}
    yield n
    subprocess.run(["ip", "netns", "del", n["ns"]], capture_output=True)
    for dev in ("va", "br"):
        subprocess.run(["ip", "link", "del", n[dev]], capture_output=True)


async def gremlin(http: httpx.AsyncClient, q: str):
    r = await http.post("/api/topology", json={"GremlinQuery": q})
    assert r.status_code == 200, r.text
    return r.json()


async def test_namespace_veth_bridge_end_to_end(host_stack, names) -> None:
    http, port, gb = host_stack
    ns, br, va, vb = names["ns"], names["br"], names["va"], names["vb"]
    url = f"ws://127.0.0.1:{port}/ws/subscriber"
    async with aiohttp.ClientSession() as session, session.ws_connect(url) as ws:
        ip("netns", "add", ns)
        ip("link", "add", br, "type", "bridge")
        ip("link", "add", va, "type", "veth", "peer", "name", vb)
        ip("link", "set", vb, "netns", ns)
        ip("link", "set", va, "master", br)
        ip("link", "set", va, "up")
        ip("-n", ns, "addr", "add", "10.77.0.2/24", "dev", vb)

        async def has(q: str, n: int) -> bool:
            r = await http.post("/api/topology", json={"GremlinQuery": q})
            return r.status_code == 200 and r.json() == n

        assert await wait_for(lambda: has(f"G.V().Has('Name','{va}').Count()", 1), 10)
        # the WebSocket saw the veth being added
        seen: list[dict] = []
        while not any(m["Type"] == "NodeAdded" and m["Obj"]["Metadata"].get("Name") == va for m in seen):
            seen.append(json.loads((await ws.receive(timeout=5)).data))

    [node] = await gremlin(http, f"G.V().Has('Name','{va}')")
    assert node["Metadata"]["Type"] == "veth" and node["Metadata"]["MTU"] == 1500
    assert node["Metadata"]["State"] == "UP" or node["Metadata"]["State"] in ("DOWN", "UNKNOWN", "LOWERLAYERDOWN")
    assert await wait_for(lambda: has(f"G.V().Has('Name','{vb}').Has('IPV4','10.77.0.2/24').Count()", 1), 10)
    # veth peer across namespaces, bridge membership, namespace ownership
    peers = await gremlin(http, f"G.V().Has('Name','{va}').Both().Has('Type','veth').Values('Name')")
    assert peers == [vb]
    assert await gremlin(http, f"G.V().Has('Name','{br}').Out().Has('Name','{va}').Count()") >= 1
    owners = await gremlin(http, f"G.V().Has('Name','{vb}').In().Has('Type','netns').Values('Name')")
    assert owners == [ns]
    [peer] = await gremlin(http, f"G.V().Has('Name','{vb}')")
    assert peer["Metadata"].get("NetNsPath", "").endswith(ns)

    # a change shows up, then a delete
    ip("link", "set", va, "mtu", "1400")
    assert await wait_for(lambda: has(f"G.V().Has('Name','{va}').Has('MTU',1400).Count()", 1), 10)
    assert gb.builder.graph.nodes[node["ID"]].Revision >= 2

    # the CLI answers the same query
    cli = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "netsonde.cli", "client", "--analyzer", f"127.0.0.1:{port}",
        "topology", "query", "--gremlin", f"G.V().Has('Name','{va}').Values('MTU')",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    stdout, stderr = await asyncio.wait_for(cli.communicate(), 60)
    assert cli.returncode == 0, stderr
    assert json.loads(stdout) == [1400]

    ip("link", "del", va)
    assert await wait_for(lambda: has(f"G.V().Has('Name','{va}').Count()", 0), 10)
    assert await wait_for(lambda: has(f"G.V().Has('Name','{vb}').Count()", 0), 10)

    # history: the deleted veth is still there in the past, with both MTUs in a window that covers its life
    # (absolute instants, so each poll rebuilds from ClickHouse instead of reusing a cached past graph)
    async def window_has_both_mtus() -> bool:
        now_ms = int(time.time() * 1000)
        r = await http.post("/api/topology", json={"GremlinQuery":
                                                   f"G.Context({now_ms}, 60).V().Has('Name','{va}').Values('MTU')"})
        return r.status_code == 200 and {1500, 1400} <= set(r.json())

    assert await wait_for(window_has_both_mtus, 15)
    before_delete = await gremlin(http, f"G.At({int(time.time() * 1000) - 120_000}).V().Has('Name','{va}').Count()")
    assert before_delete == 0  # two minutes ago it did not exist yet
