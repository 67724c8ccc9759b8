"""Container connector: the running containers of a Docker Engine API (Docker, or podman's compatible API).

Each running container becomes a `container` node owned by the host, and the network namespace its init
process lives in (`/proc/<pid>/ns/net`, found and watched by the netns part of the probe) becomes the
container's child: `G.V().Has('Type','container').Out().Out()` are its interfaces. Metadata follows Skydive's
docker probe: `Container{ID,Image,ImageID,Runtime,Status,InitProcessPID,Labels}` (Skydive 0.2x) and
`Docker{ContainerID,ContainerName,ContainerPID,Labels}` (older Skydive, `Docker.Labels.<label>` queries).

The `docker` SDK is blocking, so one thread connects, lists the running containers (a full resync), then
follows the engine's event stream, and hands immutable snapshots to the event loop. Engines differ: podman
reports `remove` where Docker says `destroy`, its `event=die` filter matches nothing (podman #16857; actions
are filtered here, not by the engine), `stop` may be missing or come before `die`, and `SandboxKey` is empty
with `--network=none` (the namespace is always read from the pid). A missing, refusing or dying engine is a
state (`ContainerEngine` on the host node, `/api/status`, counters); the thread reconnects with a backoff
doubling up to `docker_reconnect_max_s`, and resyncs. Containers last seen stay in the graph meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import docker
import docker.errors

from netsonde.common import ids
from netsonde.common.bus.topology import ProbeEdge, ProbeNode
from netsonde.common.metrics import Metrics

from .builder import HostState

log = logging.getLogger(__name__)

UPDATE_ACTIONS = frozenset({"start", "restart", "pause", "unpause", "rename", "update"})
"""Events after which the container is inspected again (it may be running, paused, renamed)."""
GONE_ACTIONS = frozenset({"die", "died", "stop", "remove", "destroy"})
"""Events after which the container has no running process: its node goes. `died`/`remove`: podman."""


@dataclass(frozen=True)
class Container:
    """What the engine said about one running container (from an inspect)."""

    id: str
    name: str
    image: str
    image_id: str
    status: str
    pid: int
    labels: dict[str, str] = field(default_factory=dict)
    network_mode: str = ""
    netns_inode: int = 0
    """Inode of /proc/<pid>/ns/net when inspected (0: could not be read)."""


@dataclass(frozen=True)
class EngineStatus:
    """The connector's state, as published on the host node (`ContainerEngine`) and in /healthz."""

    endpoint: str
    state: str = "connecting"
    """connecting | connected | disconnected"""
    error: str = ""
    engine: str = ""
    api_version: str = ""

    def metadata(self) -> dict[str, Any]:
        md = {"Endpoint": self.endpoint, "State": self.state}
        for key, value in (("Error", self.error), ("Engine", self.engine), ("APIVersion", self.api_version)):
            if value:
                md[key] = value
        return md


def container_from_inspect(info: dict[str, Any]) -> Container:
    state = info.get("State") or {}
    config = info.get("Config") or {}
    pid = int(state.get("Pid") or 0)
    inode = 0
    if pid > 0:
        try:
            inode = os.stat(f"/proc/{pid}/ns/net").st_ino
        except OSError:
            inode = 0
    return Container(
        id=str(info["Id"]),
        name=str(info.get("Name", "")).lstrip("/"),
        image=str(config.get("Image") or ""),
        image_id=str(info.get("Image") or ""),
        status=str(state.get("Status") or ""),
        pid=pid,
        labels={str(k): str(v) for k, v in (config.get("Labels") or {}).items()},
        network_mode=str((info.get("HostConfig") or {}).get("NetworkMode") or ""),
        netns_inode=inode,
    )


def error_reason(exc: BaseException) -> tuple[str, str]:
    """(missing | refused | timeout | error, text): the cause of a failed request, found along the exception
    chain (the SDK wraps the socket's OSError in requests' and urllib3's errors)."""
    stack: list[BaseException | None] = [exc]
    seen: set[int] = set()
    while stack:
        e = stack.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        for kind, reason in (
            (FileNotFoundError, "missing"),
            (ConnectionRefusedError, "refused"),
            (TimeoutError, "timeout"),
        ):
            if isinstance(e, kind):
                return reason, getattr(e, "strerror", None) or str(e) or kind.__name__
        stack += [e.__cause__, e.__context__] + [a for a in e.args if isinstance(a, BaseException)]
    return "error", f"{type(exc).__name__}: {exc}"


class ContainerWatcher:
    """Follows one engine endpoint in a thread; `containers` and `status` are replaced (never mutated) on the
    event loop, then `on_change` is called there."""

    def __init__(
        self,
        endpoint: str,
        on_change: Callable[[], None],
        metrics: Metrics,
        reconnect_min_s: float = 0.5,
        reconnect_max_s: float = 30.0,
        timeout_s: float = 10.0,
    ) -> None:
        self.endpoint = endpoint
        self.on_change = on_change
        self.reconnect_min_s = reconnect_min_s
        self.reconnect_max_s = reconnect_max_s
        self.timeout_s = timeout_s
        self.containers: dict[str, Container] = {}
        self.status = EngineStatus(endpoint)
        self._runtime = "docker"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._stream: Any = None
        self._listed = False
        """The session got as far as the full list: the next retry starts from the shortest wait."""
        self.m_errors = metrics.counter(
            "container_engine_errors_total",
            "Failed connections to / lost streams of the container engine",
            ["reason"],
        )
        self.m_events = metrics.counter(
            "container_events_total", "Container engine events received", ["handling"]
        )
        self.m_resyncs = metrics.counter(
            "container_resyncs_total", "Full container lists read from the engine"
        )
        self.m_connected = metrics.gauge(
            "container_engine_connected", "1 while the engine event stream is open"
        )
        self.m_containers = metrics.gauge("containers", "Running containers in the host state")

    # --- lifecycle (event loop side) ---------------------------------------------------------------------
    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, name=f"containers {self.endpoint}", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Blocking (call it in a thread): closes the event stream and joins the thread."""
        self._stop.set()
        stream = self._stream
        if stream is not None:
            try:
                stream.close()
            except Exception:  # noqa: BLE001 - the stream may already be broken
                pass
        if self._thread is not None:
            self._thread.join(self.timeout_s + 5)

    # --- thread side --------------------------------------------------------------------------------------
    def _post(self, fn: Callable[..., None], *args: Any) -> bool:
        assert self._loop is not None
        try:
            self._loop.call_soon_threadsafe(fn, *args)
        except RuntimeError:  # the loop is closed: the service is gone
            self._stop.set()
            return False
        return True

    def _run(self) -> None:
        backoff = self.reconnect_min_s
        while not self._stop.is_set():
            self._listed = False
            try:
                self._session()
                reason, text = "lost", "the event stream ended"
            except Exception as exc:  # noqa: BLE001 - any failure is a state, then a retry
                reason, text = error_reason(exc)
            if self._stop.is_set():
                break
            self.m_errors.labels(reason).inc()
            self.m_connected.set(0)
            self._post(self._set_status, EngineStatus(self.endpoint, "disconnected", f"{reason}: {text}"))
            if self._listed:  # that session got through: start over from the shortest wait
                backoff = self.reconnect_min_s
            if self._stop.wait(backoff):
                break
            backoff = min(backoff * 2, self.reconnect_max_s)

    def _session(self) -> None:
        """One connection: version, event stream, full list, then events until the stream ends."""
        api = docker.APIClient(base_url=self.endpoint, version="auto", timeout=self.timeout_s)
        try:
            version = api.version()
            components = [str(c.get("Name", "")) for c in version.get("Components") or []]
            self._runtime = "podman" if any("podman" in c.lower() for c in components) else "docker"
            engine = (
                f"{components[0] if components else 'Docker Engine'} {version.get('Version', '')}".strip()
            )
            # subscribe first, then list: a container started in between is in both (an idempotent upsert)
            stream = api.events(decode=True, filters={"type": "container"})
            self._stream = stream
            if self._stop.is_set():
                return
            snapshot: dict[str, Container] = {}
            for summary in api.containers():
                c = self._inspect(api, str(summary["Id"]))
                if c is not None:
                    snapshot[c.id] = c
            self.m_resyncs.inc()
            self.m_connected.set(1)
            status = EngineStatus(self.endpoint, "connected", "", engine, str(version.get("ApiVersion", "")))
            if not self._post(self._replace, snapshot, status):
                return
            self._listed = True
            log.info("container engine %s at %s: %d running containers", engine, self.endpoint, len(snapshot))
            for event in stream:
                if self._stop.is_set():
                    return
                self._on_event(api, event)
        finally:
            self._stream = None
            api.close()

    def _inspect(self, api: Any, container_id: str) -> Container | None:
        try:
            info = api.inspect_container(container_id)
        except docker.errors.NotFound:
            return None  # gone between the event (or list) and the inspect
        c = container_from_inspect(info)
        return c if c.status in ("running", "paused") and c.pid > 0 else None

    def _on_event(self, api: Any, event: Any) -> None:
        if not isinstance(event, dict):
            self.m_events.labels("malformed").inc()
            return
        action = str(event.get("Action") or event.get("status") or "")
        raw_actor = event.get("Actor")
        actor: dict[str, Any] = raw_actor if isinstance(raw_actor, dict) else {}
        cid = str(actor.get("ID") or event.get("id") or "")
        if not cid:
            self.m_events.labels("malformed").inc()
            return
        if action in GONE_ACTIONS:
            self.m_events.labels("gone").inc()
            self._post(self._drop, cid)
        elif action in UPDATE_ACTIONS:
            self.m_events.labels("update").inc()
            c = self._inspect(api, cid)
            if c is None:
                self._post(self._drop, cid)
            else:
                self._post(self._upsert, c)
        else:
            self.m_events.labels("ignored").inc()

    # --- event loop side ------------------------------------------------------------------------------------
    def _set_status(self, status: EngineStatus) -> None:
        if status != self.status:
            if status.state != "connected":
                log.warning("container engine at %s: %s", self.endpoint, status.error)
            self.status = status
            self.on_change()

    def _replace(self, snapshot: dict[str, Container], status: EngineStatus) -> None:
        self.containers = snapshot
        self.status = status
        self.m_containers.set(len(snapshot))
        self.on_change()

    def _upsert(self, c: Container) -> None:
        if self.containers.get(c.id) != c:
            self.containers = {**self.containers, c.id: c}
            self.m_containers.set(len(self.containers))
            self.on_change()

    def _drop(self, cid: str) -> None:
        if cid in self.containers:
            self.containers = {k: v for k, v in self.containers.items() if k != cid}
            self.m_containers.set(len(self.containers))
            self.on_change()

    def add_to(self, state: HostState, host: str, root_inode: int) -> None:
        """Add the container nodes and edges to a freshly built host state (see `add_containers`)."""
        add_containers(state, host, self.containers.values(), root_inode, self._runtime, self.status)


def add_containers(
    state: HostState,
    host: str,
    containers: Iterable[Container],
    root_inode: int,
    runtime: str = "docker",
    status: EngineStatus | None = None,
) -> None:
    """host -ownership-> container -ownership-> its netns (instead of host -> netns). Containers sharing a
    namespace (`--network=container:x`, pods): the one not joining another's owns it, the others are only
    owned by the host. A container in the host's namespace owns nothing (Skydive's net=host case)."""
    host_id = ids.host_node_id(host)
    host_node = state.nodes.get(host_id)
    if host_node is not None and status is not None:
        host_node.Metadata["ContainerEngine"] = status.metadata()
    host_tid = ids.host_tid(host)
    netns_by_inode = {
        n.Metadata.get("Inode"): n for n in state.nodes.values() if n.Metadata.get("Type") == "netns"
    }
    owner: dict[int, Container] = {}
    for c in sorted(containers, key=lambda c: (c.network_mode.startswith("container:"), c.pid, c.id)):
        node_id = ids.container_node_id(host, c.id)
        labels = dict(c.labels)
        container_md: dict[str, Any] = {
            "ID": c.id,
            "Image": c.image,
            "ImageID": c.image_id,
            "Runtime": runtime,
            "Status": c.status,
            "InitProcessPID": c.pid,
        }
        docker_md: dict[str, Any] = {
            "ContainerID": c.id,
            "ContainerName": f"/{c.name}",
            "ContainerPID": c.pid,
        }
        if labels:
            container_md["Labels"] = labels
            docker_md["Labels"] = dict(labels)
        md: dict[str, Any] = {
            "Name": c.name,
            "Type": "container",
            "Manager": "docker",
            "Host": host,
            "Container": container_md,
            "Docker": docker_md,
            "TID": ids.child_tid(host_tid, c.name, "container"),
        }
        state.nodes[node_id] = ProbeNode(ID=node_id, Metadata=md)
        _edge(state, host_id, node_id)
        ns_node = netns_by_inode.get(c.netns_inode) if c.netns_inode != root_inode else None
        if ns_node is None or c.netns_inode in owner:
            continue
        owner[c.netns_inode] = c
        ns_node.Metadata["Manager"] = "docker"
        state.edges.pop(ids.edge_id(host_id, ns_node.ID, "ownership"), None)
        _edge(state, node_id, ns_node.ID)


def _edge(state: HostState, parent: str, child: str) -> None:
    eid = ids.edge_id(parent, child, "ownership")
    state.edges[eid] = ProbeEdge(ID=eid, Parent=parent, Child=child, Metadata={"RelationType": "ownership"})
