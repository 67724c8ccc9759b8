"""OVSDB watcher: the Open_vSwitch database's bridges, ports and interfaces through the Python `ovs` IDL.

The IDL is synchronous, so it runs in its own thread and hands immutable `OvsState` snapshots to the event
loop after each change. If OVSDB is not there (yet), the thread retries every `retry_s` seconds; once
connected, the IDL reconnects by itself. Nothing is polled for changes: the IDL receives OVSDB `update`
notifications; the thread only wakes up on them (or every `tick_s` to check for stop).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

log = logging.getLogger(__name__)

COLUMNS: dict[str, list[str]] = {
    "Open_vSwitch": ["ovs_version", "db_version", "bridges"],
    "Bridge": ["name", "ports", "external_ids", "datapath_type", "other_config"],
    "Port": ["name", "interfaces", "external_ids", "tag", "trunks", "bond_mode", "lacp"],
    "Interface": ["name", "type", "ofport", "external_ids", "options", "mac_in_use", "error", "other_config"],
}


@dataclass(frozen=True)
class OvsBridge:
    uuid: str
    name: str
    ports: tuple[str, ...]
    external_ids: dict[str, str] = field(default_factory=dict)
    datapath_type: str = ""


@dataclass(frozen=True)
class OvsPort:
    uuid: str
    name: str
    interfaces: tuple[str, ...]
    external_ids: dict[str, str] = field(default_factory=dict)
    tag: int | None = None
    trunks: tuple[int, ...] = ()
    bond_mode: str = ""
    lacp: str = ""


@dataclass(frozen=True)
class OvsInterface:
    uuid: str
    name: str
    type: str
    ofport: int | None = None
    external_ids: dict[str, str] = field(default_factory=dict)
    options: dict[str, str] = field(default_factory=dict)
    mac_in_use: str = ""
    error: str = ""


@dataclass(frozen=True)
class OvsState:
    """One consistent view of the database (what the IDL held after a change)."""

    bridges: dict[str, OvsBridge] = field(default_factory=dict)
    ports: dict[str, OvsPort] = field(default_factory=dict)
    interfaces: dict[str, OvsInterface] = field(default_factory=dict)
    version: str = ""
    db_version: str = ""


def _opt(value: Any) -> Any:
    """Optional OVSDB columns come as a 0- or 1-element list in the Python IDL."""
    if isinstance(value, list):
        return value[0] if value else None
    return value


def _uuids(rows: Any) -> tuple[str, ...]:
    return tuple(sorted(str(r.uuid) for r in rows or ()))


def snapshot(idl: Any) -> OvsState:
    """Plain-data copy of the IDL tables (called in the IDL thread)."""
    tables = idl.tables
    state = OvsState()
    for row in tables["Bridge"].rows.values():
        state.bridges[str(row.uuid)] = OvsBridge(
            str(row.uuid), row.name, _uuids(row.ports), dict(row.external_ids), _opt(row.datapath_type) or "")
    for row in tables["Port"].rows.values():
        tag = _opt(row.tag)
        state.ports[str(row.uuid)] = OvsPort(
            str(row.uuid), row.name, _uuids(row.interfaces), dict(row.external_ids),
            int(tag) if tag is not None else None, tuple(int(t) for t in (row.trunks or ())),
            _opt(row.bond_mode) or "", _opt(row.lacp) or "")
    for row in tables["Interface"].rows.values():
        ofport = _opt(row.ofport)
        state.interfaces[str(row.uuid)] = OvsInterface(
            str(row.uuid), row.name, row.type or "", int(ofport) if ofport is not None else None,
            dict(row.external_ids), dict(row.options), _opt(row.mac_in_use) or "", _opt(row.error) or "")
    for row in tables["Open_vSwitch"].rows.values():
        object.__setattr__(state, "version", _opt(row.ovs_version) or "")
        object.__setattr__(state, "db_version", _opt(row.db_version) or "")
    return state


class OvsdbWatcher:
    """Runs the IDL in a thread; `on_state(OvsState)` is called on the event loop after each change."""

    def __init__(self, remote: str, on_state: Callable[[OvsState], None], retry_s: float = 1.0,
                 tick_s: float = 0.5) -> None:
        self.remote = remote
        self.on_state = on_state
        self.retry_s = retry_s
        self.tick_s = tick_s
        self.connected = False
        self.updates = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name="ovsdb-idl", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _deliver(self, state: OvsState) -> None:
        if self._loop is not None and not self._stop.is_set():
            self._loop.call_soon_threadsafe(self.on_state, state)

    def _fetch_schema(self) -> Any:
        import ovs.jsonrpc
        import ovs.stream

        error, stream = ovs.stream.Stream.open_block(ovs.stream.Stream.open(self.remote), timeout=2000)
        if error:
            return None
        rpc = ovs.jsonrpc.Connection(stream)
        try:
            request = ovs.jsonrpc.Message.create_request("get_schema", ["Open_vSwitch"])
            error, reply = rpc.transact_block(request)
            if error or reply is None or reply.error:
                return None
            return reply.result
        finally:
            rpc.close()

    def _run(self) -> None:
        import ovs.db.idl
        import ovs.poller

        logged = False
        while not self._stop.is_set():
            try:
                schema = self._fetch_schema()
            except Exception as exc:  # noqa: BLE001 - any failure means "not there yet"
                schema = None
                if not logged:
                    log.info("OVSDB at %s not reachable yet (%s); retrying every %ss", self.remote, exc, self.retry_s)
                    logged = True
            if schema is None:
                if not logged:
                    log.info("OVSDB at %s not reachable yet; retrying every %ss", self.remote, self.retry_s)
                    logged = True
                self._stop.wait(self.retry_s)
                continue
            helper = ovs.db.idl.SchemaHelper(schema_json=schema)
            for table, columns in COLUMNS.items():
                helper.register_columns(table, columns)
            idl = ovs.db.idl.Idl(self.remote, helper)
            log.info("OVSDB connected at %s", self.remote)
            seqno = -1
            try:
                while not self._stop.is_set():
                    idl.run()
                    self.connected = idl._session.is_connected()
                    if idl.change_seqno != seqno and idl.has_ever_connected():
                        seqno = idl.change_seqno
                        self.updates += 1
                        self._deliver(snapshot(idl))
                    poller = ovs.poller.Poller()
                    idl.wait(poller)
                    poller.timer_wait(int(self.tick_s * 1000))
                    poller.block()
            except Exception:  # noqa: BLE001 - restart the IDL on anything unexpected
                log.exception("OVSDB watcher failed; reconnecting")
                self._stop.wait(self.retry_s)
            finally:
                idl.close()
                self.connected = False
