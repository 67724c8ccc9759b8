"""The `ebpf` capture: a TC program counts packets per header key in the kernel (netsonde.flow.ebpf); this
thread reads the kernel's flow map every `poll_s` seconds and folds the new counts into the node's FlowTable.

Each map entry carries the first 128 bytes of its first packet; `FlowTable.process_aggregates` decodes that
sample once with the same decoder AF_PACKET frames go through, so UUID, TrackingID, L2/L3 keying, Metric and
TCP flags come out exactly as for an afpacket capture of the same traffic; only counts come from the kernel.
Encapsulated packets give the outer flow and the inner flows parsed from the sample (see docs/ebpf.md for
the limits).

Eviction (the map is bounded, `MAX_FLOWS` entries): an entry idle for `idle_s` is taken out of the map
(lookup-and-delete: no packet counted twice or lost); when the map is more than 3/4 full the oldest entries
are taken out until it is half full. Packets the kernel could not put in a full map arrive through the ring
buffer, one record each. `PacketsReceived` = packets counted, `PacketsDropped` = packets the kernel could
neither map nor queue (ring buffer full).
"""

from __future__ import annotations

import logging
import time
from itertools import compress
from operator import itemgetter

import numpy as np

from netsonde.flow.capture import BaseCapture, CaptureError
from netsonde.flow.ebpf.loader import (MAX_FLOWS, STAT_LOST, EbpfError, FlowProgram, MapRead,
                                      monotonic_to_wall_offset_ns)
from netsonde.flow.kerneldrops import KernelDrops
from netsonde.flow.table import FlowTable

log = logging.getLogger(__name__)

__all__ = ["EbpfCapture"]

Aggregate = tuple[bytes, bytes, int, int, int, int]
_RACE_MARGIN_NS = 50_000_000
"""An entry whose last packet is older than the previous read minus this did not change since that read (a
TC program run takes well under a microsecond between taking its timestamp and adding its count)."""


def _frame(sample: bytes, wire_len: int) -> bytes:
    """The sampled header padded to the packet's length, so the decoder sees the packet's real size."""
    return sample + bytes(max(0, wire_len - len(sample)))


def _sample_frame(rec: np.void) -> bytes:
    """The frame of one map value (VAL_DTYPE record)."""
    return _frame(bytes(rec["sample"])[:int(rec["sample_len"])], int(rec["wire_len"]))


class EbpfCapture(BaseCapture):
    """flow.bpf.o on clsact ingress + egress of `ifname` (in `netns_path`), read into `table`."""

    kind = "ebpf"

    def __init__(self, ifname: str, table: FlowTable, netns_path: str | None = None, *, poll_s: float = 2.0,
                 idle_s: float = 10.0, max_flows: int = MAX_FLOWS, drop_reasons: bool = False) -> None:
        super().__init__(ifname, table, netns_path)
        self.poll_s = poll_s
        self.idle_ns = int(idle_s * 1e9)
        self.max_flows = max_flows
        self.program: FlowProgram | None = None
        self._seen = _Folded()
        """Per map entry, the counts already folded into the table (the map's counters are cumulative)."""
        self._read_ns = 0
        """CLOCK_MONOTONIC when the previous read of the maps started."""
        self.evicted = 0
        self.drop_reasons = drop_reasons
        self.kernel_drops: KernelDrops | None = None
        """Capture option DropReasons: the kfree_skb program and its attribution to flows (kerneldrops.py)."""

    def _open(self) -> None:
        try:
            self.program = FlowProgram.attach(self.ifname, self.max_flows)
            if self.drop_reasons:
                self.kernel_drops = KernelDrops.attach(self.table, self.program.ifindex)
        except EbpfError as e:
            if self.program is not None:  # DropReasons refused: nothing stays attached
                self.program.close()
                self.program = None
            raise CaptureError(f"ebpf on {self.ifname}: {e}") from e

    def _run(self) -> None:
        while not self._stop.wait(self.poll_s):
            self.poll()

    def _close(self) -> None:
        if self.program is None:
            return
        try:
            self.poll(drain=True)
        finally:
            if self.kernel_drops is not None:
                self.kernel_drops.close()
                self.kernel_drops = None
            self.program.close()  # filters and the clsact qdisc we created leave the interface
            self.program = None

    def poll(self, drain: bool = False) -> int:
        """Fold what the kernel counted since the last poll into the table; evict idle / oldest entries
        (all of them with `drain`). Returns the number of packets folded."""
        prog = self.program
        assert prog is not None
        off = monotonic_to_wall_offset_ns()
        now = time.clock_gettime_ns(time.CLOCK_MONOTONIC)
        parts: list[list[Aggregate]] = []  # each in the order of first packets
        packets = 0
        for m in prog.read_maps():
            packets += self._fold(prog, m, now, off, drain, parts)
        ring: list[Aggregate] = []
        parts.append(ring)
        self._read_ns = now
        for key, ts, wire, sample in prog.overflow():
            ring.append((key, _frame(sample, wire), 1, wire, ts + off, ts + off))
            packets += 1
        # in the order of the entries' first packets, as AF_PACKET sees them: an echo request before its reply
        # (RTT), a SYN before its SYN-ACK (a map's own order is its hash buckets'); merged only when needed
        parts = [p for p in parts if p]
        aggs = parts[0] if len(parts) == 1 else sorted((a for p in parts for a in p), key=itemgetter(4))
        if aggs:
            with self.lock:
                self.table.process_aggregates(aggs)
        if self.kernel_drops is not None:  # after the counts: a dropped packet's flow exists by now
            with self.lock:
                self.kernel_drops.poll()
        self.packets_received += packets
        self.packets_dropped = prog.stat(STAT_LOST)
        return packets

    def _fold(self, prog: FlowProgram, m: MapRead, now: int, off: int, drain: bool,
              parts: list[list[Aggregate]]) -> int:
        """Append the new counts of one map read to `parts` (evicted entries, then the others, each list in
        the order of first packets); take evicted entries out of the map.

        Vectorized first: only entries whose last packet came after the previous read (minus a margin for a
        packet counted while that read ran) or that are evicted reach Python. An entry skipped by mistake
        loses nothing: its counters are cumulative, the next change or its eviction folds the difference."""
        n = len(m.vals)
        if n == 0:
            return 0
        last = m.vals["last_ns"].astype(np.int64)
        if drain:
            evict = np.ones(n, dtype=bool)
        else:
            evict = now - last > self.idle_ns
            live = n - int(evict.sum())
            if live > self.max_flows * 3 // 4:  # map pressure: the oldest go until it is half full
                cand = np.flatnonzero(~evict)
                evict[cand[np.argsort(last[cand], kind="stable")[:live - self.max_flows // 2]]] = True
        changed = last >= self._read_ns - _RACE_MARGIN_NS
        seen, ks, kb = self._seen, m.key_size, m.keys
        first = m.vals["first_ns"]
        packets = 0
        evicted: list[Aggregate] = []
        parts.append(evicted)
        # evicted entries (idle, pressure, drain: few per poll): taken out of the map, their last counts folded
        ev_idx = np.flatnonzero(evict)
        for i in ev_idx[np.argsort(first[ev_idx], kind="stable")].tolist():
            key = kb[i * ks:(i + 1) * ks]
            v = prog.take(key)  # the counts up to the removal
            self.evicted += 1
            done = seen.pop(key)
            rec = m.vals[i]
            p, b, t1 = (v.packets, v.byte_count, v.last_ns) if v else (int(rec["packets"]), int(rec["bytes"]),
                                                                        int(rec["last_ns"]))
            frame = done[2] if done else _sample_frame(rec)
            dp, db = (p - done[0], b - done[1]) if done else (p, b)
            if dp > 0 or db > 0:
                evicted.append((key, frame, dp, db, int(rec["first_ns"]) + off, t1 + off))
                packets += dp
        # entries that changed since the previous read (in a busy map, nearly all of them): the hot loop
        idx = np.flatnonzero(changed & ~evict)
        if not len(idx):
            return packets
        idx = idx[np.argsort(first[idx], kind="stable")]
        aggs: list[Aggregate] = []
        parts.append(aggs)
        sub = m.vals[idx]
        # one numpy pass per column (keys as fixed-size byte strings, times made wall-clock); the deltas against
        # the folded counts in one vectorized pass: no Python loop per entry but two list comprehensions
        keys = np.frombuffer(kb, dtype=f"V{ks}")[idx].tolist()
        slot_of = seen.slot_of.get
        slots = [slot_of(k, -1) for k in keys]
        if -1 in slots:  # first sight: the sample, padded to the packet's length (decoded once by the table)
            for j, sl in enumerate(slots):
                if sl < 0:
                    slots[j] = seen.add(keys[j], _sample_frame(sub[j]))
        sl_arr = np.array(slots, dtype=np.intp)
        pk, by = sub["packets"].astype(np.int64), sub["bytes"].astype(np.int64)
        d_pk: np.ndarray = pk - seen.packets[sl_arr]
        d_by: np.ndarray = by - seen.bytes[sl_arr]
        seen.packets[sl_arr], seen.bytes[sl_arr] = pk, by
        frames = seen.frames
        rows = zip(keys, [frames[sl] for sl in slots], d_pk.tolist(), d_by.tolist(),
                   (sub["first_ns"].astype(np.int64) + off).tolist(), (sub["last_ns"].astype(np.int64) + off).tolist())
        moved: np.ndarray = (d_pk != 0) | (d_by != 0)  # (a read can fall between the kernel's two additions: either may move)
        aggs.extend(rows if moved.all() else compress(rows, moved.tolist()))
        return packets + int(d_pk[moved].sum())


class _Folded:
    """Per kernel map key, the packets and bytes already folded into the table and the entry's sample frame,
    kept in numpy arrays by slot so a read's deltas are one vectorized subtraction."""

    def __init__(self, size: int = 1024) -> None:
        self.slot_of: dict[bytes, int] = {}
        self.packets = np.zeros(size, dtype=np.int64)
        self.bytes = np.zeros(size, dtype=np.int64)
        self.frames: list[bytes] = [b""] * size
        self._free = list(range(size - 1, -1, -1))

    def add(self, key: bytes, frame: bytes) -> int:
        """A slot for a new key (folded counts 0)."""
        if not self._free:
            n = len(self.frames)
            self.packets = np.concatenate([self.packets, np.zeros(n, dtype=np.int64)])
            self.bytes = np.concatenate([self.bytes, np.zeros(n, dtype=np.int64)])
            self.frames.extend([b""] * n)
            self._free = list(range(2 * n - 1, n - 1, -1))
        sl = self._free.pop()
        self.slot_of[key] = sl
        self.frames[sl] = frame
        return sl

    def pop(self, key: bytes) -> tuple[int, int, bytes] | None:
        """(packets, bytes, frame) of a key leaving the map; its slot is freed."""
        sl = self.slot_of.pop(key, None)
        if sl is None:
            return None
        done = (int(self.packets[sl]), int(self.bytes[sl]), self.frames[sl])
        self.packets[sl] = self.bytes[sl] = 0
        self.frames[sl] = b""
        self._free.append(sl)
        return done
