"""graph-builder and query-api (optionally probe-topology) in the test process, restartable one at a time: the
stack of the static topology and rule tests."""

from __future__ import annotations

from typing import Any

import httpx

from netsonde.common.testing import free_port
from netsonde.graph_builder.config import GraphBuilderConfig
from netsonde.graph_builder.service import GraphBuilderService
from netsonde.probe_topology.config import ProbeTopologyConfig
from netsonde.probe_topology.service import ProbeTopologyService
from netsonde.query_api.config import QueryApiConfig
from netsonde.query_api.service import QueryApiService


class Stack:
    """graph-builder and query-api in this process, restartable one at a time."""

    def __init__(self, common: dict[str, Any]) -> None:
        self.common = common
        self.port = free_port()
        self.gb: GraphBuilderService | None = None
        self.api: QueryApiService | None = None
        self.probe: ProbeTopologyService | None = None

    async def start_gb(self) -> None:
        gb_only = {k: v for k, v in self.common.items() if k.startswith("rule_")}
        common = {k: v for k, v in self.common.items() if not k.startswith("rule_")}
        self.gb = GraphBuilderService(GraphBuilderConfig.load(**common, **gb_only, history_flush_interval_s=0.2))
        await self.gb.start()

    async def start_api(self) -> None:
        common = {k: v for k, v in self.common.items() if not k.startswith("rule_")}
        self.api = QueryApiService(QueryApiConfig.load(**common, http_port=self.port))
        await self.api.start()

    async def start_probe(self, **settings: Any) -> None:
        """probe-topology without OVSDB nor other namespaces' processes; `settings` add to its config."""
        common = {k: v for k, v in self.common.items() if not k.startswith("rule_")}
        self.probe = ProbeTopologyService(ProbeTopologyConfig.load(**common, ovsdb="", process_netns=False,
                                                                   **settings))
        await self.probe.start()

    async def start_host(self, **probe_settings: Any) -> None:
        """graph-builder, probe-topology and query-api, in that order: one host's topology behind the API."""
        await self.start_gb()
        await self.start_probe(**probe_settings)
        await self.start_api()

    async def stop(self) -> None:
        for svc in (self.api, self.probe, self.gb):
            if svc is not None:
                await svc.stop()


def client(s: Stack, timeout: float = 20) -> httpx.AsyncClient:
    return httpx.AsyncClient(base_url=f"http://127.0.0.1:{s.port}", timeout=timeout)


async def gremlin(http: httpx.AsyncClient, q: str):
    r = await http.post("/api/topology", json={"GremlinQuery": q})
    assert r.status_code == 200, r.text
    return r.json()
