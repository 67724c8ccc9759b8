"""probe-flow as a service on a real NATS: capture definition in the KV bucket -> capture on a veth in a
namespace -> FlowUpdateBatch messages in the JetStream flow stream, CaptureStatus, /pcap and /injectpacket."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import msgpack
import nats
import pytest

from netsonde.common.bus import Subjects, encode
from netsonde.common.bus.captures import Capture
from netsonde.common.service import wait_for
from netsonde.probe_flow.config import ProbeFlowConfig
from netsonde.probe_flow.service import ProbeFlowService
from tests.integration.capture_bus import CaptureBus, flow_batches
from tests.integration.netns_veth import Topo

pytestmark = [pytest.mark.root]


PCAP = Path(__file__).resolve().parents[1] / "data" / "eth-ip4-arp-dns-req-http-google.pcap"


@pytest.fixture
async def probe(nats_url: str, unique: str):
    cfg = ProbeFlowConfig.load(env={}, nats_url=nats_url, subject_prefix=f"pf{unique}", host_id=f"host{unique}",
                               update_interval_s=0.3, reconcile_interval_s=0.3, use_graph=False, log_format="text")
    svc = ProbeFlowService(cfg)
    await svc.start()
    yield svc
    await svc.stop()


async def test_capture_from_kv_to_flow_stream(probe: ProbeFlowService, nats_url: str, unique: str):
    with Topo(unique) as topo:
        a, ia, b, ib = topo.joined_pair("v", "10.88.0")
        host = probe.cfg.host_id
        node = {"ID": f"node-{unique}", "Host": host,
                "Metadata": {"Name": ib, "Type": "veth", "TID": f"tid-{unique}", "NetNsPath": topo.path(b),
                             "Host": host}}
        queries: list[str] = []

        def select(q: str) -> list[dict]:
            queries.append(q)
            return [node] if "vb" in q else []

        probe.controller.select_nodes = select
        subjects = Subjects(probe.cfg.subject_prefix)
        bus = await CaptureBus.open(nats_url, subjects)
        nc, js, kv, statuses = bus.nc, bus.js, bus.kv, bus.statuses
        cap = Capture(UUID=f"cap-{unique}", GremlinQuery=f"G.V().Has('Name', '{ib}')", BPFFilter="icmp",
                      ExtraTCPMetric=True)
        await kv.put(cap.UUID, encode(cap))
        assert await wait_for(lambda: any(s["state"] == "active" for s in statuses), 10), statuses
        assert statuses[0]["capture_id"] == cap.UUID and statuses[0]["node_id"] == node["ID"]

        sent = await asyncio.to_thread(_inject, ia, topo.path(a))
        assert sent == 3
        # a plain nats-py + msgpack consumer, no project code
        sub = await js.pull_subscribe(subjects.flows(host), durable=f"t{unique}", stream=subjects.flow_stream)
        ab = ba = 0
        seen: list[dict] = []
        async for m, batch in flow_batches(sub, lambda: (ab, ba) == (3, 3)):
            assert m.headers["Nats-Msg-Id"] == batch["batch_id"] and batch["host"] == host
            for f in batch["flows"]:
                seen.append(f)
                if f.get("ICMP", {}).get("ID") == 777:
                    ab += f["LastUpdateMetric"].get("ABPackets", 0)
                    ba += f["LastUpdateMetric"].get("BAPackets", 0)
        assert (ab, ba) == (3, 3), seen
        f = [f for f in seen if f.get("ICMP", {}).get("ID") == 777][-1]
        assert f["NodeTID"] == f"tid-{unique}" and f["CaptureID"] == cap.UUID
        assert f["Network"] == {"Protocol": "IPV4", "A": "10.88.0.1", "B": "10.88.0.2"}

        await kv.delete(cap.UUID)
        assert await wait_for(lambda: any(s["state"] == "stopped" for s in statuses), 10), statuses
        assert not probe.controller.running
        await nc.close()


async def test_pcap_upload_and_injection_api(probe: ProbeFlowService, nats_url: str, unique: str):
    base = f"http://127.0.0.1:{probe.http_port}"
    async with httpx.AsyncClient() as http:
        r = await http.post(f"{base}/pcap?node_tid=upload", content=PCAP.read_bytes())
        assert r.status_code == 200 and r.json() == {"packets": 58, "flows": 6, "bad_packets": 0}
        r = await http.post(f"{base}/pcap", content=b"definitely not a pcap")
        assert r.status_code == 400 and "not a pcap" in r.json()["error"]
        r = await http.post(f"{base}/injectpacket", json={"Ifname": "nosuch0", "SrcIP": "1.1.1.1",
                                                         "DstIP": "1.1.1.2"})
        assert r.status_code == 400 and "no interface" in r.json()["error"]
        r = await http.post(f"{base}/injectpacket", json={"Ifname": "lo", "SrcIP": "1.1.1.1", "DstIP": "x",
                                                         "Type": "icmp4"})
        assert r.status_code == 400 and "IPv4 addresses" in r.json()["error"]
    subjects = Subjects(probe.cfg.subject_prefix)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    sub = await js.pull_subscribe(subjects.flows(probe.cfg.host_id), durable=f"u{unique}",
                                  stream=subjects.flow_stream)
    msgs = await sub.fetch(10, timeout=5)
    flows = [f for m in msgs for f in msgpack.unpackb(m.data)["flows"]]
    assert len(flows) == 6 and {f["NodeTID"] for f in flows} == {"upload"}
    await nc.close()


def _inject(ifname: str, netns: str) -> int:
    from netsonde.flow.inject import inject_packets
    return inject_packets(ifname, netns, "10.88.0.1", "10.88.0.2", type="icmp4", count=3, interval_ms=50,
                          icmp_id=777)


async def test_injection_over_nats_reaches_a_capture(probe: ProbeFlowService, nats_url: str, unique: str):
    """query-api's way in: a msgpack PacketInjection on Subjects.packet_inject(host), Src chosen by a query."""
    from netsonde.flow.capture import AfPacketCapture
    from netsonde.flow.table import FlowTable
    with Topo(unique) as topo:
        a, ia, b, ib = topo.joined_pair("v", "10.89.0")
        src = {"ID": "src", "Host": probe.cfg.host_id,
               "Metadata": {"Name": ia, "Type": "veth", "NetNsPath": topo.path(a), "Host": probe.cfg.host_id}}
        probe.select_nodes = lambda q: [src] if "src" in q else []  # type: ignore[method-assign]
        cap = AfPacketCapture(ib, FlowTable("dst"), netns_path=topo.path(b), bpf="udp")
        cap.start()
        nc = await nats.connect(nats_url)
        subject = Subjects(probe.cfg.subject_prefix).packet_inject(probe.cfg.host_id)
        req = {"Src": "G.V().Has('ID', 'src')", "SrcIP": "10.89.0.1", "DstIP": "10.89.0.2", "Type": "udp4",
               "Count": 4, "Interval": 10, "SrcPort": 4444, "DstPort": 5555, "Size": 200}
        rep = msgpack.unpackb((await nc.request(subject, msgpack.packb(req), timeout=10)).data)
        assert rep == {"sent": 4}
        bad = msgpack.unpackb((await nc.request(subject, msgpack.packb({**req, "Src": "G.V().Has('ID', 'x')"}),
                                                timeout=10)).data)
        assert "selects no node" in bad["error"]
        await nc.close()
        assert await wait_for(lambda: cap.packets_received >= 4, 5)
        cap.stop()
        with cap.lock:
            flows = cap.table.updates(int(time.time() * 1000))
        assert [(f.Transport.A, f.Transport.B, f.Metric.ABPackets, f.Metric.ABBytes) for f in flows] == \
            [(4444, 5555, 4, 800)]
