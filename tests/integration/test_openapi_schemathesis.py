"""schemathesis drives every operation of query-api's served OpenAPI description: no 5xx, no hang.

A real stack: nats-server, the ClickHouse store (flow tables migrated, graph history on), graph-builder and
query-api in this process. schemathesis (hypothesis underneath) generates valid and invalid bodies, path and
query parameters from `/api/openapi.json`, and sends them over HTTP from a worker thread while the services
run on the test's event loop. Every answer must be below 500 and come within the request timeout; the test
prints the number of cases per operation. What the POSTs create (captures, static nodes, rules) lives under
a prefix of its own, removed at the end with the database.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import msgpack
import nats
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from netsonde.common.clickhouse import connect
from netsonde.common.service import wait_for
from netsonde.common.testing import free_port
from netsonde.flow_enricher.writer import FlowWriter
from netsonde.graph_builder.config import GraphBuilderConfig
from netsonde.graph_builder.service import GraphBuilderService
from netsonde.query_api import openapi
from netsonde.query_api.config import QueryApiConfig
from netsonde.query_api.service import QueryApiService

pytestmark = pytest.mark.slow

EXAMPLES = 8
"""Cases per operation and generation mode (valid and invalid inputs)."""
REQUEST_TIMEOUT_S = 15.0
"""An answer slower than this is a hang (the query time limit below is 5 s)."""
BUDGET_S = 60.0
DEPENDENCY_ABSENT = {"POST /api/injectpacket": {503}, "GET /": {503}}
"""5xx that are documented answers for a peer this test does not run: no probe-flow to inject packets, and
a checkout whose web UI bundle is not built. Any other 5xx fails."""


def topology(prefix: str) -> bytes:
    nodes = {"h": {"Name": "h1", "Type": "host"}, "br": {"Name": "br0", "Type": "bridge"},
             "va": {"Name": "va", "Type": "veth", "IPV4": ["10.1.0.1/24"], "MAC": "02:00:00:00:00:01"}}
    edges = [("e1", "h", "br", "ownership"), ("e2", "br", "va", "layer2")]
    return msgpack.packb({"v": 1, "host": "h1", "kind": "full", "boot": "b", "seq": 0, "ts": 0,
                          "nodes": [{"ID": k, "Metadata": v} for k, v in nodes.items()],
                          "edges": [{"ID": i, "Parent": p, "Child": c, "Metadata": {"RelationType": r}}
                                    for i, p, c, r in edges]})


def fuzz_operations(base_url: str) -> dict[str, tuple[int, list[str]]]:
    """Run schemathesis on every operation; returns label -> (cases sent, failures)."""
    schema = schemathesis.openapi.from_url(f"{base_url}{openapi.OPENAPI_PATH}")
    session = requests.Session()
    results: dict[str, tuple[int, list[str]]] = {}
    started = time.monotonic()
    for result in schema.get_all_operations():
        op = result.ok()
        sent = 0
        failures: list[str] = []
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            # past the time budget (a loaded machine), the remaining operations still get one case per mode
            examples = EXAMPLES if time.monotonic() - started < BUDGET_S else 1

            @settings(max_examples=examples, deadline=None, database=None, derandomize=True,
                      suppress_health_check=list(HealthCheck))
            @given(case=op.as_strategy(generation_mode=mode))
            def run(case: Any) -> None:
                nonlocal sent
                t0 = time.monotonic()
                try:
                    response = case.call(base_url=base_url, session=session, timeout=REQUEST_TIMEOUT_S)
                except requests.Timeout:
                    failures.append(f"no answer in {REQUEST_TIMEOUT_S} s: {case.as_curl_command()}")
                    return
                sent += 1
                if response.status_code >= 500 and response.status_code not in DEPENDENCY_ABSENT.get(op.label, ()):
                    failures.append(f"{response.status_code} {response.text[:200]!r} for {case.as_curl_command()}")
                assert time.monotonic() - t0 < REQUEST_TIMEOUT_S

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (an operation without parameters or body)
                assert mode is GenerationMode.NEGATIVE, op.label
        results[op.label] = (sent, failures)
    return results


@pytest.fixture
async def api(nats_url: str, clickhouse_url: str, unique: str):  # type: ignore[no-untyped-def]
    prefix, db = f"oa{unique}", f"oa_{unique}"
    FlowWriter(clickhouse_url, db).migrate(ttl_days=0)
    gb = GraphBuilderService(GraphBuilderConfig.load(
        env={}, nats_url=nats_url, subject_prefix=prefix, host_id="h1", clickhouse_url=clickhouse_url,
        clickhouse_database=db, rule_timeout_s=2.0))
    await gb.start()
    nc = await nats.connect(nats_url)
    await nc.publish(f"{prefix}.topology.h1", topology(prefix))
    assert await wait_for(lambda: len(gb.builder.graph.edges) == 2, 10)
    port = free_port()
    svc = QueryApiService(QueryApiConfig.load(
        env={}, nats_url=nats_url, subject_prefix=prefix, http_port=port, host_id="h1",
        clickhouse_url=clickhouse_url, clickhouse_database=db, query_timeout_s=5.0, max_results=10_000))
    await svc.start()
    assert await wait_for(lambda: svc.replica is not None and len(svc.replica.graph.edges) == 2, 10)
    try:
        yield svc, f"http://127.0.0.1:{port}"
    finally:
        await svc.stop()
        await gb.stop()
        js = nc.jetstream()
        for name in await js.streams_info():
            if name.config.name and prefix in name.config.name.lower():
                await js.delete_stream(name.config.name)
        await nc.close()
        client = connect(clickhouse_url, "default")
        client.command(f"DROP DATABASE IF EXISTS {db}")
        client.close()


async def test_every_operation_fuzzed_without_5xx_or_hang(api) -> None:  # type: ignore[no-untyped-def]
    svc, base_url = api
    # the description is complete for the running app (/healthz, /metrics and whatever else is registered)
    served = openapi.served_routes(svc._http_runner.app)
    assert not sorted(served - set(openapi.OPERATIONS)), "routes without an OpenAPI description"
    async with httpx.AsyncClient(base_url=base_url) as http:
        doc = (await http.get(openapi.OPENAPI_PATH)).json()
    assert {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops} == served

    started = time.monotonic()
    results = await asyncio.to_thread(fuzz_operations, base_url)
    elapsed = time.monotonic() - started
    total = sum(n for n, _ in results.values())
    print(f"\nschemathesis: {total} requests over {len(results)} operations in {elapsed:.1f} s")
    for label, (n, failures) in sorted(results.items()):
        print(f"  {n:4d} {label}{'  FAILED ' + str(len(failures)) if failures else ''}")
    failed = {label: f[:3] for label, (_, f) in results.items() if f}
    assert not failed, failed
    # schemathesis leaves out the operation that serves the description itself (fetched above)
    assert set(results) == {f"{m} {p}" for m, p in served} - {f"GET {openapi.OPENAPI_PATH}"}
    assert all(n > 0 for n, _ in results.values()), {k: n for k, (n, _) in results.items() if n == 0}
    # a JSON body nested deeper than the parser's recursion limit (it fits the body limit) is a 400 everywhere
    json_ops = [(m.upper(), p) for p, ops in doc["paths"].items() for m, op in ops.items()
                if "application/json" in op.get("requestBody", {}).get("content", {})]
    async with httpx.AsyncClient(base_url=base_url, timeout=30) as http:
        for method, path in json_ops:
            r = await http.request(method, path.replace("{id}", "x"), content=b"[" * 100_000,
                                   headers={"Content-Type": "application/json"})
            assert r.status_code == 400, (method, path, r.status_code, r.text[:200])
    assert len(json_ops) >= 9
    # the API is still healthy after the fuzz
    async with httpx.AsyncClient(base_url=base_url) as http:
        r = await http.post("/api/topology", json={"GremlinQuery": "G.V().Has('Name','va').Count()"})
        assert r.status_code == 200 and r.json() == 1
