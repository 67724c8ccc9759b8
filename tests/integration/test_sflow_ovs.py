"""ovssflow on real OVS bridges (userspace datapath): capture in the KV bucket -> the collector selects the bridges
with the Gremlin engine on its graph replica (graph-builder + probe-topology run too) -> OVS sFlow rows -> ping
between two namespaces across two bridges (ns A - br1 - veth link - br2 - ns B) -> on the JetStream stream, one
ICMP flow per bridge (NodeTID = the bridge's TID, 5 requests and 5 replies in one flow), one TrackingID, two
UUIDs; per-port counters on the metrics subject; deleting the capture removes the rows."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from typing import Any

import msgpack
import nats
import pytest

from netsonde.common.bus import Subjects, encode
from netsonde.common.bus.captures import Capture
from netsonde.common.bus.streams import open_capture_bucket
from netsonde.common.service import wait_for
from netsonde.graph_builder.config import GraphBuilderConfig
from netsonde.graph_builder.service import GraphBuilderService
from netsonde.probe_topology.config import ProbeTopologyConfig
from netsonde.probe_topology.service import ProbeTopologyService
from netsonde.ovs_sflow_collector.config import SFlowCollectorConfig
from netsonde.ovs_sflow_collector.ovs import bridge_tid, port_tid
from netsonde.ovs_sflow_collector.service import SFlowCollectorService
from tests.integration.capture_bus import waiting_batches
from tests.integration.ovs_fixture import OvsDaemons, attach_netns_pair, detach_netns_pair, ovs  # noqa: F401

pytestmark = [pytest.mark.root, pytest.mark.ovs]


def port_uuid(ovs: OvsDaemons, port: str) -> str:  # noqa: F811
    return ovs.vsctl("get", "Port", port, "_uuid").strip()


def bridge_uuid(ovs: OvsDaemons, bridge: str) -> str:  # noqa: F811
    return ovs.vsctl("get", "Bridge", bridge, "_uuid").strip()


def sh(*cmd: str) -> None:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=20)
    assert p.returncode == 0, f"{' '.join(cmd)}: {p.stderr}"


def sflow_rows(ovs: OvsDaemons) -> list[dict[str, Any]]:  # noqa: F811
    out = json.loads(ovs.vsctl("--format=json", "--columns=targets,sampling,polling,external_ids", "list", "sFlow"))
    return [dict(zip(out["headings"], row)) for row in out["data"]]


async def start_collector(nats_url: str, prefix: str, host: str, db: str, **kw: Any) -> SFlowCollectorService:
    cfg = SFlowCollectorConfig.load(env={}, nats_url=nats_url, subject_prefix=prefix, host_id=host,
                                    listen_host="127.0.0.1", listen_port=0, ovs_db=db, update_interval_s=1.0,
                                    reconcile_interval_s=0.5, log_format="text", **kw)
    svc = SFlowCollectorService(cfg)
    await svc.start()
    return svc


async def test_ovssflow_flows_per_bridge_and_counters(ovs: OvsDaemons, nats_url: str, unique: str) -> None:  # noqa: F811
    prefix, host, br, br2 = f"s{unique}", f"h{unique}", f"br{unique}", f"bs{unique}"
    link1, link2 = f"l1{unique}", f"l2{unique}"
    subjects = Subjects(prefix)
    for b in (br, br2):
        ovs.vsctl("add-br", b, "--", "set", "bridge", b, "datapath_type=netdev")
    pair = attach_netns_pair(ovs, br, unique, subnet="10.97.0")
    ovs.vsctl("del-port", br, pair.port_b)  # ns B moves to the second bridge; a veth links the bridges
    ovs.vsctl("add-port", br2, pair.port_b)
    sh("ip", "link", "add", link1, "type", "veth", "peer", "name", link2)
    for link, b in ((link1, br), (link2, br2)):
        sh("ip", "link", "set", link, "up")
        ovs.vsctl("add-port", b, link)
    common: dict[str, Any] = dict(env={}, nats_url=nats_url, subject_prefix=prefix, host_id=host)
    graph = GraphBuilderService(GraphBuilderConfig.load(**common, history=False))
    await graph.start()
    probe = ProbeTopologyService(ProbeTopologyConfig.load(**common, ovsdb=ovs.db, process_netns=False))
    await probe.start()
    svc = await start_collector(nats_url, prefix, host, ovs.db)
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        kv = await open_capture_bucket(js, subjects)  # the collector may have created it already
        metrics: list[dict[str, Any]] = []

        async def on_metrics(msg: Any) -> None:  # a plain msgpack consumer: no project code
            metrics.extend(msgpack.unpackb(msg.data)["items"])
        await nc.subscribe(subjects.interface_metrics(host), cb=on_metrics)

        cap = Capture(UUID=str(uuid.uuid4()), GremlinQuery=f"G.V().Has('Type', 'ovsbridge').Has('Name', Within("
                      f"'{br}', '{br2}'))", Type="ovssflow", SamplingRate=1, PollingInterval=1)
        await kv.put(cap.UUID, encode(cap))
        assert await wait_for(lambda: len(sflow_rows(ovs)) == 2, 40), ovs.log()
        for row in sflow_rows(ovs):
            assert row["targets"] == f"127.0.0.1:{svc.port}" and row["sampling"] == 1
        assert svc.controller is not None  # reconciling again changes nothing (no row churn)
        selected = {cap.UUID: svc.select_bridges(cap.GremlinQuery)}
        assert {cap.UUID: sorted(selected[cap.UUID] or [])} == {cap.UUID: sorted([br, br2])}
        again = await asyncio.to_thread(svc.controller.reconcile, selected)
        assert (again.enabled, again.disabled, again.bridges) == ([], [], {br: cap.UUID, br2: cap.UUID})
        tid_a = port_tid(host, port_uuid(ovs, pair.port_a))
        tid_1, tid_2 = bridge_tid(host, bridge_uuid(ovs, br)), bridge_tid(host, bridge_uuid(ovs, br2))
        # samples are accounted to the bridge, counters to the port
        assert await wait_for(lambda: {(p.name, p.node_tid) for p in svc.ports.values()} >= {
            (pair.port_a, tid_1), (link1, tid_1), (link2, tid_2), (pair.port_b, tid_2)}, 15)
        assert svc.ports[next(i for i, p in svc.ports.items() if p.name == pair.port_a)].port_tid == tid_a

        p = await asyncio.to_thread(subprocess.run, ["ip", "netns", "exec", pair.ns_a, "ping", "-c", "5", "-i",
                                                     "0.2", "-W", "2", pair.ip_b], capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr

        sub = await js.pull_subscribe(subjects.flows(host), durable=None, stream=subjects.flow_stream)
        flows: dict[tuple[str, str], dict[str, Any]] = {}

        def icmp_flows() -> list[dict[str, Any]]:
            return [f for f in flows.values() if f["LayersPath"] == "Ethernet/IPv4/ICMPv4"]

        async def icmp_seen() -> bool:
            await svc.publish_now()
            async for batch in waiting_batches(sub, 100):
                assert batch["host"] == host and batch["v"] == 1
                for f in batch["flows"]:
                    flows[(f["NodeTID"], f["UUID"])] = f  # the latest update of each flow
            return sum(f["Metric"].get("ABPackets", 0) + f["Metric"].get("BAPackets", 0) for f in icmp_flows()) >= 20
        assert await wait_for(icmp_seen, 20, interval=0.3), list(flows.values())[:3]
        await asyncio.sleep(1.5)  # nothing more may come: the counts below are exact, not minimums
        await icmp_seen()

        # OVS samples at ingress: each bridge sees the 5 requests (from ns A's side) and the 5 replies, and
        # both directions are one flow on that bridge, as in Skydive
        icmp = {f["NodeTID"]: f for f in icmp_flows()}
        assert len(icmp_flows()) == 2 and set(icmp) == {tid_1, tid_2}, icmp_flows()
        for f in icmp.values():
            m = f["Metric"]
            assert (m["ABPackets"], m["BAPackets"], m["ABBytes"], m["BABytes"]) == (5, 5, 5 * 98, 5 * 98)
            assert f["Network"]["A"] == pair.ip_a and f["Network"]["B"] == pair.ip_b
            assert f["SamplingRate"] == 1 and f["CaptureID"] == cap.UUID and f["ICMP"]["Type"] == "ECHO"
        one, two = icmp[tid_1], icmp[tid_2]
        assert one["TrackingID"] == two["TrackingID"] and one["UUID"] != two["UUID"]

        assert await wait_for(lambda: any(m.get("NodeTID") == tid_a for m in metrics), 15)
        m = next(m for m in metrics if m.get("NodeTID") == tid_a)
        assert m["Key"] == "SFlow" and m["Name"] == pair.port_a and m["OfPort"] > 0
        assert "IfInUcastPkts" in m["Metric"]
        assert svc.health()["socket_drops"] == 0

        await kv.delete(cap.UUID)
        assert await wait_for(lambda: sflow_rows(ovs) == [], 15)
        assert await wait_for(lambda: svc.ports and all(not p.capture_id for p in svc.ports.values()), 15)
    finally:
        await nc.close()
        await svc.stop()
        await probe.stop()
        await graph.stop()
        ovs.vsctl("--if-exists", "del-port", br2, pair.port_b, check=False)
        detach_netns_pair(ovs, br, pair)
        subprocess.run(["ip", "link", "del", link1], capture_output=True)
        for b in (br, br2):
            ovs.vsctl("--if-exists", "del-br", b)
