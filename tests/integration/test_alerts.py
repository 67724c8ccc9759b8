"""Alerting end to end on real parts: a real NATS, the ClickHouse engine, graph-builder, query-api and
alert-evaluator, a webhook server, a plain nats-py consumer and a WebSocket subscriber; on real veths and a real
ping flood for the root tier."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from typing import Any

import httpx
import pytest
from skydive.rest.client import RESTClient

from netsonde.common.clickhouse import connect
from tests.integration.alert_stack import AlertStack, BusTap, WebhookReceiver, WsTap, wait_until
from tests.integration.static_stack import client


@pytest.fixture
async def alerting(nats_url: str, clickhouse_url: str, unique: str):
    common = dict(env={}, nats_url=nats_url, subject_prefix=f"al{unique}", host_id=f"host-{unique}",
                  clickhouse_url=clickhouse_url, clickhouse_database=f"alerts_{unique}")
    s = AlertStack(common, webhook_timeout_s=0.5, webhook_retries=1)
    hooks, bus, ws = WebhookReceiver(), BusTap(), WsTap()
    await hooks.start()
    await bus.start(nats_url, common["subject_prefix"])
    await s.start_gb()
    await s.start_api()
    await s.start_evaluator()
    await ws.start(s.port)
    yield s, hooks, bus, ws
    await ws.stop()
    await s.stop()
    await bus.stop()
    await hooks.stop()


async def _status(http: httpx.AsyncClient, uuid: str) -> str:
    r = await http.get(f"/api/alert/{uuid}")
    assert r.status_code == 200, r.text
    return str(r.json()["Status"]["State"])


async def test_static_node_alert_fires_once_resolves_once_across_a_restart(alerting: Any, unique: str) -> None:
    s, hooks, bus, ws = alerting
    name = f"dev-{unique}"
    expr = f"G.V().Has('Name','{name}','State','DOWN')"
    async with client(s) as http:
        r = await http.post("/api/node", json={"ID": f"n-{unique}", "Metadata": {"Name": name, "Type": "device",
                                                                                  "State": "UP"}})
        assert r.status_code in (200, 201), r.text
        made = {}
        for path in ("/", "/slow", "/fail"):
            r = await http.post("/api/alert", json={"Name": f"down{path}", "Expression": expr,
                                                    "Action": hooks.url + path})
            assert r.status_code == 200, r.text
            made[path] = r.json()["UUID"]
        r = await http.post("/api/alert", json={"Name": "deleted while the evaluator is down", "Expression": expr})
        gone = r.json()["UUID"]
        for uuid in [*made.values(), gone]:
            await wait_until(lambda u=uuid: _is(http, u, "ok"), 10, "the alert evaluated (state ok)")
        listed = (await http.get("/api/alert")).json()
        assert set(listed) == {*made.values(), gone}
        assert listed[made["/"]]["Expression"] == expr and listed[made["/"]]["Trigger"] == "graph"

        down = [{"op": "replace", "path": "/Metadata/State", "value": "DOWN"}]
        started = time.time()
        r = await http.patch(f"/api/node/n-{unique}", json=down)
        assert r.status_code == 200, r.text
        await wait_until(lambda: all(bus.of(u) for u in [*made.values(), gone]), 5, "four firing events")
        # the slow and the failing webhooks did not hold anything: every event is out within a second
        assert max(t for t, ev in bus.events) - started < 1.0
        fired = bus.of(made["/"])[0]
        assert fired["State"] == "firing" and fired["v"] == 1 and fired["ReasonCount"] == 1
        assert fired["ReasonData"][0]["Metadata"]["Name"] == name
        await wait_until(lambda: hooks.events("/"), 5, "the webhook call")
        hook = hooks.events("/")[0]
        assert hook["ID"] == fired["ID"] and hook["UUID"] == made["/"] and hook["State"] == "firing"
        assert hook["ReasonData"][0]["Metadata"]["State"] == "DOWN" and hook["Timestamp"].endswith("Z")
        await wait_until(lambda: [a for a in ws.alerts if a["Obj"]["ID"] == fired["ID"]], 5, "the WebSocket message")
        assert await _status(http, made["/"]) == "firing"

        # the evaluator restarts while the alert fires: nothing fires again; an alert deleted meanwhile loses its
        # persisted state at the start
        await s.stop_evaluator()
        assert (await http.delete(f"/api/alert/{gone}")).status_code == 200
        await s.start_evaluator()
        await asyncio.sleep(1.0)
        assert [len(bus.of(u)) for u in made.values()] == [1, 1, 1]
        assert await _status(http, made["/"]) == "firing"
        states = await bus.nc.jetstream().key_value(f"{s.common['subject_prefix']}_alert_states")
        assert sorted(await states.keys()) == sorted(made.values())

        r = await http.patch(f"/api/node/n-{unique}", json=[{"op": "replace", "path": "/Metadata/State",
                                                             "value": "UP"}])
        assert r.status_code == 200, r.text
        await wait_until(lambda: len(bus.of(made["/"])) == 2, 5, "the resolved event")
        resolved = bus.of(made["/"])[1]
        assert resolved["State"] == "resolved" and resolved["ReasonData"][0]["Metadata"]["Name"] == name
        await wait_until(lambda: len(hooks.events("/")) == 2, 5, "the resolved webhook call")
        await asyncio.sleep(0.5)
        assert [e["State"] for e in hooks.events("/")] == ["firing", "resolved"]  # each event exactly once
        assert len(ws.alerts) == 7 and await _status(http, made["/"]) == "ok"  # 4 firing, 3 resolved

        # the failing webhook: tried twice per event (webhook_retries=1), counted, never delivered; the slow one
        # times out twice: this evaluator run counts both resolved events as failed
        assert s.evaluator is not None
        fail_resolved = bus.of(made["/fail"])[1]["ID"]
        await wait_until(lambda: hooks.failures.count(fail_resolved) == 2, 10, "both attempts on /fail")
        metrics_url = f"http://127.0.0.1:{s.evaluator.http_port}/metrics"

        async def failed_twice() -> str | None:
            async with httpx.AsyncClient() as c:
                text = (await c.get(metrics_url)).text
            return text if 'webhook_deliveries_total{result="failed"} 2.0' in text else None

        metrics = await wait_until(failed_twice, 10, "the slow and the failing webhook counted as failed")
        assert 'netsonde_alert_evaluator_webhook_deliveries_total{result="delivered"} 1.0' in metrics

        # history in ClickHouse: both runs' events, one row each
        ch = connect(s.common["clickhouse_url"], s.common["clickhouse_database"])
        rows = await wait_until(lambda: (lambda r: r if len(r) == 2 else None)(ch.query(
            "SELECT state, id, reason_count FROM alert_events FINAL WHERE alert = {a:String} ORDER BY time",
            parameters={"a": made["/"]}).result_rows), 10, "two rows in alert_events")
        assert [(r[0], r[1], r[2]) for r in rows] == [("firing", fired["ID"], 1), ("resolved", resolved["ID"], 1)]
        ch.close()

        r = await http.delete(f"/api/alert/{made['/']}")
        assert r.status_code == 200
        assert (await http.get(f"/api/alert/{made['/']}")).status_code == 404
        assert (await http.delete(f"/api/alert/{made['/']}")).status_code == 404


async def _is(http: httpx.AsyncClient, uuid: str, state: str) -> bool:
    return await _status(http, uuid) == state


async def test_bad_alerts_are_refused_with_the_reason(alerting: Any, unique: str) -> None:
    s, *_ = alerting
    async with client(s) as http:
        cases = [
            ({"Expression": "G.V().Has('Name'"}, "Expression: syntax error"),
            ({"Expression": "G.V().Nope()"}, "unknown step Nope()"),
            ({}, "Expression is required"),
            ({"Expression": "G.V()", "Trigger": "sometimes"}, "Trigger 'sometimes'"),
            ({"Expression": "G.V()", "Trigger": "periodic:10x"}, "is not a duration"),
            ({"Expression": "G.V()", "Trigger": "duration:100ms"}, "at least 1s"),
            ({"Expression": "G.V()", "Action": "file:///bin/true"}, "scripts (file://) are not supported"),
            ({"Expression": "G.V()", "Action": "mailto:x@y"}, "expected a webhook URL"),
            ({"Expression": "G.V()", "Severity": "high"}, "unknown field(s) Severity"),
        ]
        for body, message in cases:
            r = await http.post("/api/alert", json=body)
            assert r.status_code == 400 and message in r.text, (body, r.status_code, r.text)
        assert (await http.get("/api/alert")).json() == {}
        # compiles but cannot run now: accepted with a Warning, and shown in state error with the reason
        r = await http.post("/api/alert", json={"Expression": "G.V('no-such-node')"})
        assert r.status_code == 200 and "cannot be evaluated now" in r.json()["Warning"], r.text
        state = await wait_until(lambda: _full_status(http, r.json()["UUID"], "error"), 10, "state error")
        assert "does not exist" in state["Error"], state
        assert (await http.delete(f"/api/alert/{r.json()['UUID']}")).status_code == 200
        # Skydive's duration trigger and ours are both taken
        for trigger in ("duration:10s", "periodic:1m30s"):
            r = await http.post("/api/alert", json={"Expression": "G.V().Count()", "Trigger": trigger})
            assert r.status_code == 200 and r.json()["Trigger"] == trigger, r.text


@pytest.fixture
async def tight_limits(nats_url: str, clickhouse_url: str, unique: str):
    """query-api answers at most 4 results, alert-evaluator at most 3."""
    from netsonde.query_api.config import QueryApiConfig
    from netsonde.query_api.service import QueryApiService

    common = dict(env={}, nats_url=nats_url, subject_prefix=f"lim{unique}", host_id=f"host-{unique}",
                  clickhouse_url=clickhouse_url, clickhouse_database=f"alerts_{unique}")
    s = AlertStack(common, max_results=3, history=False)
    await s.start_gb()
    s.api = QueryApiService(QueryApiConfig.load(**common, http_port=s.port, max_results=4))
    await s.api.start()
    await s.start_evaluator()
    yield s
    await s.stop()


async def test_an_expensive_expression_is_bounded_by_the_limits(tight_limits: AlertStack, unique: str) -> None:
    s = tight_limits
    async with client(s) as http:
        for i in range(6):
            r = await http.post("/api/node", json={"ID": f"x{i}-{unique}", "Metadata": {
                "Name": f"x{i}", "Type": "device" if i < 4 else "switch"}})
            assert r.status_code in (200, 201), r.text
        # beyond query-api's limits: refused at creation
        r = await http.post("/api/alert", json={"Expression": "G.V()"})
        assert r.status_code == 400 and r.text.startswith("Expression exceeds the query limits: query result too "
                                                          "large: more than 4"), r.text
        # within query-api's, beyond the evaluator's: accepted, and the alert shows why it cannot be evaluated
        r = await http.post("/api/alert", json={"Expression": "G.V().Has('Type','device')"})
        assert r.status_code == 200, r.text
        uuid = r.json()["UUID"]
        state = await wait_until(lambda: _full_status(http, uuid, "error"), 10, "the alert in state error")
        assert state["Error"].startswith("query result too large: more than 3 nodes"), state
        assert list((await http.get("/api/alert")).json()) == [uuid]


async def _full_status(http: httpx.AsyncClient, uuid: str, want: str) -> dict[str, Any] | None:
    st = (await http.get(f"/api/alert/{uuid}")).json()["Status"]
    return st if st["State"] == want else None


async def test_skydive_client_alert_calls(alerting: Any) -> None:
    s, hooks, *_ = alerting
    rest = RESTClient(f"127.0.0.1:{s.port}")
    created = await asyncio.to_thread(rest.alert_create, hooks.url + "/", "G.V().Has('Type','netns').Count()",
                                      "duration:2s")
    assert created.uuid
    listed = await asyncio.to_thread(rest.alert_list)
    assert [a.uuid for a in listed] == [created.uuid]
    # skydive-client 0.10's from_object swaps Expression and Trigger; the server answers them right
    assert (listed[0].expression, listed[0].trigger) == ("duration:2s", "G.V().Has('Type','netns').Count()")
    await asyncio.to_thread(rest.alert_delete, created.uuid)
    assert await asyncio.to_thread(rest.alert_list) == []
    with pytest.raises(Exception, match="Expression: syntax error"):
        await asyncio.to_thread(rest.alert_create, "", "G.V(", "graph")




def _cli(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "netsonde.cli", "client", "--analyzer", f"127.0.0.1:{port}",
                           "alert", *args], capture_output=True, text=True, timeout=60)


async def test_cli_alert_create_list_get_delete(alerting: Any, unique: str) -> None:
    s, hooks, *_ = alerting
    out = await asyncio.to_thread(_cli, s.port, "create", "--expression", "G.V().Has('Type','host')", "--trigger",
                                  "periodic:5s", "--action", hooks.url, "--name", f"cli-{unique}")
    assert out.returncode == 0, out.stderr
    made = json.loads(out.stdout)
    assert (made["Name"], made["Trigger"], made["Action"]) == (f"cli-{unique}", "periodic:5s", hooks.url)
    out = await asyncio.to_thread(_cli, s.port, "list")
    assert out.returncode == 0 and list(json.loads(out.stdout)) == [made["UUID"]], out.stdout
    out = await asyncio.to_thread(_cli, s.port, "get", made["UUID"])
    assert json.loads(out.stdout)["Expression"] == "G.V().Has('Type','host')"
    assert (await asyncio.to_thread(_cli, s.port, "delete", made["UUID"])).returncode == 0
    out = await asyncio.to_thread(_cli, s.port, "get", made["UUID"])
    assert out.returncode == 1 and f"Error: 404 Not Found: Alert '{made['UUID']}' not found" in out.stderr
    out = await asyncio.to_thread(_cli, s.port, "create", "--expression", "G.V(")
    assert out.returncode == 1 and "Error: 400 Bad Request: Expression: syntax error" in out.stderr


@pytest.fixture
async def alerting_probe(nats_url: str, clickhouse_url: str, unique: str):
    """The alerting stack plus probe-topology watching this host, and a veth pair `av<u>`/`ap<u>` up."""
    common = dict(env={}, nats_url=nats_url, subject_prefix=f"alp{unique}", host_id=f"host-{unique}",
                  clickhouse_url=clickhouse_url, clickhouse_database=f"alerts_{unique}")
    veth, peer = f"av{unique[:8]}", f"ap{unique[:8]}"
    _sh("ip", "link", "add", veth, "type", "veth", "peer", "name", peer)
    _sh("ip", "link", "set", peer, "up")
    _sh("ip", "link", "set", veth, "up")
    s = AlertStack(common)
    hooks, bus = WebhookReceiver(), BusTap()
    try:
        await hooks.start()
        await bus.start(nats_url, common["subject_prefix"])
        await s.start_gb()
        await s.start_api()
        await s.start_probe()
        await s.start_evaluator()
        yield s, hooks, bus, veth
    finally:
        await s.stop()
        await bus.stop()
        await hooks.stop()
        subprocess.run(["ip", "link", "del", veth], capture_output=True)


@pytest.mark.root
@pytest.mark.slow
async def test_link_down_fires_within_a_second_and_up_resolves(alerting_probe: Any) -> None:
    s, hooks, bus, veth = alerting_probe
    async with client(s) as http:
        await wait_until(lambda: _gremlin_count(http, f"G.V().Has('Name','{veth}','State','UP')"), 30,
                         "the veth, UP, in the API")
        expr = f"G.V().Has('Name','{veth}','State','DOWN')"
        r = await http.post("/api/alert", json={"Name": "link down", "Expression": expr, "Action": hooks.url})
        assert r.status_code == 200, r.text
        uuid = r.json()["UUID"]
        await wait_until(lambda: _is(http, uuid, "ok"), 10, "the alert evaluated (state ok)")

        started = time.time()
        _sh("ip", "link", "set", veth, "down")
        await wait_until(lambda: bus.of(uuid), 5, "the firing event")
        latency = bus.events[-1][0] - started
        print(f"\nlink down -> alert event on the bus: {latency * 1000:.0f} ms")
        assert latency < 1.0, latency
        fired = bus.of(uuid)[0]
        assert fired["State"] == "firing" and fired["ReasonCount"] == 1
        assert [n["Metadata"]["Name"] for n in fired["ReasonData"]] == [veth]
        assert fired["ReasonData"][0]["Metadata"]["State"] == "DOWN"

        started = time.time()
        _sh("ip", "link", "set", veth, "up")
        await wait_until(lambda: len(bus.of(uuid)) == 2, 5, "the resolved event")
        print(f"link up -> resolved event on the bus: {(bus.events[-1][0] - started) * 1000:.0f} ms")
        assert bus.of(uuid)[1]["State"] == "resolved"
        await wait_until(lambda: len(hooks.events()) == 2, 5, "both webhook calls")
        await asyncio.sleep(0.5)
        assert [(e["State"], e["ID"]) for e in hooks.events()] == [(ev["State"], ev["ID"]) for ev in bus.of(uuid)]


async def _gremlin_count(http: httpx.AsyncClient, query: str) -> bool:
    r = await http.post("/api/topology", json={"GremlinQuery": query})
    return r.status_code == 200 and bool(r.json())


def _sh(*cmd: str) -> None:
    subprocess.run(list(cmd), check=True, capture_output=True, timeout=30)


@pytest.fixture
def flood_namespaces(unique: str):
    """Two namespaces joined by a veth pair: `fa-<u>` (10.93.0.1, veth `fva<u>`) and `fb-<u>` (10.93.0.2)."""
    u = unique[:6]
    n = {"a": f"afa-{u}", "b": f"afb-{u}", "va": f"afva{u}", "vb": f"afvb{u}", "ipa": "10.93.0.1",
         "ipb": "10.93.0.2"}
    _sh("ip", "netns", "add", n["a"])
    _sh("ip", "netns", "add", n["b"])
    try:
        _sh("ip", "link", "add", n["va"], "netns", n["a"], "type", "veth", "peer", "name", n["vb"], "netns", n["b"])
        for side in ("a", "b"):
            _sh("ip", "-n", n[side], "addr", "add", f"{n['ip' + side]}/24", "dev", n["v" + side])
            _sh("ip", "-n", n[side], "link", "set", n["v" + side], "up")
        yield n
    finally:
        for side in ("a", "b"):
            subprocess.run(["ip", "netns", "del", n[side]], capture_output=True)


@pytest.mark.root
@pytest.mark.slow
async def test_periodic_flow_alert_fires_during_a_ping_flood(nats_url: str, clickhouse_url: str, unique: str,
                                                             flood_namespaces: dict[str, str]) -> None:
    from bench.services import ServiceProcs
    from tests.integration.flow_stack import TOPOLOGY_PLAIN, start_flow_stack

    n = flood_namespaces
    prefix = f"alf{unique}"
    procs = ServiceProcs(nats_url, clickhouse_url, prefix=prefix)
    procs.env["NETSONDE_CLICKHOUSE_DATABASE"] = f"alerts_flood_{unique}"
    bus, hooks = BusTap(), WebhookReceiver()
    await bus.start(nats_url, prefix)
    await hooks.start()
    flood: subprocess.Popen[bytes] | None = None
    try:
        api, _ = start_flow_stack(procs, topology={**TOPOLOGY_PLAIN, "process_netns": "true"})
        procs.start("alert_evaluator")
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api}", timeout=30) as http:
            await wait_until(lambda: _gremlin_count(http, f"G.V().Has('Name','{n['va']}')"), 30, "the veth",
                             interval=0.3)
            r = await http.post("/api/capture", json={"GremlinQuery": f"G.V().Has('Name','{n['va']}')",
                                                      "BPFFilter": "icmp"})
            assert r.status_code == 200, r.text
            await wait_until(lambda: _gremlin_count(http, f"G.V().Has('Name','{n['va']}').Has('Captures.State',"
                                                          "'active')"), 30, "the capture running", interval=0.3)
            threshold = 2_000_000
            expr = (f"G.Flows().Has('Network.A','{n['ipa']}','Network.B','{n['ipb']}')"
                    f".Has('Metric.ABBytes', Gt({threshold}))")
            r = await http.post("/api/alert", json={"Name": "flood", "Expression": expr, "Trigger": "periodic:1s",
                                                    "Action": hooks.url})
            assert r.status_code == 200, r.text
            uuid = r.json()["UUID"]
            await wait_until(lambda: _is(http, uuid, "ok"), 15, "the alert evaluated (state ok)", interval=0.2)
            # 1 000 echo requests of 1 042 bytes a second for up to 40 s: the threshold is crossed after ~2 s (the
            # flood is stopped once the alert fired)
            flood = subprocess.Popen(["ip", "netns", "exec", n["a"], "ping", "-q", "-i", "0.001", "-s", "1000",
                                      "-w", "40", n["ipb"]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            started = time.time()
            await wait_until(lambda: bus.of(uuid), 35, "the firing event", interval=0.1)
            fired_at = bus.of(uuid) and bus.events[-1][0]
            assert flood.poll() is None, "the alert fired during the flood, not after it"
            print(f"\nflow alert fired {fired_at - started:.1f} s into the flood")
            fired = bus.of(uuid)[0]
            assert fired["State"] == "firing" and fired["ReasonCount"] == 1
            flow = fired["ReasonData"][0]
            assert flow["Network"]["A"] == n["ipa"] and flow["Network"]["B"] == n["ipb"]
            assert flow["Metric"]["ABBytes"] > threshold and flow["Metric"]["ABBytes"] % 1042 == 0
            assert flow["Application"] == "ICMPv4"
            await wait_until(lambda: hooks.events(), 5, "the webhook call")
            assert [e["ID"] for e in hooks.events()] == [fired["ID"]]
            assert (await http.get(f"/api/alert/{uuid}")).json()["Status"]["State"] == "firing"
    finally:
        if flood is not None and flood.poll() is None:
            flood.kill()
            flood.wait()
        procs.stop()
        await bus.stop()
        await hooks.stop()
