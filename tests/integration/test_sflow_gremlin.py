"""The ovssflow slice end to end on real parts: POST /api/capture (Type ovssflow) -> capture bucket -> the
collector configures the OVS bridge's sFlow -> ping between two namespaces on the bridge -> flows on the
JetStream stream -> flow-enricher -> ClickHouse -> Gremlin `Flows()` on the bridge (query-api): one ICMP flow with
5 requests and 5 replies whose NodeTID is the TID probe-topology gives the bridge node, and In()/Out()/Hops()/
Nodes()/CaptureNode() answering as in Skydive (source interface, destination interface, the bridge)."""

from __future__ import annotations

import asyncio
import subprocess
from functools import partial
from typing import Any

import httpx
import pytest

from netsonde.common.service import wait_for
from netsonde.common.testing import free_port
from netsonde.flow_enricher.config import FlowEnricherConfig
from netsonde.flow_enricher.service import FlowEnricherService
from netsonde.graph_builder.config import GraphBuilderConfig
from netsonde.graph_builder.service import GraphBuilderService
from netsonde.probe_topology.config import ProbeTopologyConfig
from netsonde.probe_topology.service import ProbeTopologyService
from netsonde.query_api.config import QueryApiConfig
from netsonde.query_api.service import QueryApiService
from netsonde.ovs_sflow_collector.config import SFlowCollectorConfig
from netsonde.ovs_sflow_collector.service import SFlowCollectorService
from tests.integration.ovs_fixture import OvsDaemons, attach_netns_pair, detach_netns_pair, ovs  # noqa: F401
from tests.integration.static_stack import gremlin as http_gremlin

pytestmark = [pytest.mark.root, pytest.mark.ovs, pytest.mark.slow]


async def test_ovssflow_flows_through_gremlin(ovs: OvsDaemons, nats_url: str, clickhouse_url: str,  # noqa: F811
                                              unique: str) -> None:
    host, br = f"host-{unique}", f"br{unique}"
    common: dict[str, Any] = dict(env={}, nats_url=nats_url, subject_prefix=f"g{unique}", host_id=host,
                                  clickhouse_url=clickhouse_url, clickhouse_database=f"sfg_{unique}",
                                  log_format="text")
    ovs.vsctl("add-br", br, "--", "set", "bridge", br, "datapath_type=netdev")
    pair = attach_netns_pair(ovs, br, unique, subnet="10.96.0")
    services: list[Any] = []
    try:
        for svc in (
            GraphBuilderService(GraphBuilderConfig.load(**common, history_flush_interval_s=0.2)),
            ProbeTopologyService(ProbeTopologyConfig.load(**common, ovsdb=ovs.db, process_netns=False)),
            FlowEnricherService(FlowEnricherConfig.load(**common, insert_interval_s=0.1, retry_max_s=0.5,
                                                        stream_max_bytes=64 * 1024 * 1024)),
            SFlowCollectorService(SFlowCollectorConfig.load(**common, listen_host="127.0.0.1", listen_port=0,
                                                            ovs_db=ovs.db, update_interval_s=0.5,
                                                            reconcile_interval_s=0.5)),
        ):
            await svc.start()
            services.append(svc)
        collector = services[-1]
        port = free_port()
        api = QueryApiService(QueryApiConfig.load(**common, http_port=port))
        await api.start()
        services.append(api)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as http:
            gremlin = partial(http_gremlin, http)  # one Gremlin query, answered 200

            async def count(q: str, n: int) -> bool:
                r = await http.post("/api/topology", json={"GremlinQuery": q})
                return r.status_code == 200 and r.json() == n

            ports_q = f"G.V().Has('Type', 'ovsbridge', 'Name', '{br}').Out('Type', 'ovsport')"
            ok = await wait_for(lambda: count(f"{ports_q}.Has('Name', Within('{pair.port_a}', '{pair.port_b}'))"
                                              ".HasKey('TID').Dedup().Count()", 2), 20)
            assert ok, [(n["Metadata"]["Name"], n["Metadata"]["Type"], n["Metadata"].get("TID")) for n in await gremlin(
                "G.V().Has('Type', Within('ovsbridge', 'ovsport'))")]

            r = await http.post("/api/capture", json={
                "GremlinQuery": f"G.V().Has('Name', '{br}', 'Type', 'ovsbridge')", "Type": "ovssflow",
                "SamplingRate": 1, "PollingInterval": 1, "Name": "sflow-e2e"})
            assert r.status_code in (200, 201), r.text
            assert await wait_for(lambda: collector.health()["ovs_bridges"] == [br], 40)
            assert await wait_for(lambda: len(collector.ports) >= 2 and all(
                p.capture_id for p in collector.ports.values() if p.bridge == br), 40)

            bridge_q = f"G.V().Has('Name', '{br}', 'Type', 'ovsbridge')"
            assert await wait_for(lambda: count(f"{bridge_q}.Has('Captures.Type', 'ovssflow').Count()", 1), 40)

            p = await asyncio.to_thread(subprocess.run, ["ip", "netns", "exec", pair.ns_a, "ping", "-c", "5", "-i",
                                                         "0.2", "-W", "2", pair.ip_b], capture_output=True, text=True)
            assert p.returncode == 0, p.stdout + p.stderr

            icmp = f"{bridge_q}.Flows().Has('LayersPath', 'Ethernet/IPv4/ICMPv4')"

            async def icmp_counted() -> bool:
                r = await http.post("/api/topology", json={"GremlinQuery": f"{icmp}.Sum('Metric.ABPackets')"})
                r2 = await http.post("/api/topology", json={"GremlinQuery": f"{icmp}.Sum('Metric.BAPackets')"})
                return r.status_code == r2.status_code == 200 and (r.json(), r2.json()) == (5, 5)
            assert await wait_for(icmp_counted, 30, interval=0.5)

            [bridge] = await gremlin(bridge_q)
            [flow] = await gremlin(icmp)  # one flow: both directions of the ping on the bridge
            m = flow["Metric"]
            assert (m["ABPackets"], m["BAPackets"], m["ABBytes"], m["BABytes"]) == (5, 5, 5 * 98, 5 * 98)
            assert flow["NodeTID"] == bridge["Metadata"]["TID"]
            assert (flow["Network"]["A"], flow["Network"]["B"]) == (pair.ip_a, pair.ip_b)
            assert flow["SamplingRate"] == 1
            # the query, as in Skydive: one flow with 5/5 on the bridge
            on_bridge = await gremlin("G.V().Has('Type', 'ovsbridge').Flows().Has('LayersPath', 'Ethernet/IPv4/ICMPv4')")
            assert [f["UUID"] for f in on_bridge] == [flow["UUID"]]
            assert await gremlin(f"{ports_q}.Flows().Has('LayersPath', 'Ethernet/IPv4/ICMPv4').Count()") == 0
            one = f"G.Flows().Has('UUID', '{flow['UUID']}')"
            inner_a, inner_b = f"{pair.ns_a}i", f"{pair.ns_b}i"  # the veth ends inside the namespaces
            assert await gremlin(f"{one}.Hops().Values('Name')") == [br]
            assert await gremlin(f"{one}.CaptureNode().Values('Name')") == [br]
            assert await gremlin(f"{one}.In().Values('Name')") == [inner_a]
            assert await gremlin(f"{one}.Out().Values('Name')") == [inner_b]
            assert await gremlin(f"{one}.Nodes().Values('Name')") == [br, inner_a, inner_b]

            # counter samples (polling 1 s) land on the port nodes as SFlow.Metric / SFlow.LastUpdateMetric
            port_a_q = f"G.V().Has('Type', 'ovsport', 'Name', '{pair.port_a}')"
            assert await wait_for(lambda: count(f"{port_a_q}.HasKey('SFlow.LastUpdateMetric.IfInUcastPkts').Count()",
                                                1), 20)
            [port_a] = await gremlin(port_a_q)
            assert port_a["Metadata"]["SFlow"]["Metric"]["IfInUcastPkts"] >= 5

            cap_id = r.json()["UUID"]
            d = await http.delete(f"/api/capture/{cap_id}")
            assert d.status_code in (200, 204), d.text
            assert await wait_for(lambda: collector.health()["ovs_bridges"] == [], 15)
            assert ovs.vsctl("list", "sFlow").strip() == ""
            assert await wait_for(lambda: count(f"{bridge_q}.HasKey('Captures').Count()", 0), 15)
    finally:
        for svc in reversed(services):
            await svc.stop()
        detach_netns_pair(ovs, br, pair)
        ovs.vsctl("--if-exists", "del-br", br)
