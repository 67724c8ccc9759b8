"""Load flow.bpf.o with libbpf (Debian's libbpf1, through ctypes), attach it to clsact ingress + egress of one
interface, and read / evict its flow map.

libbpf does the ELF loading, map creation and relocation. The programs are attached with TCX links
(`bpf_link_create`, kernel 6.6+: no qdisc, and the kernel detaches them when the links' process ends, even
killed); on older kernels `bpf_tc_hook_create` / `bpf_tc_attach` add a clsact qdisc and cls_bpf
direct-action filters over netlink. Both in the calling thread's network namespace (the capture thread enters
the node's namespace first). A clsact qdisc this loader created is removed on `close`; one that was there
before stays, only our filters leave it.

    prog = FlowProgram.attach("veth0")      # raises EbpfError with the kernel's / libbpf's reason
    for m in prog.read_maps(): ...          # whole maps, decoded in one numpy pass (the probe's hot path)
    for key, val in prog.entries(): ...     # the same as Python objects (tests, tools)
    prog.close()
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import os
import socket
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np

__all__ = ["EbpfError", "FlowProgram", "FlowValue", "MapRead", "OBJECT_PATH", "KEY_SIZE", "TUNNEL_KEY_SIZE",
           "SAMPLE_LEN", "MAX_FLOWS", "monotonic_to_wall_offset_ns"]

OBJECT_PATH = Path(__file__).with_name("flow.bpf.o")
SOURCE_PATH = Path(__file__).with_name("flow.bpf.c")
KEY_SIZE = 64
"""sizeof(struct flow_key) in flow.bpf.c: the key of the `flows` map (plain packets)."""
TUNNEL_KEY_SIZE = 116
"""sizeof(struct tunnel_key): the key of `tunnel_flows` (the outer key plus the inner headers)."""
SAMPLE_LEN = 128
MAX_FLOWS = 65536
BATCH = 4096
"""Map entries read per bpf_map_lookup_batch call."""
VAL_DTYPE = np.dtype([("packets", "<u8"), ("bytes", "<u8"), ("first_ns", "<u8"), ("last_ns", "<u8"),
                      ("wire_len", "<u4"), ("sample_len", "<u4"), ("sample", f"V{SAMPLE_LEN}")])
"""struct flow_val, for decoding a whole batch of values in one pass."""
_VAL = struct.Struct(f"=QQQQII{SAMPLE_LEN}s")
_RING = struct.Struct(f"={TUNNEL_KEY_SIZE}s4xQII{SAMPLE_LEN}s")
STAT_RINGBUF, STAT_LOST, STAT_TUNNEL_NEW = 0, 1, 2

BPF_TCX_INGRESS, BPF_TCX_EGRESS = 46, 47  # enum bpf_attach_type: TCX links (kernel 6.6+)
BPF_TC_INGRESS, BPF_TC_EGRESS = 1, 2
BPF_TC_F_REPLACE = 1
_HANDLE, _PRIORITY = 0x4E53, 0x4E53  # "NS": our filters' handle / priority on the clsact hooks


class EbpfError(Exception):
    """The eBPF program cannot be loaded or attached; the message gives libbpf's / the kernel's reason."""


@dataclass
class MapRead:
    """One read of a flow map: `count` entries, keys as one bytes string (`key_size` bytes each, in the
    order of `vals`), values as a numpy structured array (VAL_DTYPE)."""

    key_size: int
    keys: bytes
    vals: np.ndarray

    def key(self, i: int) -> bytes:
        return self.keys[i * self.key_size:(i + 1) * self.key_size]


@dataclass
class FlowValue:
    packets: int
    byte_count: int
    first_ns: int
    last_ns: int
    wire_len: int
    sample: bytes


class _TcHook(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("ifindex", ctypes.c_int), ("attach_point", ctypes.c_int),
                ("parent", ctypes.c_uint32), ("_pad", ctypes.c_uint32)]


class _TcOpts(ctypes.Structure):
    _fields_ = [("sz", ctypes.c_size_t), ("prog_fd", ctypes.c_int), ("flags", ctypes.c_uint32),
                ("prog_id", ctypes.c_uint32), ("handle", ctypes.c_uint32), ("priority", ctypes.c_uint32),
                ("_pad", ctypes.c_uint32)]


_RingCallback = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t)
_lib: Any = None


def libbpf() -> Any:
    """Debian's libbpf.so.1 (ctypes), loaded once; EbpfError when it is missing."""
    global _lib
    if _lib is None:
        name = ctypes.util.find_library("bpf") or "libbpf.so.1"
        try:
            lib = ctypes.CDLL(name, use_errno=True)
        except OSError as e:
            raise EbpfError(f"libbpf not found ({name}: {e}); install libbpf1 (make deps)") from e
        vp, i = ctypes.c_void_p, ctypes.c_int
        sigs: dict[str, tuple[Any, list[Any]]] = {
            "bpf_object__open_file": (vp, [ctypes.c_char_p, vp]),
            "bpf_object__load": (i, [vp]),
            "bpf_object__close": (None, [vp]),
            "bpf_object__find_program_by_name": (vp, [vp, ctypes.c_char_p]),
            "bpf_program__fd": (i, [vp]),
            "bpf_object__find_map_fd_by_name": (i, [vp, ctypes.c_char_p]),
            "bpf_object__find_map_by_name": (vp, [vp, ctypes.c_char_p]),
            "bpf_map__set_max_entries": (i, [vp, ctypes.c_uint32]),
            "bpf_map_get_next_key": (i, [i, vp, vp]),
            "bpf_map_lookup_elem": (i, [i, vp, vp]),
            "bpf_map_lookup_and_delete_elem": (i, [i, vp, vp]),
            "bpf_map_delete_elem": (i, [i, vp]),
            "bpf_map_lookup_batch": (i, [i, vp, vp, vp, vp, ctypes.POINTER(ctypes.c_uint32), vp]),
            "bpf_link_create": (i, [i, i, i, vp]),
            "bpf_prog_query": (i, [i, i, ctypes.c_uint32, vp, vp, ctypes.POINTER(ctypes.c_uint32)]),
            "bpf_tc_hook_create": (i, [vp]),
            "bpf_tc_hook_destroy": (i, [vp]),
            "bpf_tc_attach": (i, [vp, vp]),
            "bpf_tc_detach": (i, [vp, vp]),
            "ring_buffer__new": (vp, [i, _RingCallback, vp, vp]),
            "ring_buffer__consume": (i, [vp]),
            "ring_buffer__free": (None, [vp]),
            "libbpf_num_possible_cpus": (i, []),
            "libbpf_set_print": (vp, [vp]),
        }
        for fn, (res, args) in sigs.items():
            f = getattr(lib, fn)
            f.restype, f.argtypes = res, args
        lib.libbpf_set_print(None)  # errors come back as return codes; no libbpf chatter on stderr
        _lib = lib
    return _lib


def _err(what: str, rc: int | None = None) -> EbpfError:
    code = -rc if rc is not None and rc < 0 else ctypes.get_errno()
    return EbpfError(f"{what}: {os.strerror(code) if code else 'failed'}")


def tcx_programs(ifname: str) -> list[int]:
    """IDs of the programs attached to `ifname`'s TCX ingress in the current namespace (tests, inspection:
    bpftool before 7.3 does not show TCX links per interface)."""
    ids = (ctypes.c_uint32 * 64)()
    count = ctypes.c_uint32(64)
    rc = libbpf().bpf_prog_query(socket.if_nametoindex(ifname), BPF_TCX_INGRESS, 0, None, ids, ctypes.byref(count))
    if rc:
        raise _err(f"query TCX programs on {ifname}", rc)
    return list(ids[:count.value])


def monotonic_to_wall_offset_ns() -> int:
    """Add to a bpf_ktime_get_ns() value (CLOCK_MONOTONIC) to get wall-clock ns."""
    return time.time_ns() - time.clock_gettime_ns(time.CLOCK_MONOTONIC)


class FlowProgram:
    """flow.bpf.o loaded and attached to one interface of the current network namespace."""

    def __init__(self, ifname: str, obj: Any, ifindex: int) -> None:
        self.ifname = ifname
        self.ifindex = ifindex
        self._obj = obj
        lib = libbpf()
        self.map_fd = lib.bpf_object__find_map_fd_by_name(obj, b"flows")
        self.tunnel_map_fd = lib.bpf_object__find_map_fd_by_name(obj, b"tunnel_flows")
        self._maps = ((self.map_fd, KEY_SIZE), (self.tunnel_map_fd, TUNNEL_KEY_SIZE))
        self._bufs: dict[int, tuple[Any, np.ndarray]] = {}
        self._tunnels_created = 0
        self._tunnel_entries = 0
        """The tunnel map is walked (all its buckets: ~0.2 ms even empty) only when it may hold entries."""
        self.stats_fd = lib.bpf_object__find_map_fd_by_name(obj, b"stats")
        self._ring_fd = lib.bpf_object__find_map_fd_by_name(obj, b"overflow")
        self._hooks: list[_TcHook] = []
        self._links: list[int] = []
        self.attached_via = ""
        """"tcx" (links: no qdisc, released with the process) or "clsact" (cls_bpf filters, older kernels)."""
        self._created_qdisc = False
        self._ring: Any = None
        self._ring_cb: Any = None
        self._ring_records: list[tuple[bytes, int, int, bytes]] = []
        self.ncpus = max(1, lib.libbpf_num_possible_cpus())

    @classmethod
    def attach(cls, ifname: str, max_flows: int = MAX_FLOWS, object_path: Path = OBJECT_PATH) -> FlowProgram:
        """Load the object (flow map bounded to `max_flows` entries) and attach its programs to `ifname`
        (ingress + egress: TCX links, or clsact + cls_bpf where the kernel has no TCX)."""
        if not object_path.exists():
            raise EbpfError(f"{object_path} not built (run `make install`: clang compiles {SOURCE_PATH.name})")
        try:
            ifindex = socket.if_nametoindex(ifname)
        except OSError as e:
            raise EbpfError(f"interface {ifname}: {e.strerror or e}") from e
        lib = libbpf()
        ctypes.set_errno(0)
        obj = lib.bpf_object__open_file(str(object_path).encode(), None)
        if not obj:
            raise _err(f"open {object_path.name}")
        for name in (b"flows", b"tunnel_flows"):
            lib.bpf_map__set_max_entries(lib.bpf_object__find_map_by_name(obj, name), max_flows)
        rc = lib.bpf_object__load(obj)
        if rc:
            lib.bpf_object__close(obj)
            raise _err("load BPF program (kernel refused it)", rc)
        prog = cls(ifname, obj, ifindex)
        try:
            if not prog._attach_tcx():
                prog._attach_tc()
            prog._open_ring()
        except EbpfError:
            prog.close()
            raise
        return prog

    def _attach_tcx(self) -> bool:
        """TCX links on ingress and egress (no qdisc, no classifier dispatch: ~30 ns per packet less than
        clsact + cls_bpf here). False when the kernel has no TCX (before 6.6)."""
        lib = libbpf()
        for point, name in ((BPF_TCX_INGRESS, b"netsonde_ingress"), (BPF_TCX_EGRESS, b"netsonde_egress")):
            fd = lib.bpf_program__fd(lib.bpf_object__find_program_by_name(self._obj, name))
            link = lib.bpf_link_create(fd, self.ifindex, point, None)
            if link < 0:
                if not self._links and link in (-errno.EINVAL, -errno.EOPNOTSUPP, -524):  # 524: ENOTSUPP
                    return False
                raise _err(f"attach {name.decode()} (TCX) on {self.ifname}", link)
            self._links.append(link)
        self.attached_via = "tcx"
        return True

    def _attach_tc(self) -> None:
        self.attached_via = "clsact"
        lib = libbpf()
        hook = _TcHook(sz=ctypes.sizeof(_TcHook), ifindex=self.ifindex, attach_point=BPF_TC_INGRESS)
        rc = lib.bpf_tc_hook_create(ctypes.byref(hook))
        if rc == 0:
            self._created_qdisc = True
        elif rc != -errno.EEXIST:
            raise _err(f"clsact qdisc on {self.ifname}", rc)
        for point, name in ((BPF_TC_INGRESS, b"netsonde_ingress"), (BPF_TC_EGRESS, b"netsonde_egress")):
            p = lib.bpf_object__find_program_by_name(self._obj, name)
            h = _TcHook(sz=ctypes.sizeof(_TcHook), ifindex=self.ifindex, attach_point=point)
            opts = _TcOpts(sz=ctypes.sizeof(_TcOpts), prog_fd=lib.bpf_program__fd(p), flags=BPF_TC_F_REPLACE,
                           handle=_HANDLE, priority=_PRIORITY)
            rc = lib.bpf_tc_attach(ctypes.byref(h), ctypes.byref(opts))
            if rc:
                raise _err(f"attach cls_bpf {name.decode()} on {self.ifname}", rc)
            self._hooks.append(h)

    def _open_ring(self) -> None:
        def on_record(_ctx: Any, data: Any, size: int) -> int:
            if size >= _RING.size:
                key, ts, wire, slen, sample = _RING.unpack(ctypes.string_at(data, _RING.size))
                self._ring_records.append((key, ts, wire, sample[:slen]))
            return 0

        self._ring_cb = _RingCallback(on_record)
        self._ring = libbpf().ring_buffer__new(self._ring_fd, self._ring_cb, None, None)
        if not self._ring:
            raise _err("ring buffer")

    def close(self) -> None:
        """Detach the filters, remove the clsact qdisc if we created it, free the maps and programs.
        Errors are ignored: the interface (or namespace) may be gone already, which removed everything."""
        lib = libbpf()
        for link in self._links:  # closing a TCX link's last fd detaches its program
            os.close(link)
        self._links = []
        for h in self._hooks:
            opts = _TcOpts(sz=ctypes.sizeof(_TcOpts), handle=_HANDLE, priority=_PRIORITY)
            lib.bpf_tc_detach(ctypes.byref(h), ctypes.byref(opts))
        if self._created_qdisc:
            h = _TcHook(sz=ctypes.sizeof(_TcHook), ifindex=self.ifindex,
                        attach_point=BPF_TC_INGRESS | BPF_TC_EGRESS)
            lib.bpf_tc_hook_destroy(ctypes.byref(h))
        self._hooks = []
        if self._ring:
            lib.ring_buffer__free(self._ring)
            self._ring = None
        if self._obj:
            lib.bpf_object__close(self._obj)
            self._obj = None

    # --- reading the maps -----------------------------------------------------------------------------
    def read_maps(self) -> list[MapRead]:
        """Both flow maps (plain, tunnels), each read BATCH entries per syscall (bpf_map_lookup_batch) into
        reused buffers and decoded in one numpy pass: no Python object per entry."""
        reads = [self._read(self.map_fd, KEY_SIZE)]
        created = self.stat(STAT_TUNNEL_NEW)
        if self._tunnel_entries or created != self._tunnels_created:
            m = self._read(self.tunnel_map_fd, TUNNEL_KEY_SIZE)
            self._tunnels_created, self._tunnel_entries = created, len(m.vals)
            reads.append(m)
        return reads

    def _read(self, fd: int, ksize: int) -> MapRead:
        lib = libbpf()
        if fd not in self._bufs:
            self._bufs[fd] = (ctypes.create_string_buffer(ksize * BATCH), np.empty(BATCH, VAL_DTYPE))
        kbuf, vbuf = self._bufs[fd]
        token_in = ctypes.create_string_buffer(8)
        token_out = ctypes.create_string_buffer(8)
        keys: list[bytes] = []
        vals: list[np.ndarray] = []
        first = True
        while True:
            count = ctypes.c_uint32(BATCH)
            rc = lib.bpf_map_lookup_batch(fd, None if first else token_in, token_out, kbuf,
                                          vbuf.ctypes.data, ctypes.byref(count), None)
            if rc and rc != -errno.ENOENT:
                raise _err("read the flow map", rc)
            n = count.value
            if n:
                keys.append(ctypes.string_at(kbuf, n * ksize))  # (not .raw: that copies the whole buffer)
                vals.append(vbuf[:n].copy())
            if rc:  # -ENOENT: the last batch
                break
            ctypes.memmove(token_in, token_out, 8)
            first = False
        if len(vals) == 1:
            return MapRead(ksize, keys[0], vals[0])
        return MapRead(ksize, b"".join(keys), np.concatenate(vals) if vals else np.empty(0, VAL_DTYPE))

    def entries(self) -> Iterator[tuple[bytes, FlowValue]]:
        """Every (key, value) of both flow maps, as Python objects."""
        for m in self.read_maps():
            for i, v in enumerate(m.vals.tolist()):
                p, b, t0, t1, wire, slen, sample = v
                yield m.key(i), FlowValue(p, b, t0, t1, wire, bytes(sample[:slen]))

    def take(self, key: bytes) -> FlowValue | None:
        """Remove an entry, returning its last counts (packets counted up to the removal are not lost)."""
        val = ctypes.create_string_buffer(_VAL.size)
        fd = self.map_fd if len(key) == KEY_SIZE else self.tunnel_map_fd
        if libbpf().bpf_map_lookup_and_delete_elem(fd, key, val) != 0:
            return None
        return _value(val.raw)

    def overflow(self) -> list[tuple[bytes, int, int, bytes]]:
        """Packets the kernel sent through the ring buffer because the map was full: (key, ts, len, sample)."""
        if self._ring:
            libbpf().ring_buffer__consume(self._ring)
        out, self._ring_records = self._ring_records, []
        return out

    def run_stats(self) -> tuple[int, int]:
        """(run_time_ns, run_cnt) of both programs, from /proc/self/fdinfo: the kernel time the TC programs
        cost. Counted only while `sysctl kernel.bpf_stats_enabled=1` (the capture bench turns it on)."""
        t = n = 0
        for name in (b"netsonde_ingress", b"netsonde_egress"):
            fd = libbpf().bpf_program__fd(libbpf().bpf_object__find_program_by_name(self._obj, name))
            with open(f"/proc/self/fdinfo/{fd}") as f:
                info = dict(line.split(":\t", 1) for line in f.read().splitlines() if ":\t" in line)
            t += int(info.get("run_time_ns", "0"))
            n += int(info.get("run_cnt", "0"))
        return t, n

    def stat(self, idx: int) -> int:
        """A counter of the per-CPU stats array, summed over CPUs."""
        return percpu_counter(self.stats_fd, idx, self.ncpus)


def percpu_counter(map_fd: int, idx: int, ncpus: int) -> int:
    """Entry `idx` of a BPF_MAP_TYPE_PERCPU_ARRAY of u64 counters, summed over CPUs (0 if unreadable)."""
    k = ctypes.c_uint32(idx)
    vals = (ctypes.c_uint64 * ncpus)()
    if libbpf().bpf_map_lookup_elem(map_fd, ctypes.byref(k), vals) != 0:
        return 0
    return int(sum(vals))


def _value(raw: bytes) -> FlowValue:
    p, b, t0, t1, wire, slen, sample = _VAL.unpack(raw[:_VAL.size])
    return FlowValue(p, b, t0, t1, wire, sample[:slen])

