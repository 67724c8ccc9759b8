"""flow-enricher end to end on real NATS (JetStream) and real ClickHouse: enrichment from a graph, columnar
inserts, acks only after ClickHouse accepted, republishing to third parties, replicas sharing one durable
consumer, and a ClickHouse outage that loses nothing."""

from __future__ import annotations

import time
from typing import Any, AsyncIterator

import msgpack
import nats
import pytest

from netsonde.common.bus import Subjects, encode
from netsonde.common.bus.flows import Flow, FlowLayer, FlowMetric, FlowUpdateBatch
from netsonde.common.bus.graph import GraphElement
from netsonde.common.clickhouse import connect
from netsonde.common.graph import Graph
from netsonde.common.service import wait_for
from netsonde.common.testing import start_store
from netsonde.flow_enricher.config import FlowEnricherConfig
from netsonde.flow_enricher.lookup import EndpointLookup
from netsonde.flow_enricher.service import FlowEnricherService

T0 = (int(time.time()) - 3600) * 1000  # recent: rows older than the TTL are dropped at insert


pytestmark = [pytest.mark.slow]


def node(nid: str, host: str, **md: object) -> GraphElement:
    return GraphElement(ID=nid, Metadata=dict(md), Host=host, Origin=f"probe.{host}", CreatedAt=1, UpdatedAt=1,
                        Revision=1)


def make_graph() -> Graph:
    g = Graph()
    g.upsert_node(node("host-h1", "h1", Name="h1", Type="host", TID="tid-host"))
    g.upsert_node(node("node-a", "h1", Name="vA", Type="veth", TID="tid-a", MAC="02:00:00:00:00:0a",
                       IPV4=["10.0.0.1/24"]))
    g.upsert_node(node("node-b", "h1", Name="vB", Type="veth", TID="tid-b", MAC="02:00:00:00:00:0b",
                       IPV4=["10.0.0.2/24"]))
    return g


def make_batch(seq: int, n: int, host: str = "h1") -> FlowUpdateBatch:
    flows = []
    for j in range(n):
        i = seq * 1000 + j
        flows.append(Flow(
            UUID=f"{i:016x}", LayersPath="Ethernet/IPv4/UDP", Application="UDP", TrackingID=f"{i:x}",
            L3TrackingID=f"{i:x}", NodeTID="tid-a", Start=T0 + i, Last=T0 + 500 + i,
            Metric=FlowMetric(ABPackets=3, ABBytes=300, Start=T0 + i, Last=T0 + 500 + i),
            LastUpdateMetric=FlowMetric(ABPackets=1, ABBytes=100, Start=T0 + i, Last=T0 + 500 + i),
            Link=FlowLayer("ETHERNET", "02:00:00:00:00:0a", "02:00:00:00:00:0b"),
            Network=FlowLayer("IPV4", "10.0.0.1", "10.0.0.2"), Transport=FlowLayer("UDP", 5000 + j, 53)))
    return FlowUpdateBatch(host=host, batch_id=f"{host}-boot-{seq}", ts=int(time.time() * 1000), flows=flows)


def config(nats_url: str, clickhouse_url: str, unique: str, **kw: Any) -> FlowEnricherConfig:
    base = dict(nats_url=nats_url, clickhouse_url=clickhouse_url, clickhouse_database=f"fe_{unique}",
                subject_prefix=f"t{unique}", host_id="test", insert_interval_s=0.1, graph_feed=False,
                stream_max_bytes=64 * 1024 * 1024, retry_max_s=0.5)
    base.update(kw)
    return FlowEnricherConfig.load(env={}, **base)


def count(url: str, db: str, sql: str) -> int:
    client = connect(url, db)
    try:
        return int(client.query(sql).result_rows[0][0])
    finally:
        client.close()


@pytest.fixture
async def nc(nats_url: str) -> AsyncIterator[Any]:
    conn = await nats.connect(nats_url)
    yield conn
    await conn.close()


@pytest.fixture
def drop_db(clickhouse_url: str, unique: str) -> Any:
    yield
    client = connect(clickhouse_url, "default")
    client.command(f"DROP DATABASE IF EXISTS `fe_{unique}`")
    client.close()


async def consumer_state(js: Any, subjects: Subjects, name: str) -> tuple[int, int]:
    info = await js.consumer_info(subjects.flow_stream, name)
    return info.num_pending, info.num_ack_pending


async def drained(js: Any, subjects: Subjects, name: str) -> bool:
    """Nothing left to deliver and nothing delivered but unacked (acks are processed asynchronously)."""
    return await consumer_state(js, subjects, name) == (0, 0)


async def test_enricher_stores_enriches_acks_and_republishes(nats_url: str, clickhouse_url: str, unique: str,
                                                             nc: Any, drop_db: Any) -> None:
    cfg = config(nats_url, clickhouse_url, unique)
    subjects = Subjects(cfg.subject_prefix)
    lookup = EndpointLookup()
    lookup.load(make_graph())
    svc = FlowEnricherService(cfg, lookup=lookup)
    await svc.start()
    received: list[dict[str, Any]] = []

    async def on_enriched(msg: Any) -> None:  # a third party: plain nats-py + msgpack, no project code
        received.append(msgpack.unpackb(msg.data, raw=False))

    await nc.subscribe(subjects.flows_enriched, cb=on_enriched)
    js = nc.jetstream()
    try:
        for seq in range(3):
            await js.publish(subjects.flows("h1"), encode(make_batch(seq, 20)))
        assert await wait_for(lambda: svc.stored_flows == 60, 30), svc.health()
        db = cfg.clickhouse_database
        assert count(clickhouse_url, db, "SELECT count() FROM flows FINAL") == 60
        assert count(clickhouse_url, db, "SELECT count() FROM flows FINAL WHERE NodeID = 'node-a' AND "
                                         "ANodeID = 'node-a' AND BNodeID = 'node-b' AND Host = 'h1'") == 60
        assert count(clickhouse_url, db, "SELECT sum(ABBytes) FROM flow_metrics FINAL") == 6000
        assert count(clickhouse_url, db, "SELECT uniqExact(BatchID) FROM flows FINAL") == 3
        assert await wait_for(lambda: len(received) == 3, 10)
        assert await wait_for(lambda: drained(js, subjects, cfg.consumer_name), 10)
    finally:
        await svc.stop()
    flows = [f for b in received for f in b["flows"]]
    assert len(flows) == 60 and {b["batch_id"] for b in received} == {f"h1-boot-{i}" for i in range(3)}
    assert {(f["NodeID"], f["ANodeID"], f["BNodeID"], f["Host"]) for f in flows} == {("node-a", "node-a",
                                                                                       "node-b", "h1")}
    assert flows[0]["Network"] == {"Protocol": "IPV4", "A": "10.0.0.1", "B": "10.0.0.2"}


async def test_bad_messages_are_dropped_and_counted(nats_url: str, clickhouse_url: str, unique: str, nc: Any,
                                                    drop_db: Any) -> None:
    cfg = config(nats_url, clickhouse_url, unique)
    subjects = Subjects(cfg.subject_prefix)
    svc = FlowEnricherService(cfg)
    await svc.start()
    js = nc.jetstream()
    try:
        await js.publish(subjects.flows("h1"), b"\xc1not msgpack")
        await js.publish(subjects.flows("h1"), msgpack.packb({"host": "h1", "flows": "nope"}))
        await js.publish(subjects.flows("h1"), encode(make_batch(1, 5)))
        assert await wait_for(lambda: svc.stored_flows == 5, 30)
        assert await wait_for(lambda: drained(js, subjects, cfg.consumer_name), 10)
        text = svc.metrics.exposition().decode()
        assert 'bad_messages_total{reason="msgpack",subject_kind="flows"} 1.0' in text
        assert 'bad_messages_total{reason="schema",subject_kind="flows"} 1.0' in text
        # no graph: the flows are stored, with the batch host and no node IDs
        assert count(clickhouse_url, cfg.clickhouse_database,
                     "SELECT count() FROM flows FINAL WHERE NodeID = '' AND Host = 'h1'") == 5
    finally:
        await svc.stop()


async def test_replicas_share_one_durable_consumer(nats_url: str, clickhouse_url: str, unique: str, nc: Any,
                                                   drop_db: Any) -> None:
    cfgs = [config(nats_url, clickhouse_url, unique, fetch_batch=2, insert_rows=10, host_id=f"r{i}")
            for i in range(2)]
    subjects = Subjects(cfgs[0].subject_prefix)
    replicas = [FlowEnricherService(c) for c in cfgs]
    for r in replicas:
        await r.start()
    js = nc.jetstream()
    try:
        for seq in range(30):
            await js.publish(subjects.flows(f"h{seq % 3}"), encode(make_batch(seq, 10, host=f"h{seq % 3}")))
        assert await wait_for(lambda: sum(r.stored_flows for r in replicas) >= 300, 60)
        assert sum(r.stored_batches for r in replicas) == 30  # each message stored once, by one replica
        assert all(r.stored_batches > 0 for r in replicas), [r.stored_batches for r in replicas]
        assert count(clickhouse_url, cfgs[0].clickhouse_database, "SELECT count() FROM flows FINAL") == 300
        assert await wait_for(lambda: drained(js, subjects, cfgs[0].consumer_name), 10)
    finally:
        for r in replicas:
            await r.stop()


async def test_clickhouse_outage_loses_nothing(nats_url: str, unique: str, nc: Any) -> None:
    """Stop ClickHouse under a running enricher: updates stay unacked in JetStream, inserts are retried, and
    once ClickHouse is back every update is stored exactly once (acks only after ClickHouse accepted)."""
    store = start_store()
    store.keep = True
    workdir, port = store.workdir, int(store.url.rsplit(":", 1)[1])
    cfg = config(nats_url, store.url, unique)
    subjects = Subjects(cfg.subject_prefix)
    svc = FlowEnricherService(cfg)
    await svc.start()
    js = nc.jetstream()
    try:
        await js.publish(subjects.flows("h1"), encode(make_batch(0, 10)))
        assert await wait_for(lambda: svc.stored_flows == 10, 30)
        store.stop()
        for seq in range(1, 4):
            await js.publish(subjects.flows("h1"), encode(make_batch(seq, 10)))
        assert await wait_for(lambda: svc.m_insert_errors._value.get() >= 2, 30)
        pending, unacked = await consumer_state(js, subjects, cfg.consumer_name)
        assert pending + unacked == 3 and svc.stored_flows == 10
        store = start_store(workdir=workdir, port=port)
        assert await wait_for(lambda: svc.stored_flows == 40, 60), svc.health()
        assert await wait_for(lambda: drained(js, subjects, cfg.consumer_name), 10)
        assert count(store.url, cfg.clickhouse_database, "SELECT count() FROM flows FINAL") == 40
        assert count(store.url, cfg.clickhouse_database, "SELECT sum(ABPackets) FROM flow_metrics FINAL") == 40
    finally:
        await svc.stop()
        store.keep = False
        store.stop()


async def test_lookup_follows_graph_builder(nats_url: str, clickhouse_url: str, unique: str, nc: Any,
                                            drop_db: Any) -> None:
    """With graph_feed on, the enricher's lookup follows a real graph-builder (snapshot, then events): flows
    are enriched with nodes a probe announced, and a node the probe no longer reports stops resolving."""
    from netsonde.graph_builder.config import GraphBuilderConfig
    from netsonde.graph_builder.service import GraphBuilderService

    cfg = config(nats_url, clickhouse_url, unique, graph_feed=True)
    subjects = Subjects(cfg.subject_prefix)
    builder = GraphBuilderService(GraphBuilderConfig.load(env={}, nats_url=nats_url, subject_prefix=cfg.subject_prefix,
                                                          host_id="test", history=False))
    await builder.start()
    await builder.nc.flush()  # its subscriptions are registered before the probe publishes

    def probe_full(seq: int, nodes: dict[str, dict[str, Any]]) -> bytes:
        return msgpack.packb({"v": 1, "host": "h1", "kind": "full", "boot": "b1", "seq": seq, "ts": 0,
                              "nodes": [{"ID": k, "Metadata": v} for k, v in nodes.items()], "edges": []})

    nodes = {"host-h1": {"Name": "h1", "Type": "host", "TID": "tid-host"},
             "node-a": {"Name": "vA", "Type": "veth", "TID": "tid-a", "MAC": "02:00:00:00:00:0a",
                        "IPV4": ["10.0.0.1/24"]},
             "node-b": {"Name": "vB", "Type": "veth", "TID": "tid-b", "MAC": "02:00:00:00:00:0b",
                        "IPV4": ["10.0.0.2/24"]}}
    await nc.publish(subjects.topology("h1"), probe_full(0, nodes))
    assert await wait_for(lambda: len(builder.builder.graph.nodes) == 3, 10)
    svc = FlowEnricherService(cfg)
    await svc.start()
    js = nc.jetstream()
    try:
        assert await wait_for(lambda: svc.lookup.node_for_tid("tid-a") == "node-a", 15), svc.health()
        await js.publish(subjects.flows("h1"), encode(make_batch(0, 5)))
        assert await wait_for(lambda: svc.stored_flows == 5, 30)
        assert count(clickhouse_url, cfg.clickhouse_database,
                     "SELECT count() FROM flows FINAL WHERE NodeID = 'node-a' AND BNodeID = 'node-b'") == 5
        del nodes["node-b"]
        await nc.publish(subjects.topology("h1"), probe_full(1, nodes))
        assert await wait_for(lambda: svc.lookup.node_for_mac("02:00:00:00:00:0b") == "", 10)
        await js.publish(subjects.flows("h1"), encode(make_batch(1, 5)))
        assert await wait_for(lambda: svc.stored_flows == 10, 30)
        assert count(clickhouse_url, cfg.clickhouse_database,
                     "SELECT count() FROM flows FINAL WHERE NodeID = 'node-a' AND BNodeID = ''") == 5
        assert svc.health()["graph_synced"] is True
    finally:
        await svc.stop()
        await builder.stop()
