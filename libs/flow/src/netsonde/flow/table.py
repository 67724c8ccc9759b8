"""The flow table: packets in, Skydive-shaped flow updates out.

One `FlowTable` per capture per interface. Frames go in through `process_frame` (one Ethernet frame, the
reference path, also used for sFlow samples and pcap import), `process_block` / `process_frames` (the hot
path: a whole TPACKET_V3 block or a list of frames counted in C, see `_fastpath.c`) or
`process_aggregates` (packets the caller already folded per header, e.g. sFlow samples). `updates(now_ms)`
returns the flows touched since the previous call with `LastUpdateMetric` = delta, plus the flows that
expired; `flush()` empties the table.

Keys follow Skydive (`flow/flow.go`, `flow/hash.go`): xxHash64 over the network pair, the transport pair (for
a tunnel's UDP: the VNI and destination port only), ICMP type/code/id -> L3 key; then the MACs and VLANs ->
L2 key (in layer key mode L2, or when there is no network layer); then the parent UUID -> table key.
Each pair is hashed in a canonical order, so both directions, and every capture point the packet crosses,
give the same TrackingID (hex L2 key) and L3TrackingID (hex L3 key). UUID = xxHash64 seeded with the table
key over Start (ms, int64 big-endian) and the NodeTID.
"""

from __future__ import annotations

import socket
import struct
from dataclasses import dataclass, field
from typing import Iterable

import msgspec
import xxhash

from netsonde.common.native import slow_path_allowed
from netsonde.common.bus.flows import Flow, FlowLayer, FlowMetric, ICMPLayer, IPMetric, RawPacket, TCPMetric

from .decode import ACK, FIN, ICMP_REQUESTS, RST, SYN, DecodeError, Segment, decode_ethernet, decode_ip

try:
    from . import _fastpath
except ImportError as _exc:  # not built: an error, unless NETSONDE_ALLOW_SLOW_PATH=1 allows the Python path
    slow_path_allowed("netsonde.flow._fastpath", _exc)
    _fastpath = None

_Q = struct.Struct("!Q")
_ICMP_KINDS = {"": 0, "UNKNOWN": 1, "ECHO": 2, "DESTINATION_UNREACHABLE": 3, "SOURCE_QUENCH": 4,
               "REDIRECT": 5, "ROUTER": 6, "TIME_EXCEEDED": 7, "PARAMETER_PROBLEM": 8, "TIMESTAMP": 9,
               "NEIGHBOR": 10, "PACKET_TOO_BIG": 11}
_NET_CODES = {"": b"\x00", "IPV4": b"\x04", "IPV6": b"\x06"}
_TR_CODES = {"": 0, "TCP": 6, "UDP": 17, "SCTP": 132}

DEFAULT_APP_TIMEOUTS_MS = {"ARP": 10_000, "DNS": 10_000}
"""Early expiry per Application (Skydive's `flow.application_timeout`)."""


@dataclass
class TableStats:
    """Counters of one table; the probe exports them as metrics and in CaptureStatus."""

    packets: int = 0
    bytes: int = 0
    flows_created: int = 0
    flows_expired: int = 0
    flows_dropped: int = 0
    """New flows refused because the table was full (`max_entries`)."""
    decode_errors: dict[str, int] = field(default_factory=dict)
    """Frames that could not be decoded, by kind (truncated, malformed ...); each is counted, none raises."""
    events: dict[str, int] = field(default_factory=dict)
    """Capture option counters (`options.py`): defrag_reassembled, defrag_timeouts, defrag_evicted,
    defrag_errors, tcp_buffer_overflows, layer_errors."""

    @property
    def bad_packets(self) -> int:
        return sum(self.decode_errors.values())


class FlowState:
    """Mutable per-flow state (kept small: __slots__, ints and bytes only until an update is built)."""

    __slots__ = ("key", "uuid", "tracking_id", "l3_tracking_id", "parent_uuid", "layers_path", "application",
                 "mac_a", "mac_b", "vlan", "net_proto", "ip_a", "ip_b", "net_id", "tr_proto", "port_a",
                 "port_b", "tr_id", "tunnel", "icmp_type", "icmp_code", "icmp_id", "ab_p", "ab_b", "ba_p",
                 "ba_b", "start", "last", "rtt", "rtt_t0", "sent", "tcp", "frags", "frag_err", "finish",
                 "touched", "raw", "raw_count", "fastkeys", "sampling", "dpi", "extra")

    def __init__(self) -> None:
        self.ab_p = self.ab_b = self.ba_p = self.ba_b = 0
        self.rtt = 0
        self.rtt_t0 = 0
        self.sent = (0, 0, 0, 0)
        self.tcp: list[int] | None = None
        self.frags = self.frag_err = 0
        self.finish = "NOT_FINISHED"
        self.touched = True
        self.raw: list[RawPacket] | None = None
        self.raw_count = 0
        self.fastkeys: list[bytes] | None = None
        self.sampling = 0
        self.dpi: tuple[str, str] | None = None
        """(application, category) once nDPI decided; None while undecided or without DPI."""
        self.extra: dict | None = None
        """Extra layers (DNS, DHCPv4, VRRPv2) decoded by the ExtraLayers option."""

    def is_ab(self, seg: Segment) -> bool:
        if self.net_proto and self.ip_a != self.ip_b:
            return seg.ip_src == self.ip_a
        if self.net_proto and not self.tunnel and self.port_a != self.port_b:
            return seg.sport == self.port_a
        return seg.mac_src == self.mac_a


class FlowTable:
    """Aggregates packets into flows keyed like Skydive; see the module docstring."""

    def __init__(self, node_tid: str, capture_id: str = "", layer_key_mode: str = "L2",
                 extra_tcp_metric: bool = False, *, expire_ms: int = 600_000, finished_hold_ms: int = 5_000,
                 max_entries: int = 500_000, raw_packet_limit: int = 0,
                 app_timeouts_ms: dict[str, int] | None = None, ndpi: bool = False, ip_defrag: bool = False,
                 reassemble_tcp: bool = False, extra_layers: int = 0) -> None:
        if layer_key_mode not in ("L2", "L3"):
            raise ValueError(f"layer_key_mode must be L2 or L3, not {layer_key_mode!r}")
        self.node_tid = node_tid
        self.capture_id = capture_id
        self.l2_mode = layer_key_mode == "L2"
        self.extra_tcp_metric = extra_tcp_metric
        self.expire_ms = expire_ms
        self.finished_hold_ms = finished_hold_ms
        self.max_entries = max_entries
        self.raw_packet_limit = raw_packet_limit
        self.app_timeouts_ms = DEFAULT_APP_TIMEOUTS_MS if app_timeouts_ms is None else app_timeouts_ms
        self._dpi = None
        if ndpi:  # deep packet inspection needs payloads: every packet takes the per-frame path
            from .dpi import Classifier
            self._dpi = Classifier()
        self.flows: dict[tuple[int, str], FlowState] = {}
        self.stats = TableStats()
        self._fast: dict[bytes, tuple[FlowState, bool]] = {}
        self._acc = _fastpath.Accumulator() if _fastpath is not None else None
        self._agg: dict[bytes, list[tuple[FlowState, bool, int, int, int, int]]] = {}
        self._frag_owner: dict[tuple[bytes, bytes, int], FlowState] = {}
        self._last_update_ms = 0
        self._opts = None
        if ip_defrag or reassemble_tcp or extra_layers:  # per-frame path; without them the fast path stays
            from .options import PacketOptions
            self._opts = PacketOptions(self, ip_defrag, reassemble_tcp, extra_layers)
        self._per_frame = self._acc is None or bool(raw_packet_limit) or self._dpi is not None \
            or self._opts is not None
        """Every packet through the full decoder (the C fold cannot serve these options)."""

    def __len__(self) -> int:
        return len(self.flows)

    # --- packets in -----------------------------------------------------------------------------------
    def process_frame(self, frame: bytes, ts_ms: int, wire_len: int | None = None, sampling_rate: int = 1,
                      ts_ns: int | None = None) -> bool:
        """Account one Ethernet frame. Returns False (and counts it) when it cannot be decoded."""
        frags = 0
        if self._opts is not None and self._opts.defrag is not None:
            t_ns = ts_ns if ts_ns is not None else ts_ms * 1_000_000
            held = self._opts.defrag_frame(frame, t_ns, wire_len if wire_len is not None else len(frame))
            self._opts.replay_given_up()
            if held is None:
                return True  # a fragment of a datagram still incomplete
            frame, wire_len, frags = held
        return self.account_frame(frame, ts_ns if ts_ns is not None else ts_ms * 1_000_000, wire_len,
                                  sampling_rate, frags)

    def account_frame(self, frame: bytes, ts_ns: int, wire_len: int | None = None, sampling_rate: int = 1,
                      frags: int = 0) -> bool:
        """Decode and count one frame (after defragmentation); `frags` = fragments it was made of."""
        ts_ms = ts_ns // 1_000_000
        try:
            segs = decode_ethernet(frame, wire_len)
        except DecodeError as e:
            self._bad(e.kind)
            return False
        except (IndexError, struct.error):
            self._bad("malformed")
            return False
        fs = self._account(segs, frame, ts_ms, ts_ns, sampling_rate)
        if frags and fs is not None:
            self._frag_flow(segs).frags += frags
        return True

    def _frag_flow(self, segs: list[Segment]) -> FlowState:
        """The flow of the outermost segment (the one reassembled) of the packet just accounted."""
        l3, l2 = self.hash_keys(segs[0])
        return self.flows[(l2, "")]

    def process_ip_packet(self, packet: bytes, ts_ms: int, wire_len: int | None = None,
                          sampling_rate: int = 1) -> bool:
        """Account one raw IP packet (no link layer, e.g. pcap LINKTYPE_RAW)."""
        try:
            segs = decode_ip(packet, wire_len)
        except (DecodeError, IndexError, struct.error) as e:
            self._bad(e.kind if isinstance(e, DecodeError) else "malformed")
            return False
        self._account(segs, packet, ts_ms, None, sampling_rate)
        return True

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
            for fs, ab, flags, ttl, icmp, hdr in chain:
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
                if flags > 0:
                    if flags & (SYN | FIN | RST):
                        self._tcp_flags(fs, ab, flags, ttl, t0)
                elif icmp >= 0 and not fs.rtt:
                    if icmp in ICMP_REQUESTS:
                        if ab and not fs.rtt_t0:
                            fs.rtt_t0 = t0
                    elif fs.rtt_t0 and not ab:
                        fs.rtt = max(1, t0 - fs.rtt_t0)

    def _agg_miss(self, fk: bytes, sample: bytes, ts_ns: int) -> list | None:
        try:
            segs = decode_ethernet(sample)
        except (DecodeError, IndexError, struct.error) as e:
            self._bad(e.kind if isinstance(e, DecodeError) else "malformed")
            return None
        chain = []
        parent = ""
        outer = segs[0].length
        for seg in segs:
            fs = self._lookup(seg, parent, ts_ns // 1_000_000)
            if fs is None:
                return None
            chain.append((fs, fs.is_ab(seg), seg.tcp_flags, seg.ttl, seg.icmp_raw_type, outer - seg.length))
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
            slow = _walk_block(block)
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
        if seg.tcp_flags > 0:
            if seg.tcp_flags & (SYN | FIN | RST):
                self._tcp_flags(fs, ab, seg.tcp_flags, seg.ttl, ts_ns)
        elif seg.icmp_raw_type >= 0 and not fs.rtt:
            if seg.icmp_raw_type in ICMP_REQUESTS:
                if ab and not fs.rtt_t0:
                    fs.rtt_t0 = ts_ns
            elif fs.rtt_t0 and not ab:
                fs.rtt = max(1, ts_ns - fs.rtt_t0)

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

    def _bad(self, kind: str) -> None:
        errs = self.stats.decode_errors
        errs[kind] = errs.get(kind, 0) + 1

    def _account(self, segs: list[Segment], frame: bytes, ts_ms: int, ts_ns: int | None,
                 sampling_rate: int) -> FlowState | None:
        stats = self.stats
        parent = ""
        fs: FlowState | None = None
        for i, seg in enumerate(segs):
            if seg.fragment and seg.ip_id >= 0 and not seg.tr_proto and not seg.icmp_type:
                owner = self._frag_owner.get((seg.ip_src, seg.ip_dst, seg.ip_id))
                if owner is not None and owner.key in self.flows:
                    fs = owner
                    self._count(fs, seg, ts_ms, ts_ns, sampling_rate)
                    fs.frags += 1
                    parent = fs.uuid
                    continue
            fs = self._lookup(seg, parent, ts_ms)
            if fs is None:
                return None
            self._count(fs, seg, ts_ms, ts_ns, sampling_rate)
            if seg.fragment:
                fs.frags += 1
                if seg.frag_error:
                    fs.frag_err += 1
                if seg.tr_proto or seg.icmp_type:
                    if len(self._frag_owner) >= 65_536:  # bounded: oldest datagrams forgotten
                        self._frag_owner.clear()
                    self._frag_owner[(seg.ip_src, seg.ip_dst, seg.ip_id)] = fs
            if self.raw_packet_limit and i == 0:
                self._keep_raw(fs, frame, ts_ms)
            if self._dpi is not None and fs.dpi is None and seg.ip_off >= 0 and i == len(segs) - 1:
                self._inspect(fs, seg, frame, ts_ms)
            if self._opts is not None and i == len(segs) - 1:
                self._opts.packet(fs, seg, frame, ts_ns if ts_ns is not None else ts_ms * 1_000_000)
            parent = fs.uuid
        if segs:
            stats.packets += 1
            stats.bytes += segs[0].length
        return fs

    def _count(self, fs: FlowState, seg: Segment, ts_ms: int, ts_ns: int | None, rate: int) -> None:
        ab = fs.is_ab(seg)
        n = seg.length * rate
        if ab:
            fs.ab_p += rate
            fs.ab_b += n
        else:
            fs.ba_p += rate
            fs.ba_b += n
        if rate > 1:
            fs.sampling = rate
        if ts_ms > fs.last:
            fs.last = ts_ms
        fs.touched = True
        t_ns = ts_ns if ts_ns is not None else ts_ms * 1_000_000
        if seg.tcp_flags >= 0:
            if seg.tcp_flags & (SYN | FIN | RST):
                self._tcp_flags(fs, ab, seg.tcp_flags, seg.ttl, t_ns)
        elif seg.icmp_raw_type >= 0 and not fs.rtt:
            if seg.icmp_raw_type in ICMP_REQUESTS:
                if ab and not fs.rtt_t0:
                    fs.rtt_t0 = t_ns
            elif fs.rtt_t0 and not ab:
                fs.rtt = max(1, t_ns - fs.rtt_t0)

    def _tcp_flags(self, fs: FlowState, ab: bool, flags: int, ttl: int, t_ns: int) -> None:
        if flags & SYN:
            if not flags & ACK:
                if ab and not fs.rtt_t0:
                    fs.rtt_t0 = t_ns
            elif not ab and fs.rtt_t0 and not fs.rtt:
                fs.rtt = max(1, t_ns - fs.rtt_t0)
        if flags & RST:
            fs.finish = "TCP_RST"
        elif flags & FIN and fs.finish == "NOT_FINISHED":
            fs.finish = "TCP_FIN"
        if self.extra_tcp_metric:
            tcp = fs.tcp
            if tcp is None:
                tcp = fs.tcp = [0] * 8
            ms = t_ns // 1_000_000
            o = 0 if ab else 1
            if flags & SYN and not tcp[0 + o]:
                tcp[0 + o] = ms
                tcp[2 + o] = ttl
            if flags & FIN and not tcp[4 + o]:
                tcp[4 + o] = ms
            if flags & RST and not tcp[6 + o]:
                tcp[6 + o] = ms

    def _inspect(self, fs: FlowState, seg: Segment, frame: bytes, ts_ms: int) -> None:
        assert self._dpi is not None
        r = self._dpi.feed(fs.key, frame[seg.ip_off:], ts_ms, fs.is_ab(seg), 4 if seg.net_proto == "IPV4" else 6,
                           seg.ip_proto, seg.sport, seg.dport, seg.length)
        if r is not None:
            fs.dpi = r
            if r[0] != "Unknown":
                fs.application = r[0]

    def _keep_raw(self, fs: FlowState, frame: bytes, ts_ms: int) -> None:
        lim = self.raw_packet_limit
        if lim > 0 and fs.raw_count >= lim:
            return
        if fs.raw is None:
            fs.raw = []
        if len(fs.raw) < 10:
            fs.raw.append(RawPacket(Timestamp=ts_ms, Index=fs.raw_count, Data=bytes(frame)))
        fs.raw_count += 1

    # --- keys -----------------------------------------------------------------------------------------
    def _lookup(self, seg: Segment, parent: str, ts_ms: int) -> FlowState | None:
        l3, l2 = self.hash_keys(seg)
        key = (l2, parent)
        fs = self.flows.get(key)
        if fs is not None:
            return fs
        if len(self.flows) >= self.max_entries:
            self.stats.flows_dropped += 1
            return None
        fs = FlowState()
        fs.key = key
        fs.tracking_id = f"{l2:016x}"
        fs.l3_tracking_id = f"{l3:016x}"
        fs.parent_uuid = parent
        fs.start = fs.last = ts_ms
        h = xxhash.xxh64(seed=xxhash.xxh64_intdigest(_Q.pack(l2) + parent.encode()))
        h.update(_Q.pack(ts_ms & 0xFFFFFFFFFFFFFFFF))
        h.update(self.node_tid.encode())
        fs.uuid = h.hexdigest()
        fs.layers_path = seg.layers_path
        fs.application = seg.ndpi or seg.application
        fs.mac_a, fs.mac_b, fs.vlan = seg.mac_src, seg.mac_dst, seg.vlan
        fs.net_proto, fs.net_id = seg.net_proto, seg.net_id
        fs.tr_proto, fs.tr_id, fs.tunnel = seg.tr_proto, seg.tr_id, seg.tunnel
        fs.icmp_type, fs.icmp_code, fs.icmp_id = seg.icmp_type, seg.icmp_code, seg.icmp_id
        a_first = True
        if seg.icmp_raw_type >= 0 and seg.icmp_type == "ECHO" and seg.icmp_raw_type not in ICMP_REQUESTS:
            a_first = False  # a reply seen first: A is still the requester
        if a_first:
            fs.ip_a, fs.ip_b, fs.port_a, fs.port_b = seg.ip_src, seg.ip_dst, seg.sport, seg.dport
        else:
            fs.ip_a, fs.ip_b, fs.port_a, fs.port_b = seg.ip_dst, seg.ip_src, seg.dport, seg.sport
            fs.mac_a, fs.mac_b = seg.mac_dst, seg.mac_src
        self.flows[key] = fs
        self.stats.flows_created += 1
        return fs

    def hash_keys(self, seg: Segment) -> tuple[int, int]:
        """(L3 key, L2 key) of a segment, independent of the packet's direction."""
        h = xxhash.xxh64()
        if seg.net_proto:
            a, b = seg.ip_src, seg.ip_dst
            pa, pb = seg.sport, seg.dport
            if a > b or (a == b and pa > pb):
                a, b, pa, pb = b, a, pb, pa
            h.update(_NET_CODES[seg.net_proto] + a + b + _Q.pack(seg.net_id))
            if seg.tr_proto:
                if seg.tunnel:
                    h.update(struct.pack("!BQH", _TR_CODES[seg.tr_proto], seg.net_id, seg.dport))
                else:
                    h.update(struct.pack("!BHH", _TR_CODES[seg.tr_proto], pa, pb))
            elif seg.icmp_type:
                v = (_ICMP_KINDS.get(seg.icmp_type, 1) << 24) | (seg.icmp_code << 16) | seg.icmp_id
                h.update(struct.pack("!BI", 1, v))
            elif not seg.fragment:
                h.update(seg.layers[-1].encode())
        else:
            h.update(seg.layers_path.encode() + _Q.pack(seg.net_id))
        l3 = h.intdigest()
        if self.l2_mode or not seg.net_proto:
            ma, mb = seg.mac_src, seg.mac_dst
            if ma > mb:
                ma, mb = mb, ma
            h.update(ma + mb + _Q.pack(seg.vlan))
            return l3, h.intdigest()
        return l3, l3

    # --- updates out ----------------------------------------------------------------------------------
    def updates(self, now_ms: int) -> list[Flow]:
        """Flows touched since the previous call (LastUpdateMetric = delta over the window), then the
        flows that expire at `now_ms` (FinishType TIMEOUT unless already finished)."""
        self.harvest()
        if self._opts is not None:
            self._opts.expire(now_ms * 1_000_000)
        start = self._last_update_ms
        out = []
        for fs in self.flows.values():
            if fs.touched:
                out.append(self._to_flow(fs, start, now_ms))
        self._last_update_ms = now_ms
        out.extend(self.expire(now_ms))
        return out

    def expire(self, now_ms: int) -> list[Flow]:
        """Remove flows idle longer than their timeout (or finished and held long enough); return them."""
        self.harvest()
        out = []
        dead = []
        start = self._last_update_ms
        for key, fs in self.flows.items():
            idle = now_ms - fs.last
            if fs.finish != "NOT_FINISHED":
                if idle >= self.finished_hold_ms:
                    dead.append(key)
                    if fs.touched:
                        out.append(self._to_flow(fs, start, now_ms))
                continue
            limit = self.app_timeouts_ms.get(fs.application, self.expire_ms)
            if idle >= limit:
                fs.finish = "TIMEOUT"
                dead.append(key)
                out.append(self._to_flow(fs, start, now_ms))
        for key in dead:
            self._remove(key)
        self.stats.flows_expired += len(dead)
        return out

    def flush(self) -> list[Flow]:
        """Every flow with what it has not reported yet; the table is emptied (capture stop)."""
        self.harvest()
        if self._opts is not None:
            self._opts.flush()  # fragments of incomplete datagrams are counted as fragments
        now = max((fs.last for fs in self.flows.values()), default=0)
        start = self._last_update_ms
        out = [self._to_flow(fs, start, max(now, start)) for fs in self.flows.values()]
        if self._dpi is not None:
            for key in self.flows:
                self._dpi.forget(key)
        if self._opts is not None:
            for key in self.flows:
                self._opts.forget(key)
        self.flows.clear()
        self._fast.clear()
        self._agg.clear()
        if self._acc is not None:
            self._acc.clear()
        self._frag_owner.clear()
        return out

    def _remove(self, key: tuple[int, str]) -> None:
        fs = self.flows.pop(key)
        if self._dpi is not None:
            self._dpi.forget(key)
        if self._opts is not None:
            self._opts.forget(key)
        if fs.fastkeys:
            for fk in fs.fastkeys:
                self._fast.pop(fk, None)
                self._agg.pop(fk, None)
            if self._acc is not None:
                self._acc.forget(fs.fastkeys)
        if fs.frags and self._frag_owner:
            for k in [k for k, v in self._frag_owner.items() if v is fs]:
                del self._frag_owner[k]

    def snapshot(self) -> list[Flow]:
        """Every flow's current state without touching update bookkeeping (live table queries)."""
        self.harvest()
        now = self._last_update_ms
        return [self._to_flow(fs, now, now, consume=False) for fs in self.flows.values()]

    def _to_flow(self, fs: FlowState, win_start: int, win_end: int, consume: bool = True) -> Flow:
        sab_p, sab_b, sba_p, sba_b = fs.sent
        metric = FlowMetric(ABPackets=fs.ab_p, ABBytes=fs.ab_b, BAPackets=fs.ba_p, BABytes=fs.ba_b,
                            Start=fs.start, Last=fs.last, RTT=fs.rtt)
        lum = FlowMetric(ABPackets=fs.ab_p - sab_p, ABBytes=fs.ab_b - sab_b, BAPackets=fs.ba_p - sba_p,
                         BABytes=fs.ba_b - sba_b, Start=max(win_start, fs.start), Last=win_end, RTT=fs.rtt)
        link = FlowLayer(Protocol="ETHERNET", A=_mac(fs.mac_a), B=_mac(fs.mac_b), ID=fs.vlan) if fs.mac_a else None
        net = None
        if fs.net_proto:
            fam = socket.AF_INET if fs.net_proto == "IPV4" else socket.AF_INET6
            net = FlowLayer(Protocol=fs.net_proto, A=socket.inet_ntop(fam, fs.ip_a),
                            B=socket.inet_ntop(fam, fs.ip_b), ID=fs.net_id)
        elif fs.net_id:
            net = FlowLayer(Protocol="MPLS", A="", B="", ID=fs.net_id)
        tr = FlowLayer(Protocol=fs.tr_proto, A=fs.port_a, B=fs.port_b, ID=fs.tr_id) if fs.tr_proto else None
        icmp = ICMPLayer(Type=fs.icmp_type, Code=fs.icmp_code, ID=fs.icmp_id) if fs.icmp_type else None
        tcpm = None
        if fs.tcp is not None:
            t = fs.tcp
            tcpm = TCPMetric(ABSynStart=t[0], BASynStart=t[1], ABSynTTL=t[2], BASynTTL=t[3], ABFinStart=t[4],
                             BAFinStart=t[5], ABRstStart=t[6], BARstStart=t[7])
        elif self.extra_tcp_metric and fs.tr_proto == "TCP":
            tcpm = TCPMetric()
        ipm = IPMetric(Fragments=fs.frags, FragmentErrors=fs.frag_err) if fs.frags else None
        extra: dict = {"NDPI": {"Protocol": fs.dpi[0], "Category": fs.dpi[1]}} if fs.dpi else {}
        if self._opts is not None:
            layers, reasm = self._opts.flow_fields(fs)
            extra.update(layers)
            if reasm:
                tcpm = msgspec.structs.replace(tcpm or TCPMetric(), **reasm)
        raw = fs.raw or []
        flow = Flow(UUID=fs.uuid, LayersPath=fs.layers_path, Application=fs.application,
                    TrackingID=fs.tracking_id, L3TrackingID=fs.l3_tracking_id, NodeTID=self.node_tid,
                    Start=fs.start, Last=fs.last, Metric=metric, LastUpdateMetric=lum, Link=link, Network=net,
                    Transport=tr, ICMP=icmp, TCPMetric=tcpm, IPMetric=ipm, ParentUUID=fs.parent_uuid,
                    CaptureID=self.capture_id, FinishType=fs.finish, RawPacketsCaptured=fs.raw_count,
                    LastRawPackets=raw, SamplingRate=fs.sampling, Extra=extra)
        if consume:
            fs.sent = (fs.ab_p, fs.ab_b, fs.ba_p, fs.ba_b)
            fs.touched = False
            fs.raw = None
        return flow


def _mac(b: bytes) -> str:
    return b.hex(":")


_TP3 = struct.Struct("=IIIIIIHHIIHH")


def _walk_block(block: memoryview | bytes) -> list[tuple[bytes, int, int, int]]:
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
