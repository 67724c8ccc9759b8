"""NATS faults during a flow stream, counted end to end: probe-flow publishes flows (pcap posts) through
JetStream to flow-enricher and ClickHouse while nats-server is restarted, SIGKILLed, or (3-node cluster)
loses one node and gets it back. Every flow sent is stored exactly once (FINAL count == distinct UUIDs ==
sent); the figures are printed.
"""

from __future__ import annotations

import asyncio
import signal
import tempfile
import time
from pathlib import Path
from typing import Iterator

import nats
import pytest

from netsonde.common.bus import Subjects
from netsonde.common.testing import Proc, free_port, start_nats
from netsonde.common.testing.natscluster import NatsCluster

from tests.integration.fault_pipeline import Producer, Services, report, wait_stored

pytestmark = [pytest.mark.slow]


@pytest.fixture
def own_nats() -> Iterator[Proc]:
    """A nats-server of this test's own (the session one must survive), restartable on the same port/dir."""
    workdir = Path(tempfile.mkdtemp(prefix="netsonde-faults-nats-"))
    proc = start_nats(workdir, free_port())
    proc.keep = True
    yield proc
    proc.keep = False
    proc.stop()


def _restart(proc: Proc, sig: signal.Signals) -> tuple[Proc, float]:
    """Stop nats-server with `sig`, leave the bus down for 3 s (longer than a publish's 2 s timeout, so the
    probe's retry path runs), start it again on the same port and store dir; returns the new Proc and how
    long the bus was gone."""
    port = int(proc.url.rsplit(":", 1)[1])
    t0 = time.monotonic()
    proc.popen.send_signal(sig)
    proc.popen.wait(15)
    time.sleep(3)
    new = start_nats(proc.workdir, port)
    new.keep = True
    return new, time.monotonic() - t0


def test_nats_restart_and_sigkill_mid_stream_lose_nothing(own_nats: Proc, clickhouse_url: str, unique: str) -> None:
    """One pipeline, two faults in turn (each with its own producer and count): nats-server stopped cleanly
    (SIGTERM), then killed (SIGKILL), each time down 2 s and started again on the same port and store dir."""
    svc = Services(own_nats.url, clickhouse_url, f"fn{unique}", f"faults_{unique}")
    proc = own_nats
    try:
        fe, pf = svc.flow_pipeline()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            tag = f"nats-{sig.name}-{unique}"
            retries = pf.metric("netsonde_probe_flow_publish_retries_total")
            producer = Producer(pf.port, tag)
            producer.start()
            time.sleep(1.5)
            before = producer.sent
            proc, outage = _restart(proc, sig)
            own_nats.popen, own_nats.keep = proc.popen, True  # the fixture stops whichever runs now
            time.sleep(1.5)
            producer.stop()
            assert producer.sent > before > 0, (before, producer.sent, producer.errors)
            count = wait_stored(clickhouse_url, svc.database, tag, producer.sent, 60)
            retried = pf.metric("netsonde_probe_flow_publish_retries_total") - retries
            report(f"nats-server {sig.name} mid-stream", producer.sent, count, outage_s=round(outage, 2),
                   sent_before_fault=before, publish_retries=retried,
                   dropped=pf.metric("netsonde_probe_flow_flow_updates_dropped_total"))
            assert producer.errors == []
            assert count.stored == count.distinct == producer.sent
            assert retried > 0  # the outage was felt, and waited out
            assert pf.metric("netsonde_probe_flow_flow_updates_dropped_total") == 0
    finally:
        svc.stop()


async def _stream_and_kv_replicas(url: str, prefix: str) -> tuple[int, int, int]:
    nc = await nats.connect(servers=url.split(","))
    try:
        js = nc.jetstream()
        subjects = Subjects(prefix)
        stream = await js.stream_info(subjects.flow_stream)
        kv = await js.stream_info(f"KV_{subjects.capture_bucket}")
        return stream.config.num_replicas or 1, kv.config.num_replicas or 1, stream.state.messages
    finally:
        await nc.close()


def test_cluster_node_lost_and_back_mid_stream(clickhouse_url: str, unique: str) -> None:
    """Three nats-server processes with routes; the flow stream and the capture bucket at 3 replicas; one
    node SIGKILLed mid-stream, then started again (it catches up from the others)."""
    cluster = NatsCluster()
    cluster.start()
    svc = Services(cluster.url, clickhouse_url, f"fc{unique}", f"faults_{unique}")
    svc_env = {"stream_replicas": "3"}
    try:
        fe = svc.start("flow_enricher", ack_wait_s="3", ttl_days="0", graph_feed="false", insert_interval_s="0.2",
                       retry_max_s="2", **svc_env)
        pf = svc.start("probe_flow", use_graph="false", ovsdb="", update_interval_s="1", **svc_env)
        stream_r, kv_r, _ = asyncio.run(_stream_and_kv_replicas(cluster.url, svc.prefix))
        assert (stream_r, kv_r) == (3, 3)
        producer = Producer(pf.port, f"clu-{unique}")
        producer.start()
        time.sleep(2)
        victim = cluster.nodes[0]
        cluster.kill(victim)
        at_kill = producer.sent
        time.sleep(3)
        cluster.start_node(victim)
        time.sleep(2)
        producer.stop()
        assert producer.sent > at_kill > 0, (at_kill, producer.sent, producer.errors)
        count = wait_stored(clickhouse_url, svc.database, f"clu-{unique}", producer.sent, 60)
        _, _, in_stream = asyncio.run(_stream_and_kv_replicas(victim.url, svc.prefix))
        report("3-node cluster, one node SIGKILLed 3 s then back", producer.sent, count, sent_before_fault=at_kill,
               stream_messages_on_returned_node=in_stream,
               publish_retries=pf.metric("netsonde_probe_flow_publish_retries_total"))
        assert producer.errors == []
        assert count.stored == count.distinct == producer.sent
        assert in_stream == producer.posts  # one message per post: the returned node has the whole stream
        assert fe.popen is not None and fe.popen.poll() is None
    finally:
        svc.stop()
        cluster.stop()
