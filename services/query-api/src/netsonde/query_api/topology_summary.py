"""Aggregated views of the topology for the web UI: counts per host and per namespace, one group's members.

A 10 000-node graph is too much to draw on page load; the UI draws hosts and namespaces as collapsed groups
from `GET /api/topology/summary` and fetches a group's members with `GET /api/topology/group/{id}` when the
user expands it. A node's group is its nearest `netns` or `container` owner over ownership edges, else its
host (the `host` node owning it, else the `host` node of its `Host`); a container's namespace (owned by the
container, not the host, docs/containers.md) is a group inside the container's group. Both endpoints take
`?at=<instant>` (any `Context()` time: epoch ms, ISO 8601, `-1h` ...) for the graph of a past instant.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

import netsonde.gremlin as gremlin
from netsonde.common.graph import element_to_json

if TYPE_CHECKING:
    from .service import QueryApiService

GROUP_TYPES = ("host", "container", "netns")
"""Node types drawn as groups (compound nodes) holding the nodes they own."""
MAX_GROUP_NODES = 5000
"""A group larger than this answers its first MAX_GROUP_NODES members by name and says `Truncated`."""
OPEN_HOSTS_MAX, OPEN_GROUPS_MAX = 20, 400
"""`summary?open=hosts` includes the hosts' members up to this many hosts and groups (else the page stays at
collapsed hosts)."""


@dataclass(frozen=True)
class Element:
    """The fields of a node or edge the aggregation reads, whether live or from the past graph."""

    ID: str
    Host: str
    Metadata: Mapping[str, Any]
    Parent: str = ""
    Child: str = ""


def _live(objs: Iterable[Any]) -> list[Element]:
    return [
        Element(o.ID, o.Host, o.Metadata, getattr(o, "Parent", ""), getattr(o, "Child", "")) for o in objs
    ]


def _from_json(objs: Iterable[dict[str, Any]]) -> list[Element]:
    return [
        Element(o["ID"], o.get("Host", ""), o.get("Metadata") or {}, o.get("Parent", ""), o.get("Child", ""))
        for o in objs
    ]


class Grouping:
    """Which group each node belongs to, computed once over a graph (O(nodes + edges))."""

    def __init__(self, nodes: list[Element], edges: list[Element]) -> None:
        self.nodes = {n.ID: n for n in nodes}
        self.edges = edges
        owner: dict[str, str] = {}
        for e in edges:
            if e.Metadata.get("RelationType") == "ownership" and e.Parent in self.nodes:
                owner[e.Child] = e.Parent
        host_node = {n.Host: n.ID for n in nodes if n.Metadata.get("Type") == "host"}
        self.group: dict[str, str] = {}
        for n in nodes:
            self.group[n.ID] = self._find_group(n, owner, host_node)

    def _find_group(self, n: Element, owner: dict[str, str], host_node: dict[str, str]) -> str:
        seen = {n.ID}
        cur = owner.get(n.ID)
        while cur is not None and cur not in seen:
            if self.nodes[cur].Metadata.get("Type") in GROUP_TYPES:
                return cur
            seen.add(cur)
            cur = owner.get(cur)
        return host_node.get(n.Host, "") if n.Metadata.get("Type") != "host" else ""

    def owns_inside(self, e: Element, member_set: set[str]) -> bool:
        """An ownership edge from a member group (a namespace of the host) to its own members: drawn as
        containment when that group is expanded, and fetched with it."""
        return (
            e.Metadata.get("RelationType") == "ownership"
            and e.Parent in member_set
            and e.Child not in member_set
            and self.group.get(e.Child) == e.Parent
        )

    def members(self, group_id: str) -> list[str]:
        return [nid for nid, g in self.group.items() if g == group_id]

    def summary(self) -> dict[str, Any]:
        """Every group with its member counts by Type, and the links between groups (non-ownership edges whose
        ends are in different groups), so collapsed groups can be drawn connected."""
        counts: dict[str, Counter[str]] = {}
        ungrouped = 0
        for nid, gid in self.group.items():
            if gid:
                counts.setdefault(gid, Counter())[str(self.nodes[nid].Metadata.get("Type", ""))] += 1
            elif self.nodes[nid].Metadata.get("Type") not in GROUP_TYPES:
                ungrouped += 1
        groups = []
        for n in self.nodes.values():
            if n.Metadata.get("Type") not in GROUP_TYPES:
                continue
            types = counts.get(n.ID, Counter())
            groups.append(
                {
                    "ID": n.ID,
                    "Name": n.Metadata.get("Name", ""),
                    "Type": n.Metadata.get("Type"),
                    "Host": n.Host,
                    "Group": self.group.get(n.ID, ""),
                    "Nodes": sum(types.values()),
                    "Types": dict(sorted(types.items())),
                }
            )
        links: Counter[tuple[str, str, str]] = Counter()
        for e in self.edges:
            rel = link_kind(e.Metadata)
            if rel == "ownership":
                continue
            a, b = self._outer(e.Parent), self._outer(e.Child)
            if a and b and a != b:
                links[(min(a, b), max(a, b), rel)] += 1
        return {
            "Nodes": len(self.nodes),
            "Edges": len(self.edges),
            "Ungrouped": ungrouped,
            "Groups": sorted(groups, key=lambda g: (g["Type"] != "host", str(g["Name"]))),
            "Links": [
                {"A": a, "B": b, "RelationType": r, "Count": c} for (a, b, r), c in sorted(links.items())
            ],
        }

    def _outer(self, node_id: str) -> str:
        """The group a node is drawn in when its group is collapsed: itself for a group node."""
        n = self.nodes.get(node_id)
        if n is None:
            return ""
        return n.ID if n.Metadata.get("Type") in GROUP_TYPES else self.group.get(node_id, "")


def link_kind(md: Mapping[str, Any]) -> str:
    """How a link is drawn: its RelationType, but `tunnel` for graph-builder's cross-host tunnel edges
    (`RelationType: layer2, Type: tunnel`, docs/demo.md)."""
    return "tunnel" if md.get("Type") == "tunnel" else str(md.get("RelationType", ""))


class TopologySummaryApi:
    """`GET /api/topology/summary` and `GET /api/topology/group/{id}`."""

    def __init__(self, svc: QueryApiService) -> None:
        self.svc = svc
        self._cached: tuple[tuple[str, int], Grouping] | None = None
        """The live graph's grouping at (epoch, seq): a page load asks for the summary, then for the groups it
        opens, usually at one graph sequence, so the grouping is computed once for them."""

    def register(self, app: web.Application) -> None:
        app.router.add_get("/api/topology/summary", self.summary)
        app.router.add_get("/api/topology/group/{id}", self.group)

    async def _grouping(self, request: web.Request) -> tuple[Grouping, dict[str, Any] | None]:
        """The grouping of the live graph, or of the past graph of `?at=` (then also that graph as JSON)."""
        at = request.query.get("at", "").strip()
        if not at:
            replica = self.svc.replica
            if replica is None:
                raise web.HTTPServiceUnavailable(text="the graph replica is not started yet")
            key = (replica.epoch, replica.seq)
            if self._cached is None or self._cached[0] != key:
                g = replica.graph
                self._cached = (key, Grouping(_live(list(g.nodes.values())), _live(list(g.edges.values()))))
            return self._cached[1], None
        instant = at if at.isdigit() else json.dumps(at)
        try:
            result = await self.svc.run_query(f"G.At({instant}).SubGraph()")
        except gremlin.GremlinError as exc:
            raise web.HTTPBadRequest(text=f"at={at!r}: {exc}") from None
        graph = result[0] if isinstance(result, list) and result else {"Nodes": [], "Edges": []}
        return Grouping(_from_json(graph["Nodes"]), _from_json(graph["Edges"])), graph

    async def summary(self, request: web.Request) -> web.Response:
        """With `?open=hosts`, also the members of every host group (`Open`: group ID -> the group's answer)
        while there are at most OPEN_HOSTS_MAX hosts and OPEN_GROUPS_MAX groups: the UI's first view in one
        request."""
        grouping, past = await self._grouping(request)
        body = grouping.summary()
        if request.query.get("open") == "hosts":
            hosts = [g["ID"] for g in body["Groups"] if g["Type"] == "host"]
            if len(hosts) <= OPEN_HOSTS_MAX and len(body["Groups"]) <= OPEN_GROUPS_MAX:
                body["Open"] = {h: self._members(grouping, past, h) for h in hosts}
        return web.json_response(body, dumps=lambda d: json.dumps(d, default=str))

    async def group(self, request: web.Request) -> web.Response:
        """The group's member nodes (nested groups come as their own node, collapsed), every edge touching a
        member, and the group of each node at the other end of those edges (`Groups`)."""
        gid = request.match_info["id"]
        grouping, past = await self._grouping(request)
        if gid not in grouping.nodes or grouping.nodes[gid].Metadata.get("Type") not in GROUP_TYPES:
            raise web.HTTPNotFound(text=f"Group '{gid}' does not exist (a host, container or netns node ID)")
        body = self._members(grouping, past, gid)
        return web.json_response(body, dumps=lambda d: json.dumps(d, default=str))

    def _members(self, grouping: Grouping, past: dict[str, Any] | None, gid: str) -> dict[str, Any]:
        members = sorted(grouping.members(gid), key=lambda i: str(grouping.nodes[i].Metadata.get("Name", "")))
        truncated = len(members) > MAX_GROUP_NODES
        member_set = set(members[:MAX_GROUP_NODES])
        edges = [
            e
            for e in grouping.edges
            if (e.Parent in member_set or e.Child in member_set) and not grouping.owns_inside(e, member_set)
        ]
        ends = {e.Parent for e in edges} | {e.Child for e in edges}
        edge_ids = {e.ID for e in edges}
        if past is not None:
            nodes_json = [n for n in past["Nodes"] if n["ID"] in member_set]
            edges_json = [e for e in past["Edges"] if e["ID"] in edge_ids]
        else:
            assert self.svc.replica is not None
            g = self.svc.replica.graph
            nodes_json = [element_to_json(g.nodes[i]) for i in member_set if i in g.nodes]
            edges_json = [element_to_json(g.edges[e.ID]) for e in edges if e.ID in g.edges]
        return {
            "Group": gid,
            "Nodes": nodes_json,
            "Edges": edges_json,
            "Total": len(members),
            "Truncated": truncated,
            "Groups": {i: grouping.group.get(i, "") for i in ends if i not in member_set},
        }
