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

from netsonde.flow.capture import BaseCapture, CaptureError
from netsonde.flow.ebpf.loader import MAX_FLOWS, STAT_LOST, EbpfError, FlowProgram, monotonic_to_wall_offset_ns
from netsonde.flow.kerneldrops import KernelDrops
from netsonde.flow.table import FlowTable

log = logging.getLogger(__name__)

__all__ = ["EbpfCapture"]

Aggregate = tuple[bytes, bytes, int, int, int, int]


def _frame(sample: bytes, wire_len: int) -> bytes:
    """The sampled header padded to the packet's length, so the decoder sees the packet's real size."""
    return sample + bytes(max(0, wire_len - len(sample)))


class EbpfCapture(BaseCapture):
    """flow.bpf.o on clsact ingress + egress of `ifname` (in `netns_path`), read into `table`."""

    kind = "ebpf"

    def __init__(self, ifname: str, table: FlowTable, netns_path: str | None = None, *, poll_s: float = 1.0,
                 idle_s: float = 10.0, max_flows: int = MAX_FLOWS, drop_reasons: bool = False) -> None:
        super().__init__(ifname, table, netns_path)
        self.poll_s = poll_s
        self.idle_ns = int(idle_s * 1e9)
        self.max_flows = max_flows
        self.program: FlowProgram | None = None
        self._seen: dict[bytes, tuple[int, int]] = {}
        """key -> (packets, bytes) already folded into the table (the map's counters are cumulative)."""
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
        entries = list(prog.entries())
        if drain:
            evict = {k for k, _ in entries}
        else:
            evict = {k for k, v in entries if now - v.last_ns > self.idle_ns}
            live = len(entries) - len(evict)
            if live > self.max_flows * 3 // 4:  # map pressure: the oldest go until it is half full
                oldest = sorted((v.last_ns, k) for k, v in entries if k not in evict)
                evict.update(k for _, k in oldest[:live - self.max_flows // 2])
        aggs: list[Aggregate] = []
        packets = 0
        for key, v in entries:
            if key in evict:
                v = prog.take(key) or v
                self.evicted += 1
                done = self._seen.pop(key, (0, 0))
            else:
                done = self._seen.get(key, (0, 0))
                self._seen[key] = (v.packets, v.byte_count)
            dp, db = v.packets - done[0], v.byte_count - done[1]
            if dp > 0:
                aggs.append((key, _frame(v.sample, v.wire_len), dp, db, v.first_ns + off, v.last_ns + off))
                packets += dp
        for key, ts, wire, sample in prog.overflow():
            aggs.append((key, _frame(sample, wire), 1, wire, ts + off, ts + off))
            packets += 1
        if aggs:
            with self.lock:
                self.table.process_aggregates(aggs)
        if self.kernel_drops is not None:  # after the counts: a dropped packet's flow exists by now
            with self.lock:
                self.kernel_drops.poll()
        self.packets_received += packets
        self.packets_dropped = prog.stat(STAT_LOST)
        return packets
