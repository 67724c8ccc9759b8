"""ProbeTopologyService: watchers (netlink per namespace, netns discovery, OVSDB) -> host state -> NATS.

Change detection is event-driven (netlink multicast groups, inotify on the netns dirs, OVSDB update
notifications). After a change that follows an idle period the service publishes as soon as no other event
is queued; while changes keep coming, once none came for `flush_quiet_s` (at most `flush_interval_s`, so a
burst becomes one delta), updates the host state (only the interfaces that changed,
`incremental.py`; a full rebuild when namespaces, OVS or containers changed) and publishes its difference
with the last published state. Polling is used only
for link counters (`metrics_interval_s`) and for namespaces held only by processes (`netns_scan_interval_s`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from typing import Any

from nats.aio.client import Client as NATS

from netsonde.common import ids
from netsonde.common.bus.codec import encode
from netsonde.common.bus.subjects import Subjects
from netsonde.common.bus.topology import DigestCache, ProbeNode, ResyncRequest, TopologyMessage
from netsonde.common.logs import OnceLogger
from netsonde.common.natsconn import connect
from netsonde.common.service import Service

from . import netns as netns_mod
from .builder import HostState, build
from .config import ProbeTopologyConfig
from .docker import ContainerWatcher
from .incremental import IncrementalBuilder, Update
from .netns import Inotify, NetNs
from .nswatch import NsWatcher
from .ovsdb import OvsdbWatcher, OvsState
from .publish import Delta, diff, diff_touched, split

log = logging.getLogger(__name__)


class ProbeTopologyService(Service):
    name = "probe-topology"

    def __init__(self, config: ProbeTopologyConfig) -> None:
        super().__init__(config)
        self.config: ProbeTopologyConfig = config
        self.subjects = Subjects(config.subject_prefix)
        self.host = config.host_id
        self.hostname = socket.gethostname()
        self.boot = uuid.uuid4().hex
        self.seq = 0
        self.nc: NATS | None = None
        self.watchers: dict[int, NsWatcher] = {}
        """Namespace inode -> its watcher (the root namespace included)."""
        self.ovs_state: OvsState | None = None
        self.ovs: OvsdbWatcher | None = None
        self.containers: ContainerWatcher | None = None
        self.published = HostState()
        """What receivers hold: the state as of the last published message."""
        self._dirty = asyncio.Event()
        self._changes_seen = 0
        """Change notifications so far (the flush waits until it stops moving)."""
        self.tracker = IncrementalBuilder(self.host, self.hostname, config.metadata)
        self._structure_changed = False
        """Namespaces, OVS or containers changed: the next update is a full build."""
        self._digests = DigestCache()
        self._need_full = False
        self._full_reason = ""
        self._inotify: Inotify | None = None
        self._named: dict[int, NetNs] = {}
        self._processes: dict[int, NetNs] = {}
        self._rescan_handle: asyncio.TimerHandle | None = None
        self._neigh_handle: asyncio.TimerHandle | None = None
        self._pending_retries = 0
        self._once = OnceLogger(log)
        self._flush_lock = asyncio.Lock()
        self._last_build_s = 0.0
        self._last_flush_end = 0.0
        self._backoff_s = 0.0
        """1 s after a failed publish, 0 once one succeeds."""
        m = self.metrics
        self.m_messages = m.counter("messages_total", "Topology messages published", ["kind"])
        self.m_items = m.counter("items_total", "Node/edge upserts and deletions published", ["what"])
        self.m_overruns = m.counter("netlink_overruns_total", "Netlink receive buffer overruns (ENOBUFS)")
        self.m_build = m.histogram("build_seconds", "Time to rebuild the host state after changes")
        self.m_builds = m.counter("builds_total", "Host state updates, by kind (full rebuild or incremental)",
                                  ["kind"])
        self.m_nodes = m.gauge("nodes", "Nodes in the host state")
        self.m_edges = m.gauge("edges", "Edges in the host state")
        self.m_namespaces = m.gauge("namespaces", "Network namespaces watched (root included)")
        self.m_publish_errors = m.counter("publish_errors_total", "Publishes that failed (a full follows)")
        self.m_build_errors = m.counter("build_errors_total", "Failed state rebuilds (retried, then a full)")
        self.m_resyncs = m.counter("resync_requests_total", "Resync requests answered")

    # --- lifecycle -----------------------------------------------------------------------------------
    async def on_start(self) -> None:
        self.nc = await connect(self.config.nats_url, f"probe-topology.{self.host}", config=self.config)
        root = netns_mod.root_netns()
        self._add_ns(root)
        self._setup_inotify()
        self._rescan_named()
        if self.config.process_netns:
            self._scan_processes()
        if self.config.ovsdb:
            self.ovs = OvsdbWatcher(self.config.ovsdb, self._on_ovs)
            self.ovs.start()
        if self.config.docker_socket:
            self.containers = ContainerWatcher(self.config.docker_socket, self._on_containers, self.metrics,
                                               reconnect_max_s=self.config.docker_reconnect_max_s)
            self.containers.start()
        deadline = time.monotonic() + self.config.start_timeout_s
        for w in list(self.watchers.values()):
            await w.wait_synced(max(0.1, deadline - time.monotonic()))
        if self.ovs is not None and os.path.exists(self.config.ovsdb.removeprefix("unix:")):
            while self.ovs_state is None and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        if self.containers is not None:  # the first full holds the running containers when the engine answers
            while self.containers.status.state == "connecting" and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
        await self.nc.subscribe(self.subjects.topology_resync, cb=self._on_resync)
        await self.publish_full("start")
        self.spawn(self._flush_loop(), "flush")
        self.spawn(self._digest_loop(), "digest")
        self.spawn(self._metrics_loop(), "metrics-refresh")
        if self.config.process_netns:
            self.spawn(self._proc_scan_loop(), "netns-proc-scan")

    async def on_stop(self) -> None:
        if self._neigh_handle is not None:
            self._neigh_handle.cancel()
        if self.ovs is not None:
            await asyncio.to_thread(self.ovs.stop)
        if self.containers is not None:
            await asyncio.to_thread(self.containers.stop)
        if self._inotify is not None:
            asyncio.get_running_loop().remove_reader(self._inotify.fileno())
            self._inotify.close()
            self._inotify = None
        for w in self.watchers.values():
            w.close()
        self.watchers.clear()
        if self.nc is not None:
            try:
                await asyncio.wait_for(self.nc.drain(), 5)
            except Exception:  # noqa: BLE001
                await self.nc.close()

    def health(self) -> dict[str, Any]:
        return {"namespaces": len(self.watchers), "nodes": len(self.published.nodes),
                "edges": len(self.published.edges), "seq": self.seq,
                "ovsdb_connected": bool(self.ovs and self.ovs.connected),
                "container_engine": self.containers.status.metadata() if self.containers else None}

    # --- namespaces ----------------------------------------------------------------------------------
    def _add_ns(self, ns: NetNs) -> None:
        if ns.inode in self.watchers:
            return
        w = NsWatcher(ns, self._on_ns_change, self.config.netlink_rcvbuf)
        try:
            w.start()
        except OSError as exc:
            self._once.warning(f"netns-open-{ns.kind}", f"cannot watch namespace {ns.path}: {exc}")
            w.close()
            return
        self.watchers[ns.inode] = w
        self.m_namespaces.set(len(self.watchers))
        self._structure_changed = True
        paths = {inode: x.ns.path for inode, x in self.watchers.items()}
        for other in self.watchers.values():
            if other is not w:
                other.namespaces_changed()
                other.query_nsids(paths)
        self._mark_dirty()

    def _remove_ns(self, inode: int) -> None:
        w = self.watchers.pop(inode, None)
        if w is not None:
            w.close()
            for other in self.watchers.values():
                other.forget_namespace(inode)
            self.m_namespaces.set(len(self.watchers))
            self._structure_changed = True
            self._mark_dirty()

    def _reconcile_ns(self) -> None:
        """Watch exactly the root, the named and (when enabled) the process-held namespaces."""
        wanted: dict[int, NetNs] = dict(self._processes)
        wanted.update(self._named)
        for inode, w in list(self.watchers.items()):
            if w.ns.kind == "root":
                continue
            target = wanted.get(inode)
            if target is None or target.kind != w.ns.kind or target.path != w.ns.path:
                self._remove_ns(inode)
        for inode, ns in wanted.items():
            if inode not in self.watchers:
                self._add_ns(ns)

    def _setup_inotify(self) -> None:
        try:
            self._inotify = Inotify()
        except OSError as exc:
            log.warning("inotify unavailable (%s): named namespaces are only found by the periodic scan", exc)
            return
        for d in self.config.netns_dirs:
            parent = os.path.dirname(d.rstrip("/"))
            self._inotify.watch(parent)
            self._inotify.watch(d)
        asyncio.get_running_loop().add_reader(self._inotify.fileno(), self._on_inotify)

    def _on_inotify(self) -> None:
        assert self._inotify is not None
        events = self._inotify.read()
        relevant = False
        for directory, name, _mask in events:
            full = os.path.join(directory, name)
            if full in self.config.netns_dirs:
                self._inotify.watch(full)  # the netns dir itself appeared
            if directory in self.config.netns_dirs or full in self.config.netns_dirs:
                relevant = True
        if relevant:
            self._pending_retries = 0
            self._rescan_named()

    def _rescan_named(self) -> None:
        if self._inotify is not None:
            for d in self.config.netns_dirs:
                self._inotify.watch(d)
        named, pending = netns_mod.scan_named(self.config.netns_dirs)
        self._named = named
        for inode in named:
            self._processes.pop(inode, None)
        self._reconcile_ns()
        if pending and self._pending_retries < 50:
            # `ip netns add` creates the file, then mounts the namespace on it: look again shortly
            self._pending_retries += 1
            if self._rescan_handle is None or self._rescan_handle.cancelled():
                self._rescan_handle = asyncio.get_running_loop().call_later(0.05, self._retry_rescan)

    def _retry_rescan(self) -> None:
        self._rescan_handle = None
        self._rescan_named()

    def _scan_processes(self) -> None:
        exclude = set(self._named) | {w.ns.inode for w in self.watchers.values() if w.ns.kind == "root"}
        self._processes = netns_mod.scan_processes(exclude)
        self._reconcile_ns()

    async def _proc_scan_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.netns_scan_interval_s)
            self._rescan_named()
            self._scan_processes()

    # --- changes -------------------------------------------------------------------------------------
    def _on_ns_change(self, watcher: NsWatcher, overrun: bool) -> None:
        self._changes_seen += 1
        watcher.query_nsids({inode: w.ns.path for inode, w in self.watchers.items()})
        if overrun:
            self.m_overruns.inc()
            self._need_full = True
            self._full_reason = "netlink overrun"
        if watcher.neighbours_only:
            # neighbour states churn (REACHABLE -> STALE -> DELAY ...) on busy hosts: one rebuild per
            # neighbor_flush_interval_s for them, instead of one per flush_interval_s
            if self._neigh_handle is None:
                self._neigh_handle = asyncio.get_running_loop().call_later(
                    self.config.neighbor_flush_interval_s, self._neighbours_due)
            return
        self._mark_dirty()

    def _neighbours_due(self) -> None:
        self._neigh_handle = None
        self._mark_dirty()

    def _on_ovs(self, state: OvsState) -> None:
        self.ovs_state = state
        self._structure_changed = True
        self._mark_dirty()

    def _on_containers(self) -> None:
        """Containers changed: look for their namespaces now rather than at the next /proc scan."""
        self._rescan_named()
        if self.config.process_netns:
            self._scan_processes()
        self._structure_changed = True
        self._mark_dirty()

    def _mark_dirty(self) -> None:
        self._changes_seen += 1
        self._dirty.set()

    def current_state(self) -> HostState:
        t0 = time.perf_counter()
        state = build(self.host, self.hostname, self.watchers.values(), self.ovs_state, self.config.metadata)
        if self.containers is not None:
            self.containers.add_to(state, self.host, netns_mod.root_netns().inode)
        self._last_build_s = time.perf_counter() - t0
        self.m_build.observe(self._last_build_s)
        return state

    def _update_state(self, full: bool = False) -> Update:
        """The state after the changes since the last update: only the changed interfaces redone when it can be
        (`incremental.py`), a full build when namespaces, OVS or containers changed (or `full`)."""
        t0 = time.perf_counter()
        full = full or self._structure_changed or bool(self.containers is not None and self.containers.containers)
        self._structure_changed = False
        up = self.tracker.update(self.watchers.values(), self.ovs_state, full=full)
        if self.containers is not None:
            if up.full:
                self.containers.add_to(up.state, self.host, netns_mod.root_netns().inode)
            else:  # no container: only the host's ContainerEngine status can differ
                host_id = ids.host_node_id(self.host)
                host = up.state.nodes[host_id]
                status = self.containers.status.metadata()
                if host.Metadata.get("ContainerEngine") != status:
                    up.state.nodes[host_id] = ProbeNode(ID=host_id, Metadata={**host.Metadata,
                                                                             "ContainerEngine": status})
                    up.nodes.add(host_id)
        self._last_build_s = time.perf_counter() - t0
        self.m_build.observe(self._last_build_s)
        self.m_builds.labels("full" if up.full else "incremental").inc()
        return up

    async def _flush_loop(self) -> None:
        while True:
            await self._dirty.wait()
            # Coalesce. After an idle period, publish once one pass of the event loop brought nothing more (the
            # kernel queues the events of one command together, and they were read in that pass). While changes
            # keep coming, wait until none came for flush_quiet_s, at most flush_interval_s after the first one,
            # so a burst becomes one delta per interval.
            start = time.monotonic()
            deadline = start + self.config.flush_interval_s
            window = 0.0 if start - self._last_flush_end >= self.config.flush_interval_s else self.config.flush_quiet_s
            seen = self._changes_seen
            while True:
                await asyncio.sleep(window)
                if self._changes_seen == seen or time.monotonic() >= deadline:
                    break
                seen = self._changes_seen
                window = self.config.flush_quiet_s
            # Never sooner after the previous flush than the last update took, so a long burst on a big host
            # costs at most about half a core instead of back-to-back rebuilds.
            pause = max(self._last_build_s, self._backoff_s) - (time.monotonic() - self._last_flush_end)
            if pause > 0:
                await asyncio.sleep(pause)
            if any(w._dump_kind for w in self.watchers.values()) and self._need_full:
                continue  # a resync dump is in flight: publish the full once it completed
            self._dirty.clear()
            try:
                if self._need_full:
                    await self.publish_full(self._full_reason or "resync")
                else:
                    await self.publish_changes()
            except Exception as exc:  # noqa: BLE001 - a bug on odd input must not take the probe down
                self.m_build_errors.inc()
                self._once.warning("build", f"building the host state failed: {exc!r}")
                log.debug("build failure", exc_info=True)
                self._backoff_s = 1.0
                self._need_full = True
                self._dirty.set()
            self._last_flush_end = time.monotonic()

    async def publish_changes(self) -> None:
        async with self._flush_lock:
            up = self._update_state()
            state = up.state
            delta = diff(self.published, state) if up.full else diff_touched(self.published, state, up.nodes,
                                                                              up.edges)
            try:
                if len(delta):
                    for part in split(delta, self.config.delta_max_items, self.config.message_max_bytes):
                        await self._send("delta", part)
            except Exception as exc:  # noqa: BLE001 - the bus is down or refused: resend everything later
                self._publish_failed(exc)
                return
            self.published = state
            self._gauges()

    async def publish_full(self, reason: str) -> None:
        async with self._flush_lock:
            self._need_full = False
            state = self._update_state(full=True).state
            whole = Delta(list(state.nodes.values()), list(state.edges.values()))
            parts = split(whole, 1 << 30, self.config.message_max_bytes) or [Delta()]
            digest = self._digests.digest(state.nodes.values(), state.edges.values())
            try:
                for i, part in enumerate(parts):
                    await self._send("full", part, part_index=i, parts=len(parts),
                                     digest=digest if i == len(parts) - 1 else "")
            except Exception as exc:  # noqa: BLE001
                self._publish_failed(exc)
                return
            self.published = state
            self._gauges()
            log.info("published full state (%s): %d nodes, %d edges in %d message(s)",
                     reason, len(state.nodes), len(state.edges), len(parts))

    async def publish_digest(self) -> None:
        async with self._flush_lock:
            digest = self._digests.digest(self.published.nodes.values(), self.published.edges.values())
            try:
                await self._send("digest", Delta(), digest=digest)
            except Exception as exc:  # noqa: BLE001
                self._publish_failed(exc)

    async def _send(self, kind: str, d: Delta, part_index: int = 0, parts: int = 1, digest: str = "") -> None:
        assert self.nc is not None
        self.seq += 1
        msg = TopologyMessage(host=self.host, kind=kind, boot=self.boot, seq=self.seq, ts=int(time.time() * 1000),
                              nodes=d.nodes, edges=d.edges, deleted_nodes=d.deleted_nodes,
                              deleted_edges=d.deleted_edges, digest=digest, part=part_index, parts=parts)
        await self.nc.publish(self.subjects.topology(self.host), encode(msg))
        self._backoff_s = 0.0
        self.m_messages.labels(kind).inc()
        if kind != "digest":
            self.m_items.labels("node_upserts").inc(len(d.nodes))
            self.m_items.labels("edge_upserts").inc(len(d.edges))
            self.m_items.labels("node_deletions").inc(len(d.deleted_nodes))
            self.m_items.labels("edge_deletions").inc(len(d.deleted_edges))

    def _publish_failed(self, exc: Exception) -> None:
        """A publish failed (bus down, buffer full): receivers may have missed part of it, so the next flush
        sends a full state; the flush loop retries after its interval."""
        self.m_publish_errors.inc()
        self._once.warning("publish", f"publishing topology failed: {exc!r}; a full state follows")
        self._need_full = True
        self._full_reason = "after a publish failure"
        self._backoff_s = 1.0
        self._dirty.set()

    def _gauges(self) -> None:
        self.m_nodes.set(len(self.published.nodes))
        self.m_edges.set(len(self.published.edges))

    async def _on_resync(self, msg: Any) -> None:
        req = self.inbound(msg.data, ResyncRequest, "resync", msg.subject)
        if req is None:
            return
        if req.host not in ("", self.host):
            return
        self.m_resyncs.inc()
        await self.resync(f"requested: {req.reason or 'no reason'}")

    async def _digest_loop(self) -> None:
        reconnects = self._reconnects()
        while True:
            await asyncio.sleep(self.config.digest_interval_s)
            now = self._reconnects()
            if now != reconnects:  # the bus was away: receivers may have missed messages
                reconnects = now
                await self.publish_full("after a NATS reconnect")
            else:
                await self.publish_digest()

    def _reconnects(self) -> int:
        try:
            return int(self.nc.stats.get("reconnects", 0)) if self.nc is not None else 0
        except (AttributeError, TypeError, ValueError):
            return 0

    async def _metrics_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.metrics_interval_s)
            for w in list(self.watchers.values()):
                w.resync()

    async def resync(self, reason: str = "resync") -> None:
        """Dump every namespace again, then publish a full state (what a ResyncRequest gets)."""
        watchers = list(self.watchers.values())
        for w in watchers:
            w.resync()
        deadline = time.monotonic() + self.config.start_timeout_s
        for w in watchers:
            await w.wait_synced(max(0.1, deadline - time.monotonic()))
        await self.publish_full(reason)
