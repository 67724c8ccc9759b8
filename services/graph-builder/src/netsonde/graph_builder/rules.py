"""Node and edge rules (Skydive's user topology, topology/enhancers/topology_manager.go), applied on
graph-builder's graph so every replica sees their results as ordinary graph events.

- NodeRule `create`: a node with the rule's Metadata, ID = UUIDv5("Type/Name"), `TID` = its ID.
- NodeRule `update`: the rule's Metadata merged into every node its Query selects, now and later; the keys go
  away again when a node leaves the selection or the rule is deleted.
- EdgeRule: an edge with the rule's Metadata from every Src node to every Dst node (ID = UUIDv5(parent + child
  + RelationType)); edges of pairs that leave the selections are deleted.

Queries run with the Gremlin engine of libs/gremlin under the same limits as API queries, so an expensive rule
fails with the engine's 408/413 instead of holding the writer.
"""

from __future__ import annotations

import logging
from typing import Any

from netsonde.common.bus.graph import GraphElement
from netsonde.common.bus.static import EdgeRule, NodeRule, StaticError, rule_edge_id, rule_node_id
from netsonde.common.bus.topology import ProbeEdge
from netsonde.gremlin import GremlinEngine, GremlinError, QueryLimits
from netsonde.gremlin.traversal import NodesT, PathsT

from .builder import GraphBuilder

log = logging.getLogger(__name__)


class RuleEngine:
    def __init__(self, builder: GraphBuilder, origin: str, limits: QueryLimits) -> None:
        self.b = builder
        self.origin = origin
        """Origin of the nodes and edges rules create (Skydive: the analyzer's own origin)."""
        self.limits = limits
        self.engine = GremlinEngine(graph=builder.graph, limits=limits)
        self.noderules: dict[str, NodeRule] = {}
        self.edgerules: dict[str, EdgeRule] = {}
        self.layered: dict[str, set[str]] = {}
        """update rule UUID -> IDs of the nodes it currently merges its metadata into."""
        self.created: dict[str, str] = {}
        """create rule UUID -> ID of its node."""
        self.edges: dict[str, dict[str, ProbeEdge]] = {}
        """edge rule UUID -> its edges by ID."""
        self.errors: dict[str, str] = {}
        """rule UUID -> why its last evaluation failed (the previous result is kept)."""
        self._pair_ids: dict[str, dict[tuple[str, str], str]] = {}
        """edge rule UUID -> (parent, child) -> edge ID already computed."""

    # --- queries -------------------------------------------------------------------------------------
    def select(self, query: str) -> list[str]:
        """IDs of the nodes a query selects (in order, once each); GremlinError when it fails or selects no
        nodes."""
        value = self.engine.run(query)
        if isinstance(value, NodesT):
            nodes: list[GraphElement] = value.items()
        elif isinstance(value, PathsT):
            nodes = [n for path in value.paths for n in path]
        else:
            raise GremlinError(f"query {query!r} gives {value.KIND}, not nodes")
        return list(dict.fromkeys(n.ID for n in nodes))

    # --- node rules ----------------------------------------------------------------------------------
    def check_noderule(self, rule: NodeRule) -> None:
        """Refuse (StaticError) a rule that cannot apply: a bad query, or a create over a node someone else
        owns."""
        if rule.Action == "update":
            try:
                self.select(rule.Query)
            except GremlinError as exc:
                raise StaticError(f"Query: {exc}", getattr(exc, "status", 400)) from None
        else:
            nid = rule_node_id(rule.Metadata)
            if nid in self.b.graph.nodes and nid not in self.created.values():
                raise StaticError(
                    f"node {nid} ({rule.Metadata['Type']}/{rule.Metadata['Name']}) already exists", 409
                )

    def add_noderule(self, rule: NodeRule) -> None:
        self.noderules[rule.UUID] = rule
        if rule.Action == "create":
            nid = rule_node_id(rule.Metadata)
            self.created[rule.UUID] = nid
            if nid not in self.b.static_nodes:
                el = GraphElement(
                    ID=nid,
                    Metadata={**rule.Metadata, "TID": nid},
                    Host="",
                    Origin=self.origin,
                    CreatedAt=0,
                    UpdatedAt=0,
                    Revision=0,
                )
                self.b.static_nodes[nid] = el
                self.b._upsert_node("", None, nid, el.Metadata, origin=self.origin)
        else:
            self._apply_update_rule(rule)

    def remove_noderule(self, uuid: str) -> NodeRule | None:
        rule = self.noderules.pop(uuid, None)
        if rule is None:
            return None
        self.errors.pop(uuid, None)
        if rule.Action == "create":
            nid = self.created.pop(uuid)
            if nid not in self.created.values():
                self.b.static_nodes.pop(nid, None)
                self.b._delete_node("", None, nid)
        else:
            for nid in self.layered.pop(uuid, set()):
                self._set_layer(nid, uuid, None)
        return rule

    def _apply_update_rule(self, rule: NodeRule) -> bool:
        """Merge the rule's metadata into the nodes it selects now; True when the selection could be
        computed."""
        try:
            selected = self.select(rule.Query)
        except GremlinError as exc:
            self._failed(rule.UUID, exc)
            return False
        self.errors.pop(rule.UUID, None)
        before = self.layered.get(rule.UUID, set())
        now = set(selected)
        for nid in before - now:
            self._set_layer(nid, rule.UUID, None)
        for nid in selected:
            self._set_layer(nid, rule.UUID, rule.Metadata)
        self.layered[rule.UUID] = now
        return True

    def _set_layer(self, nid: str, uuid: str, metadata: dict[str, Any] | None) -> None:
        layers = self.b.rule_layers.get(nid)
        if metadata is None:
            if layers is None or uuid not in layers:
                return
            del layers[uuid]
            if not layers:
                del self.b.rule_layers[nid]
        else:
            if nid not in self.b.graph.nodes:
                return
            layers = self.b.rule_layers.setdefault(nid, {})
            if layers.get(uuid) == metadata:
                return
            layers[uuid] = metadata
        self.b.refresh_node(nid)

    # --- edge rules ----------------------------------------------------------------------------------
    def check_edgerule(self, rule: EdgeRule) -> None:
        try:
            self._pairs(rule)
        except GremlinError as exc:
            raise StaticError(str(exc), getattr(exc, "status", 400)) from None

    def _pairs(self, rule: EdgeRule) -> list[tuple[str, str]]:
        try:
            src = self.select(rule.Src)
        except GremlinError as exc:
            raise GremlinError(f"Src: {exc}", getattr(exc, "status", 400)) from None
        try:
            dst = self.select(rule.Dst)
        except GremlinError as exc:
            raise GremlinError(f"Dst: {exc}", getattr(exc, "status", 400)) from None
        pairs = [(s, d) for s in src for d in dst if s != d]
        if len(pairs) > self.limits.max_results:
            raise GremlinError(
                f"the rule would make {len(pairs)} edges, more than the limit of {self.limits.max_results}",
                413,
            )
        return pairs

    def add_edgerule(self, rule: EdgeRule) -> None:
        self.edgerules[rule.UUID] = rule
        self._apply_edge_rule(rule)

    def remove_edgerule(self, uuid: str) -> EdgeRule | None:
        rule = self.edgerules.pop(uuid, None)
        if rule is None:
            return None
        self.errors.pop(uuid, None)
        self._pair_ids.pop(uuid, None)
        for eid in self.edges.pop(uuid, {}):
            if not self._edge_wanted_elsewhere(eid, uuid):
                self.b._delete_edge("", None, eid)
        return rule

    def owns_edge(self, eid: str) -> bool:
        return any(eid in edges for edges in self.edges.values())

    def _edge_wanted_elsewhere(self, eid: str, uuid: str) -> bool:
        return any(eid in edges for other, edges in self.edges.items() if other != uuid)

    def _apply_edge_rule(self, rule: EdgeRule) -> bool:
        try:
            pairs = self._pairs(rule)
        except GremlinError as exc:
            self._failed(rule.UUID, exc)
            return False
        self.errors.pop(rule.UUID, None)
        relation = str(rule.Metadata["RelationType"])
        previous = self.edges.get(rule.UUID, {})
        known = self._pair_ids.setdefault(rule.UUID, {})
        wanted: dict[str, ProbeEdge] = {}
        for pair in pairs:
            eid = known.get(pair)
            if eid is None:  # UUIDv5 costs more than the rest of the loop: computed once per pair
                eid = known[pair] = rule_edge_id(pair[0], pair[1], relation)
            existing = self.b.graph.edges.get(eid)
            if existing is not None and existing.Origin != self.origin:
                continue  # the same link already made by someone else
            edge = previous.get(eid)
            if edge is None:
                edge = ProbeEdge(ID=eid, Parent=pair[0], Child=pair[1], Metadata=rule.Metadata)
            wanted[eid] = edge
            if existing is None or existing.Metadata != edge.Metadata:
                self.b._upsert_edge("", None, edge, origin=self.origin)
        for eid in set(previous) - set(wanted):
            if not self._edge_wanted_elsewhere(eid, rule.UUID):
                self.b._delete_edge("", None, eid)
        if len(known) > 2 * len(wanted) + 1024:  # forget pairs long gone
            self._pair_ids[rule.UUID] = {(e.Parent, e.Child): eid for eid, e in wanted.items()}
        self.edges[rule.UUID] = wanted
        return True

    # --- keeping results up to date ------------------------------------------------------------------
    def reevaluate(self) -> int:
        """Apply every rule again to the current graph (after the graph changed); returns how many failed."""
        failed = 0
        for rule in list(self.noderules.values()):
            if rule.Action == "create":
                nid = self.created[rule.UUID]
                if nid not in self.b.graph.nodes:  # e.g. deleted from history reconciliation: bring it back
                    self.b._upsert_node("", None, nid, self.b.static_nodes[nid].Metadata, origin=self.origin)
            elif not self._apply_update_rule(rule):
                failed += 1
        for erule in list(self.edgerules.values()):
            if not self._apply_edge_rule(erule):
                failed += 1
        return failed

    def _failed(self, uuid: str, exc: GremlinError) -> None:
        message = str(exc)
        if self.errors.get(uuid) != message:
            log.warning("rule %s could not be applied, keeping its previous result: %s", uuid, message)
        self.errors[uuid] = message

    def owns_node(self, nid: str) -> bool:
        return nid in self.created.values()
