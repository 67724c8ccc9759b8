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
def veth_into_namespace(unique: str, tag: str, subnet: int) -> Iterator[dict[str, str]]:
    """A veth pair: `host` end here (10.<n>.<subnet>.1/24), `peer` end in namespace `ns` (10.<n>.<subnet>.2/24).

    Names are `<tag>-<unique>` (namespace), `<tag>h<unique>` and `<tag>p<unique>` (ends), so parallel runs
    never collide; <n> (100-199) comes from `unique` too. Both the link and the namespace go on exit."""
    n = 100 + int(unique[:4], 16) % 100
    v = {"ns": f"{tag}-{unique}", "host": f"{tag}h{unique[:8]}", "peer": f"{tag}p{unique[:8]}",
         "ip": f"10.{n}.{subnet}.1", "peer_ip": f"10.{n}.{subnet}.2"}
    sh("ip", "netns", "add", v["ns"])
    try:
        sh("ip", "link", "add", v["host"], "type", "veth", "peer", "name", v["peer"])
        sh("ip", "link", "set", v["peer"], "netns", v["ns"])
        sh("ip", "addr", "add", f"{v['ip']}/24", "dev", v["host"])
        sh("ip", "link", "set", v["host"], "up")
        sh("ip", "-n", v["ns"], "addr", "add", f"{v['peer_ip']}/24", "dev", v["peer"])
        sh("ip", "-n", v["ns"], "link", "set", v["peer"], "up")
        yield v
    finally:
        subprocess.run(["ip", "link", "del", v["host"]], capture_output=True)
        subprocess.run(["ip", "netns", "del", v["ns"]], capture_output=True)


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
