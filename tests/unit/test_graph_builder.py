"""graph-builder's merge logic: fulls, deltas, deletions, revisions, resync decisions."""

from __future__ import annotations

from netsonde.common.bus.topology import ProbeEdge, ProbeNode, TopologyMessage
from netsonde.graph_builder.builder import GraphBuilder


def clock_from(start: int = 1_000):
    t = [start]

    def now() -> int:
        t[0] += 1
        return t[0]
    return now


def full(seq: int, nodes: dict[str, dict], edges: list[tuple[str, str, str]] = (), boot: str = "b1") -> TopologyMessage:
    return TopologyMessage(host="h1", kind="full", boot=boot, seq=seq, ts=0,
                           nodes=[ProbeNode(ID=k, Metadata=v) for k, v in nodes.items()],
                           edges=[ProbeEdge(ID=f"{p}-{c}", Parent=p, Child=c, Metadata={"RelationType": r})
                                  for p, c, r in edges])


def test_full_creates_nodes_and_edges_with_revision_1() -> None:
    b = GraphBuilder(clock=clock_from())
    b.apply(full(0, {"h": {"Name": "h1", "Type": "host"}, "e": {"Name": "eth0", "Type": "device"}},
                 [("h", "e", "ownership")]))
    events, revs = b.take()
    assert [e.type for e in events] == ["NodeAdded", "NodeAdded", "EdgeAdded"]
    assert [e.seq for e in events] == [1, 2, 3]
    assert len(revs) == 3
    eth = b.graph.nodes["e"]
    assert eth.Revision == 1 and eth.Host == "h1" and eth.Origin == "probe-topology.h1"
    assert b.graph.lookup("Name", "eth0") == {"e"}
    assert [n.ID for n in b.graph.children("h")] == ["e"]


def test_unchanged_full_emits_nothing_and_change_bumps_revision() -> None:
    b = GraphBuilder(clock=clock_from())
    b.apply(full(0, {"e": {"Name": "eth0", "MTU": 1500}}))
    b.take()
    b.apply(full(1, {"e": {"Name": "eth0", "MTU": 1500}}))
    assert b.take() == ([], [])
    created = b.graph.nodes["e"].CreatedAt
    b.apply(full(2, {"e": {"Name": "eth0", "MTU": 9000}}))
    events, _ = b.take()
    assert [(e.type, e.obj.Revision, e.obj.Metadata["MTU"]) for e in events] == [("NodeUpdated", 2, 9000)]
    assert b.graph.nodes["e"].CreatedAt == created
    assert b.graph.nodes["e"].UpdatedAt > created


def test_full_removes_what_it_no_longer_lists_edges_first() -> None:
    b = GraphBuilder(clock=clock_from())
    b.apply(full(0, {"h": {"Name": "h1"}, "e": {"Name": "eth0"}}, [("h", "e", "ownership")]))
    b.take()
    b.apply(full(1, {"h": {"Name": "h1"}}))
    events, revs = b.take()
    assert [e.type for e in events] == ["EdgeDeleted", "NodeDeleted"]
    deleted = events[1].obj
    assert deleted.DeletedAt is not None and deleted.Revision == 2
    assert "e" not in b.graph.nodes and not b.graph.edges
    assert b.graph.lookup("Name", "eth0") == set()


def test_delta_upserts_and_deletes_and_node_delete_cascades() -> None:
    b = GraphBuilder(clock=clock_from())
    b.apply(full(0, {"h": {"Name": "h1"}}))
    b.take()
    b.apply(TopologyMessage(host="h1", kind="delta", boot="b1", seq=1, ts=0,
                            nodes=[ProbeNode(ID="v", Metadata={"Name": "veth0", "Type": "veth"})],
                            edges=[ProbeEdge(ID="hv", Parent="h", Child="v", Metadata={"RelationType": "ownership"})]))
    events, _ = b.take()
    assert [e.type for e in events] == ["NodeAdded", "EdgeAdded"]
    assert not b.resync_wanted
    b.apply(TopologyMessage(host="h1", kind="delta", boot="b1", seq=2, ts=0, deleted_nodes=["v"]))
    events, _ = b.take()
    assert [e.type for e in events] == ["EdgeDeleted", "NodeDeleted"]
    assert "hv" not in b.graph.edges


def test_sequence_gap_and_unknown_host_ask_for_resync() -> None:
    b = GraphBuilder(clock=clock_from())
    b.apply(TopologyMessage(host="h2", kind="delta", boot="x", seq=7, ts=0))
    assert b.resync_wanted == {"h2"}
    b.apply(full(0, {"a": {"Name": "a"}}))
    b.apply(TopologyMessage(host="h1", kind="delta", boot="b1", seq=5, ts=0))
    assert "h1" in b.resync_wanted
    b.apply(full(6, {"a": {"Name": "a"}}))
    assert "h1" not in b.resync_wanted


def test_probe_restart_with_same_ids_keeps_identity_and_created_at() -> None:
    b = GraphBuilder(clock=clock_from())
    b.apply(full(0, {"e": {"Name": "eth0"}}, boot="run1"))
    created = b.graph.nodes["e"].CreatedAt
    b.take()
    b.apply(full(0, {"e": {"Name": "eth0"}}, boot="run2"))
    assert b.take() == ([], [])
    assert b.graph.nodes["e"].CreatedAt == created and b.graph.nodes["e"].Revision == 1


def test_overlay_survives_probe_updates() -> None:
    b = GraphBuilder(clock=clock_from())
    b.apply(full(0, {"e": {"Name": "eth0", "MTU": 1500}}))
    assert b.set_overlay("e", "Captures", [{"ID": "c1", "State": "active"}])
    assert b.graph.nodes["e"].Metadata["Captures"][0]["ID"] == "c1"
    b.apply(full(1, {"e": {"Name": "eth0", "MTU": 1400}}))
    meta = b.graph.nodes["e"].Metadata
    assert meta["MTU"] == 1400 and meta["Captures"][0]["State"] == "active"
    b.set_overlay("e", "Captures", None)
    assert "Captures" not in b.graph.nodes["e"].Metadata
    assert not b.set_overlay("missing", "Captures", [])


def test_split_full_is_applied_when_all_parts_arrived() -> None:
    b = GraphBuilder(clock=clock_from())
    b.apply(full(0, {"old": {"Name": "old"}}))
    b.take()
    p0 = full(1, {"a": {"Name": "a"}})
    p1 = full(2, {"b": {"Name": "b"}})
    p0.part, p0.parts, p1.part, p1.parts = 0, 2, 1, 2
    b.apply(p0)
    assert "old" in b.graph.nodes and "a" not in b.graph.nodes
    b.apply(p1)
    assert set(b.graph.nodes) == {"a", "b"}


def test_an_id_that_comes_back_continues_its_revisions() -> None:
    """A namespace inode the kernel reuses gives its nodes the IDs of a deleted namespace's: their history must
    go on from the deletion's revision, never restart at 1 (the past graph would take the deletion as latest)."""
    b = GraphBuilder(clock=clock_from())
    b.apply(full(0, {"h": {"Name": "h1"}, "e": {"Name": "eth0"}}, [("h", "e", "ownership")]))
    b.apply(full(1, {"h": {"Name": "h1"}}))
    b.apply(full(2, {"h": {"Name": "h1"}, "e": {"Name": "eth0", "MTU": 1400}}, [("h", "e", "ownership")]))
    _, revs = b.take()
    assert [(r.kind, r.element.ID, r.element.Revision, r.element.DeletedAt is not None) for r in revs] == [
        ("node", "h", 1, False), ("node", "e", 1, False), ("edge", "h-e", 1, False),
        ("edge", "h-e", 2, True), ("node", "e", 2, True),
        ("node", "e", 3, False), ("edge", "h-e", 3, False)]
    # after a restart, the deleted elements read back from the history keep their numbers too
    b.apply(full(3, {"h": {"Name": "h1"}}))
    _, revs = b.take()
    restarted = GraphBuilder(clock=clock_from(10_000))
    restarted.restore([(r.kind, r.element) for r in revs] + [("node", b.graph.nodes["h"])])
    assert set(restarted.graph.nodes) == {"h"}
    restarted.apply(full(0, {"h": {"Name": "h1"}, "e": {"Name": "eth0"}}, [("h", "e", "ownership")], boot="b2"))
    _, revs = restarted.take()
    assert [(r.kind, r.element.ID, r.element.Revision) for r in revs] == [("node", "e", 5), ("edge", "h-e", 5)]


def test_deleted_revisions_are_forgotten_with_the_history_ttl() -> None:
    now = [1_000]
    b = GraphBuilder(clock=lambda: now[0], history_ttl_ms=100_000)
    b.apply(full(0, {"a": {"Name": "a"}, "b": {"Name": "b"}}))
    b.apply(full(1, {"b": {"Name": "b"}}))
    assert b.deleted_revisions == {("node", "a"): (2, 1_000)}
    now[0] = 1_000 + 100_000 + 60_001  # a's deletion left the history; the next deletion prunes it
    b.apply(full(2, {}))
    assert b.deleted_revisions == {("node", "b"): (2, 161_001)}
    b.apply(full(3, {"a": {"Name": "a"}, "b": {"Name": "b"}}))
    _, revs = b.take()
    assert [(r.element.ID, r.element.Revision) for r in revs[-2:]] == [("a", 1), ("b", 3)]
