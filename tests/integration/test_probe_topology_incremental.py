"""probe-topology's incremental update gives exactly the graph a full rebuild gives, on real kernel changes.

Watchers on the root namespace and two private named namespaces (as the service runs them, nsids queried the
same way); after each change (veth in a namespace and across namespaces, bridge and membership, addresses,
routes, macvlan, rename, deletions) the incremental state, and the previous state with the published delta
applied, are compared with `builder.build` on the same watcher data: exact node IDs + metadata, exact edge
IDs + endpoints + metadata."""

from __future__ import annotations

import asyncio
import os
from typing import Any

import pytest

from netsonde.probe_topology.builder import HostState, build
from netsonde.probe_topology.incremental import IncrementalBuilder
from netsonde.probe_topology.netns import NetNs, root_netns
from netsonde.probe_topology.nswatch import NsWatcher
from netsonde.probe_topology.publish import Delta, diff, diff_touched
from netsonde.probe_topology.testing import sh

pytestmark = [pytest.mark.root]


def _nodes(state: HostState) -> dict[str, Any]:
    return {nid: n.Metadata for nid, n in state.nodes.items()}


def _edges(state: HostState) -> dict[str, Any]:
    return {eid: (e.Parent, e.Child, e.Metadata) for eid, e in state.edges.items()}


def _apply(prev: HostState, d: Delta) -> HostState:
    """What a receiver holds after the delta (nodes/edges replaced, deleted ones gone)."""
    out = HostState(dict(prev.nodes), dict(prev.edges))
    out.nodes.update({n.ID: n for n in d.nodes})
    out.edges.update({e.ID: e for e in d.edges})
    for eid in d.deleted_edges:
        out.edges.pop(eid, None)
    for nid in d.deleted_nodes:
        out.nodes.pop(nid, None)
    return out


async def test_incremental_equals_full_rebuild(unique):
    ns1, ns2 = f"ia{unique}", f"ib{unique}"
    names = {k: f"{k}{unique}"[:15] for k in ("a", "b", "br", "x", "y", "mv", "r", "s", "z", "p", "q")}
    n = names
    created: list[list[str]] = [["ip", "netns", "del", ns1], ["ip", "netns", "del", ns2], ["ip", "link", "del", n["r"]]]
    sh("ip", "netns", "add", ns1)
    sh("ip", "netns", "add", ns2)
    watchers: list[NsWatcher] = []
    try:
        spaces = [root_netns()]
        for name in (ns1, ns2):
            path = f"/run/netns/{name}"
            spaces.append(NetNs(inode=os.stat(path).st_ino, path=f"/var/run/netns/{name}", name=name, kind="named"))
        paths = {s.inode: (s.path if s.kind != "root" else "/proc/self/ns/net") for s in spaces}

        def on_change(w: NsWatcher, _overrun: bool) -> None:
            w.query_nsids(paths)  # as the service does: resolve LinkNetNsID to watched namespaces

        for s in spaces:
            w = NsWatcher(s, on_change)
            w.start()
            watchers.append(w)
        for w in watchers:
            assert await w.wait_synced(10)

        inc = IncrementalBuilder(f"h{unique}", "hostname")
        published = inc.rebuild(watchers, None)
        steps: list[tuple[str, bool]] = []

        async def check(label: str, *cmds: list[str]) -> None:
            nonlocal published
            for cmd in cmds:
                sh(*cmd)
            await asyncio.sleep(0.3)  # events (and the route re-dump after a link goes up) are in
            while any(w._dump_kind for w in watchers):
                await asyncio.sleep(0.02)
            # no await from here: the watchers cannot change between the two builds
            up = inc.update(watchers, None)
            full = build(f"h{unique}", "hostname", watchers, None)
            assert _nodes(up.state) == _nodes(full), f"{label}: nodes differ"
            assert _edges(up.state) == _edges(full), f"{label}: edges differ"
            delta = diff(published, up.state) if up.full else diff_touched(published, up.state, up.nodes, up.edges)
            received = _apply(published, delta)
            assert _nodes(received) == _nodes(full), f"{label}: the delta misses node changes"
            assert _edges(received) == _edges(full), f"{label}: the delta misses edge changes"
            published = up.state
            steps.append((label, up.full))

        ip1 = ["ip", "-n", ns1]
        await check("veth pair in a namespace", ip1 + ["link", "add", n["a"], "type", "veth", "peer", "name", n["b"]])
        await check("bridge, membership, up", ip1 + ["link", "add", n["br"], "type", "bridge"],
                    ip1 + ["link", "set", n["a"], "master", n["br"]], ip1 + ["link", "set", n["a"], "up"],
                    ip1 + ["link", "set", n["br"], "up"], ip1 + ["link", "set", n["b"], "up"])
        await check("address", ip1 + ["addr", "add", "10.231.1.2/24", "dev", n["b"]])
        await check("route", ip1 + ["route", "add", "10.232.0.0/16", "via", "10.231.1.1", "dev", n["b"]])
        await check("macvlan on the veth end", ip1 + ["link", "add", n["mv"], "link", n["b"], "type", "macvlan"])
        await check("veth across namespaces", ip1 + ["link", "add", n["x"], "type", "veth", "peer", "name", n["y"],
                                                     "netns", ns2])
        await check("address on the far end", ["ip", "-n", ns2, "addr", "add", "10.233.0.2/30", "dev", n["y"]],
                    ["ip", "-n", ns2, "link", "set", n["y"], "up"])
        await check("address on a down interface (no route follows)",
                    ip1 + ["addr", "add", "fd00:235::1/64", "dev", n["x"]])
        await check("veth pair for the move", ip1 + ["link", "add", n["p"], "type", "veth", "peer", "name", n["q"]])
        await check("veth end moved to another namespace", ip1 + ["link", "set", n["q"], "netns", ns2])
        await check("rename", ip1 + ["link", "set", n["x"], "name", n["z"]])
        await check("route deleted", ip1 + ["route", "del", "10.232.0.0/16"])
        await check("veth root <-> namespace", ["ip", "link", "add", n["r"], "type", "veth", "peer", "name", n["s"],
                                                "netns", ns2])
        await check("address on the root end", ["ip", "addr", "add", "10.234.0.1/30", "dev", n["r"]])
        await check("member leaves the bridge", ip1 + ["link", "set", n["a"], "nomaster"])
        await check("veth end deleted (its peer and the macvlan go too)", ip1 + ["link", "del", n["b"]])
        await check("bridge deleted", ip1 + ["link", "del", n["br"]])
        await check("root veth deleted", ["ip", "link", "del", n["r"]])
        incremental = [label for label, full in steps if not full]
        # an nsid learnt (first veth across namespaces) rebuilds in full; the rest is incremental
        assert len(incremental) >= len(steps) - 3, steps
        assert "veth pair in a namespace" in incremental and "bridge deleted" in incremental, steps
    finally:
        for w in watchers:
            w.close()
        for cmd in created:
            sh(*cmd, check=False)
