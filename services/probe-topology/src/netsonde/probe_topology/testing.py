"""Test helpers for probe-topology: a plain nats-py + msgpack mirror of one probe's state (the receiving side
uses no project code), the in-process probe, and `ip` helpers. Used by tests/integration/test_probe_topology*."""

from __future__ import annotations

import hashlib
import json
import subprocess
from typing import Any

import msgpack
import nats

from netsonde.common.service import wait_for
from netsonde.probe_topology.config import ProbeTopologyConfig
from netsonde.probe_topology.service import ProbeTopologyService


def sh(*cmd: str, check: bool = True, input: str | None = None) -> str:
    p = subprocess.run(list(cmd), capture_output=True, text=True, timeout=60, input=input)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {p.stderr.strip()}")
    return p.stdout


class Mirror:
    """What a third-party consumer of `<prefix>.topology.<host>` rebuilds: full states, deltas, digests."""

    def __init__(self) -> None:
        self.nodes: dict[str, dict[str, Any]] = {}
        self.edges: dict[str, dict[str, Any]] = {}
        self.messages: list[dict[str, Any]] = []
        self.kinds: list[str] = []
        self.digests: list[str] = []
        self._parts: list[dict[str, Any]] = []
        self.nc: Any = None

    async def start(self, nats_url: str, subject: str) -> None:
        self.nc = await nats.connect(nats_url)

        async def cb(msg: Any) -> None:
            self.apply(msgpack.unpackb(msg.data, raw=False))

        await self.nc.subscribe(subject, cb=cb)
        await self.nc.flush()

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()

    def apply(self, m: dict[str, Any]) -> None:
        self.messages.append(m)
        self.kinds.append(m["kind"])
        if m["kind"] == "digest":
            self.digests.append(m["digest"])
        elif m["kind"] == "full":
            self._parts.append(m)
            if len(self._parts) == m.get("parts", 1):
                self.nodes = {n["ID"]: n for p in self._parts for n in p.get("nodes", [])}
                self.edges = {e["ID"]: e for p in self._parts for e in p.get("edges", [])}
                self._parts = []
        elif m["kind"] == "delta":
            for n in m.get("nodes", []):
                self.nodes[n["ID"]] = n
            for e in m.get("edges", []):
                self.edges[e["ID"]] = e
            for eid in m.get("deleted_edges", []):
                self.edges.pop(eid, None)
            for nid in m.get("deleted_nodes", []):
                self.nodes.pop(nid, None)
                for eid in [k for k, e in self.edges.items() if nid in (e["Parent"], e["Child"])]:
                    del self.edges[eid]

    def find(self, **md: Any) -> list[dict[str, Any]]:
        return [n for n in self.nodes.values() if all(n["Metadata"].get(k) == v for k, v in md.items())]

    def one(self, **md: Any) -> dict[str, Any] | None:
        found = self.find(**md)
        return found[0] if len(found) == 1 else None

    def edges_between(self, a: str, b: str, **md: Any) -> list[dict[str, Any]]:
        return [e for e in self.edges.values() if {e["Parent"], e["Child"]} == {a, b}
                and all(e["Metadata"].get(k) == v for k, v in md.items())]

    def edge(self, parent: str, child: str, **md: Any) -> dict[str, Any] | None:
        for e in self.edges.values():
            if e["Parent"] == parent and e["Child"] == child and all(e["Metadata"].get(k) == v for k, v in md.items()):
                return e
        return None

    def digest(self) -> str:
        """The documented algorithm, re-implemented here with hashlib/json only."""
        c = lambda x: json.dumps(x, sort_keys=True, separators=(",", ":"), ensure_ascii=False)  # noqa: E731
        lines = [f"N|{n['ID']}|{c(n['Metadata'])}" for n in self.nodes.values()]
        lines += [f"E|{e['ID']}|{e['Parent']}|{e['Child']}|{c(e['Metadata'])}" for e in self.edges.values()]
        return hashlib.sha1("\n".join(sorted(lines)).encode()).hexdigest()


async def start_probe(nats_url: str, unique: str, **overrides: Any) -> tuple[ProbeTopologyService, Mirror]:
    prefix = f"t{unique}"
    host = f"h{unique}"
    mirror = Mirror()
    await mirror.start(nats_url, f"{prefix}.topology.{host}")
    settings: dict[str, Any] = dict(nats_url=nats_url, host_id=host, subject_prefix=prefix, ovsdb="",
                                    log_format="text", netns_scan_interval_s=0.5)
    settings.update(overrides)
    cfg = ProbeTopologyConfig.load(env={}, **settings)
    svc = ProbeTopologyService(cfg)
    await svc.start()
    assert await wait_for(lambda: "full" in mirror.kinds and not mirror._parts, 10), "no full state received"
    return svc, mirror


async def until(pred: Any, timeout: float = 10.0) -> bool:
    return await wait_for(pred, timeout)


