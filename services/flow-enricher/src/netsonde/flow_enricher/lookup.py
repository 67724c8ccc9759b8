"""Endpoint lookup: which graph node owns a MAC, an IP, a TID.

Kept current by two hooks, `on_node(node)` (added or updated) and `on_delete(node_id)`, fed from a graph
replica (or from graph events, or from a `Graph` with `load(graph)`). A key owned by several nodes (the
same private IP in two namespaces, 127.0.0.1 on every host) resolves to the node on the capture's host
when there is one, else to the smallest node ID, so the answer is deterministic.
"""

from __future__ import annotations

from typing import Any, Iterable, Sequence

from netsonde.common.bus.flows import Flow
from netsonde.common.bus.graph import GraphElement
from netsonde.common.graph import Graph

_IGNORED_MACS = frozenset({"", "ff:ff:ff:ff:ff:ff", "00:00:00:00:00:00"})

# A key maps to the one node ID owning it (str), or to {node ID: host} when several nodes own it.
_Owners = dict[str, "str | dict[str, str]"]


def _add(index: _Owners, key: str, node_id: str, host: str, hosts: dict[str, str]) -> None:
    cur = index.get(key)
    if cur is None:
        index[key] = node_id
    elif isinstance(cur, str):
        if cur != node_id:
            index[key] = {cur: hosts.get(cur, ""), node_id: host}
    else:
        cur[node_id] = host


def _remove(index: _Owners, key: str, node_id: str) -> None:
    cur = index.get(key)
    if cur is None:
        return
    if isinstance(cur, str):
        if cur == node_id:
            del index[key]
        return
    cur.pop(node_id, None)
    if len(cur) == 1:
        index[key] = next(iter(cur))


def _pick(index: _Owners, key: Any, host: str) -> str:
    cur = index.get(key)
    if cur is None:
        return ""
    if isinstance(cur, str):
        return cur
    same = sorted(nid for nid, h in cur.items() if h == host)
    return same[0] if same else min(cur)


def _ips(value: Any) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        return []
    return [v.split("/", 1)[0] for v in value if isinstance(v, str) and v]


class EndpointLookup:
    """MAC -> node, IP -> node, TID -> node, node -> host; and `enrich(flows)` using them."""

    def __init__(self) -> None:
        self.by_tid: _Owners = {}
        self.by_mac: _Owners = {}
        self.by_ip: _Owners = {}
        self.host_of: dict[str, str] = {}
        """node ID -> Host of every known node."""
        self._keys: dict[str, tuple[str, tuple[str, ...], tuple[str, ...]]] = {}
        """node ID -> (TID, MACs, IPs) as indexed, to undo them on update or delete."""

    def __len__(self) -> int:
        return len(self.host_of)

    # --- hooks ---------------------------------------------------------------------------------------
    def on_node(self, node: GraphElement) -> None:
        """A node was added or updated: (re)index its TID, MAC and IPV4/IPV6 addresses."""
        if node.ID in self._keys:
            self.on_delete(node.ID)
        md = node.Metadata
        tid = md.get("TID") if isinstance(md.get("TID"), str) else ""
        mac = md.get("MAC")
        macs = (mac.lower(),) if isinstance(mac, str) and mac.lower() not in _IGNORED_MACS else ()
        ips = tuple(_ips(md.get("IPV4")) + _ips(md.get("IPV6")))
        host = node.Host
        self.host_of[node.ID] = host
        self._keys[node.ID] = (tid or "", macs, ips)
        if tid:
            _add(self.by_tid, tid, node.ID, host, self.host_of)
        for m in macs:
            _add(self.by_mac, m, node.ID, host, self.host_of)
        for ip in ips:
            _add(self.by_ip, ip, node.ID, host, self.host_of)

    def on_delete(self, node_id: str) -> None:
        """A node was deleted: forget every key it owned."""
        keys = self._keys.pop(node_id, None)
        self.host_of.pop(node_id, None)
        if keys is None:
            return
        tid, macs, ips = keys
        if tid:
            _remove(self.by_tid, tid, node_id)
        for m in macs:
            _remove(self.by_mac, m, node_id)
        for ip in ips:
            _remove(self.by_ip, ip, node_id)

    def on_event(self, event_type: str, obj: GraphElement) -> None:
        """Apply one graph event (edges are ignored: endpoints are resolved from node metadata)."""
        if event_type in ("NodeAdded", "NodeUpdated"):
            self.on_node(obj)
        elif event_type == "NodeDeleted":
            self.on_delete(obj.ID)

    def load(self, graph: Graph) -> None:
        """Replace the whole lookup with the nodes of `graph` (after a snapshot)."""
        self.clear()
        for node in graph.nodes.values():
            self.on_node(node)

    def load_nodes(self, nodes: Iterable[GraphElement]) -> None:
        self.clear()
        for node in nodes:
            self.on_node(node)

    def clear(self) -> None:
        self.by_tid.clear()
        self.by_mac.clear()
        self.by_ip.clear()
        self.host_of.clear()
        self._keys.clear()

    # --- reads ---------------------------------------------------------------------------------------
    def node_for_tid(self, tid: str, host: str = "") -> str:
        return _pick(self.by_tid, tid, host)

    def node_for_mac(self, mac: str, host: str = "") -> str:
        return _pick(self.by_mac, mac.lower() if isinstance(mac, str) else mac, host)

    def node_for_ip(self, ip: str, host: str = "") -> str:
        return _pick(self.by_ip, ip, host)

    def enrich(self, flows: Sequence[Flow], default_host: str = "") -> int:
        """Set NodeID (capture node, from NodeTID), ANodeID/BNodeID (owner of Link.A/B, else of
        Network.A/B) and Host (the capture node's host, else `default_host`) on each flow, in place.
        Returns how many flows got a capture node."""
        by_tid, by_mac, by_ip, host_of = self.by_tid, self.by_mac, self.by_ip, self.host_of
        found = 0
        for f in flows:
            nid = by_tid.get(f.NodeTID, "")
            if not isinstance(nid, str):
                nid = _pick(by_tid, f.NodeTID, default_host)
            host = host_of.get(nid, default_host) if nid else default_host
            if nid:
                found += 1
            a = b = ""
            link = f.Link
            if link is not None:
                a = by_mac.get(link.A, "")
                b = by_mac.get(link.B, "")
                if not isinstance(a, str):
                    a = _pick(by_mac, link.A, host)
                if not isinstance(b, str):
                    b = _pick(by_mac, link.B, host)
            if not (a and b):
                net = f.Network
                if net is not None:
                    if not a:
                        a = by_ip.get(net.A, "")
                        if not isinstance(a, str):
                            a = _pick(by_ip, net.A, host)
                    if not b:
                        b = by_ip.get(net.B, "")
                        if not isinstance(b, str):
                            b = _pick(by_ip, net.B, host)
            f.NodeID = nid
            f.ANodeID = a
            f.BNodeID = b
            f.Host = host
        return found
