"""Cross-host tunnel links: the two endpoints of a tunnel, each reported by its own host's probe, joined by
one edge so paths (ShortestPathTo, Hops) cross from one host to the other.

Derived, never guessed: two tunnel interfaces are linked when they are of the same tunnel family (VXLAN,
GRE, GENEVE ...), each one's RemoteIP is the other's LocalIP, they carry the same key (Linux `VNI`/`Key`, OVS
`options:key`; OVS `key=flow` matches any) and they live on different hosts. An endpoint without LocalIP (an
OVS port that lets the routing table pick the source) is not linked: its source address is not known here.

The edge is `RelationType: layer2, Type: tunnel` with the tunnel family and key, ID derived from the two node
IDs, owned by graph-builder (Origin `graph-builder.tunnels`). `TunnelLinks.sync()` runs after each probe
message and adds or removes edges as endpoints appear, change or go.
"""

from __future__ import annotations

from typing import Any

from netsonde.common import ids
from netsonde.common.bus.graph import GraphElement
from netsonde.common.bus.topology import ProbeEdge
from netsonde.common.graph import Graph

from .builder import GraphBuilder

ORIGIN = "graph-builder.tunnels"
FAMILIES: dict[str, str] = {
    "vxlan": "vxlan",
    "gre": "gre",
    "gretap": "gre",
    "erspan": "erspan",
    "ip6gre": "ip6gre",
    "ip6gretap": "ip6gre",
    "ip6erspan": "ip6erspan",
    "geneve": "geneve",
    "stt": "stt",
    "lisp": "lisp",
    "gtpu": "gtpu",
    "bareudp": "bareudp",
}
"""Node Type -> tunnel family (Linux `gretap` and OVS `gre` both carry Ethernet in GRE)."""
ANY_KEY = -1


def tunnel_key(md: dict[str, Any]) -> int | None:
    """The tunnel's key/VNI: Linux `VNI` or `Key`, OVS `Ovs.Options.key` (decimal or 0x hex; `flow`: ANY_KEY;
    absent: 0, OVS's default). None when the value cannot be read."""
    for name in ("VNI", "Key"):
        if isinstance(md.get(name), int):
            return int(md[name])
    options = (md.get("Ovs") or {}).get("Options") or {}
    raw = str(options.get("key", options.get("in_key", "0")))
    if raw == "flow":
        return ANY_KEY
    try:
        return int(raw, 0)
    except ValueError:
        return None


def _endpoint(node: GraphElement) -> tuple[str, str, str, int] | None:
    """(family, local IP, remote IP, key) of a tunnel interface node, or None if it is not a complete one."""
    md = node.Metadata
    family = FAMILIES.get(str(md.get("Type", "")))
    local, remote = md.get("LocalIP"), md.get("RemoteIP")
    key = tunnel_key(md)
    if family is None or not isinstance(local, str) or not isinstance(remote, str) or key is None:
        return None
    if remote in ("", "flow") or local in ("", "flow"):
        return None
    return family, local, remote, key


def tunnel_edges(graph: Graph) -> dict[str, ProbeEdge]:
    """Every tunnel edge the graph's endpoints call for, by edge ID."""
    by_route: dict[tuple[str, str, str], list[tuple[GraphElement, int]]] = {}
    for type_ in FAMILIES:
        for nid in graph.lookup("Type", type_):
            node = graph.nodes[nid]
            ep = _endpoint(node)
            if ep is not None:
                family, local, remote, key = ep
                by_route.setdefault((family, local, remote), []).append((node, key))
    out: dict[str, ProbeEdge] = {}
    for (family, local, remote), ends in by_route.items():
        if (local, remote) > (remote, local):
            continue  # each pair once, from its lower address side
        for a, key_a in ends:
            for b, key_b in by_route.get((family, remote, local), ()):
                if a.Host == b.Host or not (key_a == key_b or ANY_KEY in (key_a, key_b)):
                    continue
                parent, child = sorted((a.ID, b.ID))
                md: dict[str, Any] = {"RelationType": "layer2", "Type": "tunnel", "TunnelType": family}
                if max(key_a, key_b) >= 0:
                    md["Key"] = max(key_a, key_b)
                eid = ids.edge_id(parent, child, "tunnel")
                out[eid] = ProbeEdge(ID=eid, Parent=parent, Child=child, Metadata=md)
    return out


class TunnelLinks:
    """Keeps graph-builder's tunnel edges equal to `tunnel_edges(graph)`."""

    def __init__(self, builder: GraphBuilder) -> None:
        self.b = builder
        self._mine: set[str] | None = None
        """IDs of the tunnel edges made so far (found once by a scan: a restored graph holds some), so a probe
        message costs a lookup of these instead of a scan of every edge."""

    def current(self) -> dict[str, GraphElement]:
        graph = self.b.graph
        if self._mine is None:
            self._mine = {eid for eid, e in graph.edges.items() if e.Origin == ORIGIN}
        out = {}
        for eid in list(self._mine):
            e = graph.edges.get(eid)
            if e is None or e.Origin != ORIGIN:
                self._mine.discard(eid)
            else:
                out[eid] = e
        return out

    def sync(self) -> int:
        """Add, update or delete tunnel edges; returns how many changed (events are queued in the builder)."""
        want = tunnel_edges(self.b.graph)
        have = self.current()
        changed = 0
        for eid, old in have.items():
            if eid not in want:
                self.b._delete_edge(old.Host, None, eid)
                changed += 1
        for eid, edge in want.items():
            known = have.get(eid)
            if known is not None and (known.Metadata, known.Parent, known.Child) == (
                edge.Metadata,
                edge.Parent,
                edge.Child,
            ):
                continue
            host = self.b.graph.nodes[edge.Parent].Host
            self.b._upsert_edge(host, None, edge, origin=ORIGIN)
            if self._mine is not None:
                self._mine.add(eid)
            changed += 1
        return changed
