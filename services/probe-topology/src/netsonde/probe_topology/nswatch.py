"""One netlink watcher per namespace: a dump on start (and on resync / overrun / counter refresh), then events.

The socket is bound to the link, address, route and neighbour multicast groups and the dumps (links, then
addresses, routes, neighbours) are requested on the same socket, so dump replies and events are read in the kernel's order: events that arrive during a dump are
applied both to the current state and to the state being dumped, and the dump replaces the current state
when its NLMSG_DONE arrives. A receive-buffer overrun (ENOBUFS) means events were lost: the watcher
dumps again and reports `overrun` so the service publishes a full state.
"""

from __future__ import annotations

import asyncio
import errno
import os
import logging
import socket
import struct
import time
from typing import Any, Callable

from pyroute2.netlink.rtnl.nsidmsg import nsidmsg

from . import ethtool
from .netlink import (RTM_DELADDR, RTM_DELLINK, RTM_NEWADDR, RTM_NEWLINK, iter_messages, parse_addr_at,
                      parse_link_at, parse_nsid_at)
from .netns import NetNs, ioctl_socket, netlink_socket
from .routes import (RTM_DELNEIGH, RTM_DELROUTE, RTM_GETNEIGH, RTM_GETROUTE, RTM_NEWNEIGH, RTM_NEWROUTE,
                     NeighKey, Route, RouteKey, RouteState, parse_neigh_at, parse_route_at)

log = logging.getLogger(__name__)

RTMGRP_LINK, RTMGRP_NEIGH, RTMGRP_IPV4_IFADDR, RTMGRP_IPV6_IFADDR = 0x1, 0x4, 0x10, 0x100
RTMGRP_IPV4_ROUTE, RTMGRP_IPV6_ROUTE = 0x40, 0x400
GROUPS = RTMGRP_LINK | RTMGRP_NEIGH | RTMGRP_IPV4_IFADDR | RTMGRP_IPV6_IFADDR | RTMGRP_IPV4_ROUTE | RTMGRP_IPV6_ROUTE
RTM_GETLINK, RTM_GETADDR = 18, 22
DUMPS: dict[str, tuple[int, int, str]] = {
    "link": (RTM_GETLINK, 16, "addr"), "addr": (RTM_GETADDR, 8, "route"), "route": (RTM_GETROUTE, 12, "neigh"),
    "neigh": (RTM_GETNEIGH, 12, ""),
}
"""Dump kind -> (request type, size of its zeroed family header, next dump of the chain)."""
RTM_NEWNSID, RTM_GETNSID = 88, 90
NLM_F_REQUEST, NLM_F_DUMP, NLM_F_DUMP_INTR = 0x1, 0x300, 0x10
NLMSG_ERROR, NLMSG_DONE = 2, 3
READ_BUDGET_S = 0.005
"""Most time one wake-up spends reading a namespace's socket before letting other work run."""


class NsWatcher:
    """Links, addresses, routes, neighbours, ethtool info and counters of one namespace, kept current."""

    def __init__(self, ns: NetNs, on_change: Callable[["NsWatcher", bool], None], rcvbuf: int = 32 << 20) -> None:
        self.ns = ns
        self.on_change = on_change
        """Called after each batch of messages: (watcher, overrun)."""
        self.rcvbuf = rcvbuf
        self.links: dict[int, dict[str, Any]] = {}
        self.addrs: dict[int, set[tuple[str, str]]] = {}
        self.metrics: dict[int, dict[str, int]] = {}
        self.first_seen: dict[int, int] = {}
        self.metric_ts: dict[int, int] = {}
        self.last_update: dict[int, dict[str, int]] = {}
        """Skydive `LastUpdateMetric`: counter deltas between the last two refreshes that saw a change."""
        self.drv: dict[int, tuple[str, dict[str, Any]]] = {}
        """ifindex -> (name, Driver/BusInfo/Speed/Duplex/Features)."""
        self.rt = RouteState()
        self.dirty: set[int] = set()
        """ifindexes whose link, addresses, ethtool data or counters changed since `incremental.py` last
        took them (routes and neighbours it compares itself)."""
        self.dirty_all = True
        """Set when a change cannot be pinned on interfaces (an nsid learnt or forgotten)."""
        self._last_refresh_ms = 0
        self.synced = False
        self.neighbours_only = False
        """Set before `on_change`: the batch changed only neighbour entries (ARP/NDP state churn)."""
        """True once the first full dump completed."""
        self.overruns = 0
        self.bad_messages = 0
        self.messages = 0
        self._sock: socket.socket | None = None
        self._ioctl: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._seq = int(time.time()) & 0xFFFF
        self._dump_kind = ""  # "", "link", "addr", "route", "neigh"
        self._chain_changed = False
        """Something differed in the dumps of the chain in flight (reported when the chain ends)."""
        self._dump_seq = 0
        self._dump_intr = False
        self._dump_links: dict[int, dict[str, Any]] = {}
        self._dump_stats: dict[int, dict[str, int]] = {}
        self._dump_addrs: dict[int, set[tuple[str, str]]] = {}
        self._dump_routes: dict[RouteKey, Route] = {}
        self._dump_neighs: dict[NeighKey, dict[str, Any]] = {}
        self._want_dump = False
        self._dump_done: asyncio.Event = asyncio.Event()
        self.nsids: dict[int, int] = {}
        """nsid (as IFLA_LINK_NETNSID values in this namespace name them) -> inode of that namespace."""
        self._nsid_queries: dict[int, int] = {}
        self._last_unknown: frozenset[int] = frozenset()

    # --- lifecycle -----------------------------------------------------------------------------------
    def start(self) -> None:
        path = None if self.ns.kind == "root" else self.ns.path
        self._sock = netlink_socket(path, GROUPS, self.rcvbuf)
        self._ioctl = ioctl_socket(path)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.fileno(), self._readable)
        self.resync()

    def close(self) -> None:
        self._dump_done.set()  # nobody waits for a namespace that is gone
        if self._sock is not None:
            if self._loop is not None:
                self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        if self._ioctl is not None:
            self._ioctl.close()
            self._ioctl = None

    def resync(self) -> None:
        """Dump links, addresses, routes and neighbours again (also refreshes counters and ethtool info);
        idempotent while a dump runs."""
        if self._dump_kind:
            self._want_dump = True
            return
        self._dump_done.clear()
        self._start_dump("link")

    def unknown_nsids(self) -> set[int]:
        """LinkNetNsID values of this namespace's links that are not resolved to a namespace yet."""
        return {md["LinkNetNsID"] for md in self.links.values() if "LinkNetNsID" in md} - set(self.nsids)

    def query_nsids(self, namespaces: dict[int, str]) -> None:
        """When some LinkNetNsID of this namespace is unresolved (and the unresolved set changed since the
        last time), ask the kernel (RTM_GETNSID with NETNSA_FD) which nsid this namespace gives each other
        watched namespace (inode -> path); answers arrive as RTM_NEWNSID and fill `nsids`."""
        unknown = frozenset(self.unknown_nsids())
        if self._sock is None or not unknown or unknown == self._last_unknown:
            return
        self._last_unknown = unknown
        known = set(self.nsids.values())
        for inode, path in namespaces.items():
            if inode == self.ns.inode or inode in known:
                continue
            try:
                fd = os.open(path, os.O_RDONLY)
            except OSError:
                continue
            try:
                self._seq = (self._seq + 1) & 0x7FFFFFFF
                msg = nsidmsg()
                msg["header"]["type"] = RTM_GETNSID
                msg["header"]["flags"] = NLM_F_REQUEST
                msg["header"]["sequence_number"] = self._seq
                msg["header"]["pid"] = 0
                msg["attrs"] = [("NETNSA_FD", fd)]
                msg.encode()
                self._sock.send(msg.data)  # rtnetlink handles it inside send(): the fd may be closed after
                self._nsid_queries[self._seq] = inode
            except OSError as exc:
                log.debug("RTM_GETNSID for %s in %s failed: %s", path, self.ns.name or "root", exc)
            finally:
                os.close(fd)

    def namespaces_changed(self) -> None:
        """A namespace appeared: unresolved nsids may now be resolvable."""
        self._last_unknown = frozenset()

    def forget_namespace(self, inode: int) -> None:
        self._last_unknown = frozenset()
        for nsid in [k for k, v in self.nsids.items() if v == inode]:
            del self.nsids[nsid]
            self.dirty_all = True

    async def wait_synced(self, timeout: float) -> bool:
        try:
            await asyncio.wait_for(self._dump_done.wait(), timeout)
        except asyncio.TimeoutError:
            return False
        return True

    # --- dumps ---------------------------------------------------------------------------------------
    def _start_dump(self, kind: str) -> None:
        assert self._sock is not None
        self._seq = (self._seq + 1) & 0x7FFFFFFF
        mtype, header_size, _next = DUMPS[kind]
        request = struct.pack("=IHHII", 16 + header_size, mtype, NLM_F_REQUEST | NLM_F_DUMP, self._seq, 0)
        self._dump_kind, self._dump_seq, self._dump_intr = kind, self._seq, False
        if kind == "link":
            self._dump_links, self._dump_stats = {}, {}
        elif kind == "addr":
            self._dump_addrs = {}
        elif kind == "route":
            self._dump_routes = {}
        else:
            self._dump_neighs = {}
        try:
            self._sock.send(request + bytes(header_size))
        except OSError as exc:
            log.warning("netlink dump request failed in %s: %s", self.ns.name or "root", exc)
            self._dump_kind = ""
            self._want_dump = True

    def _dump_finished(self) -> bool:
        """Apply a completed dump and start the next one of the chain; True when the chain has ended and
        changed something (a refresh of a quiet namespace causes no rebuild)."""
        kind = self._dump_kind
        self._dump_kind = ""
        if self._dump_intr:
            self._start_dump(kind)
            return False
        changed = False
        if kind == "link":
            changed = self._dump_links != self.links
            if changed:
                self.dirty.update(i for i in self._dump_links.keys() | self.links.keys()
                                  if self._dump_links.get(i) != self.links.get(i))
            self.links = self._dump_links
            changed |= self._refresh_metrics(self._dump_stats)
            for d in (self.metrics, self.metric_ts, self.first_seen, self.drv, self.addrs, self.last_update):
                for index in [i for i in d if i not in self.links]:
                    del d[index]
        elif kind == "addr":
            addrs = {i: a for i, a in self._dump_addrs.items() if i in self.links}
            changed = addrs != self.addrs
            if changed:
                self.dirty.update(i for i in addrs.keys() | self.addrs.keys() if addrs.get(i) != self.addrs.get(i))
            self.addrs = addrs
        elif kind == "route":
            changed = self.rt.replace_routes(self._dump_routes)
        else:
            changed = self.rt.replace_neighs(self._dump_neighs)
            changed |= self.rt.forget_links(set(self.links))
        self._chain_changed |= changed
        following = DUMPS[kind][2]
        if following:
            self._start_dump(following)
            return False
        if self._want_dump:
            self._want_dump = False
            self._start_dump("link")
            return False
        self.synced = True
        self._dump_done.set()
        changed, self._chain_changed = self._chain_changed, False
        return changed

    # --- reading -------------------------------------------------------------------------------------
    def _readable(self) -> None:
        overrun = False
        changed = False
        neigh_changed = False
        sock = self._sock
        # bounded per wake-up (256 datagrams or READ_BUDGET_S, the socket stays readable) so one busy namespace
        # or a refresh dump of a big one (with its ethtool reads) cannot hold back the other changes
        budget_end = time.perf_counter() + READ_BUDGET_S
        for _ in range(256):
            if sock is None:
                return
            if time.perf_counter() > budget_end:
                break
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno == errno.ENOBUFS:
                    overrun = True
                    self.overruns += 1
                    continue
                log.warning("netlink read failed in %s: %s", self.ns.name or "root", exc)
                break
            if not data:
                break
            for mtype, flags, seq, off, end in iter_messages(data):
                try:
                    if self._handle(data, mtype, flags, seq, off, end):
                        if mtype in (RTM_NEWNEIGH, RTM_DELNEIGH):
                            neigh_changed = True
                        else:
                            changed = True
                except (struct.error, IndexError, ValueError) as exc:  # a malformed message: skip it
                    self.bad_messages += 1
                    if self.bad_messages == 1:
                        log.warning("malformed netlink message (type %d) in %s: %s; further ones are only "
                                    "counted", mtype, self.ns.name or "root", exc)
        if overrun:
            log.warning("netlink overrun in %s: dumping again", self.ns.name or "root")
            self._dump_kind = ""  # replies of a dump in flight may be lost too: restart it
            self._want_dump = False
            self._start_dump("link")
            changed = True
        if self._want_dump and not self._dump_kind:
            self._want_dump = False
            self._start_dump("link")
        if changed or overrun or neigh_changed:
            self.neighbours_only = not (changed or overrun)
            self.on_change(self, overrun)

    def _handle(self, buf: bytes, mtype: int, flags: int, seq: int, off: int, end: int) -> bool:
        self.messages += 1
        in_dump = bool(self._dump_kind) and seq == self._dump_seq and seq != 0
        if in_dump and flags & NLM_F_DUMP_INTR:
            self._dump_intr = True
        if mtype == NLMSG_DONE:
            if in_dump:
                return self._dump_finished()
            return False
        if mtype == RTM_NEWNSID:
            inode = self._nsid_queries.pop(seq, None)
            nsid = parse_nsid_at(buf, off, end)
            if inode is not None and nsid is not None:
                self.nsids[nsid] = inode
                self.dirty_all = True
                return True
            return False
        if mtype == NLMSG_ERROR:
            self._nsid_queries.pop(seq, None)
            if in_dump:
                error = int.from_bytes(buf[off:off + 4], "little", signed=True) if end - off >= 4 else 0
                log.warning("netlink dump error in %s: %s", self.ns.name or "root", error)
                self._dump_kind = ""
                self._want_dump = True
            return False
        if mtype in (RTM_NEWLINK, RTM_DELLINK):
            return self._link(buf, off, end, mtype == RTM_NEWLINK, in_dump)
        if mtype in (RTM_NEWADDR, RTM_DELADDR):
            return self._addr(buf, off, end, mtype == RTM_NEWADDR, in_dump)
        if mtype in (RTM_NEWROUTE, RTM_DELROUTE):
            return self._route(buf, off, end, mtype == RTM_NEWROUTE, in_dump)
        if mtype in (RTM_NEWNEIGH, RTM_DELNEIGH):
            return self._neigh(buf, off, end, mtype == RTM_NEWNEIGH, in_dump)
        return False

    def _refresh_metrics(self, dumped: dict[int, dict[str, int]]) -> bool:
        """Counters of a link dump: `Metric` moves (with `Last`) only when a counter moved, and the change
        since the previous refresh becomes `LastUpdateMetric` over [previous refresh, now] (Skydive)."""
        now = _now_ms()
        previous_refresh = self._last_refresh_ms
        self._last_refresh_ms = now
        changed = False
        for index, stats in dumped.items():
            first = self.first_seen.setdefault(index, now)
            old = self.metrics.get(index)
            if old == stats:
                continue
            changed = True
            self.dirty.add(index)
            self.metrics[index] = stats
            self.metric_ts[index] = now
            if old is not None and previous_refresh:
                delta = {k: v - old.get(k, 0) for k, v in stats.items()}
                delta["Start"] = max(previous_refresh, first)
                delta["Last"] = now
                self.last_update[index] = delta
        return changed

    def _route(self, buf: bytes, off: int, end: int, new: bool, in_dump: bool) -> bool:
        parsed = parse_route_at(buf, off, end)
        if parsed is None:
            return False
        key, route = parsed
        if in_dump:
            self._dump_routes[key] = route
            return False
        if self._dump_kind == "route":
            if new:
                self._dump_routes[key] = route
            else:
                self._dump_routes.pop(key, None)
        return self.rt.route_event(key, route if new else None)

    def _neigh(self, buf: bytes, off: int, end: int, new: bool, in_dump: bool) -> bool:
        parsed = parse_neigh_at(buf, off, end)
        if parsed is None:
            return False
        key, nb = parsed
        if in_dump:
            self._dump_neighs[key] = nb
            return False
        if self._dump_kind == "neigh":
            if new:
                self._dump_neighs[key] = nb
            else:
                self._dump_neighs.pop(key, None)
        return self.rt.neigh_event(key, nb if new else None)

    def _link(self, buf: bytes, off: int, end: int, new: bool, in_dump: bool) -> bool:
        # AF_BRIDGE (7) notifications are about bridge ports and carry partial data: not link changes
        if buf[off] == 7:
            return False
        md, stats = parse_link_at(buf, off, end)
        index = md["IfIndex"]
        if in_dump:
            self._dump_links[index] = md
            if stats is not None:
                self._dump_stats[index] = stats
            self._ethtool(index, md["Name"])
            return False
        dumping_links = self._dump_kind == "link"
        old = self.links.get(index)
        self.dirty.add(index)
        if not new:
            self.rt.drop_interface(index)
            self.links.pop(index, None)
            for d in (self.addrs, self.metrics, self.metric_ts, self.first_seen, self.drv, self.last_update):
                d.pop(index, None)
            if dumping_links:
                self._dump_links.pop(index, None)
                self._dump_stats.pop(index, None)
            if self._dump_kind == "addr":
                self._dump_addrs.pop(index, None)
            return True
        self.links[index] = md
        if dumping_links:
            self._dump_links[index] = md
        if old is not None and ("UP" in old["LinkFlags"]) != ("UP" in md["LinkFlags"]):
            self._routes_changed_silently()
        if index not in self.metrics:
            now = _now_ms()
            self.first_seen.setdefault(index, now)
            if stats is not None:
                self.metrics[index] = stats
                self.metric_ts[index] = now
        # ifi_change: ~0 for a new link, 0 for state/feature/carrier notifications (ethtool -K, NETDEV_CHANGE),
        # else the IFF_* flags that changed (admin up/down, promisc...): ethtool data cannot have changed then
        change = struct.unpack_from("=I", buf, off + 12)[0]
        self._ethtool(index, md["Name"], refresh=change in (0, 0xFFFFFFFF))
        return True

    def _routes_changed_silently(self) -> None:
        """A link went up or down: the kernel adds/flushes IPv4 routes of it without events: dump them again."""
        if self._dump_kind:
            self._want_dump = True
        else:
            self._start_dump("route")

    def _ethtool(self, index: int, name: str, refresh: bool = True) -> None:
        """Driver and bus (once per name), speed, duplex and features (again at each dump and each link
        event that may carry their change: `ethtool -K` and carrier changes send one)."""
        if self._ioctl is None:
            return
        cached = self.drv.get(index)
        if not refresh and cached is not None and cached[0] == name:
            return
        info: dict[str, Any]
        if cached is not None and cached[0] == name:
            info = {k: cached[1][k] for k in ("Driver", "BusInfo") if k in cached[1]}
        else:
            info = ethtool.driver_info(self._ioctl, name)
        info.update(ethtool.link_settings(self._ioctl, name))
        feats = ethtool.features(self._ioctl, name)  # one shared map per distinct feature set
        if feats:
            info["Features"] = feats
        if cached is None or cached != (name, info):
            self.drv[index] = (name, info)
            self.dirty.add(index)
            if self._dump_kind == "link":
                self._chain_changed = True

    def _addr(self, buf: bytes, off: int, end: int, new: bool, in_dump: bool) -> bool:
        parsed = parse_addr_at(buf, off, end)
        if parsed is None:
            return False
        index, family, cidr = parsed
        if in_dump:
            self._dump_addrs.setdefault(index, set()).add((family, cidr))
            return False
        targets = [self.addrs]
        self.dirty.add(index)
        if self._dump_kind == "addr":
            targets.append(self._dump_addrs)
        for t in targets:
            if new:
                t.setdefault(index, set()).add((family, cidr))
            else:
                s = t.get(index)
                if s is not None:
                    s.discard((family, cidr))
        return True


def _now_ms() -> int:
    return int(time.time() * 1000)
