"""Time travel on real parts: a veth end inside a named namespace, changed by the test, read back at past
instants through `G.At()` / `G.Context()` (probe-topology -> NATS -> graph-builder -> ClickHouse -> query-api).

The namespace is deleted and created again first: the kernel reuses namespace inode numbers, so the second
namespace's nodes usually get the same IDs as the first one's (IDs derive from the inode). That is the case
that made the past graph lose every namespaced node (revision numbers restarting at 1 after a deletion).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime, timezone
from email.utils import format_datetime
from typing import Any

import httpx
import pytest

from netsonde.common.service import wait_for
from netsonde.common.testing import free_port
from netsonde.graph_builder.config import GraphBuilderConfig
from netsonde.graph_builder.service import GraphBuilderService
from netsonde.probe_topology.config import ProbeTopologyConfig
from netsonde.probe_topology.service import ProbeTopologyService
from netsonde.query_api.config import QueryApiConfig
from netsonde.query_api.service import QueryApiService

from ovs_fixture import start_ovs, stop_ovs  # tests/integration/ovs_fixture.py

pytestmark = [pytest.mark.root, pytest.mark.slow]


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@asynccontextmanager
async def services(nats_url: str, clickhouse_url: str, unique: str, ovsdb: str = "") -> AsyncIterator[httpx.AsyncClient]:
    """graph-builder, probe-topology and query-api on the real NATS and ClickHouse, an HTTP client to the API."""
    common = dict(env={}, nats_url=nats_url, subject_prefix=f"tt{unique}", host_id=f"host-{unique}",
                  clickhouse_url=clickhouse_url, clickhouse_database=f"tt_{unique}")
    gb = GraphBuilderService(GraphBuilderConfig.load(**common, history_flush_interval_s=0.2))
    await gb.start()
    # counters refresh off: only the test's changes make revisions, so the values read back are exact
    probe = ProbeTopologyService(ProbeTopologyConfig.load(**common, ovsdb=ovsdb, process_netns=False,
                                                          metrics_interval_s=3600))
    api = QueryApiService(QueryApiConfig.load(**common, http_port=free_port()))
    try:
        await probe.start()
        await api.start()
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api.cfg.http_port}", timeout=10) as http:
            yield http
    finally:
        await api.stop()
        await probe.stop()
        await gb.stop()


@pytest.fixture
async def stack(nats_url: str, clickhouse_url: str, unique: str):
    async with services(nats_url, clickhouse_url, unique) as http:
        yield http


@pytest.fixture
def names(unique: str):
    n = {"ns": f"b{unique}", "vb": f"vb{unique}", "pb": f"pb{unique}"}
    yield n
    subprocess.run(["ip", "netns", "del", n["ns"]], capture_output=True)
    subprocess.run(["ip", "link", "del", n["vb"]], capture_output=True)


async def gremlin(http: httpx.AsyncClient, q: str) -> Any:
    r = await http.post("/api/topology", json={"GremlinQuery": q})
    assert r.status_code == 200, f"{q}: {r.status_code} {r.text}"
    return r.json()


def ns_inode(ns: str) -> int:
    return os.stat(f"/run/netns/{ns}").st_ino


async def test_namespaced_interface_at_three_instants(stack, names) -> None:
    http = stack
    ns, vb, pb = names["ns"], names["vb"], names["pb"]

    async def live(q: str, expected: Any) -> bool:
        r = await http.post("/api/topology", json={"GremlinQuery": q})
        return r.status_code == 200 and r.json() == expected

    # a first life of the namespace and its veth end, then deleted
    ip("netns", "add", ns)
    first_inode = ns_inode(ns)
    ip("link", "add", vb, "type", "veth", "peer", "name", pb, "netns", ns)
    assert await wait_for(lambda: live(f"G.V().Has('Name','{pb}').Count()", 1), 30)
    [first] = await gremlin(http, f"G.V().Has('Name','{pb}')")
    ip("netns", "del", ns)
    ip("link", "del", vb)
    assert await wait_for(lambda: live(f"G.V().Has('Name','{pb}').Count()", 0), 10)

    # the second life: same name, and (the kernel reuses the lowest free inode) usually the same inode
    for _ in range(20):
        ip("netns", "add", ns)
        if ns_inode(ns) == first_inode:
            break
        ip("netns", "del", ns)
    else:
        ip("netns", "add", ns)
    ip("link", "add", vb, "type", "veth", "peer", "name", pb, "netns", ns)
    assert await wait_for(lambda: live(f"G.V().Has('Name','{pb}').Count()", 1), 30)
    [created] = await gremlin(http, f"G.V().Has('Name','{pb}')")
    if ns_inode(ns) == first_inode:
        # same ID again: its revisions continue after the deletion instead of restarting at 1
        assert created["ID"] == first["ID"]
        assert created["Revision"] == first["Revision"] + 2
    assert created["Metadata"]["MTU"] == 1500 and created["Metadata"]["State"] == "DOWN"
    pb_id = created["ID"]

    async def node_now() -> dict[str, Any]:
        [n] = await gremlin(http, f"G.V('{pb_id}')")
        return n

    # change 1: MTU; change 2: MTU again and the link up on both ends
    await asyncio.sleep(3.2)
    ip("-n", ns, "link", "set", pb, "mtu", "1400")
    assert await wait_for(lambda: live(f"G.V('{pb_id}').Values('MTU')", [1400]), 10)
    changed = await node_now()
    await asyncio.sleep(3.2)
    ip("link", "set", vb, "up")
    ip("-n", ns, "link", "set", pb, "mtu", "1300", "up")
    assert await wait_for(lambda: live(f"G.V('{pb_id}').Values('State')", ["UP"]), 10)
    assert await wait_for(lambda: live(f"G.V('{pb_id}').Values('MTU')", [1300]), 10)
    # the link coming up takes more than one revision (carrier, IPv6 link-local address after DAD): the last
    # state is the one that holds for 2 s
    last = await node_now()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        await asyncio.sleep(2)
        again = await node_now()
        if again["Revision"] == last["Revision"]:
            break
        last = again
    await asyncio.sleep(max(0.0, (last["UpdatedAt"] + 3200) / 1000 - time.time()))

    # the three instants: 1.1 s after each revision (and 2 s before the next one)
    t = [created["UpdatedAt"] + 1100, changed["UpdatedAt"] + 1100, last["UpdatedAt"] + 1100]
    expected = [(1500, "DOWN"), (1400, "DOWN"), (1300, "UP")]

    async def history_complete() -> bool:
        q = f"G.At({t[2]}).V('{pb_id}').Values('MTU')"
        r = await http.post("/api/topology", json={"GremlinQuery": q})
        return r.status_code == 200 and r.json() == [1300]

    assert await wait_for(history_complete, 15), "the last revision never reached the history"

    def forms(at_ms: int) -> list[str]:
        """The same instant written as epoch ms, epoch seconds, ISO 8601 and RFC1123 (second-rounded ones
        stay after the revision: the instant is 1.1 s after it)."""
        dt = datetime.fromtimestamp(at_ms / 1000, timezone.utc)
        return [str(at_ms), str(at_ms // 1000), f"'{dt.isoformat(timespec='milliseconds')}'",
                f"'{format_datetime(dt.replace(microsecond=0), usegmt=True)}'"]

    for at_ms, (mtu, state) in zip(t, expected):
        for form in forms(at_ms):
            got = await gremlin(http, f"G.At({form}).V().Has('Name','{pb}')")
            assert [(n["Metadata"]["MTU"], n["Metadata"]["State"]) for n in got] == [(mtu, state)], form
            # the namespace that owns it, and its peer in the root namespace, are in the same past graph
            owner = await gremlin(http, f"G.At({form}).V().Has('Name','{pb}').In().Has('Type','netns')"
                                        f".Values('Name')")
            assert owner == [ns], f"At({form}): {owner}"
            peer = await gremlin(http, f"G.At({form}).V().Has('Name','{pb}').Both().Has('Type','veth')"
                                       f".Values('Name')")
            assert peer == [vb], f"At({form}): {peer}"
            # the namespace's loopback too: every node of the namespace is there
            in_ns = await gremlin(http, f"G.At({form}).V().Has('NetNsName','{ns}').Values('Name')")
            assert sorted(in_ns) == sorted(["lo", pb]), f"At({form}): {in_ns}"

    # relative instants, '-Ns' and 'N seconds ago', 2 s after each revision: whole seconds back from now, and
    # the query-api rounds a relative instant down to a 1 s bucket, so each lands 1-3 s after its revision
    for at_ms, (mtu, state) in zip(t, expected):
        back_s = int((time.time() * 1000 - (at_ms + 900)) // 1000)
        for form in (f"'-{back_s}s'", f"'{back_s} seconds ago'"):
            got = await gremlin(http, f"G.At({form}).V().Has('Name','{pb}')")
            assert [(n["Metadata"]["MTU"], n["Metadata"]["State"]) for n in got] == [(mtu, state)], form
    assert await gremlin(http, f"G.At('1 hour ago').V().Has('Name','{pb}').Count()") == 0
    assert await gremlin(http, f"G.Context({t[0] - 1100 - 1}).V().Has('Name','{pb}').Count()") == 0

    # a window over the second life: each revision once, in order, with its own values
    window_s = (t[2] - created["UpdatedAt"]) / 1000
    revs = await gremlin(http, f"G.Context({t[2]}, {window_s}).V().Has('Name','{pb}')")
    # every revision number once, in order
    assert [r["Revision"] for r in revs] == list(range(created["Revision"], last["Revision"] + 1))
    by_rev = {r["Revision"]: (r["Metadata"]["MTU"], r["Metadata"]["State"]) for r in revs}
    assert [by_rev[created["Revision"]], by_rev[changed["Revision"]], by_rev[last["Revision"]]] == expected
    assert {r["ID"] for r in revs} == {pb_id}
    mtus = await gremlin(http, f"G.Context({t[2]}, {window_s}).V().Has('Name','{pb}').Values('MTU')")
    assert mtus == [m for m, _ in (by_rev[r["Revision"]] for r in revs)]
    assert [m for i, m in enumerate(mtus) if i == 0 or mtus[i - 1] != m] == [1500, 1400, 1300]


@pytest.mark.ovs
async def test_ovs_and_static_objects_at_past_instants(nats_url: str, clickhouse_url: str, unique: str) -> None:
    """OVS bridges, ports and interfaces (private OVS daemons) and static objects (/api/node) are in the past
    graph of an instant when they existed, and not in one after they were deleted."""
    link = f"/tmp/ttovs{unique}.sock"
    br, internal, static_id, tor = f"tb{unique}", f"ti{unique}", f"static-{unique}", f"tor-{unique}"
    ovs = start_ovs()
    try:
        os.symlink(ovs.dir / "db.sock", link)
        async with services(nats_url, clickhouse_url, unique, ovsdb=f"unix:{link}") as http:
            async def live(q: str, expected: Any) -> bool:
                r = await http.post("/api/topology", json={"GremlinQuery": q})
                return r.status_code == 200 and r.json() == expected

            ovs.vsctl("add-br", br, "--", "set", "bridge", br, "datapath_type=netdev")
            ovs.vsctl("add-port", br, internal, "--", "set", "interface", internal, "type=internal")
            r = await http.post("/api/node", json={"ID": static_id, "Metadata": {"Name": tor, "Type": "switch"}})
            assert r.status_code in (200, 201), r.text
            owned = f"G.V().Has('Name','{br}','Type','ovsbridge').Out('Type','ovsport').Dedup().Sort(ASC,'Name').Values('Name')"
            assert await wait_for(lambda: live(owned, sorted([br, internal])), 30)  # its own port too
            assert await wait_for(lambda: live(f"G.V().Has('Name','{tor}').Values('Type')", ["switch"]), 10)
            newest = max(n["UpdatedAt"] for n in await gremlin(http, f"G.V().Has('Name', Regex('.*{unique}.*'))"))
            await asyncio.sleep(max(0.0, (newest + 1500) / 1000 - time.time()))
            existed = newest + 1000

            ovs.vsctl("del-br", br)
            assert (await http.delete(f"/api/node/{static_id}")).status_code == 200
            assert await wait_for(lambda: live(f"G.V().Has('Name','{br}').Count()", 0), 30)
            assert await wait_for(lambda: live(f"G.V().Has('Name','{tor}').Count()", 0), 10)
            await asyncio.sleep(1.2)
            gone = int(time.time() * 1000) - 100

            async def history_has_deletions() -> bool:
                r = await http.post("/api/topology", json={"GremlinQuery": f"G.At({gone}).V().Has('Name','{tor}').Count()"})
                return r.status_code == 200 and r.json() == 0

            assert await wait_for(history_has_deletions, 15)
            for at, bridges, ports, statics in ((existed, [br], sorted([br, internal]), [static_id]), (gone, [], [], [])):
                assert await gremlin(http, f"G.At({at}).V().Has('Type','ovsbridge').Has('Name','{br}')"
                                           f".Values('Name')") == bridges
                assert await gremlin(http, f"G.At({at}).V().Has('Name','{br}','Type','ovsbridge')"
                                           f".Out('Type','ovsport').Dedup().Sort(ASC,'Name').Values('Name')") == ports
                assert await gremlin(http, f"G.At({at}).V().Has('Name','{tor}').Values('ID')") == statics
            # the internal interface: owned by its port at the instant it existed
            assert await gremlin(http, f"G.At({existed}).V().Has('Name','{internal}','Type','ovsport')"
                                       f".Out().Has('Name','{internal}').Values('Type')") == ["internal"]
    finally:
        if os.path.lexists(link):
            os.unlink(link)
        stop_ovs(ovs)
