"""Deterministic identities: node and edge IDs (stable across probe restarts) and Skydive's TID.

The one home of node identity: probe-topology builds the graph with these, and every component that names a
node without reading the graph (the sFlow collector's OVS bridges, ports and capture statuses) derives the
same IDs and TIDs from here.

IDs are UUIDv5 in the OID namespace over "/"-joined parts, like Skydive's deterministic `GenID(args...)`:
  host          "<host>/host"
  netns         "<host>/netns/<path>/<inode>" (named) or "<host>/netns/inode/<inode>" (held by processes)
  interface     "<host>/interface/<netns inode>/<ifindex>"
  OVS row       "<host>/ovs/<row UUID>" (bridges, ports, interfaces without a Linux device)
  container     "<host>/container/<engine's container ID>"
  edge          "<parent ID>/<child ID>/<RelationType>"
TIDs follow Skydive `topology/tid.go`: uuid5(OID, concatenation) with no separator.
"""

from __future__ import annotations

import uuid
from functools import lru_cache

_OID = uuid.NAMESPACE_OID


def _v5(*parts: object) -> str:
    return _uuid5("/".join(str(p) for p in parts))


@lru_cache(maxsize=1 << 17)
def _uuid5(name: str) -> str:
    """Memoised: the builder asks for the same IDs after every change."""
    return str(uuid.uuid5(_OID, name))


def host_node_id(host: str) -> str:
    return _v5(host, "host")


def netns_node_id(host: str, path: str, inode: int, named: bool) -> str:
    return _v5(host, "netns", path, inode) if named else _v5(host, "netns", "inode", inode)


def interface_node_id(host: str, ns_inode: int, ifindex: int) -> str:
    return _v5(host, "interface", ns_inode, ifindex)


def ovs_node_id(host: str, row_uuid: str) -> str:
    return _v5(host, "ovs", row_uuid)


def container_node_id(host: str, container_id: str) -> str:
    return _v5(host, "container", container_id)


def edge_id(parent: str, child: str, relation: str) -> str:
    return _v5(parent, child, relation)


def tid(*parts: str) -> str:
    """Skydive TID: uuid5(OID, the parts concatenated without separator)."""
    return _uuid5("".join(parts))


def host_tid(host: str) -> str:
    return tid(host)


def netns_tid(host_tid_: str, path: str) -> str:
    return tid(host_tid_, path, "netns")


def ovs_tid(host_tid_: str, row_uuid: str, type_: str) -> str:
    return tid(host_tid_, row_uuid, type_)


def child_tid(parent_tid: str, name: str, type_: str) -> str:
    return tid(parent_tid, name, type_)
