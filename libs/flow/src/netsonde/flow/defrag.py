"""IPv4 / IPv6 fragment reassembly before flow keying (the `IPDefrag` capture option).

`IPDefragmenter.feed(frame, ts_ns, wire_len)` takes an Ethernet frame (optionally 802.1Q/QinQ tagged).
A frame that is not a fragment comes back unchanged. A fragment is held until its datagram is complete,
then the whole datagram comes back as one frame (link header + IP header without fragmentation + the
reassembled payload) with the number of fragments it was made of; until then `feed` returns None.
Completeness follows the lengths the IP headers declare, so fragments cut by the capture's snap length
(HeaderSize) still reassemble: the datagram's wire length is whole, its content as far as it was captured.

Memory is bounded: at most `max_datagrams` datagrams and about `max_bytes` bytes are held; beyond that
the oldest datagram is given up (`evicted`). A datagram still incomplete `timeout_ns` after its first
fragment is given up too (`timeouts`), like the kernel's `ipfrag_time`. Given-up fragments are handed back
by `expire()` / `feed()` in `given_up` so the flow table still counts them, as fragments, as it would
without the option. Overlapping fragments with different contents, or a datagram over 65535 bytes, is an
`errors` case (the datagram is given up).
"""

from __future__ import annotations

import struct
from collections import OrderedDict

_ETH_VLAN = (0x8100, 0x88A8, 0x9100)
_V6_EXT = {0, 43, 60}

Key = tuple[int, bytes, bytes, int]
"""A datagram: (IP version, source + destination, identification, protocol / next header)."""
Fragment = tuple[Key, bytes, int, bool, bytes, int, int]
"""(key, link + IP header, fragment offset, more fragments, captured payload, declared length, IP offset)."""

DEFAULT_TIMEOUT_NS = 30_000_000_000
DEFAULT_MAX_DATAGRAMS = 4096
DEFAULT_MAX_BYTES = 16 << 20


class _Datagram:
    """Fragments of one datagram so far."""

    __slots__ = ("first_ns", "head", "pieces", "size", "total", "frames", "mem")

    def __init__(self, first_ns: int) -> None:
        self.first_ns = first_ns
        self.head = b""
        """Link header + IP header (up to, without, the IPv6 fragment header) of the offset-0 fragment."""
        self.pieces: dict[int, tuple[int, bytes]] = {}
        """Fragment offset -> (payload length the IP header declares, payload bytes as captured)."""
        self.size = 0
        """Declared payload bytes received (duplicates once)."""
        self.total = -1
        """Payload length, known once the last fragment (MF clear) arrived."""
        self.frames: list[tuple[bytes, int, int]] = []
        """The original (frame, ts_ns, wire_len): given back as-is if the datagram is given up."""
        self.mem = 0
        """Bytes held for this datagram (the frames kept, payloads included twice at most)."""


class IPDefragmenter:
    """Reassembles IPv4 and IPv6 fragments of Ethernet frames; see the module docstring."""

    def __init__(
        self,
        timeout_ns: int = DEFAULT_TIMEOUT_NS,
        max_datagrams: int = DEFAULT_MAX_DATAGRAMS,
        max_bytes: int = DEFAULT_MAX_BYTES,
    ) -> None:
        self.timeout_ns = timeout_ns
        self.max_datagrams = max_datagrams
        self.max_bytes = max_bytes
        self.pending: OrderedDict[Key, _Datagram] = OrderedDict()
        self.held_bytes = 0
        self.reassembled = 0
        self.timeouts = 0
        self.evicted = 0
        self.errors = 0
        self.given_up: list[tuple[bytes, int, int]] = []
        """Frames of datagrams given up since the caller last emptied this list (oldest first)."""

    def feed(self, frame: bytes, ts_ns: int, wire_len: int) -> tuple[bytes, int, int] | None:
        """(frame, wire_len, fragments) to account now, or None while a datagram is incomplete."""
        b = frame
        off = 14
        if len(b) < 34:
            return frame, wire_len, 0
        etype = (b[12] << 8) | b[13]
        while etype in _ETH_VLAN and len(b) >= off + 4:
            etype = (b[off + 2] << 8) | b[off + 3]
            off += 4
        if etype == 0x0800:
            frag = self._ipv4(b, off)
        elif etype == 0x86DD:
            frag = self._ipv6(b, off)
        else:
            return frame, wire_len, 0
        if frag is None:
            return frame, wire_len, 0
        if self.pending:
            self.expire(ts_ns)
        return self._add(frame, ts_ns, wire_len, *frag)

    # --- header parsing: (key, head, fragment offset, more fragments, payload) or None ---------------------
    @staticmethod
    def _ipv4(b: bytes, off: int) -> Fragment | None:
        ihl = (b[off] & 0x0F) * 4
        fl = (b[off + 6] << 8) | b[off + 7]
        if not fl & 0x3FFF or ihl < 20 or len(b) < off + ihl:
            return None
        total = (b[off + 2] << 8) | b[off + 3]
        end = min(len(b), off + total) if total >= ihl else len(b)
        key = (4, b[off + 12 : off + 20], b[off + 4 : off + 6], b[off + 9])
        declared = total - ihl if total >= ihl else end - off - ihl
        return key, b[: off + ihl], (fl & 0x1FFF) * 8, bool(fl & 0x2000), b[off + ihl : end], declared, off

    @staticmethod
    def _ipv6(b: bytes, off: int) -> Fragment | None:
        if len(b) < off + 40:
            return None
        plen = (b[off + 4] << 8) | b[off + 5]
        end = min(len(b), off + 40 + plen) if plen else len(b)
        nh_at = off + 6
        nh = b[nh_at]
        p = off + 40
        while nh in _V6_EXT:
            if end < p + 8:
                return None
            nh_at = p
            nh = b[p]
            p += (b[p + 1] + 1) * 8
        if nh != 44 or end < p + 8:
            return None
        fo = (b[p + 2] << 8) | b[p + 3]
        key = (6, b[off + 8 : off + 40], b[p + 4 : p + 8], b[p])
        # head: everything before the fragment header, with the previous next-header set to the inner one
        head = bytearray(b[:p])
        head[nh_at] = b[p]
        declared = (off + 40 + plen if plen else end) - p - 8
        return key, bytes(head), fo & 0xFFF8, bool(fo & 1), b[p + 8 : end], declared, off

    # --- reassembly -------------------------------------------------------------------------------------
    def _add(
        self,
        frame: bytes,
        ts_ns: int,
        wire_len: int,
        key: Key,
        head: bytes,
        foff: int,
        more: bool,
        payload: bytes,
        declared: int,
        ip_off: int,
    ) -> tuple[bytes, int, int] | None:
        dg = self.pending.get(key)
        if dg is None:
            while self.pending and (
                len(self.pending) >= self.max_datagrams or self.held_bytes + 2 * len(frame) > self.max_bytes
            ):
                self._give_up(next(iter(self.pending)), "evicted")
            dg = self.pending[key] = _Datagram(ts_ns)
        dg.frames.append((frame, ts_ns, wire_len))
        dg.mem += 2 * len(frame)
        self.held_bytes += 2 * len(frame)
        old = dg.pieces.get(foff)
        if old is not None and (old[0] != declared or old[1][: len(payload)] != payload[: len(old[1])]):
            self._give_up(key, "errors")
            return None
        if old is None:
            dg.pieces[foff] = (declared, payload)
            dg.size += declared
        if foff == 0:
            dg.head = head
        if not more:
            dg.total = foff + declared
        if dg.total > 65535 or (dg.total >= 0 and foff + declared > dg.total):
            self._give_up(key, "errors")
            return None
        if dg.total < 0 or not dg.head or dg.size < dg.total:
            return None
        covered = 0
        data = bytearray()
        whole = True  # every byte so far captured: keep appending content
        for o in sorted(dg.pieces):
            n, p = dg.pieces[o]
            if o > covered:
                return None  # a hole (overlaps made size reach total): wait for the missing piece
            if whole:
                data += p[covered - o :]
                whole = len(p) == n
            covered = max(covered, o + n)
        if covered != dg.total:
            self._give_up(key, "errors")
            return None
        del self.pending[key]
        self.held_bytes -= dg.mem
        self.reassembled += 1
        hdr = bytearray(dg.head)
        if key[0] == 4:  # total length, fragment fields cleared, checksum recomputed
            ihl = len(hdr) - ip_off
            struct.pack_into("!H", hdr, ip_off + 2, ihl + dg.total)
            hdr[ip_off + 6] = hdr[ip_off + 7] = 0
            hdr[ip_off + 10] = hdr[ip_off + 11] = 0
            s = sum(struct.unpack_from(f"!{ihl // 2}H", hdr, ip_off))
            s = (s & 0xFFFF) + (s >> 16)
            s = (s & 0xFFFF) + (s >> 16)
            struct.pack_into("!H", hdr, ip_off + 10, ~s & 0xFFFF)
        else:  # payload length without the fragment header
            struct.pack_into("!H", hdr, ip_off + 4, len(hdr) - ip_off - 40 + dg.total)
        return bytes(hdr) + bytes(data), len(hdr) + dg.total, len(dg.frames)

    def expire(self, now_ns: int) -> int:
        """Give up datagrams older than the timeout (their frames go to `given_up`); returns how many."""
        n = 0
        limit = now_ns - self.timeout_ns
        while self.pending:
            key, dg = next(iter(self.pending.items()))
            if dg.first_ns > limit:
                break
            self._give_up(key, "timeouts")
            n += 1
        return n

    def flush(self) -> None:
        """Give up every pending datagram (capture stop): their frames go to `given_up`."""
        while self.pending:
            self._give_up(next(iter(self.pending)), "timeouts")

    def _give_up(self, key: Key, why: str) -> None:
        dg = self.pending.pop(key)
        self.held_bytes -= dg.mem
        setattr(self, why, getattr(self, why) + 1)
        self.given_up.extend(dg.frames)
