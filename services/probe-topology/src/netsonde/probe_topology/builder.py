"""From what the watchers hold (netlink per namespace, OVSDB) to the host's nodes and edges.

A pure function of its inputs: the service rebuilds the whole host state after each burst of changes and
publishes the difference, so the graph never depends on the order in which events arrived.
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


class _Builder:
    def __init__(self, host: str, hostname: str) -> None:
        self.host = host
        self.hostname = hostname
        self.md: dict[str, dict[str, Any]] = {}
        self.edges: dict[str, ProbeEdge] = {}
        self.owner: dict[str, str] = {}
        self.kind: dict[str, str] = {}

    def node(self, node_id: str, md: dict[str, Any]) -> None:
        md["Host"] = self.host
        self.md[node_id] = md

    def edge(self, parent: str, child: str, relation: str, type_: str | None = None) -> None:
        if type_ in ("veth", "patch") and child < parent:
            parent, child = child, parent  # one edge per symmetric pair, whatever side is seen first
        md: dict[str, Any] = {"RelationType": relation}
        if type_:
            md["Type"] = type_
        eid = ids.edge_id(parent, child, relation)
        self.edges[eid] = ProbeEdge(ID=eid, Parent=parent, Child=child, Metadata=md)
        if relation == OWNERSHIP:
            self.owner[child] = parent


def build(host: str, hostname: str, namespaces: Iterable[NsSource], ovs: OvsState | None,
          host_metadata: dict[str, Any] | None = None) -> HostState:
    """The host's full state: host node (with the configured metadata), netns nodes, interfaces (netlink
    merged with OVS, ethtool, routes, neighbours), OVS bridges/ports."""
    b = _Builder(host, hostname)
    host_id = ids.host_node_id(host)
    host_tid = ids.host_tid(host)
    b.node(host_id, {**(host_metadata or {}), "Name": host, "Type": "host", "Hostname": hostname,
                     "TID": host_tid})

    sources = list(namespaces)
    by_ns_index: dict[tuple[int, int], str] = {}
    ns_of: dict[int, NsSource] = {}
    root: NsSource | None = None
    for src in sources:
        ns_of[src.ns.inode] = src
        if src.ns.kind == "root":
            root = src
        for index in src.links:
            by_ns_index[(src.ns.inode, index)] = ids.interface_node_id(host, src.ns.inode, index)

    # namespaces and their interfaces
    for src in sources:
        ns = src.ns
        rt = getattr(src, "rt", None)
        tables = rt.routing_tables() if rt is not None else {}
        neighbors = rt.neighbors() if rt is not None else {}
        last_update: dict[int, dict[str, int]] = getattr(src, "last_update", {})
        if ns.kind == "root":
            owner_id = host_id
        else:
            owner_id = ids.netns_node_id(host, ns.path, ns.inode, ns.kind == "named")
            b.node(owner_id, {"Name": ns.name, "Type": "netns", "Path": ns.path, "Inode": ns.inode,
                              "Manager": "netns" if ns.kind == "named" else "process",
                              "TID": ids.netns_tid(host_tid, ns.path)})
            b.edge(host_id, owner_id, OWNERSHIP)
        for index, link in src.links.items():
            node_id = by_ns_index[(ns.inode, index)]
            md = {k: v for k, v in link.items() if k != "Kind"}
            b.kind[node_id] = link.get("Kind", "")
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
            b.node(node_id, md)
            b.edge(owner_id, node_id, OWNERSHIP)

    # links between interfaces: masters, parents, veth peers
    veth_any: dict[tuple[int, int], list[tuple[NsSource, int]]] = {}
    for src in sources:
        for index, link in src.links.items():
            if link.get("Type") == "veth" and "PeerIfIndex" in link:
                veth_any.setdefault((index, link["PeerIfIndex"]), []).append((src, index))
    for src in sources:
        ns = src.ns
        for index, link in src.links.items():
            node_id = by_ns_index[(ns.inode, index)]
            master = link.get("MasterIndex")
            if master is not None and master in src.links:
                master_id = by_ns_index[(ns.inode, master)]
                if src.links[master].get("Type") != "openvswitch":
                    b.edge(master_id, node_id, LAYER2)
            # the namespace IFLA_LINK_NETNSID designates, when the kernel told us (RTM_GETNSID)
            other: NsSource | None = None
            if "LinkNetNsID" in link:
                inode = getattr(src, "nsids", {}).get(link["LinkNetNsID"])
                other = ns_of.get(inode) if inode is not None else None
            parent = link.get("ParentIndex")
            ptype = PARENT_LINK_TYPES.get(link.get("Kind", ""))
            if parent is not None and ptype is not None:
                pns = src if "LinkNetNsID" not in link else (other or root)
                if pns is not None and parent in pns.links:
                    b.edge(by_ns_index[(pns.ns.inode, parent)], node_id, LAYER2, ptype)
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
                    for csrc, _cidx in veth_any.get((peer, index), ()):
                        cand_nsid = csrc.links[peer].get("LinkNetNsID")
                        if csrc is src or cand_nsid is None:
                            continue
                        resolved = getattr(csrc, "nsids", {}).get(cand_nsid)
                        if resolved is not None and resolved != ns.inode:
                            continue  # that veth's peer is known to live elsewhere
                        peer_src = csrc
                        break
                if peer_src is not None:
                    peer_id = by_ns_index[(peer_src.ns.inode, peer)]
                    b.edge(node_id, peer_id, LAYER2, "veth")
                    if peer_src is not src:  # both ends name the other's namespace (not the root one)
                        if peer_src.ns.kind != "root":
                            b.md[node_id]["LinkNetNsName"] = peer_src.ns.name
                        if ns.kind != "root":
                            b.md[peer_id]["LinkNetNsName"] = ns.name

    if ovs is not None:
        _add_ovs(b, host_id, host_tid, ovs, sources, root, by_ns_index)

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
    return state


def _add_ovs(b: _Builder, host_id: str, host_tid: str, ovs: OvsState, sources: list[NsSource],
             root: NsSource | None, by_ns_index: dict[tuple[int, int], str]) -> None:
    by_name: dict[str, list[str]] = {}
    if root is not None:
        for index, link in root.links.items():
            by_name.setdefault(link["Name"], []).insert(0, by_ns_index[(root.ns.inode, index)])
    for src in sources:
        if src is root:
            continue
        for index, link in src.links.items():
            by_name.setdefault(link["Name"], []).append(by_ns_index[(src.ns.inode, index)])

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
