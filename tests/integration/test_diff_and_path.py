"""What changed and where packets die, on real parts.

- Diff: in a namespace, an MTU changed, a link downed, a route added and a veth deleted between two instants;
  `GET /api/diff` (and the `Diff` step, and `netsonde client diff`) give exactly those changes under the
  namespace's scope, and nothing under an unrelated one (graph-builder, probe-topology, query-api in process).
- Loss: namespace A -> router namespace R -> bridge -> namespace B, captures (AF_PACKET, every service a
  process) on A's interface, R's egress and B's interface; an nftables rule in R drops echo requests 3 to 5 of
  a 10-ping stream: `GET /api/flowpath/{tid}` puts exactly 3 lost AB packets between the first two hops and
  none elsewhere, and `GET /api/loss` ranks that link first.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import pytest

from bench.services import ServiceProcs
from tests.integration.flow_stack import cli_capture_create, start_flow_stack
from netsonde.common.service import wait_for
from netsonde.gremlin.diff import format_change

from test_time_travel import gremlin, services  # tests/integration/test_time_travel.py
from netsonde.common.testing import wait_until
from tests.integration.query_api_http import api_get
from tests.integration.query_api_http import gremlin as api_gremlin

pytestmark = [pytest.mark.root, pytest.mark.slow]


def sh(*cmd: str) -> str:
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True, timeout=60).stdout


def no_ipv6(ns: str) -> None:
    """IPv6 off in a namespace: no link-local address churn when a link goes down (not a change under test)."""
    sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
       "net.ipv6.conf.default.disable_ipv6=1")


@pytest.fixture
def diff_names(unique: str):
    n = {"ns": f"dfa{unique}", "other": f"dfo{unique}"}
    yield n
    for ns in n.values():
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


async def test_diff_mtu_down_route_deleted_veth(nats_url: str, clickhouse_url: str, unique: str,
                                                diff_names: dict[str, str]) -> None:
    ns, other = diff_names["ns"], diff_names["other"]
    for name in (ns, other):
        sh("ip", "netns", "add", name)
        no_ipv6(name)
    sh("ip", "-n", ns, "link", "add", "d1", "type", "veth", "peer", "name", "d2")
    sh("ip", "-n", ns, "link", "add", "d3", "type", "veth", "peer", "name", "d4")
    sh("ip", "-n", ns, "link", "add", "dm", "type", "veth", "peer", "name", "dn")
    sh("ip", "-n", ns, "addr", "add", "10.77.0.1/24", "dev", "d1")
    for dev in ("d1", "d2", "dm", "dn"):
        sh("ip", "-n", ns, "link", "set", dev, "up")
    sh("ip", "-n", other, "link", "add", "o1", "type", "veth", "peer", "name", "o2")
    async with services(nats_url, clickhouse_url, unique) as http:
        scope = f"G.V().Has('Type','netns','Name','{ns}').Descendants()"

        async def count(q: str) -> Any:
            r = await http.post("/api/topology", json={"GremlinQuery": q})
            return r.json() if r.status_code == 200 else None

        assert await wait_for(lambda: _eq(count(f"{scope}.Has('Name','d4').Count()"), 1), 30)
        assert await wait_for(lambda: _eq(count(f"{scope}.Has('Name','dm').Has('State','UP').Count()"), 1), 30)
        await asyncio.sleep(2.0)  # let the last refresh land before the first instant
        before = await count(f"{scope}.Count()")
        t1 = int(time.time() * 1000)
        await asyncio.sleep(0.5)
        sh("ip", "-n", ns, "link", "set", "d1", "mtu", "1400")
        sh("ip", "-n", ns, "link", "set", "dm", "down")
        sh("ip", "-n", ns, "route", "add", "10.99.0.0/24", "via", "10.77.0.2", "dev", "d1")
        sh("ip", "-n", ns, "link", "del", "d3")
        assert await wait_for(lambda: _eq(count(f"{scope}.Count()"), before - 2), 30)
        assert await wait_for(lambda: _eq(count(f"{scope}.Has('Name','d1').Values('MTU')"), [1400]), 30)
        assert await wait_for(lambda: _eq(count(f"{scope}.Has('Name','dm').Values('State')"), ["DOWN"]), 30)
        await asyncio.sleep(2.0)  # history flushed (0.2 s) and every revision of the changes written
        t2 = int(time.time() * 1000)

        r = await http.get("/api/diff", params={"from": str(t1), "to": str(t2), "scope": scope})
        assert r.status_code == 200, r.text
        d = r.json()
        assert "flow tables not created yet" in d["FlowsError"]  # no flow-enricher in this stack: no flow tables, said next to the diff
        names = {n["ID"]: n for n in await gremlin(http, f"{scope}")}
        names_by = {n["Metadata"]["Name"]: n for n in names.values()}
        assert sorted(n["Metadata"]["Name"] for n in d["Nodes"]["Removed"]) == ["d3", "d4"]
        assert d["Nodes"]["Added"] == []
        changed = {n["Name"]: [format_change(c) for c in n["Changes"]] for n in d["Nodes"]["Changed"]}
        flags = '["UP","BROADCAST","RUNNING","MULTICAST","LOWER_UP"]'
        assert changed == {
            "d1": ["MTU: 1500 -> 1400", 'RoutingTables[254].Routes[10.99.0.0/24]: - -> {"Protocol":3,'
                   '"Prefix":"10.99.0.0/24","NextHops":[{"Priority":0,"IfIndex":'
                   f'{names_by["d1"]["Metadata"]["IfIndex"]},"IP":"10.77.0.2"}}]}}'],
            "dm": [f'LinkFlags: {flags} -> ["BROADCAST","MULTICAST"]', "State: UP -> DOWN"],
            # the peer of a downed veth loses its carrier: the kernel's own consequence of the change
            "dn": [f'LinkFlags: {flags} -> ["UP","BROADCAST","MULTICAST"]', "State: UP -> DOWN"],
        }, changed
        # the edges of the deleted pair: ownership from the namespace (2) and the pair's own link (1)
        removed_edges = d["Edges"]["Removed"]
        assert len(removed_edges) == 3 and d["Edges"]["Added"] == [] and d["Edges"]["Changed"] == []
        gone = {n["ID"] for n in d["Nodes"]["Removed"]}
        assert sorted(e["Metadata"]["RelationType"] for e in removed_edges) == ["layer2", "ownership", "ownership"]
        assert all(e["Parent"] in gone or e["Child"] in gone for e in removed_edges)
        assert all(n["ID"] in names for n in d["Nodes"]["Changed"])
        assert d["Scope"]["Nodes"] == before - 2

        # the same through the Gremlin step
        [step] = await gremlin(http, f"{scope}.Diff({t1}, {t2})")
        assert step["Nodes"] == d["Nodes"] and step["Edges"] == d["Edges"]
        # an unrelated scope: nothing
        r = await http.get("/api/diff", params={"from": str(t1), "to": str(t2),
                                                "scope": f"G.V().Has('Type','netns','Name','{other}').Descendants()"})
        u = r.json()
        assert u["Nodes"] == {"Added": [], "Removed": [], "Changed": []}
        assert u["Edges"] == {"Added": [], "Removed": [], "Changed": []}
        # refused parameters
        r = await http.get("/api/diff", params={"from": "-1h", "color": "red"})
        assert r.status_code == 400 and "color" in r.text
        r = await http.get("/api/diff", params={"from": "yesterday-ish"})
        assert r.status_code == 400 and "from" in r.text

        # the CLI's table
        port = http.base_url.port
        out = await asyncio.to_thread(  # off the loop: the API answering it runs on this loop
            subprocess.run, [sys.executable, "-m", "netsonde.cli", "client", "--analyzer", f"127.0.0.1:{port}",
                             "diff", "--from", str(t1), "--to", str(t2), "--scope", scope],
            capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert "MTU: 1500 -> 1400" in out.stdout and "State: UP -> DOWN" in out.stdout
        assert "d3" in out.stdout and "removed" in out.stdout


async def _eq(coro: Any, expected: Any) -> bool:
    return (await coro) == expected


# --- loss ---------------------------------------------------------------------------------------------------
@pytest.fixture
def routed_chain(unique: str):
    """A (a) -- (r1) R (r2) -- (rb) br (pb) -- (b) B: A and B in two subnets, R routes, br in the root ns."""
    u = unique[:6]
    o = 100 + int(unique[:4], 16) % 100
    n = {"A": f"la{u}", "R": f"lr{u}", "B": f"lb{u}", "br": f"lbr{u}", "a": f"ia{u}", "r1": f"lr1{u}",
         "r2": f"lr2{u}", "rb": f"lrb{u}", "pb": f"lpb{u}", "b": f"ib{u}",
         "ipa": f"10.{o}.1.1", "ipb": f"10.{o}.2.1", "gwa": f"10.{o}.1.254", "gwb": f"10.{o}.2.254"}
    for ns in ("A", "R", "B"):
        sh("ip", "netns", "add", n[ns])
        no_ipv6(n[ns])
        sh("ip", "-n", n[ns], "link", "set", "lo", "up")
    sh("ip", "link", "add", n["br"], "type", "bridge")
    sh("ip", "link", "set", n["br"], "up")
    sh("ip", "-n", n["A"], "link", "add", n["a"], "type", "veth", "peer", "name", n["r1"], "netns", n["R"])
    sh("ip", "-n", n["R"], "link", "add", n["r2"], "type", "veth", "peer", "name", n["rb"], "netns", "1")
    sh("ip", "-n", n["B"], "link", "add", n["b"], "type", "veth", "peer", "name", n["pb"], "netns", "1")
    for dev in ("rb", "pb"):
        sh("ip", "link", "set", n[dev], "master", n["br"], "up")
    sh("ip", "-n", n["A"], "addr", "add", f"{n['ipa']}/24", "dev", n["a"])
    sh("ip", "-n", n["R"], "addr", "add", f"{n['gwa']}/24", "dev", n["r1"])
    sh("ip", "-n", n["R"], "addr", "add", f"{n['gwb']}/24", "dev", n["r2"])
    sh("ip", "-n", n["B"], "addr", "add", f"{n['ipb']}/24", "dev", n["b"])
    for ns, dev in (("A", "a"), ("R", "r1"), ("R", "r2"), ("B", "b")):
        sh("ip", "-n", n[ns], "link", "set", n[dev], "up")
    sh("ip", "-n", n["A"], "route", "add", "default", "via", n["gwa"])
    sh("ip", "-n", n["B"], "route", "add", "default", "via", n["gwb"])
    sh("ip", "netns", "exec", n["R"], "sysctl", "-qw", "net.ipv4.ip_forward=1")
    yield n
    for ns in ("A", "R", "B"):
        subprocess.run(["ip", "netns", "del", n[ns]], capture_output=True)
    subprocess.run(["ip", "link", "del", n["br"]], capture_output=True)


def test_loss_on_the_middle_hop(nats_url: str, clickhouse_url: str, unique: str, routed_chain) -> None:
    n = routed_chain
    procs = ServiceProcs(nats_url, clickhouse_url, prefix=f"l{unique}")
    procs.env["NETSONDE_CLICKHOUSE_DATABASE"] = f"loss_{unique}"
    try:
        api, _ = start_flow_stack(procs)
        wait_until(lambda: api_gremlin(api, f"G.V().Has('Name', Within('{n['a']}', '{n['r2']}', '{n['b']}'))"
                                            ".Count()") == 3, 30, "the three interfaces in the API")
        capture = cli_capture_create(api, f"G.V().Has('Name', Within('{n['a']}', '{n['r2']}', '{n['b']}'))",
                                     "--bpf", "icmp")
        wait_until(lambda: api_gremlin(api, f"G.V().Has('Captures.ID','{capture['UUID']}').Count()") == 3, 30,
                   "the capture on the three interfaces")
        time.sleep(1.0)  # the sockets are open once Captures shows; one more tick for the ring

        # echo requests 3, 4 and 5 dropped by netfilter in the router namespace
        sh("ip", "netns", "exec", n["R"], "nft",
           "add table ip loss; add chain ip loss c { type filter hook forward priority 0; }; "
           "add rule ip loss c icmp type echo-request icmp sequence 3-5 counter drop")
        subprocess.run(["ip", "netns", "exec", n["A"], "ping", "-c", "10", "-i", "0.2", "-W", "1", n["ipb"]],
                       capture_output=True, timeout=60)
        ruleset = sh("ip", "netns", "exec", n["R"], "nft", "list", "table", "ip", "loss")
        assert "counter packets 3 " in ruleset, ruleset

        q = f"G.Flows().Has('Network.A','{n['ipa']}','Network.B','{n['ipb']}')"
        want = {n["a"]: (10, 7), n["r2"]: (7, 7), n["b"]: (7, 7)}

        def stored() -> bool:
            flows = api_gremlin(api, q) or []
            seen = {f["Metric"]["ABPackets"]: f for f in flows}
            return len(flows) == 3 and sorted((f["Metric"]["ABPackets"], f["Metric"]["BAPackets"])
                                              for f in flows) == sorted(want.values()) and bool(seen)
        wait_until(stored, 60, "the stream at three capture points with its final counts")
        flows = api_gremlin(api, q)
        [l3] = {f["L3TrackingID"] for f in flows}  # one conversation; its L2 TrackingID changes at the router
        tid = next(f["TrackingID"] for f in flows if f["Metric"]["ABPackets"] == 10)  # the first hop's
        time.sleep(3.0)  # past the settle time: the stream is idle at every hop

        p = api_get(api, f"/api/flowpath/{tid}", settle="2s")
        assert p["Order"] == "path", p
        assert [h["Name"] for h in p["Hops"]] == [n["a"], n["r2"], n["b"]]
        assert [(h["ABPackets"], h["BAPackets"]) for h in p["Hops"]] == [(10, 7), (7, 7), (7, 7)]
        assert [h["ABBytes"] for h in p["Hops"]] == [980, 686, 686]
        assert [(x["ABLost"], x["BALost"], x["Uncertainty"]) for x in p["Links"]] == [(3, 0, 0), (0, 0, 0)]
        assert p["Links"][0]["ABLostBytes"] == 294
        assert all(x["LatencyEstimate"] is False and x["LatencyMs"] >= 0 for x in p["Links"])
        assert all(h["DropReasons"] is None for h in p["Hops"])
        # the same through the Gremlin step
        [paths] = api_gremlin(api, f"{q}.FlowPath()")
        assert paths[l3]["Links"][0]["ABLost"] == 3

        report = api_get(api, "/api/loss", window="5m", settle="2s")
        first = report["Links"][0]
        assert (first["From"], first["To"], first["Lost"], first["ABLost"]) == (n["a"], n["r2"], 3, 3)
        assert [f["TrackingID"] for f in first["Flows"]] == [l3]

        out = subprocess.run([sys.executable, "-m", "netsonde.cli", "client", "--analyzer", f"127.0.0.1:{api}",
                              "path", tid, "--settle", "2s"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert n["r2"] in out.stdout and "3" in out.stdout
    finally:
        procs.stop()
