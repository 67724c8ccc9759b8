"""The `pcapsocket` capture: a TCP listener per capture and node; a pcap stream written to it becomes flows of
that node (Skydive's `flow/probes/pcapsocket`, e.g. `tcpdump -w - | nc HOST PORT` from anywhere).

Streams are read one after the other by the capture's thread, packet by packet into the node's FlowTable
(packets keep their own timestamps). The BPF filter runs in user space (libpcap's `pcap_offline_filter`),
HeaderSize cuts each packet. A stream that is not a pcap, or is cut inside a record, closes that connection
and counts a stream error; the listener stays up for the next stream.
"""

from __future__ import annotations

import ctypes
import logging
import socket
from typing import Any, BinaryIO

from netsonde.common.libpcap import BpfProgram as _BpfProgram
from netsonde.common.libpcap import PcapPkthdr as _PcapPkthdr
from netsonde.common.libpcap import libpcap
from netsonde.flow.capture import BaseCapture, BPFError
from netsonde.flow.pcap import (
    LINKTYPE_ETHERNET,
    LINKTYPE_IPV4,
    LINKTYPE_IPV6,
    LINKTYPE_RAW,
    PcapError,
    read_pcap,
)
from netsonde.flow.table import FlowTable

log = logging.getLogger(__name__)

RAW_IP_LINKTYPES = frozenset({LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6})

__all__ = ["PcapSocketCapture", "StreamTruncated"]


class StreamTruncated(PcapError):
    """The stream ended inside a pcap record."""


class _TrackedStream:
    """A file wrapper that remembers whether a read came back short (to tell a clean end from a cut one)."""

    RECORD_STARTS = (16, 4)
    """Read sizes at a record boundary: a pcap record header, a pcapng block type."""

    def __init__(self, f: BinaryIO) -> None:
        self.f = f
        self.short: tuple[int, int] | None = None

    def read(self, n: int) -> bytes:
        data = self.f.read(n)
        if len(data) < n and self.short is None:
            self.short = (n, len(data))
        return data

    def truncated(self) -> bool:
        return self.short is not None and not (self.short[1] == 0 and self.short[0] in self.RECORD_STARTS)


class _OfflineFilter:
    """A BPF filter applied in user space to (linktype, bytes, wire length)."""

    def __init__(self, expr: str, snaplen: int) -> None:
        self.expr = expr
        self.snaplen = snaplen
        self.lib = libpcap()  # pcap_offline_filter(bpf_program *, pcap_pkthdr *, bytes)
        self.programs: dict[int, _BpfProgram] = {}

    def _program(self, linktype: int) -> _BpfProgram:
        prog = self.programs.get(linktype)
        if prog is None:
            p = self.lib.pcap_open_dead(linktype, max(self.snaplen, 65535))
            prog = _BpfProgram()
            try:
                if self.lib.pcap_compile(p, ctypes.byref(prog), self.expr.encode(), 1, 0xFFFFFFFF) < 0:
                    raise BPFError(
                        f"invalid BPF filter {self.expr!r} for linktype {linktype}: "
                        f"{self.lib.pcap_geterr(p).decode(errors='replace')}"
                    )
            finally:
                self.lib.pcap_close(p)
            self.programs[linktype] = prog
        return prog

    def accepts(self, linktype: int, data: bytes, wire_len: int) -> bool:
        hdr = _PcapPkthdr(0, 0, len(data), wire_len)
        prog = ctypes.byref(self._program(linktype))
        return bool(self.lib.pcap_offline_filter(prog, ctypes.byref(hdr), data) != 0)

    def close(self) -> None:
        for prog in self.programs.values():
            self.lib.pcap_freecode(ctypes.byref(prog))
        self.programs.clear()


class PcapSocketCapture(BaseCapture):
    """A listening TCP socket feeding one FlowTable (`address` is where it listens; port 0 = any free one)."""

    kind = "pcapsocket"

    def __init__(
        self,
        name: str,
        table: FlowTable,
        bpf: str = "",
        snaplen: int = 0,
        address: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        super().__init__(name, table, None, bpf, snaplen or 4096)
        self.cut = snaplen  # HeaderSize: 0 keeps packets whole
        self.bind = (address, port)
        self.listener: socket.socket | None = None
        self.conn: socket.socket | None = None
        self.streams = 0
        """Streams read to their end."""
        self.stream_errors = 0
        """Streams closed because they were not pcap, or were cut inside a record."""
        self.last_stream_error = ""
        self._filter = _OfflineFilter(bpf, self.snaplen) if bpf else None
        self.pcap_socket = ""
        """host:port to write a pcap stream to ("" until listening)."""

    def _open(self) -> None:
        s = socket.socket(socket.AF_INET6 if ":" in self.bind[0] else socket.AF_INET, socket.SOCK_STREAM)
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(self.bind)
            s.listen(4)
            s.settimeout(0.2)
        except OSError:
            s.close()
            raise
        self.listener = s
        host, port = s.getsockname()[:2]
        self.pcap_socket = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

    def _run(self) -> None:
        assert self.listener is not None
        while not self._stop.is_set():
            try:
                conn, peer = self.listener.accept()
            except TimeoutError:  # socket.timeout is TimeoutError
                continue
            except OSError:
                if self._stop.is_set():
                    return
                raise
            conn.settimeout(None)
            self.conn = conn
            try:
                self._read_stream(conn, peer)
            finally:
                self.conn = None
                conn.close()

    def _read_stream(self, conn: socket.socket, peer: Any) -> None:
        stream = _TrackedStream(conn.makefile("rb"))
        try:
            for linktype, ts_ns, wire_len, data in read_pcap(stream):  # type: ignore[arg-type]
                self._packet(linktype, ts_ns, wire_len, data)
            if stream.truncated():
                raise StreamTruncated(f"stream cut inside a record after {self.packets_received} packets")
            self.streams += 1
        except (PcapError, OSError) as e:
            if self._stop.is_set():
                return
            self.stream_errors += 1
            self.last_stream_error = f"{peer[0]}:{peer[1]}: {e}"
            log.warning("pcapsocket %s: stream from %s closed: %s", self.ifname, peer[0], e)

    def _packet(self, linktype: int, ts_ns: int, wire_len: int, data: bytes) -> None:
        if self._filter is not None and not self._filter.accepts(linktype, data, wire_len):
            return
        if self.cut:
            data = data[: self.cut]
        ts_ms = ts_ns // 1_000_000
        with self.lock:
            if linktype == LINKTYPE_ETHERNET:
                self.table.process_frame(data, ts_ms, wire_len, 1, ts_ns)
            elif linktype in RAW_IP_LINKTYPES:
                self.table.process_ip_packet(data, ts_ms, wire_len)
            else:
                self.table._bad(f"linktype_{linktype}")  # counted like pcap import does
        self.packets_received += 1

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        conn = self.conn
        if conn is not None:  # wake a blocked read
            try:
                conn.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        super().stop(timeout)

    def _close(self) -> None:
        if self.listener is not None:
            self.listener.close()
        if self._filter is not None:
            self._filter.close()
