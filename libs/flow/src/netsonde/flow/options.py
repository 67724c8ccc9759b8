"""The packet options of a capture, applied inside its flow table: `IPDefrag`, `ReassembleTCP`, `ExtraLayers`.

`FlowTable(..., ip_defrag=True, reassemble_tcp=True, extra_layers=DNS)` creates one `PacketOptions`;
with every option off the table has none and keeps its fast path (the C fold of plain headers). With
any option on, each packet takes the table's per-frame path and goes through here:

- before decoding, `defrag()` hands fragments to the `IPDefragmenter` and gives back the reassembled
  datagram (one packet, `IPMetric.Fragments` = the fragments it was made of);
- after the packet is counted in its flow, `packet()` feeds TCP segments to the reassembler and decodes
  DNS / DHCPv4 / VRRPv2 into the flow's extra layers;
- `flow_fields()` gives what `_to_flow` (`flowreport.py`) adds to a Flow (extra layers, reassembly TCPMetric fields).

Counters land in `TableStats.events` (the probe exports them as `netsonde_probe_flow_option_events_total`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from . import applayers
from .applayers import DHCP_PORTS, DNS_PORTS, IPPROTO_VRRP, LayerError
from .defrag import IPDefragmenter
from .tcpstream import TCPStreams

if TYPE_CHECKING:
    from .decode import Segment
    from .flowstate import FlowState
    from .table import FlowTable

_DNS_TCP_MAX = 64 << 10
"""Bytes of a DNS-over-TCP stream kept while waiting for the rest of a message."""


class PacketOptions:
    """Per-table state of the packet options; see the module docstring."""

    def __init__(
        self,
        table: FlowTable,
        ip_defrag: bool,
        reassemble_tcp: bool,
        extra_layers: int,
        defrag_timeout_ns: int = 30_000_000_000,
    ) -> None:
        self.table = table
        self.events = table.stats.events
        self.defrag = IPDefragmenter(timeout_ns=defrag_timeout_ns) if ip_defrag else None
        self.extra = applayers.parse_extra_layers(extra_layers)
        self.streams = TCPStreams(self._tcp_data) if reassemble_tcp else None
        self._dns_tcp: dict[tuple[Any, bool], bytearray] = {}
        self._cur: FlowState | None = None
        self._dns_port = False

    # --- before decoding ----------------------------------------------------------------------------------
    def defrag_frame(self, frame: bytes, ts_ns: int, wire_len: int) -> tuple[bytes, int, int] | None:
        """(frame, wire_len, fragments) to decode now, or None while its datagram is incomplete."""
        assert self.defrag is not None
        d = self.defrag
        before = (d.reassembled, d.timeouts, d.evicted, d.errors)
        out = d.feed(frame, ts_ns, wire_len)
        self._defrag_events(before)
        return out

    def expire(self, now_ns: int) -> None:
        """Give up incomplete datagrams that timed out; their fragments are counted as plain fragments."""
        if self.defrag is None or not self.defrag.pending:
            return
        d = self.defrag
        before = (d.reassembled, d.timeouts, d.evicted, d.errors)
        d.expire(now_ns)
        self._defrag_events(before)
        self.replay_given_up()

    def flush(self) -> None:
        if self.defrag is not None:
            d = self.defrag
            before = (d.reassembled, d.timeouts, d.evicted, d.errors)
            d.flush()
            self._defrag_events(before)
            self.replay_given_up()

    def replay_given_up(self) -> None:
        """Account the fragments of given-up datagrams one by one, as a table without IPDefrag would."""
        d = self.defrag
        if d is None or not d.given_up:
            return
        frames, d.given_up = d.given_up, []
        for frame, ts_ns, wire in frames:
            self.table.account_frame(frame, ts_ns, wire)

    def _defrag_events(self, before: tuple[int, int, int, int]) -> None:
        d = self.defrag
        assert d is not None
        for name, was, now in zip(
            ("defrag_reassembled", "defrag_timeouts", "defrag_evicted", "defrag_errors"),
            before,
            (d.reassembled, d.timeouts, d.evicted, d.errors),
            strict=True,
        ):
            if now != was:
                self.events[name] = self.events.get(name, 0) + now - was

    # --- after counting -----------------------------------------------------------------------------------
    def packet(self, fs: FlowState, seg: Segment, frame: bytes, ts_ns: int) -> None:
        """The innermost segment of a packet, counted in flow `fs`: reassembly and application layers."""
        if seg.pay_off < 0:
            return
        end = seg.ip_off + seg.ip_len if seg.ip_len else len(frame)
        if seg.tr_proto == "TCP":
            if self.streams is not None:
                self._cur = fs
                self._dns_port = bool(self.extra & applayers.DNS) and (
                    seg.sport in DNS_PORTS or seg.dport in DNS_PORTS
                )
                payload = frame[seg.pay_off : min(end, len(frame))]
                missing = max(0, end - len(frame))
                self.streams.segment(
                    fs.key, fs.is_ab(seg), seg.tcp_seq, seg.tcp_flags, payload, missing, ts_ns
                )
                self._cur = None
            return
        extra = self.extra
        if not extra:
            return
        try:
            if seg.tr_proto == "UDP":
                ports = (seg.sport, seg.dport)
                if extra & applayers.DNS and (ports[0] in DNS_PORTS or ports[1] in DNS_PORTS):
                    self._set(
                        fs, "DNS", applayers.parse_dns(frame[seg.pay_off : min(end, len(frame))], ts_ns)
                    )
                elif extra & applayers.DHCPV4 and ports[0] in DHCP_PORTS and ports[1] in DHCP_PORTS:
                    if fs.extra is None or "DHCPv4" not in fs.extra:
                        self._set(
                            fs, "DHCPv4", applayers.parse_dhcpv4(frame[seg.pay_off : min(end, len(frame))])
                        )
            elif seg.ip_proto == IPPROTO_VRRP and extra & applayers.VRRP:
                if fs.extra is None or "VRRPv2" not in fs.extra:
                    self._set(fs, "VRRPv2", applayers.parse_vrrpv2(frame[seg.pay_off : min(end, len(frame))]))
        except (LayerError, IndexError, UnicodeError) as e:
            self.events["layer_errors"] = self.events.get("layer_errors", 0) + 1
            del e

    def _set(self, fs: FlowState, name: str, value: dict) -> None:
        if fs.extra is None:
            fs.extra = {}
        fs.extra[name] = value
        fs.touched = True

    def _tcp_data(self, key: Any, from_a: bool, data: bytes, ts_ns: int) -> None:
        """In-order TCP bytes: DNS over TCP is read as length-prefixed messages (RFC 1035 4.2.2)."""
        if not self._dns_port or self._cur is None:
            return
        buf = self._dns_tcp.setdefault((key, from_a), bytearray())
        buf += data
        while len(buf) >= 2:
            n = (buf[0] << 8) | buf[1]
            if len(buf) < 2 + n:
                break
            msg = bytes(buf[2 : 2 + n])
            del buf[: 2 + n]
            try:
                self._set(self._cur, "DNS", applayers.parse_dns(msg, ts_ns))
            except (LayerError, IndexError, UnicodeError):
                self.events["layer_errors"] = self.events.get("layer_errors", 0) + 1
        if len(buf) > _DNS_TCP_MAX:
            buf.clear()
            self.events["layer_errors"] = self.events.get("layer_errors", 0) + 1

    # --- out ----------------------------------------------------------------------------------------------
    def flow_fields(self, fs: FlowState) -> tuple[dict[str, Any], dict[str, int]]:
        """(extra layers, reassembly TCPMetric fields) of a flow for its next update."""
        tcp = self.streams.metric(fs.key) if self.streams is not None and fs.tr_proto == "TCP" else {}
        if self.streams is not None and self.streams.overflows:
            self.events["tcp_buffer_overflows"] = self.streams.overflows
        return fs.extra or {}, tcp

    def forget(self, key: Any) -> None:
        if self.streams is not None:
            self.streams.close(key)
        if self._dns_tcp:
            self._dns_tcp.pop((key, True), None)
            self._dns_tcp.pop((key, False), None)
