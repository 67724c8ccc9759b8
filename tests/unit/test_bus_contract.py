"""The bus contract is closed: every subject has a typed schema documented in docs/bus.md, every receiver
decodes through one helper (bad messages counted, logged once, dropped), and replicas tell their owners about
snapshots instead of being polled."""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
from pathlib import Path

import msgpack
import nats
import pytest

from netsonde.common.bus import Subjects, decode, encode
from netsonde.common.bus.graph import GraphElement, GraphEvent, GraphEventBatch, SnapshotChunk, SnapshotRequest
from netsonde.common.bus.inbound import InboundDecoder
from netsonde.common.bus.injection import PacketInjectReply, PacketInjectRequest
from netsonde.common.metrics import Metrics
from netsonde.common.replica import GraphReplica
from netsonde.common.service import wait_for

ROOT = Path(__file__).resolve().parents[2]
BUS_DOC = (ROOT / "docs" / "bus.md").read_text()


def _subjects() -> dict[str, str]:
    """Every subject, stream and bucket name Subjects builds, with host `<host>` -> `h0st`."""
    s = Subjects("netsonde")
    out = {}
    for name, member in inspect.getmembers(Subjects):
        if name.startswith("_") or name == "prefix":
            continue
        if isinstance(member, property):
            out[name] = getattr(s, name)
        elif callable(member):
            out[name] = getattr(s, name)("h0st")
    return out


def _routed(subject: str) -> str:
    """A documented subject with its routing-key placeholder (`<host>`, `<alert UUID>` ...) as `h0st`."""
    return re.sub(r"<[^>]+>", "h0st", subject)


def test_every_subject_is_in_the_bus_doc() -> None:
    documented = {_routed(row) for row in re.findall(r"^\| (?:KV bucket )?`([^`]+)`", BUS_DOC, re.M)}
    documented |= {_routed(m) for m in re.findall(r"`(netsonde[._][^`]*)`", BUS_DOC)}
    wildcard = {"topology_all", "flows_all", "interface_metrics_all", "flow_stream"}
    missing = {k: v for k, v in _subjects().items() if k not in wildcard and v not in documented}
    assert missing == {}
    assert "NETSONDE_FLOWS" in BUS_DOC  # the stream
    assert _subjects()["packet_inject"] == "netsonde.inject.h0st"


def test_every_message_named_in_the_doc_is_a_bus_struct() -> None:
    import netsonde.common.bus as bus
    import pkgutil
    import importlib

    structs = set()
    for mod in pkgutil.iter_modules(bus.__path__):
        module = importlib.import_module(f"netsonde.common.bus.{mod.name}")
        structs |= {n for n, o in vars(module).items() if inspect.isclass(o) and hasattr(o, "__struct_fields__")}
    table = re.findall(r"^\| `[^`]+` \| [^|]+ \| [^|]+ \| (.+) \|$", BUS_DOC, re.M)
    named = {n for cell in table for n in re.findall(r"`(\w+)`", cell)}
    assert named and named <= structs, named - structs
    assert {"PacketInjectRequest", "PacketInjectReply"} <= named


def test_packet_injection_is_plain_msgpack_both_ways() -> None:
    req = PacketInjectRequest(Src="G.V('n1')", SrcIP="10.0.0.1", DstIP="10.0.0.2", Type="udp4", Count=4,
                              Interval=10, SrcPort=4444, DstPort=5555, Size=200)
    assert msgpack.unpackb(encode(req)) == {"Src": "G.V('n1')", "SrcIP": "10.0.0.1", "DstIP": "10.0.0.2",
                                            "Type": "udp4", "Count": 4, "Interval": 10, "SrcPort": 4444,
                                            "DstPort": 5555, "Size": 200}
    third_party = msgpack.packb({"Ifname": "eth0", "Count": 2, "TTL": 3})
    assert decode(third_party, PacketInjectRequest) == PacketInjectRequest(Ifname="eth0", Count=2, TTL=3)
    assert msgpack.unpackb(encode(PacketInjectReply(sent=4))) == {"sent": 4}
    assert msgpack.unpackb(encode(PacketInjectReply(error="no interface 'x'"))) == {"error": "no interface 'x'"}


def test_packet_injection_from_skydive_json() -> None:
    body = {"Src": "G.V().Has('Name','a')", "Dst": "G.V().Has('Name','b')", "Name": "ping", "Type": "icmp4",
            "Count": "5", "Interval": 100, "ICMPID": 7, "Payload": None, "Description": ""}
    assert PacketInjectRequest.from_json_body(body) == PacketInjectRequest(
        Src="G.V().Has('Name','a')", Type="icmp4", Count=5, Interval=100, ICMPID=7)
    with pytest.raises(ValueError, match=r"Expected `int`, got `str` - at `\$.Count`"):
        PacketInjectRequest.from_json_body({"Src": "x", "Count": "many"})
    with pytest.raises(ValueError, match="JSON PacketInjection object"):
        PacketInjectRequest.from_json_body(["x"])


def test_inbound_decoder_counts_logs_once_and_drops(caplog: pytest.LogCaptureFixture) -> None:
    metrics = Metrics("unit")
    decoder = InboundDecoder(metrics.bad_messages, logging.getLogger("unit.bus"))
    good = encode(PacketInjectReply(sent=1))
    assert decoder(good, PacketInjectReply, "inject_reply") == PacketInjectReply(sent=1)
    with caplog.at_level(logging.WARNING, logger="unit.bus"):
        for data in (b"\xc1", b"\xc1", msgpack.packb({"sent": "x"}), msgpack.packb({"sent": 1, "v": 9})):
            assert decoder(data, PacketInjectReply, "inject_reply", "netsonde.inject.h") is None
    reg = metrics.registry

    def count(reason: str) -> float | None:
        return reg.get_sample_value("netsonde_unit_bad_messages_total",
                                    {"subject_kind": "inject_reply", "reason": reason})

    assert (count("msgpack"), count("schema"), count("version")) == (2.0, 1.0, 1.0)
    assert decoder.dropped == 4
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 3  # once per kind and reason
    assert warnings[0].startswith("dropped a bad inject_reply message on netsonde.inject.h: msgpack:")


def test_no_service_decodes_by_hand() -> None:
    """Receivers use InboundDecoder; `except BusDecodeError` stays only where a decode error becomes an answer
    (request/reply error replies) or a per-message rejection reason (the enricher's batch pipeline)."""
    allowed = {"graph_builder/static.py", "query_api/static_api.py", "flow_enricher/pipeline.py"}
    by_hand = {str(p.relative_to(p.parents[1])) for p in (ROOT / "services").glob("*/src/netsonde/*/*.py")
               if "except BusDecodeError" in p.read_text()}
    by_hand |= {str(p.relative_to(ROOT)) for p in (ROOT / "libs").glob("*/src/netsonde/**/*.py")
                if "except BusDecodeError" in p.read_text() and "/bus/" not in str(p)}
    assert by_hand <= allowed, by_hand - allowed


def element(name: str, revision: int) -> GraphElement:
    return GraphElement(ID="n1", Metadata={"Name": name}, Host="h", Origin="probe-topology.h", CreatedAt=1,
                        UpdatedAt=revision, Revision=revision)


async def test_replica_tells_its_owner_about_each_snapshot(nats_url: str, unique: str) -> None:
    """A fake graph-builder (real NATS) serves snapshots; a sequence gap makes the replica load a new one, and
    each load calls the on_snapshot listeners with the graph, before the events buffered meanwhile."""
    subjects = Subjects(f"bc{unique}")
    nc = await nats.connect(nats_url)
    served = []

    async def serve_snapshot(msg) -> None:
        decode(msg.data, SnapshotRequest)
        seq = 5 if not served else 9
        served.append(seq)
        node = element(f"eth{len(served)}", len(served))
        await nc.publish(msg.reply, encode(SnapshotChunk(epoch="e1", seq=seq, index=0, last=True, nodes=[node])))

    await nc.subscribe(subjects.graph_snapshot, cb=serve_snapshot)
    metrics = Metrics("unit")
    replica = GraphReplica(nc, subjects, snapshot_timeout=5, bad_messages=metrics.bad_messages)
    seen: list[tuple[str, int]] = []
    replica.on_snapshot(lambda g: seen.append((g.nodes["n1"].Metadata["Name"], replica.seq)))
    try:
        await replica.start()
        assert seen == [("eth1", 5)]
        await nc.publish(subjects.graph_events, b"\xc1")  # not msgpack
        ev = GraphEvent(seq=8, type="NodeUpdated", obj=element("x", 3))
        await nc.publish(subjects.graph_events, encode(GraphEventBatch(epoch="e1", events=[ev])))  # gap: 6 missing
        assert await wait_for(lambda: len(seen) == 2, 5)
        assert seen == [("eth1", 5), ("eth2", 9)] and replica.resnapshots == 2
        assert replica.bad_messages == 1
        assert metrics.registry.get_sample_value("netsonde_unit_bad_messages_total",
                                                 {"subject_kind": "graph_events", "reason": "msgpack"}) == 1.0
    finally:
        await replica.stop()
        await nc.close()
    await asyncio.sleep(0)
