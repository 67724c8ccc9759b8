"""EndpointLookup: MAC/IP/TID -> graph node, kept current by on_node/on_delete, and flow enrichment."""

from __future__ import annotations

from netsonde.common.bus.flows import Flow, FlowLayer, FlowMetric
from netsonde.common.bus.graph import GraphElement, GraphEvent
from netsonde.common.graph import Graph
from netsonde.flow_enricher.lookup import EndpointLookup


def node(nid: str, host: str, **md: object) -> GraphElement:
    return GraphElement(ID=nid, Metadata=dict(md), Host=host, Origin=f"probe.{host}", CreatedAt=1, UpdatedAt=1,
                        Revision=1)


def flow(tid: str, mac_a: str | None, mac_b: str | None, ip_a: str, ip_b: str) -> Flow:
    link = FlowLayer("ETHERNET", mac_a, mac_b) if mac_a is not None else None
    return Flow(UUID="u", LayersPath="Ethernet/IPv4/ICMPv4", Application="ICMPv4", TrackingID="t",
                L3TrackingID="l", NodeTID=tid, Start=1, Last=2, Metric=FlowMetric(ABPackets=1), Link=link,
                Network=FlowLayer("IPV4", ip_a, ip_b))


def graph() -> Graph:
    g = Graph()
    g.upsert_node(node("host-1", "h1", Name="h1", Type="host", TID="tid-host"))
    g.upsert_node(node("veth-a", "h1", Name="a", Type="veth", TID="tid-a", MAC="02:00:00:00:00:0A",
                       IPV4=["10.0.0.1/24"], IPV6=["fd00::1/64"]))
    g.upsert_node(node("veth-b", "h1", Name="b", Type="veth", TID="tid-b", MAC="02:00:00:00:00:0b",
                       IPV4=["10.0.0.2/24"]))
    g.upsert_node(node("lo-1", "h1", Name="lo", Type="device", TID="tid-lo1", IPV4=["127.0.0.1/8"]))
    g.upsert_node(node("lo-2", "h2", Name="lo", Type="device", TID="tid-lo2", IPV4=["127.0.0.1/8"]))
    return g


def test_enrich_resolves_capture_node_and_endpoints_by_mac() -> None:
    lk = EndpointLookup()
    lk.load(graph())
    assert len(lk) == 5
    f = flow("tid-a", "02:00:00:00:00:0a", "02:00:00:00:00:0b", "10.9.9.9", "10.9.9.8")
    assert lk.enrich([f], "fallback") == 1
    assert (f.NodeID, f.ANodeID, f.BNodeID, f.Host) == ("veth-a", "veth-a", "veth-b", "h1")


def test_enrich_falls_back_to_ip_and_to_batch_host() -> None:
    lk = EndpointLookup()
    lk.load(graph())
    f = flow("tid-unknown", "02:ff:00:00:00:01", None, "10.0.0.2", "fd00::1")
    f.Link = FlowLayer("ETHERNET", "02:ff:00:00:00:01", "02:ff:00:00:00:02")
    assert lk.enrich([f], "h9") == 0
    assert (f.NodeID, f.ANodeID, f.BNodeID, f.Host) == ("", "veth-b", "veth-a", "h9")
    g = flow("tid-b", None, None, "192.0.2.1", "10.0.0.1")
    lk.enrich([g])
    assert (g.NodeID, g.ANodeID, g.BNodeID, g.Host) == ("veth-b", "", "veth-a", "h1")


def test_shared_ip_prefers_the_capture_host() -> None:
    lk = EndpointLookup()
    lk.load(graph())
    f1 = flow("tid-lo2", None, None, "127.0.0.1", "127.0.0.1")
    f2 = flow("tid-lo1", None, None, "127.0.0.1", "127.0.0.1")
    f3 = flow("nope", None, None, "127.0.0.1", "127.0.0.1")
    lk.enrich([f1, f2, f3], "h3")
    assert (f1.ANodeID, f1.BNodeID) == ("lo-2", "lo-2")
    assert (f2.ANodeID, f2.BNodeID) == ("lo-1", "lo-1")
    assert f3.ANodeID == "lo-1"  # no host match: smallest ID, deterministic


def test_hooks_follow_updates_and_deletes() -> None:
    lk = EndpointLookup()
    lk.load(graph())
    lk.on_node(node("veth-a", "h1", Name="a", Type="veth", TID="tid-a", MAC="02:00:00:00:00:aa",
                    IPV4=["10.0.0.11/24"]))
    assert lk.node_for_mac("02:00:00:00:00:0a") == "" and lk.node_for_mac("02:00:00:00:00:AA") == "veth-a"
    assert lk.node_for_ip("10.0.0.1") == "" and lk.node_for_ip("10.0.0.11") == "veth-a"
    lk.on_delete("lo-2")
    assert lk.node_for_ip("127.0.0.1", "h2") == "lo-1"
    lk.on_event("NodeDeleted", node("veth-b", "h1"))
    assert lk.node_for_tid("tid-b") == "" and lk.node_for_ip("10.0.0.2") == ""
    lk.on_event("NodeAdded", node("veth-c", "h1", TID="tid-c", MAC="02:00:00:00:00:0c"))
    assert lk.node_for_tid("tid-c") == "veth-c"
    # a graph event applied to the Graph and to the lookup keep them in agreement
    g = graph()
    ev = GraphEvent(seq=1, type="NodeDeleted", obj=node("veth-a", "h1"))
    g.apply(ev)
    lk.load(g)
    assert lk.node_for_tid("tid-a") == "" and len(lk) == 4


# --- the C hot path against the reference Python path ------------------------------------------------------

import msgspec  # noqa: E402

from netsonde.common import flowschema as fs  # noqa: E402
from netsonde.common.bus import encode  # noqa: E402
from netsonde.common.bus.flows import FlowUpdateBatch, ICMPLayer, RawPacket, TCPMetric  # noqa: E402
from netsonde.flow_enricher import pipeline  # noqa: E402
from netsonde.flow_enricher.writer import _wire_type  # noqa: E402


def test_c_path_is_built_and_writes_the_schema_columns() -> None:
    assert pipeline.FAST_PATH_AVAILABLE, "run: .venv/bin/pip install -e services/flow-enricher"
    flows, metrics, raw = pipeline.native_columns()
    assert flows == [(c.name, _wire_type(c.type)) for c in fs.FLOW_COLUMNS]
    assert metrics == [(c.name, _wire_type(c.type)) for c in fs.METRIC_COLUMNS]
    assert raw == [(c.name, _wire_type(c.type)) for c in fs.RAW_PACKET_COLUMNS]


def varied_messages() -> list[bytes]:
    f1 = flow("tid-a", "02:00:00:00:00:0a", "02:00:00:00:00:0b", "10.0.0.1", "10.0.0.2")
    f2 = flow("tid-lo2", None, None, "127.0.0.1", "127.0.0.1")
    f2.ICMP = ICMPLayer("ECHO", 0, 9)
    f2.TCPMetric = TCPMetric(ABSynStart=5, BARstStart=2**40)
    f2.Extra = {"DNS": {"Questions": ["é.example", 'q"uote'], "TTL": 1.5, "ok": True, "none": None}}
    f2.LastRawPackets = [RawPacket(Timestamp=3, Index=1, Data=b"\x00\xff")]
    f2.NodeID, f2.Host = "stale", "stale-host"  # already enriched upstream: replaced
    f2.SamplingRate, f2.FinishType, f2.Metric.ABBytes = 512, "TCP_FIN", 2**63 + 5
    f1.UUID, f2.UUID = "u1", "u2"
    f3s = []
    for k in range(20):
        f3 = flow("nope", None, None, "192.0.2.1", "fd00::1")
        f3.UUID, f3.Network = f"u3-{k}", None
        f3s.append(f3)
    good = [FlowUpdateBatch(host="h1", batch_id="b1", ts=7, flows=[f1, f2]),
            FlowUpdateBatch(host="h2", batch_id="b2", ts=8, flows=f3s)]
    odd = msgspec.msgpack.encode({"host": "h3", "batch_id": "b3", "ts": 9, "v": 1, "zzz": [1, {"a": 2}],
                                  "flows": [dict(msgspec.to_builtins(f1), UUID="u4", Unknown={"x": 1})]})
    return [encode(good[0]), b"\xc1junk", encode(good[1]), odd,
            msgspec.msgpack.encode({"host": "h", "batch_id": "x", "ts": 1, "v": 2, "flows": []})]


def test_c_and_python_paths_agree() -> None:
    lk = EndpointLookup()
    lk.load(graph())
    msgs = varied_messages()
    fast = pipeline.process(msgs, lk, fast=True)
    slow = pipeline.process(msgs, lk, fast=False)
    assert fast.native and fast.columns is None  # everything valid went through C
    assert fast.rows == slow.rows == 23
    assert fast.rejected == slow.rejected == [(1, "msgpack"), (4, "version")]
    assert fast.ts == slow.ts == [7, 0, 8, 9, 0]
    assert fast.unresolved == slow.unresolved == 20
    for a, b in zip(fast.enriched, slow.enriched):
        assert (a is None) == (b is None)
        if a is not None:
            assert msgspec.msgpack.decode(a, type=FlowUpdateBatch) == msgspec.msgpack.decode(b, type=FlowUpdateBatch)
    e = msgspec.msgpack.decode(fast.enriched[0], type=FlowUpdateBatch)
    assert (e.flows[1].NodeID, e.flows[1].Host) == ("lo-2", "h2")
    # the C path is stricter than msgspec only by rejecting: a message it rejects but msgspec accepts takes
    # the Python path (here a Link with integer ends)
    weird = msgspec.msgpack.encode({"host": "h", "batch_id": "w", "ts": 1, "flows": [
        dict(msgspec.to_builtins(flow("tid-a", "x", "y", "1.1.1.1", "2.2.2.2")), Link={"Protocol": "E", "A": 1, "B": 2})]})
    mixed = pipeline.process([msgs[0], weird], lk, fast=True)
    assert mixed.rows == 3 and mixed.native and mixed.columns is not None and mixed.columns.rows == 1


def test_c_path_is_safe_from_several_threads() -> None:
    """The C path calls back into Python for ambiguous keys (pick), where another thread may enter it: each
    call must still get its own, correct result."""
    import threading

    lk = EndpointLookup()
    lk.load(graph())
    msgs = [encode(FlowUpdateBatch(host="h1", batch_id=f"b{i}", ts=i, flows=[
        flow("tid-lo1" if i % 2 else "tid-lo2", None, None, "127.0.0.1", "127.0.0.1") for _ in range(50)]))
        for i in range(40)]
    expected = pipeline.process(msgs, lk, fast=True)
    results: list[pipeline.Processed] = []

    def work() -> None:
        for _ in range(20):
            results.append(pipeline.process(msgs, lk, fast=True))

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(results) == 60
    for r in results:
        assert r.native == expected.native and r.enriched == expected.enriched and r.rows == 2000


def test_c_path_reads_any_key_order_and_checks_what_follows_the_flows() -> None:
    """The C path reads the flows in one pass when host, batch_id and ts come first (msgspec's order) and
    checks the keys after them only then: a bad `v` or trailing bytes after the flows must still reject the
    whole message (its rows rolled back), and any other key order must give the same rows."""
    lk = EndpointLookup()
    lk.load(graph())
    f = msgspec.to_builtins(flow("tid-a", "02:00:00:00:00:0a", "02:00:00:00:00:0b", "10.0.0.1", "10.0.0.2"))
    enc = msgspec.msgpack.encode
    msgs = [
        enc({"host": "h1", "batch_id": "a", "ts": 1, "flows": [f, f], "v": 1, "later": {"k": [1, 2]}}),
        enc({"flows": [f], "ts": 2, "batch_id": "b", "host": "h1"}),  # flows first: two passes
        enc({"host": "h1", "batch_id": "c", "ts": 3, "flows": [f, f, f], "v": 2}),  # version after the flows
        enc({"host": "h1", "batch_id": "d", "ts": 4, "flows": [f], "v": 1}) + b"\x00",  # trailing byte
        enc({"host": "h1", "ts": 5, "flows": [f], "batch_id": "e"}),  # batch_id after the flows
    ]
    fast = pipeline.process(msgs, lk, fast=True)
    slow = pipeline.process(msgs, lk, fast=False)
    assert fast.rows == slow.rows == 4
    assert fast.rejected == slow.rejected == [(2, "version"), (3, "msgpack")]
    assert fast.ts == slow.ts == [1, 2, 0, 0, 5]
    assert fast.columns is None  # nothing went through the Python path
    for a, b in zip(fast.enriched, slow.enriched):
        assert (a is None) == (b is None)
        if a is not None:
            assert msgspec.msgpack.decode(a, type=FlowUpdateBatch) == msgspec.msgpack.decode(b, type=FlowUpdateBatch)
    assert msgspec.msgpack.decode(fast.enriched[0])["later"] == {"k": [1, 2]}  # keys after the flows are kept
