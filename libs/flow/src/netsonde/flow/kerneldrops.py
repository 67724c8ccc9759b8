"""Kernel drop reasons on a capture's flows (capture option `DropReasons`, `ebpf` captures).

`KernelDrops` attaches the kfree_skb program (netsonde.flow.ebpf.drops) for one interface and, at each poll
of the capture, moves what it counted onto the table's flows: a drop of packet src -> dst goes to the flow
with the same addresses, protocol and ports (or ICMP id) in either direction, as `ABDrops` / `BADrops`
(A -> B being the flow's A side) and per reason in `DropReasons`. The flow is marked touched, so the next
update carries the new totals (and the delta in LastUpdateMetric).

A drop whose flow is not in the table yet (the TC program saw no packet of it: a packet dropped on the local
output path before it reached the interface) waits up to `PENDING_POLLS` polls for one, then is counted in
the table's `events["drops_unmatched"]` (the probe exports it as a Prometheus counter) and dropped.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING

from .ebpf.drops import STAT_FULL, STAT_NOT_IP, DropKey, DropProgram, current_netns_inode

if TYPE_CHECKING:
    from .flowstate import FlowState
    from .table import FlowTable

__all__ = ["FlowDrops", "KernelDrops", "PENDING_POLLS"]

PENDING_POLLS = 3
_NET = {4: "IPV4", 6: "IPV6"}
_TRANSPORT = {6: "TCP", 17: "UDP", 132: "SCTP"}
_ICMP = (1, 58)


class FlowDrops:
    """Drop counters of one flow (FlowState.drops): totals per direction and per reason, and what the last
    update reported (for LastUpdateMetric)."""

    __slots__ = ("ab", "ba", "reasons", "sent_ab", "sent_ba")

    def __init__(self) -> None:
        self.ab = self.ba = self.sent_ab = self.sent_ba = 0
        self.reasons: dict[str, int] = {}


class KernelDrops:
    """The drop program watching one interface (in the calling thread's namespace), feeding one table."""

    def __init__(self, table: FlowTable, program: DropProgram) -> None:
        self.table = table
        self.program = program
        self._pending: list[tuple[DropKey, int, int]] = []
        """(drop, packets, polls waited) not matched to a flow yet."""
        self.dropped = 0
        """Packets attributed to flows so far."""

    @classmethod
    def attach(cls, table: FlowTable, ifindex: int) -> KernelDrops:
        """Attach to skb:kfree_skb and watch `ifindex` of the current thread's namespace; EbpfError if the
        kernel refuses."""
        program = DropProgram.attach()
        try:
            program.watch(ifindex, current_netns_inode())
        except Exception:
            program.close()
            raise
        return cls(table, program)

    def poll(self) -> int:
        """Move the drops counted since the last poll onto the table's flows; returns packets attributed.
        Call with the table's lock held, after the flow map's counts went in (new flows exist by then)."""
        todo = [(d, n, 0) for d, n in self.program.take_all()] + self._pending
        self._pending = []
        if not todo:
            self._count_stats()
            return 0
        index = _flow_index(self.table)
        done = 0
        events = self.table.stats.events
        for drop, packets, waited in todo:
            hit = index.get(_drop_tuple(drop))
            if hit is None:
                if waited + 1 >= PENDING_POLLS:
                    events["drops_unmatched"] = events.get("drops_unmatched", 0) + packets
                else:
                    self._pending.append((drop, packets, waited + 1))
                continue
            fs = hit
            d = fs.drops
            if d is None:
                d = fs.drops = FlowDrops()
            if _is_ab(fs, drop):
                d.ab += packets
            else:
                d.ba += packets
            d.reasons[drop.reason] = d.reasons.get(drop.reason, 0) + packets
            fs.touched = True
            done += packets
        self.dropped += done
        self._count_stats()
        return done

    def _count_stats(self) -> None:
        events = self.table.stats.events
        for name, idx in (("drops_map_full", STAT_FULL), ("drops_not_ip", STAT_NOT_IP)):
            n = self.program.stat(idx)
            if n:
                events[name] = n

    def close(self) -> None:
        """Detach; drops still waiting for a flow count as unmatched (the capture is gone)."""
        if self._pending:
            events = self.table.stats.events
            events["drops_unmatched"] = events.get("drops_unmatched", 0) + sum(n for _, n, _ in self._pending)
            self._pending = []
        self.program.close()


_Tuple = tuple[str, bytes, bytes, int, int, int]
_TR_CODES = {"TCP": 6, "UDP": 17, "SCTP": 132}


def _drop_tuple(drop: DropKey) -> _Tuple:
    """The drop's flow key in the canonical order the index uses (lower endpoint first); ICMP is keyed by its
    id (as the flow table keys echo flows), transport protocols by their ports."""
    fam = socket.AF_INET if drop.family == 4 else socket.AF_INET6
    a, b = socket.inet_pton(fam, drop.src), socket.inet_pton(fam, drop.dst)
    if drop.proto in _ICMP:
        return _canonical(_NET[drop.family], a, b, 1, drop.icmp_id, drop.icmp_id)
    return _canonical(_NET[drop.family], a, b, drop.proto, drop.sport, drop.dport)


def _canonical(net: str, a: bytes, b: bytes, proto: int, pa: int, pb: int) -> _Tuple:
    if (a, pa) <= (b, pb):
        return net, a, b, proto, pa, pb
    return net, b, a, proto, pb, pa


def _flow_index(table: FlowTable) -> dict[_Tuple, FlowState]:
    """(canonical L3/L4 key) -> the most recent flow with it. Built only on polls that have drops (rare), so
    no per-packet cost."""
    out: dict[_Tuple, FlowState] = {}
    for fs in table.flows.values():
        if not fs.net_proto:
            continue
        if fs.icmp_type:
            key = _canonical(fs.net_proto, fs.ip_a, fs.ip_b, 1, fs.icmp_id, fs.icmp_id)
        elif fs.tr_proto in _TR_CODES:
            key = _canonical(fs.net_proto, fs.ip_a, fs.ip_b, _TR_CODES[fs.tr_proto], fs.port_a, fs.port_b)
        else:
            continue
        old = out.get(key)
        if old is None or fs.last > old.last:
            out[key] = fs
    return out


def _is_ab(fs: FlowState, drop: DropKey) -> bool:
    """The drop went from the flow's A side to its B side (same address at both ends: by port)."""
    if fs.ip_a != fs.ip_b:
        return _src(drop) == fs.ip_a
    return drop.sport == fs.port_a


def _src(drop: DropKey) -> bytes:
    return socket.inet_pton(socket.AF_INET if drop.family == 4 else socket.AF_INET6, drop.src)
