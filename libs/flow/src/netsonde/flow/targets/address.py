"""Target addresses: `host:port`, `host`, `[v6]:port`."""

from __future__ import annotations

import socket


def parse_target(target: str, need_port: bool) -> tuple[str, int]:
    """(IPv4 address, port) of a Target; raises TargetError (a ValueError) with the reason."""
    from . import TargetError

    host, port = target, 0
    if target.count(":") == 1:
        host, _, p = target.partition(":")
        if not p.isdigit() or not 0 < int(p) < 65536:
            raise TargetError(f"Target {target!r}: bad port {p!r}")
        port = int(p)
    elif target.startswith("["):
        raise TargetError(
            f"Target {target!r}: IPv6 collectors are not supported (NetFlow v5 and ERSPAN over IPv4)"
        )
    if need_port and not port:
        raise TargetError(f"Target {target!r} needs a port (host:port)")
    try:
        addr = socket.gethostbyname(host)
    except OSError as e:
        raise TargetError(f"Target {target!r}: cannot resolve {host!r}: {e}") from None
    return addr, port
