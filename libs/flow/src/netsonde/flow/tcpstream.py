"""TCP stream reassembly for the application layer (the `ReassembleTCP` capture option).

One `TCPStreams` per flow table; each TCP flow gets two `HalfStream`s (A->B, B->A). Segments are put back
in sequence order: in-order data is delivered at once (to `on_data`, e.g. the DNS-over-TCP reader),
out-of-order segments wait in a bounded buffer (`max_buffer` bytes per direction, `max_total` for the whole
table) until the gap is filled; when a buffer is full the gap is skipped (counted). The counters are
Skydive's reassembly fields of `TCPMetric` (`flow/tcpassembler.go`): `ABPackets`/`ABBytes` (segments and
bytes delivered in order), `ABSegmentOutOfOrder`, `ABSegmentSkipped`, `ABSegmentSkippedBytes`,
`ABSawStart` (SYN seen), `ABSawEnd` (FIN or RST seen), and the same for BA.

Captures trim packets to `HeaderSize`: a segment whose payload was cut is delivered as far as it was
captured and the missing tail counts as skipped bytes.
"""

from __future__ import annotations

from collections.abc import Callable

_MOD = 1 << 32
_HALF = 1 << 31

DEFAULT_MAX_BUFFER = 256 << 10
DEFAULT_MAX_TOTAL = 64 << 20


class HalfStream:
    """One direction of a TCP connection."""

    __slots__ = (
        "next",
        "pending",
        "buffered",
        "packets",
        "bytes",
        "out_of_order",
        "skipped",
        "skipped_bytes",
        "saw_start",
        "saw_end",
    )

    def __init__(self) -> None:
        self.next = -1
        """Next expected sequence number (-1 until the first segment)."""
        self.pending: dict[int, tuple[bytes, int]] = {}
        """Out-of-order segments by sequence number: (captured payload, bytes cut by the snap length)."""
        self.buffered = 0
        self.packets = self.bytes = self.out_of_order = self.skipped = self.skipped_bytes = 0
        self.saw_start = self.saw_end = False

    def metric(self, prefix: str) -> dict[str, int]:
        return {
            f"{prefix}Packets": self.packets,
            f"{prefix}Bytes": self.bytes,
            f"{prefix}SegmentOutOfOrder": self.out_of_order,
            f"{prefix}SegmentSkipped": self.skipped,
            f"{prefix}SegmentSkippedBytes": self.skipped_bytes,
            f"{prefix}SawStart": int(self.saw_start),
            f"{prefix}SawEnd": int(self.saw_end),
        }


OnData = Callable[[object, bool, bytes, int], None]
"""on_data(flow key, from A, in-order bytes, ts_ns)."""


class TCPStreams:
    """The reassembly state of every TCP flow of a table, keyed by the flow's table key."""

    def __init__(
        self,
        on_data: OnData | None = None,
        max_buffer: int = DEFAULT_MAX_BUFFER,
        max_total: int = DEFAULT_MAX_TOTAL,
    ) -> None:
        self.on_data = on_data
        self.max_buffer = max_buffer
        self.max_total = max_total
        self.streams: dict[object, tuple[HalfStream, HalfStream]] = {}
        self.buffered = 0
        self.overflows = 0
        """Gaps skipped because a buffer limit was reached (the rest count in each stream's `skipped`)."""

    def segment(
        self, key: object, from_a: bool, seq: int, flags: int, payload: bytes, missing: int, ts_ns: int
    ) -> HalfStream:
        """Account one TCP segment: `payload` as captured, `missing` bytes of it cut by the snap length."""
        pair = self.streams.get(key)
        if pair is None:
            pair = self.streams[key] = (HalfStream(), HalfStream())
        hs = pair[0] if from_a else pair[1]
        if flags & 0x02:  # SYN: data starts after it
            hs.saw_start = True
            seq = (seq + 1) % _MOD
            if hs.next < 0:
                hs.next = seq
        if flags & 0x05:  # FIN or RST
            hs.saw_end = True
        n = len(payload) + missing
        if not n:
            return hs
        if hs.next < 0:
            hs.next = seq  # picked up mid-stream
        d = (seq - hs.next) % _MOD
        if d == 0:
            self._deliver(key, hs, from_a, payload, missing, ts_ns)
            self._drain(key, hs, from_a, ts_ns)
        elif d < _HALF:  # ahead of the expected sequence: hold it until the gap is filled
            hs.out_of_order += 1
            if seq not in hs.pending:
                if hs.buffered + n > self.max_buffer or self.buffered + n > self.max_total:
                    # full: give up the oldest gap (counted), deliver what follows it, then retry
                    self.overflows += 1
                    if not hs.pending:
                        self._skip_to(hs, seq)
                    else:
                        self._skip_to(hs, min(hs.pending, key=lambda s: (s - hs.next) % _MOD))
                        self._drain(key, hs, from_a, ts_ns)
                    return self.segment(key, from_a, seq, flags & ~0x07, payload, missing, ts_ns)
                hs.pending[seq] = (payload, missing)
                hs.buffered += n
                self.buffered += n
        else:  # behind: a retransmission, maybe with new data at its end
            cut = _MOD - d
            if n > cut:
                data = payload[cut:]
                self._deliver(key, hs, from_a, data, n - cut - len(data), ts_ns)
                self._drain(key, hs, from_a, ts_ns)
        return hs

    def _deliver(
        self, key: object, hs: HalfStream, from_a: bool, data: bytes, missing: int, ts_ns: int
    ) -> None:
        hs.packets += 1
        hs.bytes += len(data)
        hs.next = (hs.next + len(data) + missing) % _MOD
        if missing:
            hs.skipped_bytes += missing
        if self.on_data is not None and data:
            self.on_data(key, from_a, data, ts_ns)

    def _drain(self, key: object, hs: HalfStream, from_a: bool, ts_ns: int) -> None:
        while hs.pending:
            for seq in list(hs.pending):
                d = (hs.next - seq) % _MOD
                if d < _HALF:  # starts at or before `next`: deliver what is new in it
                    data, missing = hs.pending.pop(seq)
                    n = len(data) + missing
                    self._unbuffer(hs, n)
                    if d < n:
                        tail = data[d:]
                        self._deliver(key, hs, from_a, tail, n - d - len(tail), ts_ns)
                    break
            else:
                return

    def _skip_to(self, hs: HalfStream, seq: int) -> None:
        gap = (seq - hs.next) % _MOD
        hs.skipped += 1
        hs.skipped_bytes += gap
        hs.next = seq

    def _unbuffer(self, hs: HalfStream, n: int) -> None:
        hs.buffered -= n
        self.buffered -= n

    def metric(self, key: object) -> dict[str, int]:
        """Skydive's reassembly TCPMetric fields of one flow ({} if it never carried TCP)."""
        pair = self.streams.get(key)
        if pair is None:
            return {}
        return {**pair[0].metric("AB"), **pair[1].metric("BA")}

    def close(self, key: object) -> None:
        """Forget a flow (expired): what is still held counts as skipped."""
        pair = self.streams.pop(key, None)
        if pair is None:
            return
        for hs in pair:
            if hs.pending:
                hs.skipped += len(hs.pending)
                hs.skipped_bytes += hs.buffered
                self.buffered -= hs.buffered
                hs.pending.clear()
                hs.buffered = 0
