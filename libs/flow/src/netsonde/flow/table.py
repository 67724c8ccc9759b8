"""The flow table: packets in, Skydive-shaped flow updates out.

One `FlowTable` per capture per interface. Frames go in through `process_frame` (one Ethernet frame, the
reference path, also used for sFlow samples and pcap import), `process_block` / `process_frames` (the hot
path: a whole TPACKET_V3 block or a list of frames counted in C, see `_fastpath.c`) or
`process_aggregates` (packets the caller already folded per header, e.g. sFlow samples). `updates(now_ms)`
returns the flows touched since the previous call with `LastUpdateMetric` = delta, plus the flows that
expired; `flush()` empties the table. The batch intake is `fastfold.py`, the output side `flowreport.py`,
the per-flow state `flowstate.py`.

Keys follow Skydive (`flow/flow.go`, `flow/hash.go`): xxHash64 over the network pair, the transport pair (for
a tunnel's UDP: the VNI and destination port only), ICMP type/code/id -> L3 key; then the MACs and VLANs ->
L2 key (in layer key mode L2, or when there is no network layer); then the parent UUID -> table key.
Each pair is hashed in a canonical order, so both directions, and every capture point the packet crosses,
give the same TrackingID (hex L2 key) and L3TrackingID (hex L3 key). UUID = xxHash64 seeded with the table
key over Start (ms, int64 big-endian) and the NodeTID.
"""

from __future__ import annotations

import struct

import xxhash

from netsonde.common.bus.flows import RawPacket
from netsonde.common.native import slow_path_allowed

from .decode import ACK, FIN, ICMP_REQUESTS, RST, SYN, DecodeError, Segment, decode_ethernet, decode_ip
from .fastfold import FastFold
from .flowreport import FlowReport
from .flowstate import DEFAULT_APP_TIMEOUTS_MS, AggLevel, FlowState, TableStats

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

__all__ = ["DEFAULT_APP_TIMEOUTS_MS", "FlowState", "FlowTable", "TableStats"]


class FlowTable(FastFold, FlowReport):
    """Aggregates packets into flows keyed like Skydive; see the module docstring.

    The batch intake (C fold, aggregates, harvest) is in `fastfold.py`, the Flow updates out in
    `flowreport.py`; the per-frame accounting and the keys are here."""

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
        self._agg: dict[bytes, list[AggLevel]] = {}
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
        if seg.tcp_flags > 0 or seg.icmp_raw_type >= 0:  # UDP and the rest skip the call (per-packet cost)
            self._events(fs, ab, seg.tcp_flags, seg.ttl, seg.icmp_raw_type,
                         ts_ns if ts_ns is not None else ts_ms * 1_000_000)

    @staticmethod
    def has_events(flags: int, icmp: int) -> bool:
        """Whether a header (TCP flags or -1, ICMP type or -1) can change anything in `_events`."""
        return (flags > 0 and bool(flags & (SYN | FIN | RST))) or icmp >= 0

    def _events(self, fs: FlowState, ab: bool, flags: int, ttl: int, icmp: int, t_ns: int) -> None:
        """Note what a packet's header says about its conversation: the RTT (SYN -> SYN/ACK, ICMP request ->
        reply), the FinishType (FIN, RST), the TCPMetric times. The one home of this logic, for the
        per-frame path (`_count`) and the batch intake (`fastfold.py`, on a fastkey's first packet and on
        each pre-folded aggregate)."""
        if flags <= 0:  # not TCP (-1), or no flag set
            if icmp >= 0 and not fs.rtt:
                if icmp in ICMP_REQUESTS:
                    if ab and not fs.rtt_t0:
                        fs.rtt_t0 = t_ns
                elif fs.rtt_t0 and not ab:
                    fs.rtt = max(1, t_ns - fs.rtt_t0)
            return
        if not flags & (SYN | FIN | RST):
            return
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

