"""Kernel receive-path time per packet in one network namespace, for the capture bench (rxtime.bpf.c).

BTF tracepoint programs sum, per CPU, the time each packet arriving in the watched namespace spends in the
kernel's receive path, from net:netif_receive_skb to its free (skb:kfree_skb: the bench's frames are
dropped by the IP layer): the AF_PACKET taps (copy into the ring, reader wake-up), the TC ingress programs
and the IP layer. Measured in ns by the kernel itself, on whichever CPU the softirq
runs, so other processes on the machine do not blur it; the bench subtracts the figure of a run without any
capture to get the time a capture adds.

    with RxTime("/run/netns/NS") as rx:
        ns0, n0 = rx.read(); ...traffic...; ns1, n1 = rx.read()
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from netsonde.flow.ebpf.loader import EbpfError, libbpf

SOURCE = Path(__file__).with_name("rxtime.bpf.c")


def _compile(workdir: Path) -> Path:
    """clang the program against this kernel's BTF (vmlinux.h from bpftool)."""
    header = workdir / "vmlinux.h"
    with open(header, "w") as f:
        subprocess.run(["bpftool", "btf", "dump", "file", "/sys/kernel/btf/vmlinux", "format", "c"], stdout=f,
                       check=True)
    obj = workdir / "rxtime.bpf.o"
    subprocess.run(["clang", "-O2", "-g", "-target", "bpf", "-D__TARGET_ARCH_x86", f"-I{workdir}", "-c",
                    str(SOURCE), "-o", str(obj)], check=True, capture_output=True)
    return obj


class RxTime:
    """The receive-path timer attached for the life of the `with` block."""

    def __init__(self, netns_path: str) -> None:
        self.ino = os.stat(netns_path).st_ino
        self._dir = Path(tempfile.mkdtemp(prefix="bench-rxtime-"))
        self._obj: Any = None
        self._links: list[Any] = []

    def __enter__(self) -> RxTime:
        lib = libbpf()
        lib.bpf_program__attach.restype, lib.bpf_program__attach.argtypes = ctypes.c_void_p, [ctypes.c_void_p]
        lib.bpf_link__destroy.restype, lib.bpf_link__destroy.argtypes = ctypes.c_int, [ctypes.c_void_p]
        lib.libbpf_get_error.restype, lib.libbpf_get_error.argtypes = ctypes.c_long, [ctypes.c_void_p]
        obj = lib.bpf_object__open_file(str(_compile(self._dir)).encode(), None)
        if not obj or lib.bpf_object__load(obj):
            raise EbpfError("rxtime.bpf.o: the kernel refused the tracepoint programs")
        self._obj = obj
        for name in (b"rx_enter", b"rx_free"):
            link = lib.bpf_program__attach(lib.bpf_object__find_program_by_name(obj, name))
            if not link or lib.libbpf_get_error(link):
                self.__exit__()
                raise EbpfError(f"rxtime: cannot attach {name.decode()}")
            self._links.append(link)
        key, val = ctypes.c_uint32(0), ctypes.c_uint32(self.ino)
        lib.bpf_map_update_elem.restype = ctypes.c_int
        lib.bpf_map_update_elem.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_uint64]
        fd = lib.bpf_object__find_map_fd_by_name(obj, b"watch")
        if lib.bpf_map_update_elem(fd, ctypes.byref(key), ctypes.byref(val), 0):
            self.__exit__()
            raise EbpfError("rxtime: cannot set the watched namespace")
        self._totals_fd = lib.bpf_object__find_map_fd_by_name(obj, b"totals")
        return self

    def read(self) -> tuple[int, int]:
        """(ns, packets) summed over CPUs since the start."""
        lib = libbpf()
        ncpu = max(1, lib.libbpf_num_possible_cpus())
        vals = (ctypes.c_uint64 * (2 * ncpu))()
        key = ctypes.c_uint32(0)
        if lib.bpf_map_lookup_elem(self._totals_fd, ctypes.byref(key), vals) != 0:
            raise EbpfError("rxtime: cannot read the totals")
        return sum(vals[0::2]), sum(vals[1::2])

    def __exit__(self, *exc: Any) -> None:
        lib = libbpf()
        for link in self._links:
            lib.bpf_link__destroy(link)
        self._links = []
        if self._obj:
            lib.bpf_object__close(self._obj)
            self._obj = None
        for p in self._dir.iterdir():
            p.unlink()
        self._dir.rmdir()
