"""Packet capture into a FlowTable: AF_PACKET with a TPACKET_V3 ring (default) or libpcap.

Both run in their own thread, inside the interface's network namespace when one is given (the thread
enters it with setns(2); sockets keep the namespace they were created in). The BPF filter is compiled by
libpcap (`compile_bpf`) and attached to the socket, so the kernel drops unwanted packets and trims the
rest to the header size before they reach the ring.

    cap = AfPacketCapture("veth0", table, netns_path="/var/run/netns/x", bpf="udp", snaplen=256)
    cap.start()
    ...
    with cap.lock:            # the table is shared with the capture thread
        flows = table.updates(now_ms)
    cap.stop()
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import mmap
import os
import select
import socket
import struct
import threading
import time
from typing import Any

from netsonde.common.libpcap import BpfInsn as _BpfInsn
from netsonde.common.libpcap import BpfProgram as _BpfProgram
from netsonde.common.libpcap import PcapPkthdr as _PcapPkthdr
from netsonde.common.libpcap import SockFprog as _SockFprog
from netsonde.common.libpcap import libpcap as libpcap
from netsonde.common.netns import SetnsError, enter_netns

from .table import FlowTable

log = logging.getLogger(__name__)

ETH_P_ALL = 0x0003
SOL_PACKET = 263
PACKET_ADD_MEMBERSHIP = 1
PACKET_MR_PROMISC = 1
PACKET_RX_RING = 5
PACKET_STATISTICS = 6
PACKET_VERSION = 10
TPACKET_V3 = 2
SO_ATTACH_FILTER = 26
TP_STATUS_KERNEL = 0
TP_STATUS_USER = 1
DLT_EN10MB = 1

DEFAULT_SNAPLEN = 256
DRAIN_TIMEOUT_S = 1.0
"""At stop, the longest a capture spends counting what its ring or socket still holds."""
MAX_SNAPLEN = 4096


class CaptureError(Exception):
    """A capture cannot start (bad interface, namespace, filter or privileges); the message says why."""


class BPFError(CaptureError):
    """The BPF filter does not compile."""


# --- BPF through libpcap (the binding: netsonde.common.libpcap) ------------------------------------
def compile_bpf(expr: str, snaplen: int = DEFAULT_SNAPLEN) -> list[tuple[int, int, int, int]]:
    """Compile a tcpdump filter expression for Ethernet into (code, jt, jf, k) instructions.

    Raises BPFError with libpcap's message when the expression is invalid. An empty expression compiles
    to a single `ret #snaplen` (accept everything, trimmed to the header size)."""
    lib = libpcap()
    p = lib.pcap_open_dead(DLT_EN10MB, snaplen)
    prog = _BpfProgram()
    try:
        if lib.pcap_compile(p, ctypes.byref(prog), expr.encode(), 1, 0xFFFFFFFF) < 0:
            msg = lib.pcap_geterr(p).decode(errors="replace")
            raise BPFError(f"invalid BPF filter {expr!r}: {msg}")
        insns = [(prog.bf_insns[i].code, prog.bf_insns[i].jt, prog.bf_insns[i].jf, prog.bf_insns[i].k)
                 for i in range(prog.bf_len)]
        lib.pcap_freecode(ctypes.byref(prog))
        return insns
    finally:
        lib.pcap_close(p)


def attach_bpf(sock: socket.socket, insns: list[tuple[int, int, int, int]]) -> None:
    """Attach a classic BPF program to a socket (SO_ATTACH_FILTER)."""
    arr = (_BpfInsn * len(insns))(*[_BpfInsn(*i) for i in insns])
    fprog = _SockFprog(len(insns), ctypes.cast(arr, ctypes.POINTER(_BpfInsn)))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, bytes(fprog))


# --- namespaces ---------------------------------------------------------------------------------------
def setns(path_or_fd: str | int) -> None:
    """Move the calling thread into a network namespace (path like /var/run/netns/x or /proc/PID/ns/net)."""
    try:
        enter_netns(path_or_fd)
    except SetnsError as exc:
        raise CaptureError(f"cannot enter network namespace {path_or_fd}: {os.strerror(exc.errno or 0)}") from None


# --- captures -----------------------------------------------------------------------------------------
class BaseCapture:
    """A capture thread feeding one FlowTable. Subclasses implement `_open` and `_run`."""

    kind = "base"

    def __init__(self, ifname: str, table: FlowTable, netns_path: str | None = None, bpf: str = "",
                 snaplen: int = DEFAULT_SNAPLEN) -> None:
        self.ifname = ifname
        self.table = table
        self.netns_path = netns_path or None
        self.bpf = bpf
        self.snaplen = min(max(snaplen or DEFAULT_SNAPLEN, 64), MAX_SNAPLEN)
        self.lock = threading.Lock()
        """Held while the capture thread writes to the table; take it to read updates."""
        self.packets_received = 0
        self.packets_dropped = 0
        self.error: str = ""
        self._stop = threading.Event()
        self._started = threading.Event()
        self._thread: threading.Thread | None = None
        self._insns = compile_bpf(bpf, self.snaplen)  # fail early with a clear message

    def start(self, timeout: float = 5.0) -> None:
        """Start the thread; raises CaptureError if the capture cannot open."""
        self._thread = threading.Thread(target=self._main, name=f"capture-{self.kind}-{self.ifname}", daemon=True)
        self._thread.start()
        self._started.wait(timeout)
        if self.error:
            self._thread.join(1)
            raise CaptureError(self.error)

    def swap_table(self, table: FlowTable) -> FlowTable:
        """Count into `table` from now on and return the previous table. The socket stays open, so no
        packet is missed or counted twice across the swap (a restart would close it and open a new one:
        packets between the two are lost). Packets the thread has not read yet (at most the ring's block
        timeout) go to the new table."""
        with self.lock:
            old, self.table = self.table, table
        return old

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _main(self) -> None:
        try:
            if self.netns_path:
                setns(self.netns_path)
            self._open()
        except (OSError, CaptureError) as e:
            self.error = e.args[0] if isinstance(e, CaptureError) else f"{self.ifname}: {e.strerror or e}"
            self._started.set()
            return
        self._started.set()
        try:
            self._run()
        except Exception as e:  # the capture dies, the probe reports it as an error state
            log.exception("capture on %s failed", self.ifname)
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self._close()

    def _open(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        raise NotImplementedError

    def _close(self) -> None:
        pass


def _release_block(ring: Any, base: int) -> None:
    """Hand a block back to the kernel; its packet count is zeroed first, so a block handed back but not
    reopened by the kernel (nothing arrived since) reads as empty in `_drain`."""
    struct.pack_into("=I", ring, base + 12, 0)
    struct.pack_into("=I", ring, base + 8, TP_STATUS_KERNEL)


class AfPacketCapture(BaseCapture):
    """AF_PACKET socket with a TPACKET_V3 mmap ring; whole blocks go to `FlowTable.process_block`."""

    kind = "afpacket"

    def __init__(self, ifname: str, table: FlowTable, netns_path: str | None = None, bpf: str = "",
                 snaplen: int = DEFAULT_SNAPLEN, block_size: int = 1 << 20, block_nr: int = 32,
                 block_timeout_ms: int = 100) -> None:
        super().__init__(ifname, table, netns_path, bpf, snaplen)
        self.block_size = block_size
        self.block_nr = block_nr
        self.block_timeout_ms = block_timeout_ms
        self.sock: socket.socket | None = None
        self.ring: mmap.mmap | None = None

    def _open(self) -> None:
        s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)  # protocol 0: nothing before bind
        try:
            try:
                ifindex = socket.if_nametoindex(self.ifname)
            except OSError:
                raise CaptureError(f"no interface {self.ifname!r}"
                                   + (f" in namespace {self.netns_path}" if self.netns_path else ""))
            attach_bpf(s, self._insns)
            s.setsockopt(SOL_PACKET, PACKET_VERSION, TPACKET_V3)
            frame_size = 2048
            req = struct.pack("=7I", self.block_size, self.block_nr, frame_size,
                              self.block_size * self.block_nr // frame_size, self.block_timeout_ms, 0, 0)
            s.setsockopt(SOL_PACKET, PACKET_RX_RING, req)
            self.ring = mmap.mmap(s.fileno(), self.block_size * self.block_nr, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)
            s.bind((self.ifname, ETH_P_ALL))
            mreq = struct.pack("=iHH8s", ifindex, PACKET_MR_PROMISC, 0, b"")
            s.setsockopt(SOL_PACKET, PACKET_ADD_MEMBERSHIP, mreq)
        except BaseException:
            s.close()
            raise
        self.sock = s

    def _run(self) -> None:
        assert self.sock is not None and self.ring is not None
        ring = self.ring
        view = memoryview(ring)
        bs = self.block_size
        poller = select.poll()
        poller.register(self.sock.fileno(), select.POLLIN | select.POLLERR)
        i = 0
        last_stats = time.monotonic()
        try:
            while not self._stop.is_set():
                base = i * bs
                status = struct.unpack_from("=I", ring, base + 8)[0]
                if not status & TP_STATUS_USER:
                    poller.poll(100)
                    now = time.monotonic()
                    if now - last_stats > 1:
                        self._read_stats()
                        last_stats = now
                    continue
                with self.lock:  # self.table inside the lock: swap_table may replace it
                    n = self.table.process_block(view[base:base + bs])
                self.packets_received += n
                _release_block(ring, base)
                i = (i + 1) % self.block_nr
            self._drain(view, i)
        finally:
            view.release()
            self._read_stats()

    def _drain(self, view: memoryview, i: int) -> None:
        """At stop: count what the ring still holds. Unbinding the socket (protocol 0) takes it off the
        interface and waits for the packets being written (the kernel's synchronize_net), so the ring then
        holds exactly the packets seen up to the stop: the retired blocks from `i` on, then the block the
        kernel is filling (its descriptor counts the packets already in it; its timeout has not retired it
        yet). Bounded by DRAIN_TIMEOUT_S: what is left past it is counted as dropped."""
        assert self.sock is not None
        try:
            self.sock.bind((self.ifname, 0))
        except OSError as e:  # interface gone: the kernel unhooked the socket already
            log.debug("capture on %s: unbind at stop: %s", self.ifname, e)
        ring, bs = self.ring, self.block_size
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        for _ in range(self.block_nr):
            base = i * bs
            status, npkts = struct.unpack_from("=II", view, base + 8)
            if npkts == 0:  # an empty open block, or one handed back and not opened since: the end
                break
            if time.monotonic() > deadline:
                self.packets_dropped += npkts
            else:
                with self.lock:
                    self.packets_received += self.table.process_block(view[base:base + bs])
            if not status & TP_STATUS_USER:  # the block being filled: nothing after it
                break
            _release_block(ring, base)
            i = (i + 1) % self.block_nr

    def _read_stats(self) -> None:
        if self.sock is None:
            return
        try:
            raw = self.sock.getsockopt(SOL_PACKET, PACKET_STATISTICS, 12)
        except OSError:
            return
        _packets, drops, _freeze = struct.unpack("=III", raw)
        self.packets_dropped += drops  # the kernel resets the counters on each read

    def _close(self) -> None:
        if self.ring is not None:
            try:
                self.ring.close()
            except BufferError:
                pass
        if self.sock is not None:
            self.sock.close()


class PcapCapture(BaseCapture):
    """libpcap capture (the `pcap` capture type): pcap_next_ex in the thread, frames to the table."""

    kind = "pcap"

    def __init__(self, *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self._p: int | None = None

    def _open(self) -> None:
        lib = libpcap()
        err = ctypes.create_string_buffer(256)
        p = lib.pcap_create(self.ifname.encode(), err)
        if not p:
            raise CaptureError(f"pcap_create {self.ifname}: {err.value.decode(errors='replace')}")
        lib.pcap_set_snaplen(p, self.snaplen)
        lib.pcap_set_promisc(p, 1)
        lib.pcap_set_timeout(p, 100)
        lib.pcap_set_immediate_mode(p, 1)
        lib.pcap_set_buffer_size(p, 8 << 20)
        rc = lib.pcap_activate(p)
        if rc < 0:
            msg = lib.pcap_geterr(p).decode(errors="replace") or lib.pcap_statustostr(rc).decode()
            lib.pcap_close(p)
            raise CaptureError(f"pcap_activate {self.ifname}: {msg}")
        prog = _BpfProgram()
        if lib.pcap_compile(p, ctypes.byref(prog), self.bpf.encode(), 1, 0xFFFFFFFF) < 0 or \
                lib.pcap_setfilter(p, ctypes.byref(prog)) < 0:
            msg = lib.pcap_geterr(p).decode(errors="replace")
            lib.pcap_close(p)
            raise BPFError(f"invalid BPF filter {self.bpf!r}: {msg}")
        lib.pcap_freecode(ctypes.byref(prog))
        lib.pcap_setnonblock(p, 1, err)
        self._p = p

    def _run(self) -> None:
        lib = libpcap()
        hdr = ctypes.POINTER(_PcapPkthdr)()
        data = ctypes.POINTER(ctypes.c_ubyte)()
        batch: list[tuple[bytes, int, int]] = []
        poller = select.poll()
        poller.register(lib.pcap_get_selectable_fd(self._p), select.POLLIN)
        while not self._stop.is_set():
            rc = lib.pcap_next_ex(self._p, ctypes.byref(hdr), ctypes.byref(data))
            if rc == 1:
                h = hdr.contents
                batch.append((ctypes.string_at(data, h.caplen), h.tv_sec * 1_000_000_000 + h.tv_usec * 1000, h.len))
                if len(batch) < 256:
                    continue
            elif rc < 0:
                raise CaptureError(f"pcap_next_ex: {lib.pcap_geterr(self._p).decode(errors='replace')}")
            if batch:
                with self.lock:
                    self.table.process_batch(batch)
                self.packets_received += len(batch)
                batch = []
            if rc == 0:  # nothing pending (non-blocking): wait for the socket
                poller.poll(100)
        # at stop: what libpcap's ring still holds (non-blocking reads until it is empty), bounded in time
        deadline = time.monotonic() + DRAIN_TIMEOUT_S
        while time.monotonic() < deadline:
            rc = lib.pcap_next_ex(self._p, ctypes.byref(hdr), ctypes.byref(data))
            if rc != 1:
                break
            h = hdr.contents
            batch.append((ctypes.string_at(data, h.caplen), h.tv_sec * 1_000_000_000 + h.tv_usec * 1000, h.len))
        stats = (ctypes.c_uint * 3)()
        if lib.pcap_stats(self._p, stats) == 0:
            self.packets_dropped = stats[1] + stats[2]
        if batch:
            with self.lock:
                self.table.process_batch(batch)
            self.packets_received += len(batch)

    def _close(self) -> None:
        if self._p:
            libpcap().pcap_close(self._p)
            self._p = None


PACKET_READERS: dict[str, type[BaseCapture]] = {"afpacket": AfPacketCapture, "pcap": PcapCapture}
"""The packet reader of each interface capture type, by Skydive's name (the type table itself is
`netsonde.common.capture_types`)."""
