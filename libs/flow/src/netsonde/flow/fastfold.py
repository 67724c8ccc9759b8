"""The batch intake of a FlowTable: whole blocks and frame lists folded in C, pre-folded aggregates.

`_fastpath.c` counts packets with plain headers against a per-header key ("fastkey") without Python; this
mixin builds the flow the first time a fastkey appears (`_fast_new`), sends the frames C cannot fold
through the table's per-frame path in timestamp order (`_merge`), and moves the C counters into the flows
at each `harvest()`. `process_aggregates` does the same for packets a caller already folded per header
(the sFlow scanner, the eBPF flow map). The per-frame accounting itself lives in `table.py`.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, Iterable

from .decode import DecodeError, decode_ethernet
from .flowstate import AggLevel, FlowState, TableStats

if TYPE_CHECKING:
    from .decode import Segment


class FastFold:
    """Mixin of FlowTable (which sets these attributes in its __init__ and defines the per-frame methods)."""

    flows: dict[tuple[int, str], FlowState]
    stats: TableStats
    _acc: Any
    """The C `_fastpath.Accumulator`, or None without the extension."""
    _fast: dict[bytes, tuple[FlowState, bool]]
    _agg: dict[bytes, list[AggLevel]]
    _per_frame: bool

    if TYPE_CHECKING:
        def process_frame(self, frame: bytes, ts_ms: int, wire_len: int | None = None,
                          sampling_rate: int = 1, ts_ns: int | None = None) -> bool: ...
        def _lookup(self, seg: Segment, parent: str, ts_ms: int) -> FlowState | None: ...
        def _bad(self, kind: str) -> None: ...
        @staticmethod
        def has_events(flags: int, icmp: int) -> bool: ...
        def _events(self, fs: FlowState, ab: bool, flags: int, ttl: int, icmp: int, t_ns: int) -> None: ...

    def process_frames(self, frames: list[tuple[bytes, int, int]]) -> None:
        """The batch hot path: account (frame, ts_ns, wire_len) tuples (pcap replay, libpcap captures)."""
        if self._per_frame:  # raw packets, nDPI or packet options need every frame
            self.process_frames_reference(frames)
            return
        fresh, slow, _ = self._acc.fold_frames(frames)
        self._merge(fresh, slow)

    process_batch = process_frames

    def process_frames_reference(self, frames: Iterable[tuple[bytes, int, int]]) -> None:
        """Account (frame, ts_ns, wire_len) tuples one by one through the full decoder (the reference)."""
        pf = self.process_frame
        for frame, ts_ns, wire_len in frames:
            pf(frame, ts_ns // 1_000_000, wire_len, 1, ts_ns)

    def process_aggregates(self, aggs: Iterable[tuple[bytes, bytes, int, int, int, int]]) -> None:
        """Account packets the caller already folded per header (the sFlow collector's scanner does).

        Each item is (key, sample_frame, packets, bytes, first_ts_ns, last_ts_ns), `key` being any bytes
        that identify every header field the flow table looks at. The first sight of a key is decoded in
        full from `sample_frame` (encapsulated packets give one flow per level, linked by ParentUUID);
        later ones hit a cache, so per-packet Python work disappears."""
        cache = self._agg
        flows = self.flows
        stats = self.stats
        for fk, sample, npk, nby, t0, t1 in aggs:
            chain = cache.get(fk)
            if chain is None or chain[0][0].key not in flows:
                chain = self._agg_miss(fk, sample, t0)
                if chain is None:
                    continue
            stats.packets += npk
            stats.bytes += nby
            ms1 = t1 // 1_000_000
            for fs, ab, events, flags, ttl, icmp, hdr in chain:
                b = nby - npk * hdr
                if ab:
                    fs.ab_p += npk
                    fs.ab_b += b
                else:
                    fs.ba_p += npk
                    fs.ba_b += b
                if ms1 > fs.last:
                    fs.last = ms1
                fs.touched = True
                if events:
                    self._events(fs, ab, flags, ttl, icmp, t0)

    def _agg_miss(self, fk: bytes, sample: bytes, ts_ns: int) -> list[AggLevel] | None:
        try:
            segs = decode_ethernet(sample)
        except (DecodeError, IndexError, struct.error) as e:
            self._bad(e.kind if isinstance(e, DecodeError) else "malformed")
            return None
        chain: list[AggLevel] = []
        parent = ""
        outer = segs[0].length
        for seg in segs:
            fs = self._lookup(seg, parent, ts_ns // 1_000_000)
            if fs is None:
                return None
            flags, icmp = seg.tcp_flags, seg.icmp_raw_type
            chain.append((fs, fs.is_ab(seg), self.has_events(flags, icmp), flags, seg.ttl, icmp,
                          outer - seg.length))
            if fs.fastkeys is None:
                fs.fastkeys = []
            fs.fastkeys.append(fk)
            parent = fs.uuid
        self._agg[fk] = chain
        return chain

    def process_block(self, block: memoryview | bytes) -> int:
        """Account one TPACKET_V3 ring block; returns its packet count.

        With the C extension, packets whose headers are plain (no tunnel, fragment, VLAN tag or IPv6
        extension header) are counted in C against a per-header key ("fastkey"); Python only builds the
        flow the first time a fastkey appears and collects the counters at each `updates()`. Other packets
        go through the full decoder, in timestamp order with the new fastkeys."""
        if self._per_frame:  # raw packets, nDPI or packet options need every frame
            slow = walk_block(block)
            self._process_slow(slow)
            return len(slow)
        fresh, slow, n = self._acc.fold_block(block)
        self._merge(fresh, slow)
        return n

    def _merge(self, fresh: list, slow: list) -> None:
        """Handle new fastkeys and slow frames in the order of their timestamps, so that the packet that
        creates a flow (its Start and A side) is the same as on the per-frame path."""
        if not slow:
            for item in fresh:
                self._fast_new(*item)
            return
        if not fresh:
            self._process_slow(slow)
            return
        i = j = 0
        na, ns = len(fresh), len(slow)
        while i < na or j < ns:
            if j >= ns or (i < na and fresh[i][2] <= slow[j][1]):
                self._fast_new(*fresh[i])
                i += 1
            else:
                self._process_slow(slow[j:j + 1])
                j += 1

    def _fast_new(self, fk: bytes, sample: bytes, ts_ns: int, wire: int) -> None:
        """First packet of a fastkey (already counted in C): find or create its flow, note TCP/ICMP events."""
        try:
            segs = decode_ethernet(sample, wire)
        except (DecodeError, IndexError, struct.error) as e:  # cannot happen: C checked the headers
            self._bad(e.kind if isinstance(e, DecodeError) else "malformed")
            return
        seg = segs[0]
        fs = self._lookup(seg, "", ts_ns // 1_000_000)
        if fs is None:
            return
        ab = fs.is_ab(seg)
        self._fast[fk] = (fs, ab)
        if fs.fastkeys is None:
            fs.fastkeys = []
        fs.fastkeys.append(fk)
        fs.touched = True
        self._events(fs, ab, seg.tcp_flags, seg.ttl, seg.icmp_raw_type, ts_ns)

    def harvest(self) -> None:
        """Move the counters gathered in C since the previous call into the flows (done by updates())."""
        if self._acc is None:
            return
        fast = self._fast
        stats = self.stats
        orphans = []
        for fk, npk, nby, tl in self._acc.drain():
            stats.packets += npk
            stats.bytes += nby
            hit = fast.get(fk)
            if hit is None:  # its flow was refused (table full): let the key come back as new
                orphans.append(fk)
                continue
            fs, ab = hit
            if ab:
                fs.ab_p += npk
                fs.ab_b += nby
            else:
                fs.ba_p += npk
                fs.ba_b += nby
            ms = tl // 1_000_000
            if ms > fs.last:
                fs.last = ms
            fs.touched = True
        if orphans:
            self._acc.forget(orphans)

    def _process_slow(self, slow: list[tuple[bytes, int, int, int]]) -> None:
        pf = self.process_frame
        for frame, ts_ns, wire, vlan in slow:
            if vlan >= 0:  # the kernel stripped the outermost tag into metadata: put it back
                tag = struct.pack("!HH", vlan >> 16, vlan & 0xFFFF)
                frame = frame[:12] + tag + frame[12:]
                wire += 4
            pf(frame, ts_ns // 1_000_000, wire, 1, ts_ns)

_TP3 = struct.Struct("=IIIIIIHHIIHH")


def walk_block(block: memoryview | bytes) -> list[tuple[bytes, int, int, int]]:
    """Pure Python TPACKET_V3 block walk (used when the C extension is missing)."""
    num, off = struct.unpack_from("=II", block, 12)
    out = []
    for _ in range(num):
        nxt, sec, nsec, snap, ln, status, mac, _net, _rxh, tci, tpid, _pad = _TP3.unpack_from(block, off)
        vlan = (tci & 0xFFFF) | ((tpid or 0x8100) << 16) if status & 0x10 else -1
        out.append((bytes(block[off + mac:off + mac + snap]), sec * 1_000_000_000 + nsec, ln, vlan))
        if not nxt:
            break
        off += nxt
    return out
