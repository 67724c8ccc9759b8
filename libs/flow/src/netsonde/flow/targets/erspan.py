"""ERSPAN mirroring of a capture's packets (`TargetType: erspanv1`, `Target: host[:port]`, the port unused).

Every packet the capture reads is sent, as captured (cut to `HeaderSize`), inside GRE (protocol 0x88BE,
sequence numbers) + an ERSPAN type II header (version 1: Skydive's `erspanv1`, as in
`flow/probes/targets/erspan.go`) to the target's IP, through a raw IPPROTO_GRE socket opened in the
probe's own namespace (the kernel writes the outer IPv4 header). The ERSPAN header carries the session ID
(1, as Skydive), the capture interface's index when known, the VLAN of the mirrored frame, and the T bit
when the frame was cut. The packets still go through the flow table too.
"""

from __future__ import annotations

import socket
import struct
from typing import Any

from netsonde.common.bus.flows import Flow

from ..table import FlowTable
from .address import parse_target

GRE_PROTO_ERSPAN_II = 0x88BE
IPPROTO_GRE = 47
SESSION_ID = 1
_GRE = struct.Struct("!HHI")
_ERSPAN = struct.Struct("!HHI")


def erspan_header(seq: int, vlan: int, truncated: bool, session: int = SESSION_ID, index: int = 0) -> bytes:
    """GRE (with sequence number) + ERSPAN type II header: 16 bytes."""
    gre = _GRE.pack(0x1000, GRE_PROTO_ERSPAN_II, seq & 0xFFFFFFFF)
    # ver(4)=1 | vlan(12); cos(3)=0 en(2)=3 (tags kept as they are) t(1) session(10); reserved | index(20)
    word2 = (0x3 << 11) | (int(truncated) << 10) | (session & 0x3FF)
    return gre + _ERSPAN.pack((1 << 12) | (vlan & 0xFFF), word2, index & 0xFFFFF)


class ErspanSender:
    """The raw GRE socket to one target and the GRE sequence number."""

    def __init__(self, target: str, index: int = 0) -> None:
        self.addr = (parse_target(target, need_port=False)[0], 0)
        self.sock = socket.socket(
            socket.AF_INET, socket.SOCK_RAW, IPPROTO_GRE
        )  # created in the probe's netns
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1)  # it never reads: keep nothing queued
        self.sock.setblocking(False)
        self.index = index
        self.seq = 0
        self.sent = self.send_errors = 0

    def send(self, frame: bytes, wire_len: int) -> None:
        vlan = (
            ((frame[14] & 0x0F) << 8 | frame[15]) if len(frame) >= 16 and frame[12:14] == b"\x81\x00" else 0
        )
        hdr = erspan_header(self.seq, vlan, wire_len > len(frame), index=self.index)
        self.seq += 1
        try:
            self.sock.sendto(hdr + frame, self.addr)
            self.sent += 1
        except OSError:  # unreachable target, full buffer: counted, the capture goes on
            self.send_errors += 1

    def close(self) -> None:
        self.sock.close()


class ErspanTable(FlowTable):
    """A FlowTable that mirrors every frame it is given to an ERSPAN target (per-frame path)."""

    def __init__(self, target: str, *args: Any, if_index: int = 0, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.sender = ErspanSender(target, if_index)
        self._per_frame = True  # every packet must be seen, not only the first of each header

    def process_frame(
        self,
        frame: bytes,
        ts_ms: int,
        wire_len: int | None = None,
        sampling_rate: int = 1,
        ts_ns: int | None = None,
    ) -> bool:
        self.sender.send(frame, wire_len if wire_len is not None else len(frame))
        return super().process_frame(frame, ts_ms, wire_len, sampling_rate, ts_ns)

    def updates(self, now_ms: int) -> list[Flow]:
        self.stats.events["erspan_packets"] = self.sender.sent
        if self.sender.send_errors:
            self.stats.events["erspan_send_errors"] = self.sender.send_errors
        return super().updates(now_ms)

    def flush(self) -> list[Flow]:
        out = super().flush()
        self.stats.events["erspan_packets"] = self.sender.sent
        self.sender.close()
        return out
