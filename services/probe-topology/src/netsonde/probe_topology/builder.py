"""From what the watchers hold (netlink per namespace, OVSDB) to the host's nodes and edges.

A pure function of its inputs, so the graph never depends on the order in which events arrived. The full
build runs at start, on resyncs and when namespaces or OVS change; after other changes `incremental.py`
redoes only the changed interfaces with the same pieces (`interface_md`, `link_relations`), and its tests
compare the two on real kernel changes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Protocol

from netsonde.common import ids
from netsonde.common.bus.topology import ProbeEdge, ProbeNode

from .netns import NetNs
from .ovsdb import OvsState

OWNERSHIP, LAYER2 = "ownership", "layer2"
TUNNEL_TYPES = frozenset({"gre", "vxlan", "geneve", "stt", "lisp", "erspan", "ip6erspan", "ip6gre", "gtpu", "bareudp"})
PARENT_LINK_TYPES = {"vlan": "vlan", "macvlan": "macvlan", "macvtap": "macvtap", "ipvlan": "ipvlan",
                     "ipvtap": "ipvtap"}
"""Link kinds whose ParentIndex gives a layer2 edge parent->child, and that edge's metadata Type."""


class NsSource(Protocol):
    """What the builder reads from one namespace watcher (`nswatch.NsWatcher` provides it)."""

    ns: NetNs
    links: dict[int, dict[str, Any]]
    addrs: dict[int, set[tuple[str, str]]]
    metrics: dict[int, dict[str, int]]
    metric_ts: dict[int, int]
    first_seen: dict[int, int]
    drv: dict[int, tuple[str, dict[str, Any]]]
    nsids: dict[int, int]


@dataclass
class HostState:
    nodes: dict[str, ProbeNode] = field(default_factory=dict)
    edges: dict[str, ProbeEdge] = field(default_factory=dict)


def make_edge(parent: str, child: str, relation: str, type_: str | None = None) -> ProbeEdge:
    """One edge; a symmetric pair (veth, patch) gets one ID whatever side is seen first."""
    if type_ in ("veth", "patch") and child < parent:
        parent, child = child, parent
    md: dict[str, Any] = {"RelationType": relation}
    if type_:
        md["Type"] = type_
    eid = ids.edge_id(parent, child, relation)
    return ProbeEdge(ID=eid, Parent=parent, Child=child, Metadata=md)


class _Builder:
    def __init__(self, host: str, hostname: str) -> None:
        self.host = host
        self.hostname = hostname
        self.md: dict[str, dict[str, Any]] = {}
        self.edges: dict[str, ProbeEdge] = {}
        self.owner: dict[str, str] = {}
        self.created: dict[str, set[str]] = {}
        """Interface node -> the edges its own visit made (what an incremental update redoes for it)."""

    def node(self, node_id: str, md: dict[str, Any]) -> None:
        md["Host"] = self.host
        self.md[node_id] = md

    def edge(self, parent: str, child: str, relation: str, type_: str | None = None, creator: str = "") -> None:
        e = make_edge(parent, child, relation, type_)
        self.edges[e.ID] = e
        if relation == OWNERSHIP:
            self.owner[e.Child] = e.Parent
        if creator:
            self.created.setdefault(creator, set()).add(e.ID)


def interface_md(src: NsSource, index: int, link: dict[str, Any], tables: dict[int, Any],
                 neighbors: dict[int, Any], last_update: dict[int, dict[str, int]]) -> dict[str, Any]:
    """An interface's metadata from its own namespace's data (netlink, ethtool, addresses, counters, routes,
    neighbours); veth peers' namespace names, OVS data, Host and TID are added by the caller."""
    ns = src.ns
    md = {k: v for k, v in link.items() if k != "Kind"}
    drv = src.drv.get(index)
    if drv is not None:
        md.update(drv[1])
        if drv[1].get("Driver") == "veth":
            md["Type"] = "veth"
    addrs = src.addrs.get(index)
    if addrs:
        v4 = sorted(a for f, a in addrs if f == "IPV4")
        v6 = sorted(a for f, a in addrs if f == "IPV6")
        if v4:
            md["IPV4"] = v4
        if v6:
            md["IPV6"] = v6
    stats = src.metrics.get(index)
    if stats is not None:
        metric = dict(stats)
        metric["Start"] = src.first_seen.get(index, 0)
        metric["Last"] = src.metric_ts.get(index, 0)
        md["Metric"] = metric
    lum = last_update.get(index)
    if lum is not None:
        md["LastUpdateMetric"] = lum
    if index in tables:
        md["RoutingTables"] = tables[index]
    if index in neighbors:
        md["Neighbors"] = neighbors[index]
    if ns.kind != "root":
        md["NetNsPath"] = ns.path
        md["NetNsName"] = ns.name
    return md


def ns_tables(src: NsSource) -> tuple[dict[int, Any], dict[int, Any], dict[int, dict[str, int]]]:
    """Routing tables, neighbours and LastUpdateMetric of one namespace, by ifindex."""
    rt = getattr(src, "rt", None)
    tables = rt.routing_tables() if rt is not None else {}
    neighbors = rt.neighbors() if rt is not None else {}
    return tables, neighbors, getattr(src, "last_update", {})


class LinkContext:
    """What resolving one interface's relations needs to know about all namespaces."""

    def __init__(self, host: str, sources: list[NsSource]) -> None:
        self.host = host
        self.sources = sources
        self.ns_of = {src.ns.inode: src for src in sources}
        self.root = next((src for src in sources if src.ns.kind == "root"), None)
        self._veth_any: dict[tuple[int, int], list[tuple[NsSource, int]]] | None = None

    def iface_id(self, inode: int, index: int) -> str:
        return ids.interface_node_id(self.host, inode, index)

    def veth_any(self) -> dict[tuple[int, int], list[tuple[NsSource, int]]]:
        """(ifindex, peer ifindex) -> the veths anywhere with these (built on first need)."""
        if self._veth_any is None:
            self._veth_any = {}
            for src in self.sources:
                for index, link in src.links.items():
                    if link.get("Type") == "veth" and "PeerIfIndex" in link:
                        self._veth_any.setdefault((index, link["PeerIfIndex"]), []).append((src, index))
        return self._veth_any


Relation = tuple[str, str, str, "str | None"]
"""(parent, child, RelationType, Type) of an edge between interfaces."""


def link_relations(ctx: LinkContext, src: NsSource, index: int,
                   link: dict[str, Any]) -> tuple[list[Relation], list[tuple[str, str]]]:
    """The edges one interface makes (to its master, its parent, its veth peer) and the `LinkNetNsName`
    values (node, namespace name) a veth between namespaces gives both ends."""
    ns = src.ns
    node_id = ctx.iface_id(ns.inode, index)
    rels: list[Relation] = []
    names: list[tuple[str, str]] = []
    master = link.get("MasterIndex")
    if master is not None and master in src.links:
        if src.links[master].get("Type") != "openvswitch":
            rels.append((ctx.iface_id(ns.inode, master), node_id, LAYER2, None))
    # the namespace IFLA_LINK_NETNSID designates, when the kernel told us (RTM_GETNSID)
    other: NsSource | None = None
    if "LinkNetNsID" in link:
        inode = getattr(src, "nsids", {}).get(link["LinkNetNsID"])
        other = ctx.ns_of.get(inode) if inode is not None else None
    parent = link.get("ParentIndex")
    ptype = PARENT_LINK_TYPES.get(link.get("Kind", ""))
    if parent is not None and ptype is not None:
        pns = src if "LinkNetNsID" not in link else (other or ctx.root)
        if pns is not None and parent in pns.links:
            rels.append((ctx.iface_id(pns.ns.inode, parent), node_id, LAYER2, ptype))
    peer = link.get("PeerIfIndex")
    if link.get("Type") == "veth" and peer is not None:
        peer_src: NsSource | None = None
        if "LinkNetNsID" not in link:
            cand = src.links.get(peer)
            if cand is not None and cand.get("PeerIfIndex") == index and "LinkNetNsID" not in cand:
                peer_src = src
        elif other is not None:
            if peer in other.links:
                peer_src = other
        else:  # nsid not resolved (yet): the veth elsewhere whose peer index points back
            for csrc, _cidx in ctx.veth_any().get((peer, index), ()):
                cand_nsid = csrc.links[peer].get("LinkNetNsID")
                if csrc is src or cand_nsid is None:
                    continue
                resolved = getattr(csrc, "nsids", {}).get(cand_nsid)
                if resolved is not None and resolved != ns.inode:
                    continue  # that veth's peer is known to live elsewhere
                peer_src = csrc
                break
        if peer_src is not None:
            peer_id = ctx.iface_id(peer_src.ns.inode, peer)
            rels.append((node_id, peer_id, LAYER2, "veth"))
            if peer_src is not src:  # both ends name the other's namespace (not the root one)
                if peer_src.ns.kind != "root":
                    names.append((node_id, peer_src.ns.name))
                if ns.kind != "root":
                    names.append((peer_id, ns.name))
    return rels, names


def build(host: str, hostname: str, namespaces: Iterable[NsSource], ovs: OvsState | None,
          host_metadata: dict[str, Any] | None = None) -> HostState:
    """The host's full state: host node (with the configured metadata), netns nodes, interfaces (netlink
    merged with OVS, ethtool, routes, neighbours), OVS bridges/ports."""
    return build_tracked(host, hostname, namespaces, ovs, host_metadata)[0]


def build_tracked(host: str, hostname: str, namespaces: Iterable[NsSource], ovs: OvsState | None,
                  host_metadata: dict[str, Any] | None = None) -> tuple[HostState, _Builder]:
    """`build`, also returning the builder (which edges each interface made: `incremental.py` needs it)."""
    b = _Builder(host, hostname)
    host_id = ids.host_node_id(host)
    host_tid = ids.host_tid(host)
    b.node(host_id, {**(host_metadata or {}), "Name": host, "Type": "host", "Hostname": hostname,
                     "TID": host_tid})

    sources = list(namespaces)
    ctx = LinkContext(host, sources)

    # namespaces and their interfaces
    for src in sources:
        ns = src.ns
        tables, neighbors, last_update = ns_tables(src)
        if ns.kind == "root":
            owner_id = host_id
        else:
            owner_id = ids.netns_node_id(host, ns.path, ns.inode, ns.kind == "named")
            b.node(owner_id, {"Name": ns.name, "Type": "netns", "Path": ns.path, "Inode": ns.inode,
                              "Manager": "netns" if ns.kind == "named" else "process",
                              "TID": ids.netns_tid(host_tid, ns.path)})
            b.edge(host_id, owner_id, OWNERSHIP)
        for index, link in src.links.items():
            node_id = ctx.iface_id(ns.inode, index)
            b.node(node_id, interface_md(src, index, link, tables, neighbors, last_update))
            b.edge(owner_id, node_id, OWNERSHIP, creator=node_id)

    # links between interfaces: masters, parents, veth peers
    for src in sources:
        for index, link in src.links.items():
            node_id = ctx.iface_id(src.ns.inode, index)
            rels, names = link_relations(ctx, src, index, link)
            for parent, child, relation, type_ in rels:
                b.edge(parent, child, relation, type_, creator=node_id)
            for target, name in names:
                b.md[target]["LinkNetNsName"] = name

    if ovs is not None:
        _add_ovs(b, host_id, host_tid, ovs, sources, ctx.root)

    # TIDs: along ownership, as Skydive computes them
    tids: dict[str, str] = {host_id: host_tid}

    def tid_of(node_id: str) -> str:
        known = tids.get(node_id)
        if known is not None:
            return known
        md = b.md[node_id]
        if "TID" in md:
            value = md["TID"]
        else:
            parent = b.owner.get(node_id, host_id)
            value = ids.child_tid(tid_of(parent) if parent != node_id else host_tid, str(md.get("Name", "")),
                                  str(md.get("Type", "")))
        tids[node_id] = value
        return value

    for node_id, md in b.md.items():
        md["TID"] = tid_of(node_id)
    state = HostState()
    state.nodes = {nid: ProbeNode(ID=nid, Metadata=md) for nid, md in b.md.items()}
    state.edges = b.edges
    return state, b


def _add_ovs(b: _Builder, host_id: str, host_tid: str, ovs: OvsState, sources: list[NsSource],
             root: NsSource | None) -> None:
    by_name: dict[str, list[str]] = {}
    if root is not None:
        for index, link in root.links.items():
            by_name.setdefault(link["Name"], []).insert(0, ids.interface_node_id(b.host, root.ns.inode, index))
    for src in sources:
        if src is root:
            continue
        for index, link in src.links.items():
            by_name.setdefault(link["Name"], []).append(ids.interface_node_id(b.host, src.ns.inode, index))

    intf_node: dict[str, str] = {}
    intf_owner_bridge: dict[str, str] = {}
    for br in ovs.bridges.values():
        for port_uuid in br.ports:
            port = ovs.ports.get(port_uuid)
            if port is None:
                continue
            for iu in port.interfaces:
                intf_owner_bridge[iu] = br.uuid

    for iface in ovs.interfaces.values():
        candidates = by_name.get(iface.name, [])
        if candidates:
            node_id = candidates[0]
            md = b.md[node_id]
            if iface.type not in ("", "system"):
                md["Type"] = iface.type
            if iface.type == "internal":
                md["Driver"] = "openvswitch"
        else:
            node_id = ids.ovs_node_id(b.host, iface.uuid)
            md = {"Name": iface.name, "Type": iface.type or "device"}
            if iface.mac_in_use:
                md["MAC"] = iface.mac_in_use
            b.node(node_id, md)
            bridge = intf_owner_bridge.get(iface.uuid)
            if bridge is not None and iface.type in TUNNEL_TYPES | {"patch"}:
                b.edge(ids.ovs_node_id(b.host, bridge), node_id, OWNERSHIP)
            else:
                b.edge(host_id, node_id, OWNERSHIP)
        md["UUID"] = iface.uuid
        if iface.ofport is not None and iface.ofport >= 0:
            md["OfPort"] = iface.ofport
        if iface.external_ids:
            md["ExtID"] = dict(iface.external_ids)
        if iface.type in TUNNEL_TYPES:
            if "remote_ip" in iface.options:
                md["RemoteIP"] = iface.options["remote_ip"]
            if "local_ip" in iface.options:
                md["LocalIP"] = iface.options["local_ip"]
        if iface.type == "patch" and "peer" in iface.options:
            md["PeerName"] = iface.options["peer"]
        ovs_md: dict[str, Any] = {}
        if iface.options:
            ovs_md["Options"] = dict(iface.options)
        if iface.error:
            ovs_md["Error"] = iface.error
        if ovs_md:
            md["Ovs"] = ovs_md
        intf_node[iface.uuid] = node_id

    for br in ovs.bridges.values():
        br_id = ids.ovs_node_id(b.host, br.uuid)
        md = {"Name": br.name, "Type": "ovsbridge", "UUID": br.uuid,
              "TID": ids.ovs_tid(host_tid, br.uuid, "ovsbridge")}
        if br.external_ids:
            md["ExtID"] = dict(br.external_ids)
        ovs_md = {k: v for k, v in (("DatapathType", br.datapath_type), ("Version", ovs.version),
                                    ("DBVersion", ovs.db_version)) if v}
        if ovs_md:
            md["Ovs"] = ovs_md
        b.node(br_id, md)
        b.edge(host_id, br_id, OWNERSHIP)
        for port_uuid in br.ports:
            port = ovs.ports.get(port_uuid)
            if port is None:
                continue
            port_id = ids.ovs_node_id(b.host, port.uuid)
            pmd: dict[str, Any] = {"Name": port.name, "Type": "ovsport", "UUID": port.uuid,
                                   "TID": ids.ovs_tid(host_tid, port.uuid, "ovsport")}
            if port.external_ids:
                pmd["ExtID"] = dict(port.external_ids)
            if port.tag is not None:
                pmd["Vlans"] = [port.tag]
            elif port.trunks:
                pmd["Vlans"] = list(port.trunks)
            if port.bond_mode:
                pmd["BondMode"] = port.bond_mode
            if port.lacp:
                pmd["LACP"] = port.lacp
            b.node(port_id, pmd)
            b.edge(br_id, port_id, OWNERSHIP)
            b.edge(br_id, port_id, LAYER2)
            for iu in port.interfaces:
                node_id = intf_node.get(iu)
                if node_id is not None:
                    b.edge(port_id, node_id, LAYER2)

    by_ovs_name = {i.name: intf_node[i.uuid] for i in ovs.interfaces.values()}
    for iface in ovs.interfaces.values():
        if iface.type == "patch":
            peer = by_ovs_name.get(iface.options.get("peer", ""))
            if peer is not None:
                b.edge(intf_node[iface.uuid], peer, LAYER2, "patch")
