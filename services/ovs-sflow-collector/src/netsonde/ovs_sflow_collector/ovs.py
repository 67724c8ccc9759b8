"""Open vSwitch side of `ovssflow` captures: the bridge's sFlow record in OVSDB, and the port map.

Everything goes through `ovs-vsctl --db=<db>` (JSON output), run in a worker thread by the service. The
sFlow row a capture creates carries `external_ids:netsonde-capture=<capture UUID>`, so the controller
recognises its own rows (and leaves a user's own sFlow configuration alone).

Node IDs and TIDs of bridges and ports come from `netsonde.common.ids`, the code probe-topology builds the
graph with (Skydive `topology/tid.go`: TID = uuid5(OID, host_tid + row UUID + type)).
"""

from __future__ import annotations

import json
import subprocess
from dataclasses import dataclass

from netsonde.common import ids
from netsonde.flow.sflow.collector import PortInfo

CAPTURE_KEY = "netsonde-capture"

__all__ = ["CAPTURE_KEY", "OvsError", "Vsctl", "port_tid", "bridge_tid", "bridge_node_id", "BridgeSFlow"]


class OvsError(RuntimeError):
    """ovs-vsctl failed (OVSDB not reachable, bridge missing ...)."""


def bridge_node_id(host: str, bridge_uuid: str) -> str:
    """Graph node ID of the `ovsbridge` node of the OVSDB Bridge row `bridge_uuid` on `host`."""
    return ids.ovs_node_id(host, bridge_uuid)


def bridge_tid(host: str, bridge_uuid: str) -> str:
    """TID of the `ovsbridge` node of the OVSDB Bridge row `bridge_uuid` on `host`."""
    return ids.ovs_tid(ids.host_tid(host), bridge_uuid, "ovsbridge")


def port_tid(host: str, port_uuid: str) -> str:
    """TID of the `ovsport` node of the OVSDB Port row `port_uuid` on `host`."""
    return ids.ovs_tid(ids.host_tid(host), port_uuid, "ovsport")


@dataclass(frozen=True)
class OvsSnapshot:
    """Rows of the OVSDB tables the controller reads (cells unwrapped)."""

    sflow: list[dict[str, object]]
    bridge: list[dict[str, object]]
    port: list[dict[str, object]]
    interface: list[dict[str, object]]


@dataclass(frozen=True)
class BridgeSFlow:
    bridge: str
    capture_id: str
    """"" when the bridge has no sFlow row, or one that Netsonde did not create."""
    targets: tuple[str, ...] = ()
    sampling: int = 0
    polling: int = 0
    foreign: bool = False
    """The bridge has an sFlow row that is not Netsonde's."""
    uuid: str = ""
    """The Bridge row's UUID."""
    header: int = 0


def _cell(v: object) -> object:
    """OVSDB JSON cell -> Python: ["set", [...]], ["map", [[k, v]...]], ["uuid", u] unwrapped."""
    if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):
        kind, val = v
        if kind == "set":
            return [_cell(x) for x in val]  # type: ignore[union-attr]
        if kind == "map":
            return {_cell(k): _cell(x) for k, x in val}  # type: ignore[union-attr,misc]
        if kind in ("uuid", "named-uuid"):
            return val
    return v


def _as_list(v: object) -> list:  # type: ignore[type-arg]
    return v if isinstance(v, list) else [v]


class Vsctl:
    """A thin, blocking ovs-vsctl wrapper bound to one OVSDB socket."""

    def __init__(self, db: str, timeout_s: float = 10.0) -> None:
        self.db = db
        self.timeout_s = timeout_s

    def run(self, *args: str) -> str:
        cmd = ["ovs-vsctl", f"--db={self.db}", f"--timeout={int(self.timeout_s)}", *args]
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout_s + 5)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise OvsError(f"{' '.join(cmd)}: {e}") from None
        if p.returncode != 0:
            raise OvsError(f"{' '.join(args)}: {p.stderr.strip()}")
        return p.stdout

    def table(self, table: str, columns: list[str]) -> list[dict[str, object]]:
        return self.tables([(table, columns)])[0]

    def tables(self, specs: list[tuple[str, list[str]]]) -> list[list[dict[str, object]]]:
        """Several `list` commands in one ovs-vsctl run (one consistent read, one process)."""
        args = ["--format=json"]
        for table, columns in specs:
            args += ["--", f"--columns={','.join(columns)}", "list", table]
        lines = [ln for ln in self.run(*args).splitlines() if ln.strip()]
        if len(lines) != len(specs):
            raise OvsError(f"ovs-vsctl list: {len(lines)} answers to {len(specs)} commands")
        out = []
        for line in lines:
            t = json.loads(line)
            out.append([{c: _cell(v) for c, v in zip(t["headings"], row)} for row in t["data"]])
        return out

    def snapshot(self) -> OvsSnapshot:
        """The rows the controller needs (bridges, ports, interfaces, sFlow), in one ovs-vsctl run."""
        sflow, bridge, port, iface = self.tables([
            ("sFlow", ["_uuid", "targets", "sampling", "polling", "header", "external_ids"]),
            ("Bridge", ["_uuid", "name", "sflow", "ports"]),
            ("Port", ["_uuid", "name", "interfaces"]),
            ("Interface", ["_uuid", "name", "ifindex", "ofport"])])
        return OvsSnapshot(sflow, bridge, port, iface)

    # --- bridges and their sFlow rows -----------------------------------------------------------------
    def bridges(self, snap: OvsSnapshot | None = None) -> list[BridgeSFlow]:
        snap = snap or self.snapshot()
        sflows = {r["_uuid"]: r for r in snap.sflow}
        out = []
        for b in snap.bridge:
            ref = _as_list(b["sflow"])
            row = sflows.get(ref[0]) if ref and ref[0] else None
            if row is None:
                out.append(BridgeSFlow(str(b["name"]), "", uuid=str(b["_uuid"])))
                continue
            ext = row["external_ids"] if isinstance(row["external_ids"], dict) else {}
            cap = str(ext.get(CAPTURE_KEY, ""))
            out.append(BridgeSFlow(str(b["name"]), cap, tuple(str(t) for t in _as_list(row["targets"])),
                                   _int(row["sampling"]), _int(row["polling"]), foreign=not cap,
                                   uuid=str(b["_uuid"]), header=_int(row["header"])))
        return out

    def enable_sflow(self, bridge: str, capture_id: str, target: str, agent: str, sampling: int, polling: int,
                     header: int) -> None:
        """Point the bridge's sFlow at `target` ("ip:port"); replaces a previous Netsonde row."""
        args = ["--", "--id=@s", "create", "sFlow", f'targets="{target}"', f"sampling={max(1, sampling)}",
                f"polling={max(0, polling)}", f"header={header}", f'external_ids:{CAPTURE_KEY}="{capture_id}"']
        if agent:
            args.append(f'agent="{agent}"')
        self.run(*args, "--", "set", "Bridge", bridge, "sflow=@s")

    def disable_sflow(self, bridge: str) -> None:
        """Remove the bridge's sFlow reference (OVSDB garbage-collects the unreferenced row)."""
        self.run("--if-exists", "clear", "Bridge", bridge, "sflow")

    # --- ports ----------------------------------------------------------------------------------------
    def port_map(self, host: str, captures: dict[str, str], snap: OvsSnapshot | None = None) -> dict[int, PortInfo]:
        """Linux ifIndex -> PortInfo for every interface of every bridge (`captures`: bridge -> capture ID).
        Samples are accounted to the bridge (PortInfo.node_tid, as Skydive's ovssflow does), counters to the
        port (PortInfo.port_tid)."""
        snap = snap or self.snapshot()
        ifaces = {r["_uuid"]: r for r in snap.interface}
        ports = {r["_uuid"]: r for r in snap.port}
        out: dict[int, PortInfo] = {}
        for b in snap.bridge:
            bname = str(b["name"])
            btid = bridge_tid(host, str(b["_uuid"]))
            for pu in _as_list(b["ports"]):
                port = ports.get(pu)
                if port is None:
                    continue
                tid = port_tid(host, str(pu))
                for iu in _as_list(port["interfaces"]):
                    iface = ifaces.get(iu)
                    if iface is None:
                        continue
                    ifindex = _int(iface["ifindex"])
                    if ifindex > 0:
                        out[ifindex] = PortInfo(btid, captures.get(bname, ""), str(port["name"]), bname,
                                                _int(iface["ofport"], -1), port_tid=tid)
        return out


def _int(v: object, default: int = 0) -> int:
    if isinstance(v, list):
        return int(v[0]) if v else default
    try:
        return int(v)  # type: ignore[call-overload,no-any-return]
    except (TypeError, ValueError):
        return default
