"""Static topology in graph-builder: nodes and edges created through the API, and node/edge rules.

graph-builder is their single writer. query-api sends a `StaticRequest` (bus/static.py); this module checks it
against the graph, persists the object in the `<prefix>_static` key-value bucket, applies it, publishes the
graph events and answers a `StaticReply`. At start it reads the bucket back, so every static object and rule
is in the graph again after any restart; elements restored from history that nothing declares any more are
deleted.

Static nodes and edges are owned by their Origin (`api.<graph-builder host>` unless the client gave one): a
probe never deletes them, and the API only patches or deletes what it created. A static edge whose endpoint
disappears (an interface removed) leaves the graph and comes back when both endpoints exist again.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING, Any

import jsonpatch
import msgspec
from nats.aio.msg import Msg

from netsonde.common.bus import BusDecodeError, decode, encode
from netsonde.common.bus.graph import GraphElement, GraphEvent
from netsonde.common.bus.static import (
    EdgeRule,
    NodeRule,
    StaticError,
    StaticObject,
    StaticReply,
    StaticRequest,
    open_static_bucket,
    static_key,
)
from netsonde.common.bus.topology import ProbeEdge
from netsonde.common.graph import element_to_json
from netsonde.gremlin import QueryLimits

from .builder import GraphBuilder
from .rules import RuleEngine

if TYPE_CHECKING:
    from .service import GraphBuilderService

log = logging.getLogger(__name__)

PROTECTED_NODE_KEYS = ("TID", "Name", "Type")
"""A PATCH cannot change these (Skydive keeps the node's own values)."""


class StaticTopology:
    """The in-memory side: static nodes (in `builder.static_nodes`), static edges, checks and JSON patches."""

    def __init__(self, builder: GraphBuilder, api_origin: str, default_host: str) -> None:
        self.b = builder
        self.api_origin = api_origin
        self.default_host = default_host
        self.edges: dict[str, GraphElement] = {}
        """Static edges by ID, in the graph whenever both endpoints exist."""
        self.node_ids: set[str] = set()
        """IDs of the nodes created through the API (`builder.static_nodes` also holds node rules' nodes)."""

    def owner_error(self, kind: str, ident: str) -> StaticError:
        """404 for an unknown ID, 409 for an element someone else (a probe, a rule) owns."""
        el = self.b.graph.nodes.get(ident) if kind == "node" else self.b.graph.edges.get(ident)
        if el is None:
            return StaticError(f"{kind.capitalize()} '{ident}' not found", 404)
        return StaticError(
            f"{kind.capitalize()} '{ident}' is owned by {el.Origin!r}; only {kind}s created through "
            f"/api/{kind} can be changed here",
            409,
        )

    def _check_origin(self, origin: str) -> None:
        """Probes and graph-builder's own derivations own their origins: a static object cannot take one."""
        for reserved in (f"{self.b.origin_service}.", "graph-builder."):
            if origin.startswith(reserved):
                raise StaticError(f"Origin {origin!r}: origins '{reserved}*' are reserved (probes, rules)")

    # --- nodes ---------------------------------------------------------------------------------------
    def new_node(self, el: GraphElement) -> GraphElement:
        """Check a node to create; returns what to store and `add_node` (nothing applied yet)."""
        if el.ID in self.b.graph.nodes or el.ID in self.b.static_nodes:
            raise StaticError(f"Node '{el.ID}' already exists", 409)
        self._check_origin(el.Origin)
        return GraphElement(
            ID=el.ID,
            Metadata=dict(el.Metadata),
            Host=el.Host or self.default_host,
            Origin=el.Origin or self.api_origin,
            CreatedAt=0,
            UpdatedAt=0,
            Revision=0,
        )

    def add_node(self, base: GraphElement) -> None:
        self.node_ids.add(base.ID)
        self.b.static_nodes[base.ID] = base
        self.b._upsert_node(base.Host, None, base.ID, base.Metadata, origin=base.Origin)

    def patched_node(self, ident: str, ops: list[dict[str, Any]]) -> GraphElement | None:
        """The node after the patch (to store and `add_node`), or None when it changes nothing (HTTP 304)."""
        base = self.b.static_nodes.get(ident)
        if base is None or ident not in self.node_ids:
            raise self.owner_error("node", ident)
        meta = _patched_metadata(base, ops)
        for key in ("Name", "Type"):
            if not isinstance(meta.get(key), str) or not meta[key]:
                raise StaticError(f"validating patched resource: Metadata.{key} is required")
        for key in PROTECTED_NODE_KEYS:
            if key in base.Metadata:
                meta[key] = base.Metadata[key]
        if meta == base.Metadata:
            return None
        return msgspec.structs.replace(base, Metadata=meta)

    def delete_node(self, ident: str) -> list[str]:
        """Delete a static node and the static edges touching it; returns the IDs of those edges."""
        base = self.b.static_nodes.get(ident)
        if base is None or ident not in self.node_ids:
            raise self.owner_error("node", ident)
        gone = self.edges_of(ident)
        for eid in gone:
            del self.edges[eid]
        del self.b.static_nodes[ident]
        self.node_ids.discard(ident)
        self.b._delete_node(base.Host, None, ident)
        return gone

    def edges_of(self, ident: str) -> list[str]:
        """IDs of the static edges touching a node."""
        return [eid for eid, e in self.edges.items() if ident in (e.Parent, e.Child)]

    # --- edges ---------------------------------------------------------------------------------------
    def new_edge(self, el: GraphElement) -> GraphElement:
        """Check an edge to create; returns what to store and `add_edge` (nothing applied yet)."""
        if el.ID in self.b.graph.edges or el.ID in self.edges:
            raise StaticError(f"Edge '{el.ID}' already exists", 409)
        self._check_origin(el.Origin)
        for field, nid in (("Parent", el.Parent), ("Child", el.Child)):
            if nid not in self.b.graph.nodes:
                raise StaticError(f"{field}: node '{nid}' does not exist")
        return GraphElement(
            ID=el.ID,
            Metadata=dict(el.Metadata),
            Host=el.Host or self.default_host,
            Origin=el.Origin or self.api_origin,
            CreatedAt=0,
            UpdatedAt=0,
            Revision=0,
            Parent=el.Parent,
            Child=el.Child,
        )

    def add_edge(self, base: GraphElement) -> None:
        self.edges[base.ID] = base
        self._materialize(base)

    def _materialize(self, base: GraphElement) -> None:
        if base.Parent in self.b.graph.nodes and base.Child in self.b.graph.nodes:
            self.b._upsert_edge(
                base.Host,
                None,
                ProbeEdge(ID=base.ID, Parent=base.Parent, Child=base.Child, Metadata=base.Metadata),
                origin=base.Origin,
            )

    def materialize_all(self) -> None:
        """Put back static edges whose endpoints exist again (after an interface came back)."""
        for base in self.edges.values():
            if base.ID not in self.b.graph.edges:
                self._materialize(base)

    def patched_edge(self, ident: str, ops: list[dict[str, Any]]) -> GraphElement | None:
        """The edge after the patch (to store and `add_edge`), or None when it changes nothing (HTTP 304)."""
        base = self.edges.get(ident)
        if base is None:
            raise self.owner_error("edge", ident)
        meta = _patched_metadata(base, ops)
        if not isinstance(meta.get("RelationType"), str) or not meta["RelationType"]:
            raise StaticError("validating patched resource: Metadata.RelationType is required")
        if meta == base.Metadata:
            return None
        return msgspec.structs.replace(base, Metadata=meta)

    def applied(self, kind: str, base: GraphElement) -> GraphElement:
        """The graph element after `add_node`/`add_edge` (the stored one for an edge waiting for an
        endpoint)."""
        el = self.b.graph.nodes.get(base.ID) if kind == "node" else self.b.graph.edges.get(base.ID)
        return el if el is not None else base

    def delete_edge(self, ident: str) -> None:
        base = self.edges.pop(ident, None)
        if base is None:
            raise self.owner_error("edge", ident)
        self.b._delete_edge(base.Host, None, ident)


def _patched_metadata(base: GraphElement, ops: list[dict[str, Any]]) -> dict[str, Any]:
    """Apply an RFC 6902 patch to the element's JSON; only the resulting Metadata is kept (as Skydive)."""
    doc = element_to_json(base)
    try:
        patched = jsonpatch.JsonPatch(ops).apply(doc)
    except (jsonpatch.JsonPatchException, jsonpatch.JsonPointerException, TypeError, KeyError) as exc:
        raise StaticError(f"incorrect JSON patch: {exc}") from None
    meta = patched.get("Metadata") if isinstance(patched, dict) else None
    if not isinstance(meta, dict):
        raise StaticError("validating patched resource: Metadata must stay a JSON object")
    return meta


class StaticController:
    """The bus side: requests from query-api, the key-value bucket, and rules kept up to date."""

    def __init__(self, svc: GraphBuilderService, limits: QueryLimits, settle_s: float = 0.1) -> None:
        self.svc = svc
        host = svc.cfg.host_id
        self.topology = StaticTopology(svc.builder, f"api.{host}", host)
        self.rules = RuleEngine(svc.builder, f"graph-builder.{host}", limits)
        self.settle_s = settle_s
        self.kv: Any = None
        self._dirty = asyncio.Event()
        self._applying = False
        m = svc.metrics
        self.m_requests = m.counter(
            "static_requests_total", "Static object / rule requests", ["kind", "op", "status"]
        )
        self.m_rule_runs = m.counter("rule_evaluations_total", "Times every rule was applied again")
        self.m_rule_errors = m.counter(
            "rule_errors_total", "Rule evaluations that failed (query error or limit)"
        )
        self.m_rule_seconds = m.histogram("rule_evaluation_seconds", "Time to apply every rule again")

    async def start(self) -> None:
        """Load the bucket into the graph, drop restored leftovers, then serve requests."""
        self.kv = await open_static_bucket(self.svc.nc.jetstream(), self.svc.subjects)
        await self._load()
        await self.svc.nc.subscribe(self.svc.subjects.static_request, cb=self._on_request)
        self.svc.spawn(self._rules_loop(), "rules")

    async def _load(self) -> None:
        b = self.svc.builder
        try:
            keys = await self.kv.keys()
        except Exception:  # nats-py raises NoKeysError on an empty bucket
            keys = []
        nodes: list[GraphElement] = []
        edges: list[GraphElement] = []
        noderules: list[NodeRule] = []
        edgerules: list[EdgeRule] = []
        for key in keys:
            entry = await self.kv.get(key)
            if entry is None or not entry.value:
                continue
            kind = key.split(".", 1)[0]
            try:
                if kind in ("node", "edge"):
                    (nodes if kind == "node" else edges).append(decode(entry.value, StaticObject).element)
                elif kind == "noderule":
                    noderules.append(decode(entry.value, NodeRule))
                elif kind == "edgerule":
                    edgerules.append(decode(entry.value, EdgeRule))
            except BusDecodeError as exc:
                self.svc.metrics.bad_messages.labels("static", exc.reason).inc()
                log.error("static bucket key %s unreadable, skipped: %s", key, exc)
        for el in nodes:
            self.topology.add_node(el)
        for el in edges:
            self.topology.add_edge(el)
        for rule in noderules:
            self.rules.add_noderule(rule)
        for erule in edgerules:
            self.rules.add_edgerule(erule)
        # leftovers restored from history that the bucket no longer declares (other derived elements, e.g.
        # tunnel links, are left to their own owners)
        mine = (self.topology.api_origin, self.rules.origin)
        for kind, ident in sorted(b.restored_foreign):
            edge = b.graph.edges.get(ident) if kind == "edge" else None
            if (
                edge is not None
                and edge.Origin in mine
                and ident not in self.topology.edges
                and not self.rules.owns_edge(ident)
            ):
                b._delete_edge("", None, ident)
        for kind, ident in sorted(b.restored_foreign):
            node = b.graph.nodes.get(ident) if kind == "node" else None
            if node is not None and node.Origin in mine and ident not in b.static_nodes:
                b._delete_node("", None, ident)
        b.restored_foreign.clear()
        log.info(
            "static topology loaded: %d nodes, %d edges, %d node rules, %d edge rules",
            len(nodes),
            len(edges),
            len(noderules),
            len(edgerules),
        )
        await self.publish()

    # --- requests ------------------------------------------------------------------------------------
    async def _on_request(self, msg: Msg) -> None:
        if not msg.reply:
            return
        try:
            req = decode(msg.data, StaticRequest)
        except BusDecodeError as exc:
            self.svc.metrics.bad_messages.labels("static_request", exc.reason).inc()
            await self.svc.nc.publish(msg.reply, encode(StaticReply(status=400, error=f"bad request: {exc}")))
            return
        try:
            reply = await self.handle(req)
        except StaticError as exc:
            reply = StaticReply(status=exc.status, error=str(exc))
        except Exception as exc:  # a bug must answer, not leave the API waiting
            log.exception("static request failed")
            reply = StaticReply(status=500, error=f"internal error: {exc!r}")
        self.m_requests.labels(req.kind, req.op, str(reply.status)).inc()
        reply.epoch, reply.seq = self.svc.builder.epoch, self.svc.builder.seq
        await self.svc.nc.publish(msg.reply, encode(reply))

    async def handle(self, req: StaticRequest) -> StaticReply:
        t, r = self.topology, self.rules
        key = static_key(req.kind, req.id) if req.id else ""
        # every change: checked, then stored in the bucket, then applied and published
        if req.kind in ("node", "edge") and req.op in ("create", "patch"):
            if req.op == "create":
                if req.element is None:
                    raise StaticError(f"create {req.kind}: the request carries no element")
                base = t.new_node(req.element) if req.kind == "node" else t.new_edge(req.element)
            else:
                changed = (
                    t.patched_node(req.id, req.patch)
                    if req.kind == "node"
                    else t.patched_edge(req.id, req.patch)
                )
                if changed is None:
                    return StaticReply(status=304)
                base = changed
            await self._put(static_key(req.kind, base.ID), StaticObject(element=base))
            if req.kind == "node":
                t.add_node(base)
            else:
                t.add_edge(base)
            return await self._done(201 if req.op == "create" else 200, element=t.applied(req.kind, base))
        if req.kind == "node" and req.op == "delete":
            if req.id not in t.node_ids:
                raise t.owner_error("node", req.id)
            for eid in t.edges_of(req.id):
                await self.kv.delete(static_key("edge", eid))
            await self.kv.delete(key)
            t.delete_node(req.id)
            return await self._done(200)
        if req.kind == "edge" and req.op == "delete":
            if req.id not in t.edges:
                raise t.owner_error("edge", req.id)
            await self.kv.delete(key)
            t.delete_edge(req.id)
            return await self._done(200)
        if req.kind == "noderule" and req.op == "create" and req.noderule is not None:
            rule = req.noderule
            r.check_noderule(rule)
            await self._put(static_key("noderule", rule.UUID), rule)
            r.add_noderule(rule)
            return await self._done(201, noderule=rule)
        if req.kind == "edgerule" and req.op == "create" and req.edgerule is not None:
            erule = req.edgerule
            r.check_edgerule(erule)
            await self._put(static_key("edgerule", erule.UUID), erule)
            r.add_edgerule(erule)
            return await self._done(201, edgerule=erule)
        if req.kind in ("noderule", "edgerule") and req.op == "delete":
            if req.id not in (r.noderules if req.kind == "noderule" else r.edgerules):
                raise StaticError(
                    f"{'NodeRule' if req.kind == 'noderule' else 'EdgeRule'} '{req.id}' not found", 404
                )
            await self.kv.delete(key)
            if req.kind == "noderule":
                r.remove_noderule(req.id)
            else:
                r.remove_edgerule(req.id)
            return await self._done(200)
        raise StaticError(
            f"unsupported request: op {req.op!r} on kind {req.kind!r} (or its object is missing)"
        )

    async def _put(self, key: str, value: Any) -> None:
        await self.kv.put(key, encode(value))

    async def _done(self, status: int, **objects: Any) -> StaticReply:
        await self.publish()
        if self.rules.noderules or self.rules.edgerules:
            self._dirty.set()  # a static change can change what the rules select
        return StaticReply(status=status, **objects)

    # --- rules kept up to date -----------------------------------------------------------------------
    async def publish(self) -> None:
        """Publish what static changes and rules did (their own events do not wake the rules again)."""
        self._applying = True
        try:
            self.topology.materialize_all()
            await self.svc._publish_changes()
        finally:
            self._applying = False

    def graph_changed(self, events: list[GraphEvent]) -> None:
        """Hook called with every published batch: other writers' changes re-run the rules (debounced)."""
        if self._applying or not events:
            return
        if self.topology.edges and any(ev.type == "NodeAdded" for ev in events):
            self._dirty.set()
        if self.rules.noderules or self.rules.edgerules:
            self._dirty.set()

    async def _rules_loop(self) -> None:
        """Apply the rules after other writers changed the graph: `settle_s` after the first change (a burst
        of probe messages lands first), and never more than a third of the time (busy graphs, big rules)."""
        pause = self.settle_s
        while True:
            await self._dirty.wait()
            await asyncio.sleep(pause)
            self._dirty.clear()
            try:
                pause = max(self.settle_s, 2 * self.apply_rules())
                await self.publish()
            except Exception:  # a bug in one evaluation must not stop the rules (nor the service)
                self.m_rule_errors.inc()
                log.exception("applying the rules failed")

    def apply_rules(self) -> float:
        """Apply every rule to the current graph; returns the seconds it took."""
        started = time.perf_counter()
        failed = self.rules.reevaluate()
        elapsed = time.perf_counter() - started
        self.m_rule_runs.inc()
        self.m_rule_errors.inc(failed)
        self.m_rule_seconds.observe(elapsed)
        return elapsed

    def status(self) -> dict[str, Any]:
        """For graph-builder's /healthz: how much static topology there is, and the rules failing now, why."""
        return {
            "nodes": len(self.topology.node_ids),
            "edges": len(self.topology.edges),
            "noderules": len(self.rules.noderules),
            "edgerules": len(self.rules.edgerules),
            "rule_errors": dict(self.rules.errors),
        }
