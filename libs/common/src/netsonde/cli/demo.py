"""`make demo` / `make demo-down`: Skydive's two-host demo on simulated hosts, next to `make allinone`.

On host-a and host-b (simhost.py): a namespace `vm1` whose `eth0` is one end of a veth pair, the other end
(`vm1-eth0`) on the Open vSwitch bridge `br-int`; an underlay link `eth0` between the hosts (a veth pair,
192.168.50.1 <-> .2 on each host's OVS bridge `br-phy`); a VXLAN port `vxlan0` (key 42) on each `br-int`
towards the other host. The userspace datapath carries the tunnel (measured, docs/demo.md). Then one capture
on every vm1 veth end and both underlay interfaces, 5 pings from host-a's vm1 to host-b's vm1, and the queries
to try.

    python -m netsonde.cli.demo up [--analyzer 127.0.0.1:8082] [--state-dir .netsonde/demo]
    python -m netsonde.cli.demo down
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from netsonde.common.childproc import wait_until
from netsonde.common.simhost import SimHost, SimHostError, find_host, start_host

HOSTS = ("host-a", "host-b")
UNDERLAY = "192.168.50"
VMS = "10.0.0"
VNI = 42
CAPTURE_NAMES = ("eth0", "vm1-eth0")
"""Capture points on each host: vm1's eth0 and the underlay eth0 share a name, plus the bridge end."""


def capture_query(hosts: tuple[str, ...] = HOSTS) -> str:
    """Every vm1 veth end and each host's underlay interface, on the demo's hosts only."""
    names = ", ".join(f"'{n}'" for n in CAPTURE_NAMES)
    hs = ", ".join(f"'{h}'" for h in hosts)
    return f"G.V().Has('Host', Within({hs}), 'Type', 'veth', 'Name', Within({names}))"


QUERIES: tuple[tuple[str, str], ...] = (
    ("vm1 on both hosts", "G.V().Has('Type','netns','Name','vm1').Values('Host')"),
    ("the tunnel link graph-builder derived between the hosts", "G.E().Has('Type','tunnel')"),
    (
        "from host-a's vm1 to host-b's vm1, through both br-int and the tunnel",
        "G.V().Has('Host','host-a','Type','netns','Name','vm1').Out('Name','eth0')"
        ".ShortestPathTo(Metadata('Host','host-b','NetNsName','vm1','Name','eth0'), "
        "Metadata('RelationType','layer2'))",
    ),
    (
        "the ping's TrackingID",
        f"G.Flows().Has('Network.A','{VMS}.1','Application','ICMPv4').Dedup().Values('TrackingID')",
    ),
    (
        "where it was seen, in path order (nearer the requester, longer round trip)",
        "G.Flows().Has('TrackingID','<id>').Hops()",
    ),
    ("the tunnel's outer flow, parent of the ping on each underlay", "G.Flows().Has('Application','VXLAN')"),
)
"""The demo's queries (printed by `up`, run by tests/integration/test_two_hosts.py); `<id>`: TrackingID."""


@dataclass
class Demo:
    """The two hosts and what was built on them."""

    hosts: list[SimHost] = field(default_factory=list)
    underlay_ends: tuple[str, str] = ("ul-demo-a", "ul-demo-b")

    def host(self, name: str) -> SimHost:
        return next(h for h in self.hosts if h.name == name)


def build_topology(demo: Demo) -> None:
    """vm1 + br-int on each host, the underlay between them, and the VXLAN tunnel over it."""
    a_end, b_end = demo.underlay_ends
    subprocess.run(
        ["ip", "link", "add", a_end, "type", "veth", "peer", "name", b_end], check=True, capture_output=True
    )
    for i, (h, end) in enumerate(zip(demo.hosts, (a_end, b_end), strict=True)):
        me, peer = f"{UNDERLAY}.{i + 1}", f"{UNDERLAY}.{2 - i}"
        ipv6_off = (  # procfs, not sysctl(8): procps is not on every minimal system
            "sh",
            "-c",
            "for c in all default; do echo 1 > /proc/sys/net/ipv6/conf/$c/disable_ipv6; done",
        )
        h.run(*ipv6_off)  # no router solicitations: the flows are the demo's traffic only
        subprocess.run(["ip", "link", "set", end, "netns", str(h.pid)], check=True, capture_output=True)
        h.run("ip", "link", "set", end, "name", "eth0")
        h.run("ip", "link", "set", "eth0", "up")
        h.run("ovs-vsctl", "add-br", "br-phy", "--", "set", "bridge", "br-phy", "datapath_type=netdev")
        h.run("ovs-vsctl", "add-port", "br-phy", "eth0")
        h.run("ip", "addr", "add", f"{me}/24", "dev", "br-phy")
        h.run("ip", "link", "set", "br-phy", "up")
        h.run("ovs-vsctl", "add-br", "br-int", "--", "set", "bridge", "br-int", "datapath_type=netdev")
        h.run("ip", "netns", "add", "vm1")
        h.run("ip", "netns", "exec", "vm1", *ipv6_off)
        h.run("ip", "link", "add", "vm1-eth0", "type", "veth", "peer", "name", "eth0", "netns", "vm1")
        h.run("ip", "-n", "vm1", "addr", "add", f"{VMS}.{i + 1}/24", "dev", "eth0")
        h.run("ip", "-n", "vm1", "link", "set", "eth0", "up")
        h.run("ip", "-n", "vm1", "link", "set", "lo", "up")
        # the netdev datapath needs TX checksums done in software
        h.run("ip", "netns", "exec", "vm1", "ethtool", "-K", "eth0", "tx", "off")
        h.run("ip", "link", "set", "vm1-eth0", "up")
        h.run("ovs-vsctl", "add-port", "br-int", "vm1-eth0")
        h.run(
            "ovs-vsctl",
            "add-port",
            "br-int",
            "vxlan0",
            "--",
            "set",
            "interface",
            "vxlan0",
            "type=vxlan",
            f"options:remote_ip={peer}",
            f"options:local_ip={me}",
            f"options:key={VNI}",
        )
    # OVS resolves the tunnel's next hop by snooping ARP on br-phy: resolve it now, not on the first packet
    demo.hosts[0].run("ping", "-c", "1", "-W", "2", f"{UNDERLAY}.2")


def ping(demo: Demo, count: int = 5) -> str:
    a = demo.host(HOSTS[0])
    return a.run("ip", "netns", "exec", "vm1", "ping", "-c", str(count), "-i", "0.2", "-W", "1", f"{VMS}.2")


def start(
    state_dir: Path,
    nats_port: int,
    env: dict[str, str] | None = None,
    underlay_ends: tuple[str, str] = ("ul-demo-a", "ul-demo-b"),
) -> Demo:
    """Both hosts and their topology; stopped again if anything fails. `underlay_ends` are the temporary root
    namespace names of the underlay veth (tests give unique ones)."""
    demo = Demo(underlay_ends=underlay_ends)
    try:
        for name in HOSTS:
            demo.hosts.append(start_host(name, state_dir / name, nats_port, env))
        build_topology(demo)
    except BaseException:
        stop(demo)
        raise
    return demo


def stop(demo: Demo) -> None:
    for h in demo.hosts:
        h.stop()
    for end in demo.underlay_ends:  # gone with the hosts' namespaces; only a failed set-up leaves one here
        subprocess.run(["ip", "link", "del", end], capture_output=True)


# --- the CLI ------------------------------------------------------------------------------------------------
def _api(analyzer: str, path: str, body: Any = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://{analyzer}{path}", data=data, method="POST" if data else "GET")
    with urllib.request.urlopen(req, timeout=30) as r:
        raw = r.read()
    return json.loads(raw) if raw else None


def gremlin(analyzer: str, query: str) -> Any:
    return _api(analyzer, "/api/topology", {"GremlinQuery": query})


def _wait(fn: Any, timeout: float, what: str) -> Any:
    """`wait_until`, ending the demo with its message when the time is up."""
    try:
        return wait_until(fn, timeout, what)
    except AssertionError as exc:
        raise SystemExit(f"demo: {exc}") from None


def up(args: argparse.Namespace) -> int:
    state = Path(args.state_dir)
    if any(find_host(n, state / n) for n in HOSTS):
        print("demo: already running; `make demo-down` first", file=sys.stderr)
        return 1
    try:
        _api(args.analyzer, "/api/status")
    except OSError as exc:
        print(
            f"demo: no Netsonde API at {args.analyzer} ({exc}); start `make allinone` first", file=sys.stderr
        )
        return 1
    demo = start(state, args.nats_port)
    print(f"hosts up: {', '.join(f'{h.name} (pid {h.pid})' for h in demo.hosts)}")
    try:
        return _show(demo, args.analyzer)
    except BaseException:
        print(
            "demo: failed, removing both hosts (`make demo-down` removes a capture left behind)",
            file=sys.stderr,
        )
        stop(demo)
        raise


def _show(demo: Demo, a: str) -> int:
    """Wait for the graph, create the capture, ping, print the queries."""
    _wait(
        lambda: (
            gremlin(a, "G.E().Has('Type','tunnel').Count()") == 1
            and gremlin(a, capture_query() + ".Count()") == 6
        ),
        60,
        "both hosts' topology and the tunnel link in the graph",
    )
    cap = _api(
        a,
        "/api/capture",
        {
            "GremlinQuery": capture_query(),
            "Name": "demo",
            "Description": "vm1 veth ends and the underlay of both hosts",
        },
    )
    print(f"capture {cap['UUID']}: {cap['GremlinQuery']}")
    _wait(
        lambda: (
            gremlin(a, f"G.V().Has('Captures.ID', '{cap['UUID']}', 'Captures.State', 'active').Count()") == 6
        ),
        60,
        "the capture active on 6 interfaces",
    )
    print(ping(demo))
    print("Try (flows show up within the probes' update interval, 5 s by default):")
    for title, query in QUERIES:
        print(f'  # {title}\n  netsonde client topology query --gremlin "{query}"')
    print("Stop with: make demo-down")
    return 0


def down(args: argparse.Namespace) -> int:
    state = Path(args.state_dir)
    for name in HOSTS:
        host = find_host(name, state / name)
        if host is not None:
            host.stop()
            print(f"{name} stopped")
    subprocess.run(["rm", "-rf", str(state)], check=False)
    try:
        for cap in (_api(args.analyzer, "/api/capture") or {}).values():
            if cap.get("Name") == "demo":
                req = urllib.request.Request(
                    f"http://{args.analyzer}/api/capture/{cap['UUID']}", method="DELETE"
                )
                urllib.request.urlopen(req, timeout=10).close()
                print(f"capture {cap['UUID']} deleted")
    except OSError:
        pass
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m netsonde.cli.demo", description=__doc__.split("\n")[0])
    p.add_argument("command", choices=["up", "down"])
    p.add_argument("--analyzer", default=os.environ.get("NETSONDE_ANALYZER", "127.0.0.1:8082"))
    p.add_argument("--nats-port", type=int, default=int(os.environ.get("NETSONDE_NATS_PORT", "4222")))
    p.add_argument(
        "--state-dir", default=os.path.join(os.environ.get("NETSONDE_STATE_DIR", ".netsonde"), "demo")
    )
    args = p.parse_args(argv)
    try:
        return up(args) if args.command == "up" else down(args)
    except SimHostError as exc:
        print(f"demo: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
