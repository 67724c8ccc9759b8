"""pcap / pcapng files into flows, through the same `FlowTable` as live capture.

`read_pcap(path_or_file)` yields (linktype, ts_ns, wire_len, data); `flows_from_pcap(path, ...)` runs every
packet through a `FlowTable` and returns the final state of every flow (one Flow per flow, as the table
would have published at the end of the file).
"""

from __future__ import annotations

import io
import struct
from pathlib import Path
from typing import BinaryIO, Iterator

from netsonde.common.bus.flows import Flow

from .table import FlowTable

LINKTYPE_ETHERNET = 1
LINKTYPE_RAW = 101
LINKTYPE_LINUX_SLL = 113
LINKTYPE_IPV4 = 228
LINKTYPE_IPV6 = 229
_RAW_TYPES = {LINKTYPE_RAW, 12, 14, LINKTYPE_IPV4, LINKTYPE_IPV6}


class PcapError(ValueError):
    """The file is not a pcap/pcapng file, or is cut in a header."""


def read_pcap(src: str | Path | BinaryIO | bytes) -> Iterator[tuple[int, int, int, bytes]]:
    """Packets of a pcap or pcapng file as (linktype, ts_ns, wire_len, captured bytes)."""
    if isinstance(src, (bytes, bytearray)):
        f: BinaryIO = io.BytesIO(src)
    elif isinstance(src, (str, Path)):
        f = open(src, "rb")
    else:
        f = src
    try:
        magic = f.read(4)
        if len(magic) < 4:
            raise PcapError("empty file: not a pcap file")
        if magic == b"\x0a\x0d\x0d\x0a":
            yield from _pcapng(f, magic)
        else:
            yield from _pcap(f, magic)
    finally:
        if isinstance(src, (str, Path)):
            f.close()


def _pcap(f: BinaryIO, magic: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    m = struct.unpack("<I", magic)[0]
    if m in (0xA1B2C3D4, 0xA1B23C4D):
        e = "<"
    elif m in (0xD4C3B2A1, 0x4D3CB2A1):
        e = ">"
        m = struct.unpack(">I", magic)[0]
    else:
        raise PcapError(f"bad magic {magic.hex()}: not a pcap or pcapng file")
    nano = m == 0xA1B23C4D
    hdr = f.read(20)
    if len(hdr) < 20:
        raise PcapError("truncated pcap header")
    linktype = struct.unpack(e + "HHiIII", hdr)[5] & 0x0FFFFFFF
    rec = struct.Struct(e + "IIII")
    mul = 1 if nano else 1000
    while True:
        h = f.read(16)
        if len(h) < 16:
            return
        sec, frac, incl, orig = rec.unpack(h)
        data = f.read(incl)
        if len(data) < incl:
            return
        yield linktype, sec * 1_000_000_000 + frac * mul, orig, data


def _pcapng(f: BinaryIO, magic: bytes) -> Iterator[tuple[int, int, int, bytes]]:
    ifaces: list[tuple[int, int]] = []  # (linktype, ticks per second)
    e = "<"
    first = True
    btype_raw = magic
    while True:
        if not first:
            btype_raw = f.read(4)
            if len(btype_raw) < 4:
                return
        first = False
        lraw = f.read(4)
        if len(lraw) < 4:
            return
        if btype_raw == b"\x0a\x0d\x0d\x0a":
            bom = f.read(4)
            e = "<" if bom == b"\x4d\x3c\x2b\x1a" else ">"
            blen = struct.unpack(e + "I", lraw)[0]
            f.read(blen - 12)
            ifaces = []
            continue
        btype = struct.unpack(e + "I", btype_raw)[0]
        blen = struct.unpack(e + "I", lraw)[0]
        body = f.read(blen - 8)
        if len(body) < blen - 8:
            return
        if btype == 1:  # interface description
            lt = struct.unpack_from(e + "H", body, 0)[0]
            tps = 1_000_000
            off = 8
            while off + 4 <= len(body) - 4:
                code, olen = struct.unpack_from(e + "HH", body, off)
                if code == 0:
                    break
                if code == 9 and olen >= 1:
                    v = body[off + 4]
                    tps = 2 ** (v & 0x7F) if v & 0x80 else 10 ** v
                off += 4 + ((olen + 3) & ~3)
            ifaces.append((lt, tps))
        elif btype == 6:  # enhanced packet
            iid, th, tl, incl, orig = struct.unpack_from(e + "IIIII", body, 0)
            lt, tps = ifaces[iid] if iid < len(ifaces) else (LINKTYPE_ETHERNET, 1_000_000)
            ticks = (th << 32) | tl
            yield lt, ticks * 1_000_000_000 // tps, orig, body[20:20 + incl]
        elif btype == 3:  # simple packet
            orig = struct.unpack_from(e + "I", body, 0)[0]
            lt = ifaces[0][0] if ifaces else LINKTYPE_ETHERNET
            yield lt, 0, orig, body[4:4 + min(orig, len(body) - 8)]


def feed_pcap(table: FlowTable, src: str | Path | BinaryIO | bytes, replay_at_ns: int | None = None) -> int:
    """Run every packet of a pcap through `table`; returns the number of packets read.

    With `replay_at_ns`, packet times are shifted so the file's first packet is at that instant (as if the
    file were replayed then, keeping the gaps between packets): stored flows then fall inside the retention
    window instead of years in the past."""
    n = 0
    offset: int | None = None if replay_at_ns is not None else 0
    for lt, ts_ns, orig, data in read_pcap(src):
        n += 1
        if offset is None:
            offset = replay_at_ns - ts_ns  # type: ignore[operator]
        ts_ns += offset
        ts_ms = ts_ns // 1_000_000
        if lt == LINKTYPE_ETHERNET:
            table.process_frame(data, ts_ms, orig, 1, ts_ns)
        elif lt in _RAW_TYPES:
            table.process_ip_packet(data, ts_ms, orig)
        elif lt == LINKTYPE_LINUX_SLL and len(data) >= 16:
            # cooked capture: rebuild an Ethernet header from the SLL address and protocol
            proto = data[14:16]
            mac = data[6:12] if data[4:6] == b"\x00\x06" else b"\x00" * 6
            table.process_frame(b"\x00" * 6 + mac + proto + data[16:], ts_ms, orig - 2, 1, ts_ns)
        else:
            table._bad(f"linktype_{lt}")
    return n


def flows_from_pcap(path: str | Path | BinaryIO | bytes, node_tid: str = "", capture_id: str = "",
                    layer_key_mode: str = "L2", extra_tcp_metric: bool = False,
                    table: FlowTable | None = None, ndpi: bool = False,
                    replay_at_ns: int | None = None) -> list[Flow]:
    """Every flow of a pcap file, in its final state (the whole file is one update window). With `ndpi`,
    Application is nDPI's protocol name (e.g. `DNS.Google`) and Extra["NDPI"] holds protocol and category."""
    t = table if table is not None else FlowTable(node_tid, capture_id, layer_key_mode, extra_tcp_metric,
                                                  ndpi=ndpi)
    feed_pcap(t, path, replay_at_ns)
    return t.flush()


def main(argv: list[str] | None = None) -> int:
    """`python -m netsonde.flow.pcap FILE [--node-tid T] [--layer-key-mode L2|L3] [--ndpi]`: flows as JSON lines."""
    import argparse
    import sys

    import msgspec

    ap = argparse.ArgumentParser(prog="python -m netsonde.flow.pcap", description=main.__doc__)
    ap.add_argument("file")
    ap.add_argument("--node-tid", default="pcap")
    ap.add_argument("--layer-key-mode", default="L2", choices=["L2", "L3"])
    ap.add_argument("--ndpi", action="store_true", help="nDPI application names (e.g. DNS.Google)")
    args = ap.parse_args(argv)
    try:
        flows = flows_from_pcap(args.file, node_tid=args.node_tid, layer_key_mode=args.layer_key_mode,
                                ndpi=args.ndpi)
    except (PcapError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    enc = msgspec.json.Encoder()
    for f in flows:
        sys.stdout.write(enc.encode(f).decode() + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
