"""Routes and neighbours of one namespace: netlink parsing and the per-interface views Skydive publishes.

`RoutingTables` (Skydive `topology/routes.go`): on each interface, the routes whose output interface (or one of
whose multipath next hops) is that interface, grouped by table: `[{ID, Src, Routes: [{Protocol, Prefix,
NextHops: [{Priority, IP, IfIndex}]}]}]`, every table (main, local, and any other), IPv4 and IPv6. Routes of
the same table, protocol and prefix are one route with several next hops, as in Skydive.

`Neighbors` (Skydive `topology/neighbors.go`): the ARP and NDP entries of the interface: `[{IP, MAC, State,
Flags, IfIndex}]`, State and Flags as lists of the kernel's NUD_* / NTF_* names.

Pure parsing with `struct` like `netlink.py`; `RouteState` holds what the dumps and events said.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
from dataclasses import dataclass
from typing import Any

from .netlink import _ip, _mac, _u, attrs

RTM_NEWROUTE, RTM_DELROUTE, RTM_GETROUTE = 24, 25, 26
RTM_NEWNEIGH, RTM_DELNEIGH, RTM_GETNEIGH = 28, 29, 30
RTA_DST, RTA_OIF, RTA_GATEWAY, RTA_PRIORITY, RTA_PREFSRC, RTA_MULTIPATH, RTA_TABLE = 1, 4, 5, 6, 7, 9, 15
RTM_F_CLONED = 0x200
NDA_DST, NDA_LLADDR = 1, 2
AF_INET, AF_INET6, AF_BRIDGE = 2, 10, 7

NUD_STATES: tuple[tuple[int, str], ...] = (
    (0x01, "NUD_INCOMPLETE"), (0x02, "NUD_REACHABLE"), (0x04, "NUD_STALE"), (0x08, "NUD_DELAY"),
    (0x10, "NUD_PROBE"), (0x20, "NUD_FAILED"), (0x40, "NUD_NOARP"), (0x80, "NUD_PERMANENT"),
)
"""Neighbour states (linux/neighbour.h) in Skydive's spelling; state 0 is NUD_NONE."""
NTF_FLAGS: tuple[tuple[int, str], ...] = (
    (0x01, "NTF_USE"), (0x02, "NTF_SELF"), (0x04, "NTF_MASTER"), (0x08, "NTF_PROXY"),
    (0x10, "NTF_EXT_LEARNED"), (0x20, "NTF_OFFLOADED"), (0x40, "NTF_STICKY"), (0x80, "NTF_ROUTER"),
)

_RTM = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags
_ND = struct.Struct("=BxxxiHBB")  # ndmsg: family, ifindex, state, flags, type
_RTNH = struct.Struct("=HBBi")  # rtnexthop: len, flags, hops, ifindex

RouteKey = tuple[Any, ...]
NeighKey = tuple[int, int, str]


@dataclass(frozen=True)
class Route:
    """One kernel route (one table entry) with its next hops `(gateway or "", ifindex)`."""

    table: int
    prefix: str
    protocol: int
    priority: int
    src: str
    hops: tuple[tuple[str, int], ...]


def parse_route_at(buf: Any, off: int, end: int) -> tuple[RouteKey, Route] | None:
    """(identity, route) of an RTM_NEWROUTE/RTM_DELROUTE payload; None for cache clones and other families.

    The identity is what the kernel keys a route on: family, table, prefix, tos and priority; IPv6 keeps
    each next hop of an ECMP route as its own entry (its events name one next hop), so the hop is part of it.
    """
    family, dst_len, _src_len, tos, table8, protocol, _scope, rtype, flags = _RTM.unpack_from(buf, off)
    if family not in (AF_INET, AF_INET6) or flags & RTM_F_CLONED:
        return None
    a = attrs(buf, off + _RTM.size, end)
    table = _u(buf, a.get(RTA_TABLE), "I") or table8
    dst = _raw_ip(buf, a.get(RTA_DST), family)
    prefix = f"{dst}/{dst_len}"
    priority = _u(buf, a.get(RTA_PRIORITY), "I") or 0
    src = _ip(buf, a.get(RTA_PREFSRC)) or ""
    hops: list[tuple[str, int]] = []
    mp = a.get(RTA_MULTIPATH)
    if mp is not None:
        pos, mend = mp
        while pos + _RTNH.size <= mend:
            length, _f, _h, ifindex = _RTNH.unpack_from(buf, pos)
            if length < _RTNH.size or pos + length > mend:
                break
            gw = _ip(buf, attrs(buf, pos + _RTNH.size, pos + length).get(RTA_GATEWAY)) or ""
            hops.append((gw, ifindex))
            pos += (length + 3) & ~3
    else:
        oif = _u(buf, a.get(RTA_OIF), "I") or 0
        hops.append((_ip(buf, a.get(RTA_GATEWAY)) or "", oif))
    key: RouteKey = (family, table, prefix, tos, priority, rtype)
    if family == AF_INET6 and mp is None:
        key += hops[0]
    return key, Route(table, prefix, protocol, priority, src, tuple(hops))


def _raw_ip(buf: Any, span: tuple[int, int] | None, family: int) -> str:
    """The destination address; the unspecified address when absent (a default route)."""
    if span is not None:
        raw = bytes(buf[span[0]:span[1]])
        if len(raw) in (4, 16):
            return socket.inet_ntop(socket.AF_INET if len(raw) == 4 else socket.AF_INET6, raw)
    return "0.0.0.0" if family == AF_INET else "::"


def parse_neigh_at(buf: Any, off: int, end: int) -> tuple[NeighKey, dict[str, Any]] | None:
    """(identity, Skydive Neighbor) of an RTM_NEWNEIGH/RTM_DELNEIGH payload (ARP/NDP only; FDB is skipped)."""
    family, ifindex, state, flags, _type = _ND.unpack_from(buf, off)
    if family not in (AF_INET, AF_INET6):
        return None
    a = attrs(buf, off + _ND.size, end)
    span = a.get(NDA_DST)
    if span is None:
        return None
    ip = _raw_ip(buf, span, family)
    nb: dict[str, Any] = {"IP": ip, "IfIndex": ifindex,
                          "State": [n for bit, n in NUD_STATES if state & bit] or ["NUD_NONE"]}
    mac = _mac(buf, a.get(NDA_LLADDR))
    if mac:
        nb["MAC"] = mac
    names = [n for bit, n in NTF_FLAGS if flags & bit]
    if names:
        nb["Flags"] = names
    return (ifindex, family, ip), nb


class RouteState:
    """Routes and neighbours of one namespace, with the per-interface views cached until the next change."""

    def __init__(self) -> None:
        self.routes: dict[RouteKey, Route] = {}
        self.neighs: dict[NeighKey, dict[str, Any]] = {}
        self._tables: dict[int, list[dict[str, Any]]] | None = None
        self._neighbors: dict[int, list[dict[str, Any]]] | None = None

    def replace_routes(self, routes: dict[RouteKey, Route]) -> bool:
        """The routes of a dump; True when they differ from what events had kept."""
        if routes == self.routes:
            return False
        self.routes = routes
        self._tables = None
        return True

    def replace_neighs(self, neighs: dict[NeighKey, dict[str, Any]]) -> bool:
        if neighs == self.neighs:
            return False
        self.neighs = neighs
        self._neighbors = None
        return True

    def route_event(self, key: RouteKey, route: Route | None) -> bool:
        """Apply an RTM_NEWROUTE (route) or RTM_DELROUTE (None); True when something changed."""
        if route is None:
            if self.routes.pop(key, None) is None:
                return False
        elif self.routes.get(key) == route:
            return False
        else:
            self.routes[key] = route
        self._tables = None
        return True

    def neigh_event(self, key: NeighKey, nb: dict[str, Any] | None) -> bool:
        if nb is None:
            if self.neighs.pop(key, None) is None:
                return False
        elif self.neighs.get(key) == nb:
            return False
        else:
            self.neighs[key] = nb
        self._neighbors = None
        return True

    def drop_interface(self, index: int) -> bool:
        """An interface was deleted: the kernel flushes its IPv4 routes without telling anyone."""
        routes = [k for k, r in self.routes.items() if any(oif == index for _gw, oif in r.hops)]
        neighs = [k for k in self.neighs if k[0] == index]
        for k in routes:
            del self.routes[k]
        for k in neighs:
            del self.neighs[k]
        if routes:
            self._tables = None
        if neighs:
            self._neighbors = None
        return bool(routes or neighs)

    def forget_links(self, alive: set[int]) -> bool:
        """Drop the neighbours of interfaces that are gone (the kernel removes their routes with events)."""
        gone = [k for k in self.neighs if k[0] not in alive]
        for k in gone:
            del self.neighs[k]
        if gone:
            self._neighbors = None
        return bool(gone)

    def routing_tables(self) -> dict[int, list[dict[str, Any]]]:
        """ifindex -> Skydive RoutingTables of that interface (the lists are shared: do not modify them)."""
        if self._tables is None:
            self._tables = build_routing_tables(self.routes.values())
        return self._tables

    def neighbors(self) -> dict[int, list[dict[str, Any]]]:
        """ifindex -> Skydive Neighbors of that interface (shared lists)."""
        if self._neighbors is None:
            out: dict[int, list[dict[str, Any]]] = {}
            for key in sorted(self.neighs, key=_neigh_order):
                out.setdefault(key[0], []).append(self.neighs[key])
            self._neighbors = out
        return self._neighbors


def _neigh_order(key: NeighKey) -> tuple[int, int, bytes]:
    return key[0], key[1], ipaddress.ip_address(key[2]).packed


def _prefix_order(prefix: str) -> tuple[int, bytes, int]:
    net = ipaddress.ip_network(prefix, strict=False)
    return net.version, net.network_address.packed, net.prefixlen


def build_routing_tables(routes: Any) -> dict[int, list[dict[str, Any]]]:
    """Group routes by output interface, then table, then (protocol, prefix) as Skydive does."""
    # ifindex -> table -> (protocol, prefix) -> [hops]; ifindex -> table -> Src
    grouped: dict[int, dict[int, dict[tuple[int, str], list[dict[str, Any]]]]] = {}
    srcs: dict[tuple[int, int], str] = {}
    for r in routes:
        for gw, oif in r.hops:
            if not oif:
                continue  # blackhole/unreachable/prohibit: no interface to show them on
            per_table = grouped.setdefault(oif, {}).setdefault(r.table, {})
            hop: dict[str, Any] = {"Priority": r.priority, "IfIndex": oif}
            if gw:
                hop["IP"] = gw
            hops = per_table.setdefault((r.protocol, r.prefix), [])
            if hop not in hops:
                hops.append(hop)
            if r.src and not srcs.get((oif, r.table)):
                srcs[(oif, r.table)] = r.src
    out: dict[int, list[dict[str, Any]]] = {}
    for oif, tables in grouped.items():
        lst = []
        for table in sorted(tables):
            rts = []
            for (protocol, prefix) in sorted(tables[table], key=lambda k: (_prefix_order(k[1]), k[0])):
                hops = sorted(tables[table][(protocol, prefix)],
                              key=lambda h: (h["Priority"], h.get("IP", ""), h["IfIndex"]))
                rts.append({"Protocol": protocol, "Prefix": prefix, "NextHops": hops})
            rt: dict[str, Any] = {"ID": table, "Routes": rts}
            src = srcs.get((oif, table))
            if src:
                rt["Src"] = src
            lst.append(rt)
        out[oif] = lst
    return out
