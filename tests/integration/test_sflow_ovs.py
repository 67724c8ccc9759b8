"""ovssflow on a real OVS bridge (userspace datapath): capture in the KV bucket -> the collector selects the bridge
with the Gremlin engine on its graph replica (graph-builder + probe-topology run too) -> OVS sFlow row -> ping between
two namespaces -> flows on the JetStream stream with the OVS port's NodeTID and exact counts, counters on
the metrics subject; deleting the capture removes the row."""

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
from netsonde.sflow_collector.config import SFlowCollectorConfig
from netsonde.sflow_collector.ovs import port_tid
from netsonde.sflow_collector.service import SFlowCollectorService
from tests.integration.ovs_fixture import OvsDaemons, attach_netns_pair, detach_netns_pair, ovs  # noqa: F401

pytestmark = [pytest.mark.root, pytest.mark.ovs]


def port_uuid(ovs: OvsDaemons, port: str) -> str:  # noqa: F811
    return ovs.vsctl("get", "Port", port, "_uuid").strip()


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


async def test_ovssflow_capture_flows_and_counters(ovs: OvsDaemons, nats_url: str, unique: str) -> None:  # noqa: F811
    prefix, host, br = f"s{unique}", f"h{unique}", f"br{unique}"
    subjects = Subjects(prefix)
    ovs.vsctl("add-br", br, "--", "set", "bridge", br, "datapath_type=netdev")
    pair = attach_netns_pair(ovs, br, unique, subnet="10.97.0")
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

        cap = Capture(UUID=str(uuid.uuid4()), GremlinQuery=f"G.V().Has('Name', '{br}', 'Type', 'ovsbridge')",
                      Type="ovssflow", SamplingRate=1, PollingInterval=1)
        await kv.put(cap.UUID, encode(cap))
        assert await wait_for(lambda: len(sflow_rows(ovs)) == 1, 15), ovs.log()
        row = sflow_rows(ovs)[0]
        assert row["targets"] == f"127.0.0.1:{svc.port}" and row["sampling"] == 1
        assert svc.controller is not None  # reconciling again changes nothing (no row churn)
        selected = {cap.UUID: svc.select_bridges(cap.GremlinQuery)}
        assert selected == {cap.UUID: [br]}
        again = await asyncio.to_thread(svc.controller.reconcile, selected)
        assert (again.enabled, again.disabled, again.bridges) == ([], [], {br: cap.UUID})
        tid_a = port_tid(host, port_uuid(ovs, pair.port_a))
        tid_b = port_tid(host, port_uuid(ovs, pair.port_b))
        assert await wait_for(lambda: {p.node_tid for p in svc.ports.values()} >= {tid_a, tid_b}, 15)

        p = await asyncio.to_thread(subprocess.run, ["ip", "netns", "exec", pair.ns_a, "ping", "-c", "5", "-i",
                                                     "0.2", "-W", "2", pair.ip_b], capture_output=True, text=True)
        assert p.returncode == 0, p.stdout + p.stderr

        sub = await js.pull_subscribe(subjects.flows(host), durable=None, stream=subjects.flow_stream)
        flows: dict[tuple[str, str], dict[str, Any]] = {}

        async def icmp_seen() -> bool:
            await svc.publish_now()
            try:
                msgs = await sub.fetch(100, timeout=0.5)
            except Exception:
                msgs = []
            for m in msgs:
                batch = msgpack.unpackb(m.data)
                assert batch["host"] == host and batch["v"] == 1
                for f in batch["flows"]:
                    flows[(f["NodeTID"], f["UUID"])] = f  # the latest update of each flow
                await m.ack()
            icmp = [f for f in flows.values() if f["LayersPath"] == "Ethernet/IPv4/ICMPv4"]
            return {f["NodeTID"] for f in icmp if f["Metric"].get("ABPackets", 0) + f["Metric"].get("BAPackets", 0)
                    >= 5} >= {tid_a, tid_b}
        assert await wait_for(icmp_seen, 20, interval=0.3), list(flows.values())[:3]

        icmp = {f["NodeTID"]: f for f in flows.values() if f["LayersPath"] == "Ethernet/IPv4/ICMPv4"}
        a, b = icmp[tid_a], icmp[tid_b]
        # OVS samples at ingress: port A sees the 5 echo requests, port B the 5 replies (sampling 1: all of them)
        assert a["Metric"].get("ABPackets") == 5 and a["Metric"].get("BAPackets", 0) == 0
        assert a["Metric"]["ABBytes"] == 5 * 98
        assert b["Metric"].get("BAPackets") == 5 and b["Metric"]["BABytes"] == 5 * 98
        assert a["Network"]["A"] == pair.ip_a and a["Network"]["B"] == pair.ip_b
        assert a["TrackingID"] == b["TrackingID"] and a["UUID"] != b["UUID"]
        assert a["SamplingRate"] == 1 and a["CaptureID"] == cap.UUID and a["ICMP"]["Type"] == "ECHO"

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
        detach_netns_pair(ovs, br, pair)
        ovs.vsctl("--if-exists", "del-br", br)
