"""Two collector processes side by side on one stream, fed over UDP with real datagrams and garbage."""

from __future__ import annotations

import socket
from typing import Any

import httpx
import nats

from netsonde.common.bus import Subjects
from netsonde.common.service import wait_for
from netsonde.ovs_sflow_collector.config import SFlowCollectorConfig
from netsonde.ovs_sflow_collector.service import SFlowCollectorService
from tests.integration.capture_bus import waiting_batches
from tests.unit.test_sflow_decode import DATAGRAMS
from tests.unit.test_sflow_collector import expected_totals


async def test_two_collectors_share_the_flow_stream(nats_url: str, unique: str) -> None:
    prefix, host = f"c{unique}", f"h{unique}"
    subjects = Subjects(prefix)
    svcs = []
    for name in ("one", "two"):
        cfg = SFlowCollectorConfig.load(env={}, nats_url=nats_url, subject_prefix=prefix, host_id=host,
                                        listen_host="127.0.0.1", listen_port=0, manage_ovs=False,
                                        update_interval_s=0.3, instance=name, log_format="text")
        svc = SFlowCollectorService(cfg)
        await svc.start()
        svcs.append(svc)
    nc = await nats.connect(nats_url)
    try:
        half = len(DATAGRAMS) // 2
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for i, data in enumerate(DATAGRAMS):
                s.sendto(data, ("127.0.0.1", svcs[i >= half].port))
            for garbage in (b"", b"\x00\x00\x00\x04" + b"\x00" * 30, DATAGRAMS[0][:100]):
                s.sendto(garbage, ("127.0.0.1", svcs[0].port))
        assert await wait_for(lambda: svcs[0].health()["datagrams"] == half + 3
                              and svcs[1].health()["datagrams"] == len(DATAGRAMS) - half, 10)
        for svc in svcs:
            await svc.publish_now()
        js = nc.jetstream()
        sub = await js.pull_subscribe(subjects.flows_all, durable=None, stream=subjects.flow_stream)
        batches: dict[str, dict[str, Any]] = {}

        async def all_counted() -> bool:
            async for b in waiting_batches(sub, 50):
                batches[b["batch_id"]] = b
            flows = [f for b in batches.values() for f in b["flows"]]
            return (sum(f["Metric"].get("ABPackets", 0) + f["Metric"].get("BAPackets", 0) for f in flows),
                    sum(f["Metric"].get("ABBytes", 0) + f["Metric"].get("BABytes", 0) for f in flows)) \
                == expected_totals(DATAGRAMS)
        assert await wait_for(all_counted, 15, interval=0.2)
        assert {bid.split("/")[1] for bid in batches} == {"sflow-one", "sflow-two"}
        h = svcs[0].health()
        assert h["dropped"] == {"127.0.0.1": {"truncated": 1, "version": 1, "length": 1}}  # cut inside a sample
        assert h["socket_drops"] == 0
        svcs[0]._export_stats()  # the ticker does it every update interval
        async with httpx.AsyncClient() as http:
            r = await http.get(f"http://127.0.0.1:{svcs[0].http_port}/metrics")
        assert 'netsonde_sflow_collector_datagrams_dropped_total{reason="version",sender="127.0.0.1"} 1.0' in r.text
    finally:
        await nc.close()
        for svc in svcs:
            await svc.stop()
