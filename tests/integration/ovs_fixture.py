"""Private Open vSwitch daemons for tests: ovsdb-server + ovs-vswitchd (userspace datapath) in a temp dir.

Usage in a test module:

    from tests.integration.ovs_fixture import ovs  # noqa: F401  (the fixture)

    def test_x(ovs, unique):
        br = f"br{unique}"
        ovs.vsctl("add-br", br, "--", "set", "bridge", br, "datapath_type=netdev")
        ...

`ovs.db` is the OVSDB remote (`unix:<dir>/db.sock`) to hand to code under test; `ovs.env` is the environment
(OVS_RUNDIR/OVS_LOGDIR/OVS_DBDIR) for subprocesses that use the daemons; it is never exported globally.
Bridges must have unique names (internal ports become host tap devices) and are the test's to delete;
the fixture deletes any bridge left over and stops both daemons. A missing OVS fails loudly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import pytest

SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"


@dataclass
class OvsDaemons:
    dir: Path
    env: dict[str, str]

    @property
    def db(self) -> str:
        return f"unix:{self.dir / 'db.sock'}"

    def vsctl(self, *args: str, check: bool = True) -> str:
        p = subprocess.run(["ovs-vsctl", f"--db={self.db}", "--timeout=10", *args], env=self.env,
                           capture_output=True, text=True, timeout=20)
        if check and p.returncode != 0:
            raise RuntimeError(f"ovs-vsctl {' '.join(args)}: {p.stderr.strip()}")
        return p.stdout

    def appctl(self, target: str, *args: str) -> str:
        p = subprocess.run(["ovs-appctl", "-t", target, *args],
                           env=self.env, capture_output=True, text=True, timeout=20)
        return p.stdout + p.stderr

    def log(self) -> str:
        try:
            return (self.dir / "ovs-vswitchd.log").read_text(errors="replace")[-4000:]
        except OSError:
            return ""


def _run(cmd: list[str], env: dict[str, str]) -> None:
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=30)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")


def start_ovs() -> OvsDaemons:
    """Start ovsdb-server and ovs-vswitchd with private dirs; raise if OVS is not installed or fails."""
    for tool in ("ovsdb-tool", "ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovs-appctl"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} not found: run `make deps` (apt-get install openvswitch-switch)")
    d = Path(tempfile.mkdtemp(prefix="netsonde-ovs-"))
    env = dict(os.environ, OVS_RUNDIR=str(d), OVS_LOGDIR=str(d), OVS_DBDIR=str(d), OVS_SYSCONFDIR=str(d))
    _run(["ovsdb-tool", "create", str(d / "conf.db"), SCHEMA], env)
    _run(["ovsdb-server", str(d / "conf.db"), f"--remote=punix:{d / 'db.sock'}",
          "--remote=db:Open_vSwitch,Open_vSwitch,manager_options", f"--pidfile={d / 'ovsdb-server.pid'}",
          f"--log-file={d / 'ovsdb-server.log'}", "--detach"], env)
    ovs = OvsDaemons(d, env)
    ovs.vsctl("--no-wait", "init")
    _run(["ovs-vswitchd", f"unix:{d / 'db.sock'}", f"--pidfile={d / 'ovs-vswitchd.pid'}",
          f"--log-file={d / 'ovs-vswitchd.log'}", "--detach"], env)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:  # ready when vswitchd answers on its control socket
        p = subprocess.run(["ovs-appctl", "-t", "ovs-vswitchd", "version"], env=env, capture_output=True,
                           text=True, timeout=10)
        if p.returncode == 0:
            return ovs
        time.sleep(0.05)
    stop_ovs(ovs)
    raise RuntimeError("ovs-vswitchd did not start in 15 s")


def stop_ovs(ovs: OvsDaemons) -> None:
    try:
        for br in ovs.vsctl("list-br", check=False).split():
            ovs.vsctl("--if-exists", "del-br", br, check=False)
    finally:
        for target in ("ovs-vswitchd", "ovsdb-server"):
            subprocess.run(["ovs-appctl", "-t", target, "exit"], env=ovs.env, capture_output=True, timeout=20)
        for pidfile in ("ovs-vswitchd.pid", "ovsdb-server.pid"):  # in case `exit` did not get through
            try:
                pid = int((ovs.dir / pidfile).read_text().strip())
                os.kill(pid, 15)
            except (OSError, ValueError):
                pass
        shutil.rmtree(ovs.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ovs() -> Iterator[OvsDaemons]:
    """Private OVS daemons for the test module (see the module docstring)."""
    daemons = start_ovs()
    try:
        yield daemons
    finally:
        stop_ovs(daemons)


@dataclass
class NsPair:
    """Two namespaces, each with a veth whose other end is attached to an OVS bridge."""

    ns_a: str
    ns_b: str
    port_a: str
    port_b: str
    ip_a: str
    ip_b: str


def _sh(*cmd: str) -> None:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=20)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip()}")


def attach_netns_pair(ovs: OvsDaemons, bridge: str, unique: str, subnet: str = "10.98.0") -> NsPair:
    """Create namespaces `sa<unique>`/`sb<unique>` with veths attached to `bridge` (TX offload off, as the
    netdev datapath needs). Undo with `detach_netns_pair`."""
    pair = NsPair(f"sa{unique}", f"sb{unique}", f"sa{unique}p", f"sb{unique}p", f"{subnet}.1", f"{subnet}.2")
    for ns, port, ip in ((pair.ns_a, pair.port_a, pair.ip_a), (pair.ns_b, pair.port_b, pair.ip_b)):
        inner = f"{ns}i"
        _sh("ip", "netns", "add", ns)
        _sh("ip", "link", "add", inner, "type", "veth", "peer", "name", port)
        _sh("ip", "link", "set", inner, "netns", ns)
        _sh("ip", "link", "set", port, "up")
        _sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", inner)
        _sh("ip", "-n", ns, "link", "set", inner, "up")
        _sh("ip", "-n", ns, "link", "set", "lo", "up")
        subprocess.run(["ip", "netns", "exec", ns, "ethtool", "-K", inner, "tx", "off"], capture_output=True)
        ovs.vsctl("add-port", bridge, port)
    return pair


def detach_netns_pair(ovs: OvsDaemons, bridge: str, pair: NsPair) -> None:
    for ns, port in ((pair.ns_a, pair.port_a), (pair.ns_b, pair.port_b)):
        ovs.vsctl("--if-exists", "del-port", bridge, port, check=False)
        subprocess.run(["ip", "link", "del", port], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
