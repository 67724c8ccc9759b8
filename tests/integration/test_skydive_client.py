"""Skydive's own Python client (`skydive-client` 0.10 from PyPI, unchanged) against a running Netsonde: every
service a real process, real veths. Covers lookups, static nodes and edges, node and edge rules, and the
WSClient subscriber receiving NodeAdded/NodeUpdated/NodeDeleted for real changes. (capture_* calls are
tested with the capture suite.)"""

from __future__ import annotations

import asyncio
import json
import queue
import subprocess
import threading
import time
import uuid
from typing import Any, Callable

import pytest
from skydive.graph import Edge, Node
from skydive.rest.client import BadRequest, RESTClient
from skydive.rules import EdgeRule, NodeRule
from skydive.websocket.client import WSClient, WSClientDefaultProtocol

from bench.services import ServiceProcs
from netsonde.common.testing import wait_until as _wait_until


def wait_until(fn: Any, timeout: float, what: str) -> Any:
    return _wait_until(fn, timeout, what, interval=0.1, retry_on=())


class Subscriber:
    """Skydive's WSClient on its own thread and event loop; every message lands in `messages`."""

    def __init__(self, port: int, gremlin_filter: str = "") -> None:
        self.messages: queue.Queue[dict[str, Any]] = queue.Queue()
        self.loop: asyncio.AbstractEventLoop | None = None
        self.ready = threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(port, gremlin_filter), daemon=True)
        self.thread.start()
        assert self.ready.wait(15), f"WSClient did not connect: {self.error!r}"

    def _run(self, port: int, gremlin_filter: str) -> None:
        sink = self.messages
        opened = self.ready

        class Collect(WSClientDefaultProtocol):
            def onOpen(self) -> None:
                opened.set()

            def onMessage(self, payload: bytes, isBinary: bool) -> None:
                sink.put(json.loads(payload.decode()))

        try:
            client = WSClient("test-host", f"ws://127.0.0.1:{port}/ws/subscriber", protocol=Collect,
                              filter=gremlin_filter)
            self.loop = client.loop
            client.connect()
            client.start()
        except BaseException as exc:  # surfaced by the constructor's wait
            self.error = exc
            self.ready.set()

    def expect(self, type_: str, match: Callable[[dict[str, Any]], bool], timeout: float = 10) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        seen: list[str] = []
        while time.monotonic() < deadline:
            try:
                msg = self.messages.get(timeout=max(deadline - time.monotonic(), 0.01))
            except queue.Empty:
                break
            seen.append(f"{msg.get('Type')}:{msg.get('Obj', {}).get('Metadata', {}).get('Name')}")
            if msg.get("Namespace") == "Graph" and msg.get("Type") == type_ and match(msg["Obj"]):
                return msg
        raise AssertionError(f"no {type_} matching; saw {seen[-20:]}")

    def stop(self) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)


@pytest.fixture
def netsonde(nats_url: str, clickhouse_url: str, unique: str):
    procs = ServiceProcs(nats_url, clickhouse_url, prefix=f"k{unique}")
    procs.env["NETSONDE_CLICKHOUSE_DATABASE"] = f"skyclient_{unique}"
    try:
        procs.start("graph_builder")
        procs.start("probe_topology", ovsdb="", process_netns="false")
        yield procs.start("query_api")
    finally:
        procs.stop()


@pytest.mark.root
@pytest.mark.slow
def test_skydive_python_client(netsonde: int, unique: str) -> None:
    port = netsonde
    rest = RESTClient(f"127.0.0.1:{port}")
    veth, peer = f"kv{unique}", f"kp{unique}"
    ws = Subscriber(port)
    switches = Subscriber(port, "G.V().Has('Type','switch')")  # X-Gremlin-Filter: only the switch's events
    try:
        # a real veth: the subscriber sees it added, lookup_nodes finds it
        subprocess.run(["ip", "link", "add", veth, "type", "veth", "peer", "name", peer], check=True)
        added = ws.expect("NodeAdded", lambda o: o["Metadata"].get("Name") == veth)
        [node] = wait_until(lambda: rest.lookup_nodes(f"G.V().Has('Name','{veth}')"), 10, "the veth")
        assert isinstance(node, Node) and node.id == added["Obj"]["ID"] and node.metadata["Type"] == "veth"
        subprocess.run(["ip", "link", "set", veth, "mtu", "1400"], check=True)
        ws.expect("NodeUpdated", lambda o: o["Metadata"].get("Name") == veth and o["Metadata"].get("MTU") == 1400)
        edges = rest.lookup_edges(f"G.V().Has('Name','{veth}').BothE()")
        assert edges and all(isinstance(e, Edge) and node.id in (e.parent, e.child) for e in edges)

        # static nodes: create, update (JSON Patch), list, delete; the subscriber sees each change
        nid = f"sk-{uuid.uuid4()}"
        created = rest.node_create(nid, "myhost", {"Name": f"tor-{unique}", "Type": "switch"})
        assert isinstance(created, Node) and created.id == nid and created.host == "myhost"
        assert created.metadata == {"Name": f"tor-{unique}", "Type": "switch"} and created.revision == 1
        ws.expect("NodeAdded", lambda o: o["ID"] == nid)
        updated = rest.node_update(nid, [{"op": "add", "path": "/Metadata/Rack", "value": "R1"}])
        assert updated.metadata["Rack"] == "R1" and updated.revision == 2 and updated.updated_at >= created.updated_at
        ws.expect("NodeUpdated", lambda o: o["ID"] == nid and o["Metadata"].get("Rack") == "R1")
        assert nid in {n.id for n in rest.node_list()}
        with pytest.raises(BadRequest, match="Metadata.Name"):
            rest.node_create(None, None, {"Type": "switch"})
        with pytest.raises(BadRequest):  # 304 Not Modified, as Skydive: Name cannot change
            rest.node_update(nid, [{"op": "replace", "path": "/Metadata/Name", "value": "x"}])

        # static edges from the switch to the real veth
        eid = f"ske-{uuid.uuid4()}"
        edge = rest.edge_create(nid, node.id, eid, None, {"RelationType": "cable"})
        assert isinstance(edge, Edge) and (edge.id, edge.parent, edge.child) == (eid, nid, node.id)
        assert [n.metadata["Name"] for n in rest.lookup_nodes(f"G.V('{nid}').Out()")] == [veth]
        edge2 = rest.edge_update(eid, [{"op": "add", "path": "/Metadata/Length", "value": 3}])
        assert edge2.metadata == {"RelationType": "cable", "Length": 3}
        assert eid in {e.id for e in rest.edge_list()}
        with pytest.raises(BadRequest, match="RelationType"):
            rest.edge_create(nid, node.id, None, None, {})
        rest.edge_delete(eid)
        assert eid not in {e.id for e in rest.edge_list()}

        # node rules: create (ID as Skydive: UUIDv5 of Type/Name) and update on the real veth
        rule = rest.noderule_create("create", {"Name": f"fab-{unique}", "Type": "fabric"})
        assert isinstance(rule, NodeRule) and rule.action == "create"
        fab_id = str(uuid.uuid5(uuid.NAMESPACE_OID, f"fabric/fab-{unique}"))
        [fab] = rest.lookup_nodes(f"G.V().Has('Type','fabric','Name','fab-{unique}')")
        assert fab.id == fab_id and fab.metadata["TID"] == fab_id
        urule = rest.noderule_create("update", {"Zone": "blue"}, f"G.V().Has('Name','{veth}')")
        assert urule.query == f"G.V().Has('Name','{veth}')"
        ws.expect("NodeUpdated", lambda o: o["Metadata"].get("Name") == veth and o["Metadata"].get("Zone") == "blue")
        assert {r.uuid for r in rest.noderule_list()} == {rule.uuid, urule.uuid}

        # edge rule: fabric node -> veth
        erule = rest.edgerule_create(f"G.V('{fab_id}')", f"G.V().Has('Name','{veth}')", {"RelationType": "uplink"})
        assert isinstance(erule, EdgeRule) and erule.metadata == {"RelationType": "uplink"}
        [link] = rest.lookup_edges("G.E().Has('RelationType','uplink')")
        assert (link.parent, link.child) == (fab_id, node.id)
        assert link.id == str(uuid.uuid5(uuid.NAMESPACE_OID, fab_id + node.id + "uplink"))
        assert [r.uuid for r in rest.edgerule_list()] == [erule.uuid]
        rest.edgerule_delete(erule.uuid)
        assert rest.lookup_edges("G.E().Has('RelationType','uplink')") == []
        assert rest.edgerule_list() == []
        rest.noderule_delete(urule.uuid)
        ws.expect("NodeUpdated", lambda o: o["Metadata"].get("Name") == veth and "Zone" not in o["Metadata"])
        rest.noderule_delete(rule.uuid)
        assert rest.lookup_nodes("G.V().Has('Type','fabric')") == []
        with pytest.raises(BadRequest):
            rest.noderule_delete(rule.uuid)

        # deletions: the static node, then the real veth
        rest.node_delete(nid)
        ws.expect("NodeDeleted", lambda o: o["ID"] == nid)
        # the filtered subscriber saw the switch come, change and go, and nothing of the veth (its own
        # connection: the deletion may reach it a little after the unfiltered one)
        got: list[tuple[str, str]] = []

        def switch_deleted() -> bool:
            while not switches.messages.empty():
                m = switches.messages.get()
                got.append((m["Type"], m["Obj"]["ID"]))
            return ("NodeDeleted", nid) in got

        wait_until(switch_deleted, 10, "the filtered subscriber's NodeDeleted")
        assert got == [("NodeAdded", nid), ("NodeUpdated", nid), ("NodeDeleted", nid)]
        assert nid not in {n.id for n in rest.node_list()}
        subprocess.run(["ip", "link", "del", veth], check=True)
        ws.expect("NodeDeleted", lambda o: o["ID"] == node.id)
    finally:
        ws.stop()
        switches.stop()
        subprocess.run(["ip", "link", "del", veth], capture_output=True)

