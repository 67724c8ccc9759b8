"""graph-builder and the graph replica on a real NATS server (and the real ClickHouse store for history).

The probe side is played by a plain msgpack producer and the consumer side by a plain nats-py + msgpack
subscriber: neither uses project code, which is what a third party tapping the bus would do.
"""

from __future__ import annotations

import json

import msgpack
import nats

from netsonde.common.bus import Subjects
from netsonde.common.replica import GraphReplica
from netsonde.common.service import wait_for
from netsonde.graph_builder.config import GraphBuilderConfig
from netsonde.graph_builder.service import GraphBuilderService


def probe_full(host: str, seq: int, nodes: dict[str, dict], edges: list[tuple[str, str, str, str]] = ()) -> bytes:
    return msgpack.packb({
        "v": 1, "host": host, "kind": "full", "boot": "boot-1", "seq": seq, "ts": 0,
        "nodes": [{"ID": k, "Metadata": v} for k, v in nodes.items()],
        "edges": [{"ID": i, "Parent": p, "Child": c, "Metadata": {"RelationType": r}} for i, p, c, r in edges],
    })


async def start_builder(nats_url: str, prefix: str, **kw: object) -> GraphBuilderService:
    cfg = GraphBuilderConfig.load(env={}, nats_url=nats_url, subject_prefix=prefix, host_id="test", **kw)
    svc = GraphBuilderService(cfg)
    await svc.start()
    return svc


async def test_third_party_producer_and_consumer(nats_url: str, unique: str) -> None:
    prefix = f"t{unique}"
    svc = await start_builder(nats_url, prefix, history=False)
    nc = await nats.connect(nats_url)
    received: list[dict] = []

    async def on_events(msg) -> None:
        received.append(msgpack.unpackb(msg.data))

    try:
        await nc.subscribe(f"{prefix}.graph.events", cb=on_events)
        await nc.publish(f"{prefix}.topology.hostA", probe_full("hostA", 0, {
            "n-host": {"Name": "hostA", "Type": "host"},
            "n-eth0": {"Name": "eth0", "Type": "device", "MTU": 1500, "IPV4": ["10.0.0.1/24"]},
        }, [("e1", "n-host", "n-eth0", "ownership")]))
        assert await wait_for(lambda: sum(len(b["events"]) for b in received) >= 3, 5)
        events = [e for b in received for e in b["events"]]
        assert [e["type"] for e in events] == ["NodeAdded", "NodeAdded", "EdgeAdded"]
        assert [e["seq"] for e in events] == [1, 2, 3]
        assert all(b["v"] == 1 and b["epoch"] == svc.builder.epoch for b in received)
        eth0 = next(e["obj"] for e in events if e["obj"]["ID"] == "n-eth0")
        assert eth0["Metadata"] == {"Name": "eth0", "Type": "device", "MTU": 1500, "IPV4": ["10.0.0.1/24"]}
        assert eth0["Host"] == "hostA" and eth0["Revision"] == 1 and eth0["CreatedAt"] > 1_600_000_000_000
        edge = events[2]["obj"]
        assert (edge["Parent"], edge["Child"], edge["Metadata"]["RelationType"]) == ("n-host", "n-eth0", "ownership")
    finally:
        await nc.close()
        await svc.stop()


async def test_bad_messages_are_counted_and_dropped(nats_url: str, unique: str) -> None:
    prefix = f"t{unique}"
    svc = await start_builder(nats_url, prefix, history=False)
    nc = await nats.connect(nats_url)
    try:
        await nc.publish(f"{prefix}.topology.h", b"\xc1not msgpack")
        await nc.publish(f"{prefix}.topology.h", msgpack.packb({"v": 1, "host": "h"}))  # missing fields
        await nc.publish(f"{prefix}.topology.h", msgpack.packb(
            {"v": 99, "host": "h", "kind": "full", "boot": "b", "seq": 0, "ts": 0}))
        await nc.publish(f"{prefix}.topology.h", probe_full("h", 0, {"x": {"Name": "still-alive"}}))

        def counted(reason: str) -> float:
            return svc.metrics.registry.get_sample_value(
                "netsonde_graph_builder_bad_messages_total", {"subject_kind": "topology", "reason": reason}) or 0

        assert await wait_for(lambda: "x" in svc.builder.graph.nodes, 5)
        assert counted("msgpack") == 1 and counted("schema") == 1 and counted("version") == 1
    finally:
        await nc.close()
        await svc.stop()


async def test_replica_snapshot_then_events_and_gap_recovery(nats_url: str, unique: str) -> None:
    prefix = f"t{unique}"
    svc = await start_builder(nats_url, prefix, history=False, snapshot_chunk_elements=7)
    nc = await nats.connect(nats_url)
    try:
        nodes = {f"n{i}": {"Name": f"if{i}", "Type": "veth"} for i in range(50)}
        edges = [(f"e{i}", "n0", f"n{i}", "layer2") for i in range(1, 50)]
        await nc.publish(f"{prefix}.topology.h", probe_full("h", 0, nodes, edges))
        assert await wait_for(lambda: len(svc.builder.graph.edges) == 49, 5)

        replica = GraphReplica(nc, Subjects(prefix))
        await replica.start()
        assert len(replica.graph.nodes) == 50 and len(replica.graph.edges) == 49  # from 15 chunks
        assert replica.seq == svc.builder.seq

        nodes["n50"] = {"Name": "if50", "Type": "bridge"}
        await nc.publish(f"{prefix}.topology.h", probe_full("h", 1, nodes, edges))
        assert await wait_for(lambda: "n50" in replica.graph.nodes, 5)
        assert replica.graph.lookup("Type", "bridge") == {"n50"}

        # Lose events on purpose: the replica must notice the gap and reload a snapshot.
        before = replica.resnapshots
        replica.seq -= 1
        del nodes["n7"]
        await nc.publish(f"{prefix}.topology.h", probe_full("h", 2, nodes, [e for e in edges if e[2] != "n7"]))
        assert await wait_for(lambda: replica.resnapshots > before and replica.synced.is_set(), 5)
        assert await wait_for(lambda: "n7" not in replica.graph.nodes, 5)
        assert len(replica.graph.edges) == 48 and replica.seq == svc.builder.seq
        await replica.stop()
    finally:
        await nc.close()
        await svc.stop()


async def test_history_rows_in_clickhouse_and_restart_keeps_identity(
        nats_url: str, clickhouse_url: str, unique: str) -> None:
    from netsonde.common.clickhouse import connect

    prefix, db = f"t{unique}", f"gb_{unique}"
    svc = await start_builder(nats_url, prefix, clickhouse_url=clickhouse_url, clickhouse_database=db,
                              history_flush_interval_s=0.1)
    nc = await nats.connect(nats_url)
    try:
        await nc.publish(f"{prefix}.topology.h", probe_full("h", 0, {"a": {"Name": "a", "MTU": 1500}}))
        assert await wait_for(lambda: "a" in svc.builder.graph.nodes, 5)
        await nc.publish(f"{prefix}.topology.h", probe_full("h", 1, {"a": {"Name": "a", "MTU": 9000}}))
        await nc.publish(f"{prefix}.topology.h", probe_full("h", 2, {}))
        assert await wait_for(lambda: svc.writer is not None and svc.writer.written >= 3, 10)
        client = connect(clickhouse_url, db)
        rows = client.query("SELECT revision, deleted_at IS NOT NULL, metadata FROM graph_revisions "
                            "WHERE id = 'a' ORDER BY revision").result_rows
        assert [(r[0], r[1], json.loads(r[2])["MTU"]) for r in rows] == [(1, False, 1500), (2, False, 9000),
                                                                         (3, True, 9000)]
        await nc.publish(f"{prefix}.topology.h", probe_full("h", 3, {"b": {"Name": "b"}}))
        assert await wait_for(lambda: svc.writer.written >= 4, 10)
        created = svc.builder.graph.nodes["b"].CreatedAt
        await svc.stop()

        # A restarted graph-builder continues from the history: same CreatedAt, next revision. It asks the
        # probes for their state; this test answers its resync requests as probe-topology does.
        restarted_state = probe_full("h", 0, {"b": {"Name": "b", "MTU": 1}})

        async def answer_resync(msg) -> None:
            if msgpack.unpackb(msg.data).get("host") in ("", "h"):
                await nc.publish(f"{prefix}.topology.h", restarted_state)

        await nc.subscribe(f"{prefix}.control.resync", cb=answer_resync)
        await nc.flush()
        svc = await start_builder(nats_url, prefix, clickhouse_url=clickhouse_url, clickhouse_database=db,
                                  history_flush_interval_s=0.1)
        assert svc.builder.graph.nodes["b"].CreatedAt == created
        assert await wait_for(lambda: svc.builder.graph.nodes["b"].Revision == 2, 15), svc.builder.graph.nodes["b"]
        assert svc.builder.graph.nodes["b"].Metadata == {"Name": "b", "MTU": 1}
        client.command(f"DROP DATABASE IF EXISTS {db}")
        client.close()
    finally:
        await nc.close()
        await svc.stop()
