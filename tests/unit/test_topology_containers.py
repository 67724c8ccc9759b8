"""Container connector, the pure parts: where containers go in the host state, shared and host namespaces,
failure reasons of the SDK's exception chains. The engine itself is tested in test_containers.py."""

from __future__ import annotations

import asyncio
import socket

import docker
import pytest

from netsonde.common import ids
from netsonde.common.bus.topology import ProbeEdge, ProbeNode
from netsonde.common.metrics import Metrics
from netsonde.probe_topology.builder import HostState
from netsonde.probe_topology.docker import (
    Container,
    ContainerWatcher,
    EngineStatus,
    add_containers,
    error_reason,
)

HOST = "h1"
ROOT = 4026531840


def state_with_netns(*inodes: int) -> HostState:
    s = HostState()
    hid = ids.host_node_id(HOST)
    s.nodes[hid] = ProbeNode(ID=hid, Metadata={"Name": HOST, "Type": "host"})
    for inode in inodes:
        nid = ids.netns_node_id(HOST, f"/var/run/netns/n{inode}", inode, True)
        s.nodes[nid] = ProbeNode(ID=nid, Metadata={"Name": f"n{inode}", "Type": "netns", "Inode": inode})
        eid = ids.edge_id(hid, nid, "ownership")
        s.edges[eid] = ProbeEdge(ID=eid, Parent=hid, Child=nid, Metadata={"RelationType": "ownership"})
    return s


def owners(s: HostState, child: str) -> list[str]:
    return [
        e.Parent for e in s.edges.values() if e.Child == child and e.Metadata["RelationType"] == "ownership"
    ]


def test_container_owns_its_netns_and_is_owned_by_the_host() -> None:
    s = state_with_netns(11, 12)
    web = Container("c1", "web", "img", "sha256:1", "running", 100, {"app": "web", "a.b": "1"}, "bridge", 11)
    add_containers(
        s, HOST, [web], ROOT, "podman", EngineStatus("unix:///x", "connected", "", "Podman Engine 4.3.1")
    )
    cid = ids.container_node_id(HOST, "c1")
    ns11 = ids.netns_node_id(HOST, "/var/run/netns/n11", 11, True)
    ns12 = ids.netns_node_id(HOST, "/var/run/netns/n12", 12, True)
    md = s.nodes[cid].Metadata
    assert md["Type"] == "container" and md["Name"] == "web" and md["Manager"] == "docker"
    assert md["Container"] == {
        "ID": "c1",
        "Image": "img",
        "ImageID": "sha256:1",
        "Runtime": "podman",
        "Status": "running",
        "InitProcessPID": 100,
        "Labels": {"app": "web", "a.b": "1"},
    }
    assert md["Docker"] == {
        "ContainerID": "c1",
        "ContainerName": "/web",
        "ContainerPID": 100,
        "Labels": {"app": "web", "a.b": "1"},
    }
    assert md["TID"] == ids.child_tid(ids.host_tid(HOST), "web", "container")
    assert owners(s, cid) == [ids.host_node_id(HOST)]
    assert owners(s, ns11) == [cid]  # instead of the host
    assert s.nodes[ns11].Metadata["Manager"] == "docker"
    assert owners(s, ns12) == [ids.host_node_id(HOST)] and "Manager" not in s.nodes[ns12].Metadata
    assert s.nodes[ids.host_node_id(HOST)].Metadata["ContainerEngine"] == {
        "Endpoint": "unix:///x",
        "State": "connected",
        "Engine": "Podman Engine 4.3.1",
    }


def test_shared_and_host_namespaces() -> None:
    s = state_with_netns(11)
    joiner = Container("c2", "side", "img", "", "running", 50, {}, "container:c1", 11)
    owner = Container("c1", "main", "img", "", "running", 90, {}, "bridge", 11)
    hostnet = Container("c3", "hostnet", "img", "", "running", 70, {}, "host", ROOT)
    add_containers(s, HOST, [joiner, owner, hostnet], ROOT)
    ns11 = ids.netns_node_id(HOST, "/var/run/netns/n11", 11, True)
    assert owners(s, ns11) == [ids.container_node_id(HOST, "c1")]  # the one that does not join another
    for c in ("c1", "c2", "c3"):
        assert owners(s, ids.container_node_id(HOST, c)) == [ids.host_node_id(HOST)]
    assert "Labels" not in s.nodes[ids.container_node_id(HOST, "c3")].Metadata["Container"]
    assert "ContainerEngine" not in s.nodes[ids.host_node_id(HOST)].Metadata  # no status given


def test_container_whose_netns_is_not_watched_yet() -> None:
    s = state_with_netns()
    add_containers(s, HOST, [Container("c1", "x", "img", "", "running", 5, {}, "none", 99)], ROOT)
    cid = ids.container_node_id(HOST, "c1")
    assert owners(s, cid) == [ids.host_node_id(HOST)]
    assert not [e for e in s.edges.values() if e.Parent == cid]


def test_error_reasons_along_the_sdk_chain(tmp_path) -> None:
    with pytest.raises(docker.errors.DockerException) as missing:
        docker.APIClient(base_url=f"unix://{tmp_path}/none.sock", version="auto", timeout=2)
    assert error_reason(missing.value) == ("missing", "No such file or directory")
    path = str(tmp_path / "bound.sock")
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)  # bound, never listening: connections are refused
    try:
        with pytest.raises(docker.errors.DockerException) as refused:
            docker.APIClient(base_url=f"unix://{path}", version="auto", timeout=2)
        assert error_reason(refused.value) == ("refused", "Connection refused")
    finally:
        sock.close()
    assert error_reason(ValueError("odd")) == ("error", "ValueError: odd")


async def test_event_actions_of_both_engines() -> None:
    """Docker's `destroy`, podman's `remove`/`died`, the old `status`/`id` event shape, and malformed events
    (counted, nothing raised). Gone actions need no engine call, so no engine is needed here."""
    changes: list[int] = []
    metrics = Metrics("probe-topology")
    w = ContainerWatcher("unix:///nowhere", lambda: changes.append(1), metrics)
    w._loop = asyncio.get_running_loop()
    w.containers = {c: Container(c, c, "img", "", "running", 1) for c in ("d1", "p1", "p2", "o1")}
    for event in (
        {"Type": "container", "Action": "destroy", "Actor": {"ID": "d1"}},  # Docker
        {"Type": "container", "Action": "remove", "Actor": {"ID": "p1"}},  # podman
        {"Type": "container", "Action": "died", "Actor": {"ID": "p2"}},
        {"status": "die", "id": "o1"},  # API < 1.22
        {"Action": "cleanup", "Actor": {"ID": "x"}},
        {"Action": "start"},
        ["not", "a", "map"],
    ):
        w._on_event(None, event)
    await asyncio.sleep(0)
    assert w.containers == {} and len(changes) == 4

    def value(handling: str) -> float:
        v = metrics.registry.get_sample_value(
            "netsonde_probe_topology_container_events_total", {"handling": handling}
        )
        return float(v or 0)

    assert (value("gone"), value("ignored"), value("malformed")) == (4, 1, 2)
