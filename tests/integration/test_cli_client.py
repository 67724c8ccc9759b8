"""`netsonde client` against a running graph-builder + query-api (+ probe-topology reading this host's
interfaces, among them a veth the test creates): the same answer as JSON, YAML and a table, and the
server's error message on a refused query."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from typing import Any, AsyncIterator, Iterator

import httpx
import pytest
import yaml

from netsonde.common.service import wait_for
from netsonde.common.testing import free_port
from netsonde.graph_builder.config import GraphBuilderConfig
from netsonde.graph_builder.service import GraphBuilderService
from netsonde.probe_topology.config import ProbeTopologyConfig
from netsonde.probe_topology.service import ProbeTopologyService
from netsonde.query_api.config import QueryApiConfig
from netsonde.query_api.service import QueryApiService

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture
def dummy(unique: str) -> Iterator[str]:
    name = f"ca{unique}"[:15]
    subprocess.run(["ip", "link", "add", name, "mtu", "1400", "type", "veth", "peer", "name", f"cb{unique}"[:15]],
                   check=True, timeout=30)
    yield name
    subprocess.run(["ip", "link", "del", name], capture_output=True, timeout=30)


@pytest.fixture
async def api(nats_url: str, clickhouse_url: str, unique: str) -> AsyncIterator[int]:
    common: dict[str, Any] = dict(env={}, nats_url=nats_url, subject_prefix=f"c{unique}", host_id=f"host-{unique}",
                                  clickhouse_url=clickhouse_url, clickhouse_database=f"cli_{unique}")
    gb = GraphBuilderService(GraphBuilderConfig.load(**common, history_flush_interval_s=0.2))
    await gb.start()
    probe = ProbeTopologyService(ProbeTopologyConfig.load(**common, ovsdb="", docker_socket="",
                                                             process_netns=False))
    await probe.start()
    port = free_port()
    query_api = QueryApiService(QueryApiConfig.load(**common, http_port=port))
    await query_api.start()
    yield port
    await query_api.stop()
    await probe.stop()
    await gb.stop()


async def cli(port: int, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "netsonde.cli", "client", "--analyzer", f"127.0.0.1:{port}", *args]
    # off the loop: the API answering it runs on this loop
    return await asyncio.to_thread(subprocess.run, argv, capture_output=True, text=True, timeout=60)


async def test_json_yaml_and_table_output(api: int, dummy: str) -> None:
    by_name = f"G.V().Has('Name','{dummy}')"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api}", timeout=10) as http:
        async def seen() -> bool:
            r = await http.post("/api/topology", json={"GremlinQuery": f"{by_name}.Count()"})
            return bool(r.status_code == 200 and r.json() == 1)
        assert await wait_for(seen, 20), "the veth never reached the API"
        node = (await http.post("/api/topology", json={"GremlinQuery": by_name})).json()[0]
    assert node["Metadata"]["Type"] == "veth"

    values = await cli(api, "topology", "query", "-q", f"{by_name}.Values('Name')")
    assert values.returncode == 0, values.stderr
    assert json.loads(values.stdout) == [dummy]

    as_yaml = await cli(api, "--format", "yaml", "topology", "query", "--gremlin", f"{by_name}.Values('MTU')")
    assert as_yaml.returncode == 0, as_yaml.stderr
    assert as_yaml.stdout == "- 1400\n"
    full_yaml = await cli(api, "topology", "query", "-q", by_name, "--format", "yaml")
    [parsed] = yaml.safe_load(full_yaml.stdout)
    assert (parsed["ID"], parsed["Metadata"]["Name"], parsed["Metadata"]["MTU"]) == (node["ID"], dummy, 1400)

    table = await cli(api, "topology", "query", "-q", by_name, "-o", "table")
    assert table.returncode == 0, table.stderr
    lines = table.stdout.splitlines()
    header = next(line for line in lines if "ID" in line and "Name" in line)
    assert header.replace("┃", " ").split() == ["ID", "Name", "Type", "Host"]
    row = next(line for line in lines if node["ID"] in line)
    assert row.replace("│", " ").split() == [node["ID"], dummy, "veth", node["Host"]]

    status = await cli(api, "status", "--format", "table")
    assert status.returncode == 0, status.stderr
    assert "Key" in status.stdout and "Value" in status.stdout


async def test_error_shows_the_server_message(api: int) -> None:
    query = "G.V().Nope()"
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{api}", timeout=10) as http:
        refused = await http.post("/api/topology", json={"GremlinQuery": query})
    assert refused.status_code == 400
    body = refused.json() if refused.headers.get("content-type", "").startswith("application/json") else None
    message = body.get("error") if isinstance(body, dict) and body.get("error") else refused.text.strip()
    out = await cli(api, "topology", "query", "-q", query)
    assert out.returncode == 1 and out.stdout == ""
    assert " ".join(out.stderr.split()) == f"Error: 400 Bad Request: {' '.join(message.split())}"

    unreachable = await cli(free_port(), "status")
    assert unreachable.returncode == 2 and "cannot reach the API at 127.0.0.1:" in unreachable.stderr

    usage = await cli(api, "topology", "query")  # no query: click's usage error names the option
    assert usage.returncode == 2 and "Missing option '--gremlin' / '-q'" in usage.stderr


async def test_capture_and_alert_list_get_delete(api: int, unique: str) -> None:
    """The list/get/delete commands both groups share (cli/client.py `crud_commands`), on a real API."""
    for group, create, field, value in (
        ("capture", ["--gremlin", f"G.V().Has('Name','none-{unique}')", "--type", "pcap"], "GremlinQuery",
         f"G.V().Has('Name','none-{unique}')"),
        ("alert", ["--expression", f"G.V().Has('Name','none-{unique}').Count()", "--name", f"a{unique}"], "Name",
         f"a{unique}"),
    ):
        made = await cli(api, group, "create", *create)
        assert made.returncode == 0, made.stderr
        uuid = json.loads(made.stdout)["UUID"]
        listed = await cli(api, group, "list")
        assert listed.returncode == 0, listed.stderr
        entries = json.loads(listed.stdout)
        ids = list(entries) if isinstance(entries, dict) else [e["UUID"] for e in entries]
        assert uuid in ids
        got = await cli(api, group, "get", uuid, "--format", "yaml")
        assert got.returncode == 0, got.stderr
        assert yaml.safe_load(got.stdout)[field] == value
        gone = await cli(api, group, "delete", uuid)
        assert gone.returncode == 0, gone.stderr
        missing = await cli(api, group, "get", uuid)
        assert missing.returncode == 1 and "404" in missing.stderr, (missing.stdout, missing.stderr)
