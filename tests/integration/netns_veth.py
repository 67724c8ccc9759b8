"""Kernel set-up shared by the integration tests: a shell step that fails loudly, and a veth pair from this
namespace into a fresh network namespace, each end addressed and up, removed afterwards."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager


def sh(*cmd: str) -> str:
    """Run one command (argv form); a non-zero exit raises with its output. Returns its stdout."""
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True, timeout=60).stdout


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
