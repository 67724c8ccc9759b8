"""Packet injection (Skydive's `/api/injectpacket`): forge ICMP/TCP/UDP v4/v6 packets with scapy and send
them from an interface, inside its network namespace.

    inject_packets("veth0", "/var/run/netns/a", "10.0.0.1", "10.0.0.2", type="icmp4", count=5,
                   interval_ms=100, size=64, icmp_id=1234)

MACs default to the interface's own address (source) and, for the destination, to the MAC found in the
namespace's neighbour table for `dst_ip` (else broadcast). `raw_frames=[...]` sends prepared Ethernet
frames instead (used to replay pcaps or crafted encapsulations).
"""

from __future__ import annotations

import random
import socket
import subprocess
import threading
import time
from typing import Any

from .capture import CaptureError, setns

TYPES = ("icmp4", "icmp6", "tcp4", "tcp6", "udp4", "udp6")


class InjectionError(ValueError):
    """The injection request is invalid (type, addresses, interface)."""


def validate(type: str, src_ip: str, dst_ip: str, count: int) -> None:
    """Raise InjectionError when the request cannot be built."""
    if type not in TYPES:
        raise InjectionError(f"unknown injection type {type!r}; one of {', '.join(TYPES)}")
    v6 = type.endswith("6")
    try:
        fam = socket.AF_INET6 if v6 else socket.AF_INET
        socket.inet_pton(fam, src_ip)
        socket.inet_pton(fam, dst_ip)
    except OSError:
        raise InjectionError(f"{type} needs IPv{'6' if v6 else '4'} addresses, got {src_ip!r} -> {dst_ip!r}")
    if count < 1:
        raise InjectionError("count must be >= 1")


def build_packets(type: str, src_ip: str, dst_ip: str, count: int = 1, size: int = 0, icmp_id: int = 0,
                  src_mac: str = "", dst_mac: str = "ff:ff:ff:ff:ff:ff", src_port: int = 0, dst_port: int = 0,
                  payload: str | bytes = b"", ttl: int = 64, mode: str = "unique",
                  increment_payload: int = 0) -> list[bytes]:
    """The Ethernet frames an injection sends (one per count); `size` pads the frame to that many bytes."""
    from scapy.layers.inet import ICMP, IP, TCP, UDP
    from scapy.layers.inet6 import ICMPv6EchoRequest, IPv6
    from scapy.layers.l2 import Ether

    validate(type, src_ip, dst_ip, count)
    v6 = type.endswith("6")
    data = payload.encode() if isinstance(payload, str) else bytes(payload)
    rnd = random.Random()
    sport = src_port or rnd.randrange(32768, 61000)
    dport = dst_port or 80
    ident = icmp_id or rnd.randrange(1, 65535)
    frames = []
    for i in range(count):
        pl = data + (b"\x00" * i * increment_payload if increment_payload else b"")
        l3: Any = IPv6(src=src_ip, dst=dst_ip, hlim=ttl) if v6 else IP(src=src_ip, dst=dst_ip, ttl=ttl)
        if type.startswith("icmp"):
            pid = rnd.randrange(1, 65535) if mode == "random" else ident
            l4: Any = ICMPv6EchoRequest(id=pid, seq=i + 1) if v6 else ICMP(type=8, id=pid, seq=i + 1)
        elif type.startswith("tcp"):
            l4 = TCP(sport=rnd.randrange(32768, 61000) if mode == "random" else sport, dport=dport, flags="S",
                     seq=rnd.randrange(1 << 32))
        else:
            l4 = UDP(sport=rnd.randrange(32768, 61000) if mode == "random" else sport, dport=dport)
        pkt = Ether(src=src_mac or "00:00:00:00:00:00", dst=dst_mac) / l3 / l4 / pl
        b = bytes(pkt)
        if size and len(b) < size:
            b = bytes(Ether(src=src_mac or "00:00:00:00:00:00", dst=dst_mac) / l3 / l4 / (pl + b"\x00" * (size - len(b))))
        frames.append(b)
    return frames


def inject_packets(ifname: str, netns: str | None, src_ip: str = "", dst_ip: str = "", type: str = "icmp4",
                   count: int = 1, interval_ms: int = 0, size: int = 0, icmp_id: int = 0, src_mac: str = "",
                   dst_mac: str = "", src_port: int = 0, dst_port: int = 0, payload: str | bytes = b"",
                   ttl: int = 64, mode: str = "unique", increment_payload: int = 0,
                   raw_frames: list[bytes] | None = None) -> int:
    """Send packets out of `ifname` (in namespace path `netns`, or the current one); returns how many."""
    if raw_frames is None:
        validate(type, src_ip, dst_ip, count)
    result: dict[str, Any] = {}

    def run() -> None:
        try:
            if netns:
                setns(netns)
            try:
                socket.if_nametoindex(ifname)
            except OSError:
                raise InjectionError(f"no interface {ifname!r}" + (f" in namespace {netns}" if netns else ""))
            frames = raw_frames
            if frames is None:
                smac = src_mac or _own_mac(ifname)
                dmac = dst_mac or _resolve_mac(dst_ip, ifname, smac, src_ip) or "ff:ff:ff:ff:ff:ff"
                frames = build_packets(type, src_ip, dst_ip, count, size, icmp_id, smac, dmac, src_port,
                                       dst_port, payload, ttl, mode, increment_payload)
            s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
            try:
                s.bind((ifname, 0))
                sent = 0
                for i, f in enumerate(frames):
                    if i and interval_ms:
                        time.sleep(interval_ms / 1000)
                    s.send(f)
                    sent += 1
            finally:
                s.close()
            result["sent"] = sent
        except (InjectionError, CaptureError, OSError) as e:
            result["error"] = e

    t = threading.Thread(target=run, name=f"inject-{ifname}")
    t.start()
    t.join()
    if "error" in result:
        e = result["error"]
        raise e if isinstance(e, InjectionError) else InjectionError(str(e))
    return result["sent"]


def _own_mac(ifname: str) -> str:
    """The interface's MAC, read through a packet socket of the current (thread's) namespace."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, 0)
    try:
        s.bind((ifname, 0))
        return s.getsockname()[4].hex(":")
    finally:
        s.close()


def _neighbour_mac(ip: str) -> str:
    if not ip:
        return ""
    out = subprocess.run(["ip", "neigh", "show", ip], capture_output=True, text=True).stdout.split()
    return out[out.index("lladdr") + 1] if "lladdr" in out else ""


def _resolve_mac(ip: str, ifname: str, own_mac: str, own_ip: str, timeout: float = 1.0) -> str:
    """The neighbour MAC of `ip` in the current namespace: the neighbour table, else one ARP request
    sent and answered on `ifname` (IPv4), else one UDP datagram to let the kernel resolve it (IPv6)."""
    mac = _neighbour_mac(ip)
    if mac or not ip:
        return mac
    if ":" not in ip and own_ip and ":" not in own_ip:
        return _arp(ip, ifname, own_mac, own_ip, timeout)
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.sendto(b"", (ip, 9))
    except OSError:
        return ""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        mac = _neighbour_mac(ip)
        if mac:
            return mac
        time.sleep(0.02)
    return ""


def _arp(ip: str, ifname: str, own_mac: str, own_ip: str, timeout: float) -> str:
    """Ask who-has `ip` on `ifname` and return the MAC of the first reply ("" on timeout)."""
    req = (b"\xff" * 6 + bytes.fromhex(own_mac.replace(":", "")) + b"\x08\x06"
           + b"\x00\x01\x08\x00\x06\x04\x00\x01" + bytes.fromhex(own_mac.replace(":", ""))
           + socket.inet_aton(own_ip) + b"\x00" * 6 + socket.inet_aton(ip))
    s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0806))
    try:
        s.bind((ifname, 0x0806))
        s.send(req)
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            s.settimeout(left)
            try:
                data = s.recv(128)
            except (TimeoutError, socket.timeout):
                return ""
            if len(data) >= 42 and data[20:22] == b"\x00\x02" and data[28:32] == socket.inet_aton(ip):
                return data[22:28].hex(":")
        return ""
    finally:
        s.close()
