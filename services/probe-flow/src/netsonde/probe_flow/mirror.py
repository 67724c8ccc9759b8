"""The OVS side of an `ovsmirror` capture (Skydive's `flow/probes/ovsmirror`): an OVS mirror of one port (both
directions) to a new internal port `mir-<hash>`, which probe-flow then captures with afpacket.

Everything goes through `ovs-vsctl --db=<db>` in one transaction per change. The rows carry
`external_ids:netsonde-mirror=<capture UUID>` so that leftovers of a crashed probe can be found and removed,
and so a capture never mirrors a mirror port.
"""

from __future__ import annotations

import hashlib
import json
import subprocess

MIRROR_KEY = "netsonde-mirror"
"""external_ids key on the Mirror, Port and Interface rows of an ovsmirror capture (value: capture UUID)."""

__all__ = ["MIRROR_KEY", "MirrorError", "OvsMirrors", "mirror_port_name"]


class MirrorError(RuntimeError):
    """ovs-vsctl failed (OVSDB unreachable, port gone, bridge missing ...); the message says why."""


def mirror_port_name(capture_id: str, port_uuid: str) -> str:
    """`mir-` + 8 hex digits of (capture, port): stable, unique per capture and port, within IFNAMSIZ."""
    return "mir-" + hashlib.sha1(f"{capture_id}/{port_uuid}".encode()).hexdigest()[:8]


class OvsMirrors:
    """Creates and removes Netsonde's mirrors in one OVSDB (blocking: ovs-vsctl runs)."""

    def __init__(self, db: str, timeout_s: int = 5) -> None:
        self.db = db
        self.timeout_s = timeout_s

    def _vsctl(self, *args: str) -> str:
        try:
            p = subprocess.run(
                ["ovs-vsctl", f"--db={self.db}", f"--timeout={self.timeout_s}", *args],
                capture_output=True,
                text=True,
                timeout=self.timeout_s + 5,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise MirrorError(f"ovs-vsctl: {e}") from None
        if p.returncode != 0:
            raise MirrorError(f"ovs-vsctl: {p.stderr.strip() or p.returncode}")
        return p.stdout

    def create(self, port: str, mirror: str, capture_id: str) -> str:
        """Mirror `port` (ingress and egress) to a new internal port `mirror` on the port's bridge; returns
        the bridge. Idempotent: an existing mirror of that name is left as it is."""
        bridge = self._vsctl("port-to-br", port).strip()
        if self._vsctl("--bare", "--columns=name", "find", "Mirror", f"name={mirror}").strip():
            return bridge
        ext = f"external_ids:{MIRROR_KEY}={capture_id}"
        transaction = [
            ["--may-exist", "add-port", bridge, mirror],
            ["set", "Interface", mirror, "type=internal", ext],
            ["set", "Port", mirror, ext],
            ["--id=@src", "get", "Port", port],
            ["--id=@out", "get", "Port", mirror],
            ["--id=@m", "create", "Mirror", f"name={mirror}", "select-src-port=@src", "select-dst-port=@src"]
            + ["output-port=@out", ext],
            ["add", "Bridge", bridge, "mirrors", "@m"],
        ]
        self._vsctl(
            *[arg for i, command in enumerate(transaction) for arg in (["--"] if i else []) + command]
        )
        return bridge

    def remove(self, mirror: str) -> None:
        """Remove the mirror `mirror` and its output port (nothing if they are gone already)."""
        bridge = ""
        try:
            bridge = self._vsctl("port-to-br", mirror).strip()
        except MirrorError:
            pass
        for uuid in self._vsctl("--bare", "--columns=_uuid", "find", "Mirror", f"name={mirror}").split():
            for br in self._vsctl(
                "--bare", "--columns=name", "find", "Bridge", f"mirrors{{>=}}{uuid}"
            ).split():
                self._vsctl("remove", "Bridge", br, "mirrors", uuid)
        if bridge:
            self._vsctl("--if-exists", "del-port", bridge, mirror)

    def owned(self) -> list[str]:
        """Names of the mirror ports Netsonde created (any capture, any bridge)."""
        out = json.loads(self._vsctl("--format=json", "--columns=name,external_ids", "list", "Port"))
        names = []
        for name, ext in out.get("data", []):
            pairs = ext[1] if isinstance(ext, list) and ext and ext[0] == "map" else []
            if any(k == MIRROR_KEY for k, _ in pairs):
                names.append(name)
        return names
