"""libpcap through ctypes: the one binding (structures and function signatures) every component uses.

Live captures (netsonde.flow.capture), BPF on packets read from a socket (probe-flow's pcapsocket) and the
Gremlin `BPF()` step compile tcpdump expressions with `pcap_compile` and run them with the kernel or with
`pcap_offline_filter`; they share this one loaded library.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any


class BpfInsn(ctypes.Structure):
    """struct bpf_insn: one classic BPF instruction."""

    _fields_ = [
        ("code", ctypes.c_ushort),
        ("jt", ctypes.c_ubyte),
        ("jf", ctypes.c_ubyte),
        ("k", ctypes.c_uint32),
    ]


class BpfProgram(ctypes.Structure):
    """struct bpf_program: what pcap_compile fills."""

    _fields_ = [("bf_len", ctypes.c_uint), ("bf_insns", ctypes.POINTER(BpfInsn))]


class SockFprog(ctypes.Structure):
    """struct sock_fprog: a BPF program for SO_ATTACH_FILTER."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.POINTER(BpfInsn))]


class PcapPkthdr(ctypes.Structure):
    """struct pcap_pkthdr: a packet's timestamp, captured and wire lengths."""

    _fields_ = [
        ("tv_sec", ctypes.c_long),
        ("tv_usec", ctypes.c_long),
        ("caplen", ctypes.c_uint32),
        ("len", ctypes.c_uint32),
    ]


_lib: Any = None


def libpcap() -> Any:
    """The libpcap shared library with the signatures Netsonde uses, loaded once (OSError if missing)."""
    global _lib
    if _lib is None:
        lib = ctypes.CDLL(ctypes.util.find_library("pcap") or "libpcap.so.0.8")
        lib.pcap_open_dead.restype = ctypes.c_void_p
        lib.pcap_open_dead.argtypes = [ctypes.c_int, ctypes.c_int]
        lib.pcap_compile.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(BpfProgram),
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_uint32,
        ]
        lib.pcap_geterr.restype = ctypes.c_char_p
        lib.pcap_geterr.argtypes = [ctypes.c_void_p]
        lib.pcap_close.argtypes = [ctypes.c_void_p]
        lib.pcap_freecode.argtypes = [ctypes.POINTER(BpfProgram)]
        lib.pcap_offline_filter.argtypes = [
            ctypes.POINTER(BpfProgram),
            ctypes.POINTER(PcapPkthdr),
            ctypes.c_char_p,
        ]
        lib.pcap_create.restype = ctypes.c_void_p
        lib.pcap_create.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
        for fn in (
            "pcap_set_snaplen",
            "pcap_set_promisc",
            "pcap_set_timeout",
            "pcap_set_immediate_mode",
            "pcap_set_buffer_size",
        ):
            getattr(lib, fn).argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.pcap_activate.argtypes = [ctypes.c_void_p]
        lib.pcap_setfilter.argtypes = [ctypes.c_void_p, ctypes.POINTER(BpfProgram)]
        lib.pcap_next_ex.argtypes = [
            ctypes.c_void_p,
            ctypes.POINTER(ctypes.POINTER(PcapPkthdr)),
            ctypes.POINTER(ctypes.POINTER(ctypes.c_ubyte)),
        ]
        lib.pcap_breakloop.argtypes = [ctypes.c_void_p]
        lib.pcap_statustostr.restype = ctypes.c_char_p
        lib.pcap_setnonblock.argtypes = [ctypes.c_void_p, ctypes.c_int, ctypes.c_char_p]
        lib.pcap_get_selectable_fd.argtypes = [ctypes.c_void_p]
        lib.pcap_stats.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        _lib = lib
    return _lib
