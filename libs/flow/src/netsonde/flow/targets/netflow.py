"""NetFlow v5 export of a capture's flows (`TargetType: netflowv5`, `Target: host:port`).

A `NetFlowV5Table` is a `FlowTable` whose every update (`updates()`, `flush()`) is also sent to the
collector: one record per direction that carried packets since the previous update (NetFlow records are
unidirectional), with that update's packets and layer-3 bytes (`LastUpdateMetric`, Ethernet header taken
off), first/last seen as SysUptime of the exporter (the table's creation), 30 records per datagram
(Cisco's v5 limit), `flow_sequence` = records sent before the datagram. NetFlow v5 only carries IPv4:
other flows (IPv6, ARP ...) are not exported and are counted (`netflow_not_ipv4` in `stats.events`).
`netflow_packets` / `netflow_bytes` are the dPkts / dOctets of the records actually sent, so a collector's
totals can be checked against what the probe sent (a datagram that fails to send is counted in
`netflow_send_errors`, not there, and never sent again).
"""

from __future__ import annotations

import socket
import struct
import time
from typing import Any

from netsonde.common.bus.flows import Flow

from ..table import FlowTable
from .address import parse_target

MAX_RECORDS = 30
_HEADER = struct.Struct("!HHIIIIBBH")
_RECORD = struct.Struct("!4s4s4sHHIIIIHHBBBBHHBBH")
_COUNTS = struct.Struct("!II")
"""dPkts, dOctets: at offset 16 of a record."""
_PROTO = {"TCP": 6, "UDP": 17, "SCTP": 132}
_ETH_HEADER = 14


def flow_records(f: Flow, boot_ms: int) -> list[bytes]:
    """The v5 records of one flow update (0, 1 or 2), or [] when it is not IPv4."""
    net = f.Network
    if net is None or net.Protocol != "IPV4":
        return []
    m = f.LastUpdateMetric or f.Metric
    a, b = socket.inet_aton(net.A), socket.inet_aton(net.B)
    if f.Transport is not None:
        proto = _PROTO.get(f.Transport.Protocol, 0)
        pa, pb = int(f.Transport.A), int(f.Transport.B)
    elif f.ICMP is not None:
        proto, pa, pb = 1, 0, 0
    else:
        proto, pa, pb = 0, 0, 0
    flags = (0x01 if f.FinishType == "TCP_FIN" else 0) | (0x04 if f.FinishType == "TCP_RST" else 0)
    l2 = _ETH_HEADER if f.Link is not None else 0
    first = max(0, m.Start - boot_ms) & 0xFFFFFFFF
    last = max(0, m.Last - boot_ms) & 0xFFFFFFFF
    out = []
    for src, dst, sport, dport, pkts, nbytes in (
        (a, b, pa, pb, m.ABPackets, m.ABBytes),
        (b, a, pb, pa, m.BAPackets, m.BABytes),
    ):
        if pkts <= 0:
            continue
        out.append(
            _RECORD.pack(
                src,
                dst,
                b"\0\0\0\0",
                0,
                0,
                min(pkts, 0xFFFFFFFF),
                min(max(0, nbytes - pkts * l2), 0xFFFFFFFF),
                first,
                last,
                sport & 0xFFFF,
                dport & 0xFFFF,
                0,
                flags,
                proto,
                0,
                0,
                0,
                32,
                32,
                0,
            )
        )
    return out


class NetFlowV5Exporter:
    """A UDP socket to one collector and the v5 header state (uptime origin, flow sequence)."""

    def __init__(self, target: str) -> None:
        self.addr = parse_target(target, need_port=True)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.setblocking(False)
        self.boot_ms = int(time.time() * 1000)
        self.sequence = 0
        self.datagrams = self.records = self.send_errors = self.not_ipv4 = 0
        self.packets = self.bytes = 0
        """dPkts and dOctets of the records sent (what a collector must total)."""

    def export(self, flows: list[Flow]) -> None:
        recs: list[bytes] = []
        for f in flows:
            r = flow_records(f, self.boot_ms)
            if not r and (f.Network is None or f.Network.Protocol != "IPV4"):
                self.not_ipv4 += 1
            recs.extend(r)
        for i in range(0, len(recs), MAX_RECORDS):
            chunk = recs[i : i + MAX_RECORDS]
            now = time.time_ns()
            hdr = _HEADER.pack(
                5,
                len(chunk),
                (now // 1_000_000 - self.boot_ms) & 0xFFFFFFFF,
                now // 1_000_000_000,
                now % 1_000_000_000,
                self.sequence & 0xFFFFFFFF,
                0,
                0,
                0,
            )
            try:
                self.sock.sendto(hdr + b"".join(chunk), self.addr)
            except OSError:  # collector unreachable, buffer full: counted, the capture goes on
                self.send_errors += 1
                continue
            self.sequence += len(chunk)
            self.datagrams += 1
            self.records += len(chunk)
            for rec in chunk:
                pkts, octets = _COUNTS.unpack_from(rec, 16)
                self.packets += pkts
                self.bytes += octets

    def close(self) -> None:
        self.sock.close()


class NetFlowV5Table(FlowTable):
    """A FlowTable that exports each update as NetFlow v5 to `target` (see the module docstring)."""

    def __init__(self, target: str, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.exporter = NetFlowV5Exporter(target)

    def updates(self, now_ms: int) -> list[Flow]:
        out = super().updates(now_ms)
        self._export(out)
        return out

    def flush(self) -> list[Flow]:
        out = super().flush()
        self._export(out)
        self.exporter.close()
        return out

    def _export(self, flows: list[Flow]) -> None:
        if flows:
            self.exporter.export(flows)
            ev = self.stats.events
            ev["netflow_records"] = self.exporter.records
            ev["netflow_datagrams"] = self.exporter.datagrams
            ev["netflow_packets"] = self.exporter.packets
            ev["netflow_bytes"] = self.exporter.bytes
            if self.exporter.send_errors:
                ev["netflow_send_errors"] = self.exporter.send_errors
            if self.exporter.not_ipv4:
                ev["netflow_not_ipv4"] = self.exporter.not_ipv4
