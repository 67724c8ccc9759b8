"""Simulated hosts on one machine, for tests and demos: each one its own kernel-level host.

A simulated host is a process tree in its own network, mount, UTS and PID namespaces:

- network: its own interfaces, routes, bridges; `lo` up;
- mount: a private tmpfs on /run (so its own /run/netns and /run/openvswitch), sysfs and procfs remounted,
  so `ip netns add vm1` inside it and the namespaces its probe sees are its own;
- UTS: its hostname is its name; PID: its probes see only its own processes in /proc.

Its PID 1 (`python -m netsonde.common.simhost run`) starts private Open vSwitch daemons (database and
sockets in its /run/openvswitch, logs in the state dir) and probe-topology + probe-flow with
`NETSONDE_HOST_ID=<name>`.
Shared services (NATS, graph-builder, query-api, flow-enricher, the store) stay in the machine's root
namespaces, as with real hosts. The probes reach NATS on `127.0.0.1:<port>` of their own namespace, where
PID 1 relays each connection to the same port on the machine's loopback: the outgoing socket is created in
the root network namespace (a socket keeps the namespace it was made in), so NATS keeps listening on
127.0.0.1 only and no extra interface shows in either graph.

When PID 1 exits, the kernel kills everything in the host and frees its namespaces (the `vm1`-style named
namespaces live in its private /run/netns): nothing is left behind. SIGUSR1 restarts the host's probes.

    host = start_host("host-a", state_dir, nats_port=4222)
    host.run("ip", "link", "add", "br-int", "type", "bridge")
    host.restart_probes()
    host.stop()
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import ctypes.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from netsonde.common.childproc import stop_process
from netsonde.common.netns import run_in_netns

CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x04000000, 0x20000000, 0x40000000
MS_NOSUID, MS_NODEV, MS_NOEXEC, MS_REC, MS_PRIVATE = 2, 4, 8, 0x4000, 1 << 18
PR_SET_NAME, PR_SET_PDEATHSIG = 15, 1
OVS_SCHEMA = "/usr/share/openvswitch/vswitch.ovsschema"
OVS_RUNDIR = "/run/openvswitch"
PROBES = ("probe_topology", "probe_flow")

_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


class SimHostError(RuntimeError):
    """A simulated host could not be started, reached or stopped."""


def _check(rc: int, what: str) -> None:
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str, target: str, fstype: str, flags: int = 0) -> None:
    _check(_libc.mount(source.encode(), target.encode(), fstype.encode(), flags, None), f"mount {target}")


# --- the machine side: start, reach, stop -------------------------------------------------------------------
@dataclass
class SimHost:
    """Handle on a running simulated host: `pid` is its PID 1 as seen from the machine."""

    name: str
    state_dir: Path
    pid: int
    launcher: int = 0
    """The process that entered the namespaces and waits for PID 1 (named after the host)."""

    def run(self, *cmd: str, check: bool = True, timeout: float = 60) -> str:
        """Run a command inside the host (its network, mount, UTS and PID namespaces); its stdout."""
        p = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-n", "-m", "-u", "-p", "--", *cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        if check and p.returncode != 0:
            raise SimHostError(f"{self.name}: {' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
        return p.stdout

    def alive(self) -> bool:
        return _pid_alive(self.pid)

    def restart_probes(self) -> None:
        """Stop and start the host's probe-topology and probe-flow (new boot IDs, same host name)."""
        os.kill(self.pid, signal.SIGUSR1)

    def probe_restarts(self) -> int:
        """How many times the probes were restarted (PID 1 counts them in the state dir)."""
        try:
            return int((self.state_dir / "restarts").read_text())
        except (OSError, ValueError):
            return 0

    def log(self, what: str, lines: int = 30) -> str:
        try:
            return "\n".join(
                (self.state_dir / f"{what}.log").read_text(errors="replace").splitlines()[-lines:]
            )
        except OSError:
            return ""

    def stop(self, timeout: float = 30) -> None:
        """Stop the host: probes, OVS, then every namespace goes with its PID 1 (and its launcher exits)."""
        stop_pid(self.pid, timeout)
        if self.launcher > 0:
            try:  # the launcher is our child when this process started the host: reap it
                os.waitpid(self.launcher, 0)
            except OSError:
                pass
        deadline = time.monotonic() + 10
        while self.launcher and _pid_alive(self.launcher) and time.monotonic() < deadline:
            time.sleep(0.02)


def _pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def stop_pid(pid: int, timeout: float = 30) -> None:
    """SIGTERM a host's PID 1, SIGKILL it after `timeout` (the kernel then kills the rest of the host)."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while _pid_alive(pid):
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
        time.sleep(0.05)


def start_host(
    name: str, state_dir: Path, nats_port: int, env: dict[str, str] | None = None, timeout: float = 30
) -> SimHost:
    """Start a simulated host; returns once its OVS daemons and probes run. `env` adds NETSONDE_* settings
    for its probes (subject prefix, intervals ...); host id, NATS URL and OVSDB remote are set here."""
    if len(name) > 15 or not name.replace("-", "").isalnum():
        raise SimHostError(f"host name {name!r}: letters, digits and '-' only, at most 15 characters")
    state_dir = Path(state_dir).resolve()
    if state_dir.exists():
        shutil.rmtree(state_dir)
    state_dir.mkdir(parents=True)
    cmd = [sys.executable, "-m", "netsonde.common.simhost", "run", name, str(state_dir), str(nats_port)]
    log = open(state_dir / "host.log", "wb")
    proc = subprocess.Popen(
        cmd,
        env=dict(os.environ, **(env or {})),
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (state_dir / "ready").exists():
            pid = int((state_dir / "pid").read_text())
            return SimHost(name, state_dir, pid, proc.pid)
        if proc.poll() is not None:
            raise SimHostError(
                f"host {name} exited ({proc.returncode}):\n{(state_dir / 'host.log').read_text()}"
            )
        time.sleep(0.05)
    pid_file = state_dir / "pid"
    if pid_file.exists():
        stop_pid(int(pid_file.read_text()))
    proc.kill()
    raise SimHostError(f"host {name} not ready in {timeout:.0f}s:\n{(state_dir / 'host.log').read_text()}")


def find_host(name: str, state_dir: Path) -> SimHost | None:
    """The running host whose state dir is `state_dir` (for `demo-down`), or None."""
    try:
        pid = int((Path(state_dir) / "pid").read_text())
        launcher = int((Path(state_dir) / "launcher").read_text())
    except (OSError, ValueError):
        return None
    return SimHost(name, Path(state_dir).resolve(), pid, launcher) if _pid_alive(pid) else None


# --- the host side: PID 1 ---------------------------------------------------------------------------------
def _launch(name: str, state_dir: Path, nats_port: int) -> int:
    """Enter new namespaces and fork PID 1; this process stays as its parent (named after the host, so the
    machine's own probe names the host's namespace `<name>-<pid>`) and forwards SIGTERM to it."""
    (state_dir / "launcher").write_text(str(os.getpid()))
    root_netns = os.open("/proc/self/ns/net", os.O_RDONLY)  # for the NATS relay's outgoing sockets
    _check(_libc.unshare(CLONE_NEWNET | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWPID), "unshare")
    _mount("none", "/", "", MS_REC | MS_PRIVATE)  # nothing we mount propagates back to the machine
    _check(_libc.sethostname(name.encode(), len(name.encode())), "sethostname")
    child = os.fork()
    if child == 0:
        try:
            code = _pid1(name, state_dir, nats_port, root_netns)
        except BaseException as exc:  # noqa: BLE001 - reported in host.log, then exit
            print(f"simhost {name}: {exc!r}", flush=True)
            code = 1
        os._exit(code)
    (state_dir / "pid").write_text(str(child))
    _libc.prctl(PR_SET_NAME, name.encode()[:15], 0, 0, 0)
    signal.signal(signal.SIGTERM, lambda *_: os.kill(child, signal.SIGTERM))
    signal.signal(signal.SIGINT, lambda *_: os.kill(child, signal.SIGTERM))
    while True:
        try:
            _, status = os.waitpid(child, 0)
            return os.waitstatus_to_exitcode(status)
        except InterruptedError:
            continue


def _socket_in_netns(fd: int) -> socket.socket:
    """A TCP socket made in the network namespace `fd` designates (setns is per thread)."""
    return run_in_netns(fd, lambda: socket.socket(socket.AF_INET, socket.SOCK_STREAM))


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


def _relay(
    root_netns: int, port: int
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """A connection handler that joins each accepted connection to 127.0.0.1:port of the machine."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        loop = asyncio.get_running_loop()
        sock = _socket_in_netns(root_netns)
        sock.setblocking(False)
        try:
            await loop.sock_connect(sock, ("127.0.0.1", port))
        except OSError:
            sock.close()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection(sock=sock)
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))

    return serve


class _Children:
    """PID 1's children: OVS daemons and probes, started in order and stopped in reverse."""

    def __init__(self, state_dir: Path, env: dict[str, str]) -> None:
        self.state_dir = state_dir
        self.env = env
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, what: str, cmd: list[str]) -> None:
        log = open(self.state_dir / f"{what}.log", "ab")
        self.procs[what] = subprocess.Popen(
            cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )

    def stop(self, what: str, timeout: float = 15) -> None:
        stop_process(self.procs.pop(what, None), timeout)

    def stop_all(self) -> None:
        for what in reversed(list(self.procs)):
            self.stop(what)


def _wait(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise SimHostError(f"{what} not ready in {timeout:.0f}s")
        time.sleep(0.05)


def _ovs_ready(env: dict[str, str]) -> bool:
    return (
        subprocess.run(
            ["ovs-appctl", "-t", "ovs-vswitchd", "version"], env=env, capture_output=True, timeout=10
        ).returncode
        == 0
    )


def _pid1(name: str, state_dir: Path, nats_port: int, root_netns: int) -> int:
    _libc.prctl(PR_SET_NAME, b"simhost-init", 0, 0, 0)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _mount("tmpfs", "/run", "tmpfs", MS_NOSUID | MS_NODEV)
    _mount("sysfs", "/sys", "sysfs", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for d in ("/run/netns", OVS_RUNDIR):
        os.makedirs(d, exist_ok=True)
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    env = dict(
        os.environ,
        OVS_RUNDIR=OVS_RUNDIR,
        OVS_DBDIR=OVS_RUNDIR,
        OVS_LOGDIR=str(state_dir),
        OVS_SYSCONFDIR=OVS_RUNDIR,
        NETSONDE_HOST_ID=name,
        NETSONDE_NATS_URL=f"nats://127.0.0.1:{nats_port}",
        NETSONDE_OVSDB=f"unix:{OVS_RUNDIR}/db.sock",
        NETSONDE_HTTP_HOST="127.0.0.1",
        NETSONDE_HTTP_PORT="0",
    )
    return asyncio.run(_serve(name, state_dir, nats_port, root_netns, env))


async def _serve(name: str, state_dir: Path, nats_port: int, root_netns: int, env: dict[str, str]) -> int:
    loop = asyncio.get_running_loop()
    server = await asyncio.start_server(_relay(root_netns, nats_port), "127.0.0.1", nats_port)
    children = _Children(state_dir, env)
    db = f"{OVS_RUNDIR}/conf.db"
    await asyncio.to_thread(subprocess.run, ["ovsdb-tool", "create", db, OVS_SCHEMA], env=env, check=True)
    children.start(
        "ovsdb-server",
        [
            "ovsdb-server",
            db,
            f"--remote=punix:{OVS_RUNDIR}/db.sock",
            "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
            f"--pidfile={OVS_RUNDIR}/ovsdb-server.pid",
        ],
    )
    await asyncio.to_thread(_wait, lambda: os.path.exists(f"{OVS_RUNDIR}/db.sock"), 15, "ovsdb-server")
    await asyncio.to_thread(subprocess.run, ["ovs-vsctl", "--no-wait", "init"], env=env, check=True)
    children.start(
        "ovs-vswitchd",
        ["ovs-vswitchd", f"unix:{OVS_RUNDIR}/db.sock", f"--pidfile={OVS_RUNDIR}/ovs-vswitchd.pid"],
    )
    await asyncio.to_thread(_wait, lambda: _ovs_ready(env), 15, "ovs-vswitchd")

    def start_probes() -> None:
        for probe in PROBES:
            children.start(probe, [sys.executable, "-m", f"netsonde.{probe}"])

    start_probes()
    stopping = asyncio.Event()
    restart = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    loop.add_signal_handler(signal.SIGUSR1, restart.set)
    (state_dir / "ready").write_text(name)
    restarts = 0
    while not stopping.is_set():
        try:
            await asyncio.wait_for(restart.wait(), 0.5)
        except TimeoutError:
            pass
        try:  # reap what PID 1 inherits (orphans of commands run with nsenter)
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        if restart.is_set() and not stopping.is_set():
            restart.clear()
            for probe in reversed(PROBES):
                await asyncio.to_thread(children.stop, probe)
            start_probes()
            restarts += 1
            (state_dir / "restarts").write_text(str(restarts))
    server.close()
    for probe in reversed(PROBES):
        await asyncio.to_thread(children.stop, probe)
    for target in ("ovs-vswitchd", "ovsdb-server"):
        await asyncio.to_thread(
            subprocess.run, ["ovs-appctl", "-t", target, "exit"], env=env, capture_output=True, timeout=15
        )
    await asyncio.to_thread(children.stop_all)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m netsonde.common.simhost",
        description="a simulated host (its own namespaces, OVS and probes)",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="be the host (started by start_host; blocks until SIGTERM)")
    run.add_argument("name")
    run.add_argument("state_dir", type=Path)
    run.add_argument("nats_port", type=int)
    args = parser.parse_args(argv)
    return _launch(args.name, args.state_dir.resolve(), args.nats_port)


if __name__ == "__main__":
    sys.exit(main())
