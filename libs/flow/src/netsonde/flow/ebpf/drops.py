"""Kernel drop reasons (capture option `DropReasons`): load drops.bpf.o, attach it to skb:kfree_skb, and read
the packets the kernel dropped on the watched interfaces, per header key and drop reason.

The program is a BTF tracepoint (`tp_btf/kfree_skb`, attached through the BPF syscall: no tracefs mount
needed); it counts only skbs whose device is in its `watch` map, keyed by (ifindex, netns inode). Reason
numbers become names from this kernel's BTF (`enum skb_drop_reason` in /sys/kernel/btf/vmlinux, read through
libbpf), without the `SKB_DROP_REASON_` prefix: `NO_SOCKET`, `NETFILTER_DROP` ...

    prog = DropProgram.attach()                  # raises EbpfError with the kernel's / libbpf's reason
    prog.watch(socket.if_nametoindex("veth0"), current_netns_inode())
    for drop, packets in prog.take_all(): ...    # read and delete: each drop is reported once
    prog.close()
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .loader import EbpfError, _err, libbpf, percpu_counter

__all__ = [
    "DropKey",
    "DropProgram",
    "OBJECT_PATH",
    "STAT_COUNTED",
    "STAT_FULL",
    "STAT_NOT_IP",
    "STAT_UNSPECIFIED",
    "current_netns_inode",
    "drop_reason_names",
]

OBJECT_PATH = Path(__file__).with_name("drops.bpf.o")
SOURCE_PATH = Path(__file__).with_name("drops.bpf.c")
PROGRAM = b"netsonde_kfree_skb"
STAT_COUNTED, STAT_FULL, STAT_NOT_IP, STAT_UNSPECIFIED = 0, 1, 2, 3
"""Indexes of the program's per-CPU `drop_stats` array (see drops.bpf.c)."""

_KEY = struct.Struct("=16s16sHHHBBBBHI")
"""struct drop_key in drops.bpf.c (48 bytes)."""
_WATCH = struct.Struct("=II")
_PREFIX = "SKB_DROP_REASON_"
BTF_KIND_ENUM, BTF_KIND_ENUM64 = 6, 19
VMLINUX_BTF = "/sys/kernel/btf/vmlinux"


@dataclass(frozen=True)
class DropKey:
    """The header of a dropped packet (addresses as text, ports host order) and why it was dropped."""

    family: int
    """4 or 6."""
    proto: int
    src: str
    dst: str
    sport: int
    dport: int
    icmp_type: int
    icmp_code: int
    icmp_id: int
    reason: str


def _signatures(lib: Any) -> Any:
    """The libbpf calls this module needs beyond the loader's (declared once per process)."""
    if getattr(lib, "_netsonde_drops", False):
        return lib
    vp, i = ctypes.c_void_p, ctypes.c_int
    for fn, res, args in (
        ("bpf_program__attach", vp, [vp]),
        ("bpf_link__destroy", i, [vp]),
        ("bpf_map_update_elem", i, [i, vp, vp, ctypes.c_uint64]),
        ("btf__parse", vp, [ctypes.c_char_p, vp]),
        ("btf__find_by_name_kind", i, [vp, ctypes.c_char_p, ctypes.c_uint32]),
        ("btf__type_by_id", vp, [vp, ctypes.c_uint32]),
        ("btf__name_by_offset", ctypes.c_char_p, [vp, ctypes.c_uint32]),
        ("btf__free", None, [vp]),
    ):
        f = getattr(lib, fn)
        f.restype, f.argtypes = res, args
    lib._netsonde_drops = True
    return lib


_names: dict[int, str] | None = None


def drop_reason_names(btf_path: str = VMLINUX_BTF) -> dict[int, str]:
    """{reason value: name} of this kernel's `enum skb_drop_reason` (read once from its BTF)."""
    global _names
    if _names is not None and btf_path == VMLINUX_BTF:
        return _names
    lib = _signatures(libbpf())
    ctypes.set_errno(0)
    btf = lib.btf__parse(btf_path.encode(), None)
    if not btf:
        raise _err(f"read BTF {btf_path}")
    try:
        out: dict[int, str] = {}
        for kind, rec in ((BTF_KIND_ENUM, struct.Struct("=Ii")), (BTF_KIND_ENUM64, struct.Struct("=III"))):
            tid = lib.btf__find_by_name_kind(btf, b"skb_drop_reason", kind)
            if tid <= 0:
                continue
            ptr = lib.btf__type_by_id(btf, tid)
            _name_off, info, _size = struct.unpack("=III", ctypes.string_at(ptr, 12))
            vlen = info & 0xFFFF
            raw = ctypes.string_at(ptr + 12, rec.size * vlen)
            for j in range(vlen):
                f = rec.unpack_from(raw, j * rec.size)
                value = f[1] & 0xFFFFFFFF if kind == BTF_KIND_ENUM else f[1] | f[2] << 32
                name = (lib.btf__name_by_offset(btf, f[0]) or b"").decode()
                out[value] = name[len(_PREFIX) :] if name.startswith(_PREFIX) else name
            break
    finally:
        lib.btf__free(btf)
    if not out:
        raise EbpfError(f"enum skb_drop_reason not in {btf_path}: this kernel reports no drop reasons")
    if btf_path == VMLINUX_BTF:
        _names = out
    return out


def reason_name(value: int, names: dict[int, str]) -> str:
    """A reason's name; a subsystem's reason (upper 16 bits set, e.g. Open vSwitch's) or one unknown to the
    BTF read at start is named by its numbers, `SUBSYS_<subsystem>_<code>` / `REASON_<n>`."""
    if value in names:
        return names[value]
    if value >> 16:
        return f"SUBSYS_{value >> 16}_{value & 0xFFFF}"
    return f"REASON_{value}"


def current_netns_inode() -> int:
    """Inode of the calling thread's network namespace (the capture thread enters the node's namespace)."""
    return os.stat("/proc/thread-self/ns/net").st_ino


class DropProgram:
    """drops.bpf.o loaded and attached to skb:kfree_skb; counts drops on the interfaces given to `watch`."""

    def __init__(self, obj: Any, link: Any) -> None:
        lib = libbpf()
        self._obj = obj
        self._link = link
        self.drops_fd = lib.bpf_object__find_map_fd_by_name(obj, b"drops")
        self.watch_fd = lib.bpf_object__find_map_fd_by_name(obj, b"watch")
        self.stats_fd = lib.bpf_object__find_map_fd_by_name(obj, b"drop_stats")
        self.ncpus = max(1, lib.libbpf_num_possible_cpus())
        self.names = drop_reason_names()

    @classmethod
    def attach(cls, object_path: Path | None = None) -> DropProgram:
        """Load the object (CO-RE relocated against this kernel's BTF; default `OBJECT_PATH`) and attach it to
        skb:kfree_skb."""
        object_path = object_path or OBJECT_PATH
        if not object_path.exists():
            raise EbpfError(
                f"{object_path} not built (run `make install`: clang compiles {SOURCE_PATH.name})"
            )
        lib = _signatures(libbpf())
        drop_reason_names()  # a kernel without the enum fails here, before anything is loaded
        ctypes.set_errno(0)
        obj = lib.bpf_object__open_file(str(object_path).encode(), None)
        if not obj:
            raise _err(f"open {object_path.name}")
        rc = lib.bpf_object__load(obj)
        if rc:
            lib.bpf_object__close(obj)
            raise _err("load the kfree_skb program (kernel refused it)", rc)
        ctypes.set_errno(0)
        link = lib.bpf_program__attach(lib.bpf_object__find_program_by_name(obj, PROGRAM))
        if not link:
            e = _err("attach to tracepoint skb:kfree_skb")
            lib.bpf_object__close(obj)
            raise e
        return cls(obj, link)

    def watch(self, ifindex: int, netns_inode: int) -> None:
        """Count drops whose device is `ifindex` in the namespace `netns_inode`."""
        key = ctypes.create_string_buffer(_WATCH.pack(ifindex, netns_inode & 0xFFFFFFFF), _WATCH.size)
        val = ctypes.c_uint8(1)
        rc = libbpf().bpf_map_update_elem(self.watch_fd, key, ctypes.byref(val), 0)
        if rc:
            raise _err(f"watch ifindex {ifindex}", rc)

    def take_all(self) -> list[tuple[DropKey, int]]:
        """Every (drop key, packets) counted since the previous call; the entries leave the map (a drop
        counted between the read and the delete stays for the next call: lookup-and-delete is atomic)."""
        lib = libbpf()
        keys: list[bytes] = []
        cur = ctypes.create_string_buffer(_KEY.size)
        nxt = ctypes.create_string_buffer(_KEY.size)
        prev = None
        while lib.bpf_map_get_next_key(self.drops_fd, prev, nxt) == 0:
            keys.append(nxt.raw)
            ctypes.memmove(cur, nxt, _KEY.size)
            prev = cur
            if len(keys) > 1 << 16:  # bounded by the map anyway; never loop on a map changing under us
                break
        out = []
        val = ctypes.c_uint64()
        for raw in keys:
            if lib.bpf_map_lookup_and_delete_elem(self.drops_fd, raw, ctypes.byref(val)) != 0:
                continue
            out.append((self._decode(raw), int(val.value)))
        return out

    def _decode(self, raw: bytes) -> DropKey:
        src, dst, sport, dport, icmp_id, family, proto, itype, icode, _pad, reason = _KEY.unpack(raw)
        fam, n = (socket.AF_INET, 4) if family == 4 else (socket.AF_INET6, 16)
        return DropKey(
            family,
            proto,
            socket.inet_ntop(fam, src[:n]),
            socket.inet_ntop(fam, dst[:n]),
            socket.ntohs(sport),
            socket.ntohs(dport),
            itype,
            icode,
            socket.ntohs(icmp_id),
            reason_name(reason, self.names),
        )

    def stat(self, idx: int) -> int:
        """A counter of the per-CPU `drop_stats` array, summed over CPUs."""
        return percpu_counter(self.stats_fd, idx, self.ncpus)

    def close(self) -> None:
        """Detach from the tracepoint and free the maps (idempotent)."""
        lib = libbpf()
        if self._link:
            lib.bpf_link__destroy(self._link)
            self._link = None
        if self._obj:
            lib.bpf_object__close(self._obj)
            self._obj = None
