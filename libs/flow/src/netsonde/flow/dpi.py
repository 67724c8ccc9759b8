"""Deep packet inspection with nDPI, through the nDPI build that the `nfstream` wheel ships (its cffi engine).

`Classifier.feed(key, ip_packet, ts_ms, from_a, ...)` hands the first packets of a flow to nDPI (at most
`max_packets`), and returns the nDPI application name (for example `DNS.Google`) and category once detection
is complete, or once nDPI gives up. nfstream is optional (`pip install -e 'libs/flow[bench]'`). Without it,
`available()` is False and a capture that asks for DPI keeps the decoded layer names.
"""

from __future__ import annotations

import socket
from typing import Any

_engine: Any = None


def available() -> bool:
    """Whether nDPI can be used here."""
    global _engine
    if _engine is None:
        try:
            from _lib_engine import ffi, lib  # the nfstream wheel's engine (nDPI + libpcap)
            _engine = (ffi, lib)
        except ImportError:
            _engine = False
    return bool(_engine)


class Classifier:
    """One nDPI detection module and the per-flow nDPI states of one flow table."""

    def __init__(self, max_packets: int = 24) -> None:
        if not available():
            raise RuntimeError("nDPI is not available: install nfstream (pip install nfstream)")
        ffi, lib = _engine
        self.ffi, self.lib = ffi, lib
        checker = ffi.new("struct dissector_checker *")
        checker.flow_size = ffi.sizeof("struct ndpi_flow_struct")
        checker.flow_tcp_size = ffi.sizeof("struct ndpi_flow_tcp_struct")
        checker.flow_udp_size = ffi.sizeof("struct ndpi_flow_udp_struct")
        self.dissector = lib.dissector_init(checker)
        if self.dissector == ffi.NULL:
            raise RuntimeError("nDPI dissector initialisation failed")
        lib.dissector_configure(self.dissector)
        self.max_packets = max_packets
        self.flows: dict[Any, list[Any]] = {}  # key -> [nf_flow*, packets fed]
        self._pkt = ffi.new("struct nf_packet *")

    def feed(self, key: Any, ip: bytes, ts_ms: int, from_a: bool, ip_version: int, protocol: int, sport: int,
             dport: int, wire_len: int) -> tuple[str, str] | None:
        """Give one packet (from its IP header on) to nDPI; (application, category) when decided."""
        ffi, lib = self.ffi, self.lib
        p = self._pkt
        p.direction = 0 if from_a else 1
        p.time = ts_ms
        p.ip_version = ip_version
        p.protocol = protocol
        p.src_port, p.dst_port = (sport, dport) if from_a else (dport, sport)
        p.raw_size = wire_len
        p.ip_size = len(ip)
        p.ip_content_len = len(ip)
        buf = ffi.from_buffer(ip)
        p.ip_content = ffi.cast("uint8_t *", buf)
        st = self.flows.get(key)
        if st is None:
            flow = lib.meter_initialize_flow(p, 0, 0, 0, self.max_packets, self.dissector, 1)
            if flow == ffi.NULL:
                return None
            st = self.flows[key] = [flow, 1]
        else:
            st[1] += 1
            lib.meter_update_flow(st[0], p, 1 << 62, 1 << 62, 0, 0, 0, self.max_packets, self.dissector, 1)
        flow = st[0]
        if flow.detection_completed or st[1] >= self.max_packets:
            if not flow.detection_completed:
                lib.meter_expire_flow(flow, self.max_packets, self.dissector)
            app = ffi.string(flow.application_name).decode(errors="replace") if flow.application_name else ""
            cat = ffi.string(flow.category_name).decode(errors="replace") if flow.category_name else ""
            self.forget(key)
            return app or "Unknown", cat
        return None

    def forget(self, key: Any) -> None:
        st = self.flows.pop(key, None)
        if st is not None:
            self.lib.meter_free_flow(st[0], self.max_packets, 0, 1)

    def close(self) -> None:
        for key in list(self.flows):
            self.forget(key)
        if self.dissector is not None:
            self.lib.dissector_cleanup(self.dissector)
            self.dissector = None


def ip_family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6
