"""What the flow steps give besides flows: raw packets (`RawPackets()`, `BPF()`) and groups (`Group()`).

`RawPacketsT.pcap_bytes` is what the HTTP API sends for the tcpdump Accept type; `BpfProgram` compiles a
tcpdump filter with libpcap (`netsonde.common.libpcap`) and runs it on each stored packet.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import struct
from collections.abc import Callable
from typing import Any

from netsonde.common.libpcap import BpfProgram as PcapProgram
from netsonde.common.libpcap import PcapPkthdr, libpcap

from .errors import GremlinError
from .fields import path_values
from .steps import Step
from .traversal import Context, ScalarT, Value


class RawPacketsT(Value):
    """RawPackets(): flow UUID -> packets. JSON: Data base64 (as Go marshals []byte); pcap on request."""

    KIND = "rawpackets"

    def __init__(self, packets: dict[str, list[dict[str, Any]]]) -> None:
        self.packets = packets

    def to_json(self) -> Any:
        import base64

        out = {
            u: [dict(p, Data=base64.b64encode(p["Data"]).decode()) for p in ps]
            for u, ps in self.packets.items()
        }
        return [out] if out else []

    def pcap_bytes(self) -> bytes:
        """A pcap file (microsecond timestamps) of every packet, oldest first."""
        pkts = sorted(
            (p for ps in self.packets.values() for p in ps), key=lambda p: (p["Timestamp"], p["Index"])
        )
        linktype = pkts[0]["LinkType"] if pkts else 1
        out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, linktype)]
        for p in pkts:
            ts = p["Timestamp"]
            data = p["Data"]
            out.append(struct.pack("<IIII", ts // 1000, (ts % 1000) * 1000, len(data), len(data)))
            out.append(data)
        return b"".join(out)

    def step_handler(self, step: Step) -> Callable[[Context], Value] | None:
        if step.NAME == "BPF":
            return lambda ctx: self.bpf(step)
        if step.NAME == "Count":
            return lambda ctx: ScalarT(sum(len(v) for v in self.packets.values()))
        return None

    def bpf(self, step: Step) -> Value:
        prog = BpfProgram(step.expr, step)  # type: ignore[attr-defined]
        out = {}
        for uuid, ps in self.packets.items():
            kept = [p for p in ps if prog.match(p["Data"], p["LinkType"])]
            if kept:
                out[uuid] = kept
        return RawPacketsT(out)


class BpfProgram:
    """A tcpdump filter expression compiled by libpcap, run with `pcap_offline_filter` (per link type)."""

    _lib: Any = None

    def __init__(self, expr: str, step: Step) -> None:
        self.expr = expr
        self.step = step
        self.progs: dict[int, Any] = {}
        if BpfProgram._lib is None:
            if ctypes.util.find_library("pcap") is None:
                raise GremlinError("BPF(): libpcap is not installed (apt-get install libpcap0.8)", status=501)
            BpfProgram._lib = libpcap()
        self.prog(1)  # validate the expression now (Ethernet)

    def prog(self, linktype: int) -> Any:
        prog = self.progs.get(linktype)
        if prog is None:
            lib = self._lib
            handle = lib.pcap_open_dead(linktype, 65535)
            prog = PcapProgram()
            rc = lib.pcap_compile(handle, ctypes.byref(prog), self.expr.encode(), 1, 0xFFFFFFFF)
            if rc != 0:
                err = lib.pcap_geterr(handle).decode(errors="replace")
                lib.pcap_close(handle)
                raise self.step.error(f"bad BPF expression {self.expr!r}: {err}", self.step.args[0])
            lib.pcap_close(handle)
            self.progs[linktype] = prog
        return prog

    def match(self, data: bytes, linktype: int) -> bool:
        hdr = PcapPkthdr(0, 0, len(data), len(data))
        return bool(
            self._lib.pcap_offline_filter(ctypes.byref(self.prog(linktype)), ctypes.byref(hdr), data) != 0
        )


def group_flows(step: Step, flows: list[dict[str, Any]]) -> Value:
    key = getattr(step, "key", None) or "TrackingID"
    groups: dict[str, list[dict[str, Any]]] = {}
    for f in flows:
        present, vals = path_values(f, key)
        k = str(vals[0]) if present and vals else ""
        groups.setdefault(k, []).append(f)
    return GroupsT(groups)


class GroupsT(Value):
    """Group(): key -> flows; MoreThan(n) keeps groups of more than n flows."""

    KIND = "groups"

    def __init__(self, groups: dict[str, list[dict[str, Any]]]) -> None:
        self.groups = groups

    def to_json(self) -> Any:
        return [self.groups] if self.groups else []

    def step_handler(self, step: Step) -> Callable[[Context], Value] | None:
        if step.NAME == "MoreThan":
            n = step.n  # type: ignore[attr-defined]
            return lambda ctx: GroupsT({k: v for k, v in self.groups.items() if len(v) > n})
        if step.NAME == "Count":
            return lambda ctx: ScalarT(len(self.groups))
        return None
