"""The Linux capabilities docs/reliability.md lists for the probes, checked one system call at a time.

Each probe primitive runs in a child Python limited with `setpriv --bounding-set` to a set of capabilities: it
must work with the listed capability alone and be refused (EPERM) without it.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PRIMITIVES = {
    # probe-flow: an AF_PACKET socket bound to an interface (TPACKET_V3 rings, libpcap, injection)
    "packet": "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)); s.bind(('lo', 0))",
    # probe-flow: promiscuous mode through PACKET_ADD_MEMBERSHIP / PACKET_MR_PROMISC
    "promisc": "s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3)); "
               "s.setsockopt(263, 1, struct.pack('iHH8s', socket.if_nametoindex('lo'), 1, 0, b''))",
    # both probes: enter a network namespace (setns CLONE_NEWNET)
    "setns": "fd = os.open(NS, os.O_RDONLY); libc = ctypes.CDLL(None, use_errno=True); "
             "assert libc.setns(fd, 0x40000000) == 0, ctypes.get_errno()",
}


def _run(primitive: str, caps: str, netns: str) -> str:
    code = textwrap.dedent(f"""
        import ctypes, os, socket, struct
        NS = {netns!r}
        try:
            {PRIMITIVES[primitive]}
            print("ok")
        except (OSError, AssertionError) as exc:
            print("refused", exc)
    """)
    out = subprocess.run(["setpriv", "--bounding-set", caps, "--inh-caps=-all", sys.executable, "-c", code],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


@pytest.mark.root
@pytest.mark.parametrize(("primitive", "needs"), [("packet", "net_raw"), ("promisc", "net_raw"),
                                                  ("setns", "sys_admin")])
def test_each_probe_primitive_needs_exactly_its_capability(primitive: str, needs: str, unique: str) -> None:
    netns = f"cap{unique}"[:15]
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        path = f"/run/netns/{netns}"
        alone = _run(primitive, f"-all,+{needs}", path)
        without = _run(primitive, f"+all,-{needs}", path)
        print(f"\n{primitive}: with only CAP_{needs.upper()}: {alone}; with every capability but it: {without}")
        assert alone == "ok"
        assert without.startswith("refused")
    finally:
        subprocess.run(["ip", "netns", "del", netns], check=False)
