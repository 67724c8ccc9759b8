"""Kernel set-up shared by the integration tests: a shell step that fails loudly, a veth pair from this
namespace into a fresh network namespace, and `Topo`, namespaces joined by veths; all removed afterwards."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager


def sh(*cmd: str) -> str:
    """Run one command (argv form); a non-zero exit raises with its output. Returns its stdout."""
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True, timeout=60).stdout


def shell(cmd: str) -> str:
    """Run one shell command line (`&&` chains allowed); a non-zero exit raises. Returns its stdout."""
    return subprocess.run(cmd, shell=True, check=True, capture_output=True, text=True).stdout


@contextmanager
def veth_pair_into(ns: str, host: str, peer: str, host_cidr: str, peer_cidr: str) -> Iterator[None]:
    """Namespace `ns` with veth end `peer` (address `peer_cidr`) in it, end `host` (`host_cidr`) here, both up.
    Both the link and the namespace go on exit, and if a step fails on the way."""
    sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
        sh("ip", "link", "set", peer, "netns", ns)
        sh("ip", "addr", "add", host_cidr, "dev", host)
        sh("ip", "link", "set", host, "up")
        sh("ip", "-n", ns, "addr", "add", peer_cidr, "dev", peer)
        sh("ip", "-n", ns, "link", "set", peer, "up")
        yield
    finally:
        subprocess.run(["ip", "link", "del", host], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@contextmanager
def veth_into_namespace(unique: str, tag: str, subnet: int) -> Iterator[dict[str, str]]:
    """veth_pair_into with names and /24 addresses from `unique`: `host` end here (10.<n>.<subnet>.1), `peer`
    end in namespace `ns` (10.<n>.<subnet>.2).

    Names are `<tag>-<unique>` (namespace), `<tag>h<unique>` and `<tag>p<unique>` (ends), so parallel runs
    never collide; <n> (100-199) comes from `unique` too."""
    n = 100 + int(unique[:4], 16) % 100
    v = {"ns": f"{tag}-{unique}", "host": f"{tag}h{unique[:8]}", "peer": f"{tag}p{unique[:8]}",
         "ip": f"10.{n}.{subnet}.1", "peer_ip": f"10.{n}.{subnet}.2"}
    with veth_pair_into(v["ns"], v["host"], v["peer"], f"{v['ip']}/24", f"{v['peer_ip']}/24"):
        yield v

class Topo:
    """Namespaces (`nf<tag><unique>`) and the veths between them, made for one test; `close()` (or leaving a
    `with` block) deletes the namespaces and with them every link in them."""

    def __init__(self, unique: str) -> None:
        self.u = unique[:6]
        self.netns: list[str] = []

    def __enter__(self) -> Topo:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def ns(self, tag: str) -> str:
        name = f"nf{tag}{self.u}"
        shell(f"ip netns add {name}")
        self.netns.append(name)
        shell(f"ip -n {name} link set lo up")
        return name

    @staticmethod
    def path(ns: str) -> str:
        return f"/var/run/netns/{ns}"

    def veth(self, a_ns: str, a: str, b_ns: str, b: str) -> None:
        shell(f"ip link add {a} netns {a_ns} type veth peer name {b} netns {b_ns}")
        shell(f"ip -n {a_ns} link set {a} up && ip -n {b_ns} link set {b} up")

    def joined_pair(self, link: str, subnet: str) -> tuple[str, str, str, str]:
        """Namespaces `a` and `b` joined by veth `<link>a<u>` (in a, <subnet>.1/24) - `<link>b<u>` (in b,
        <subnet>.2/24); returns (nsA, ifA, nsB, ifB)."""
        a, b = self.ns("a"), self.ns("b")
        ia, ib = f"{link}a{self.u}", f"{link}b{self.u}"
        self.veth(a, ia, b, ib)
        shell(f"ip -n {a} addr add {subnet}.1/24 dev {ia} && ip -n {b} addr add {subnet}.2/24 dev {ib}")
        return a, ia, b, ib

    def close(self) -> None:
        for n in self.netns:
            subprocess.run(["ip", "netns", "del", n], capture_output=True)
