"""Which graph changes can change a graph-triggered alert's answer: derived from its parsed query.

An alert is re-evaluated after a graph change only when the change can affect it, so 1 000 alerts cost little
per change. From the compiled steps of `libs/gremlin` each alert gets:

- `keys`: the top-level metadata keys the query reads (every string literal of the query, `Metric.RxBytes` ->
  `Metric`); `*` when it reads keys it does not name (`ValueMap()`, `Keys()`, `Sort()`, `@` fields, ...).
  A `NodeUpdated` matters only if one of these keys changed.
- `anchor`: the first filter on the start set when it pins a key to literals (`V().Has('Name','eth0',...)`,
  `V('Type','veth')`, `Has('Type', Within(...))`, `V('<id>')`): a node that has none of these values, before
  and after the change, cannot enter or leave the start set.
- `local`: only filters and aggregations after `V()` (no move along edges): then only anchor-matching nodes
  matter at all, and edge changes never do.
- `edges`: the query walks or reads edges (`Out`, `InE`, `E()`, `ShortestPathTo` ...): edge changes matter.
- `everything`: a step this analysis does not model (`Flows`, `Metrics`, `Context`, extension steps): every
  change re-evaluates it (such alerts are better `periodic`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from netsonde.common.bus.graph import GraphElement, GraphEvent
from netsonde.gremlin import ast
from netsonde.gremlin.engine import compile_query
from netsonde.gremlin.fields import ELEMENT_KEYS
from netsonde.gremlin.predicates import Eq, Within, _term_key
from netsonde.gremlin.steps import Filter, Step

LOCAL_STEPS = frozenset({"V", "Has", "HasEither", "HasKey", "HasNot", "Dedup", "Count", "Limit", "Range", "Sort",
                         "Values", "ValueMap", "Keys", "Sum", "As", "Select"})
"""Steps that neither move along edges nor read anything but the keys they name (or all keys: `*`)."""
EDGE_STEPS = frozenset({"E", "Out", "In", "Both", "OutE", "InE", "BothE", "OutV", "InV", "BothV",
                        "ShortestPathTo", "SubGraph"})
ALL_KEYS_WITHOUT_ARGS = frozenset({"ValueMap", "Keys", "Sort", "Sum"})
"""Without arguments these read every key (Sort() sorts by CreatedAt)."""
ANCHOR_PREFERENCE = ("@ID", "TID", "Name", "MAC", "IfIndex", "Type")
"""Most selective first when the start filter pins several keys."""
ID_KEY = "@ID"


@dataclass(frozen=True)
class Dependencies:
    everything: bool
    edges: bool
    local: bool
    keys: frozenset[str]
    anchor: tuple[str, frozenset[Any]] | None


def analyze(expression: str) -> Dependencies:
    """The dependencies of a (valid) Gremlin expression; GremlinError if it does not compile."""
    steps = compile_query(expression)
    names = [s.NAME for s in steps]
    everything = any(n not in LOCAL_STEPS and n not in EDGE_STEPS for n in names)
    edges = any(n in EDGE_STEPS for n in names)
    keys: set[str] = set()
    for step in steps:
        if step.NAME in ALL_KEYS_WITHOUT_ARGS and not step.args:
            keys.add("*")
        for literal in _string_literals(step.args):
            keys.add(_top_key(literal))
    anchor = _anchor(steps) if steps and steps[0].NAME == "V" else None
    return Dependencies(everything=everything, edges=edges, local=not edges and not everything,
                        keys=frozenset(keys), anchor=anchor)


def _string_literals(args: Iterable[ast.Arg]) -> Iterable[str]:
    for a in args:
        if isinstance(a, ast.Literal) and isinstance(a.value, str):
            yield a.value
        elif isinstance(a, ast.Call):
            yield from _string_literals(a.args)


def _top_key(key: str) -> str:
    """`Metric.RxBytes` -> `Metric`; element fields (`@UpdatedAt`, `CreatedAt`) -> `*` (they change on every
    update)."""
    if key.startswith("@") or ("@" + key).upper() in ELEMENT_KEYS:
        return "*"
    return key.split(".", 1)[0]


def _anchor(steps: tuple[Step, ...]) -> tuple[str, frozenset[Any]] | None:
    first = steps[0]
    node_id = getattr(first, "node_id", None)
    if isinstance(node_id, str):
        return ID_KEY, frozenset({node_id})
    flt: Filter | None = getattr(first, "flt", None)
    if not flt and len(steps) > 1 and steps[1].NAME == "Has":
        flt = getattr(steps[1], "flt", None)
    if not flt or flt.any_of:
        return None
    pinned: dict[str, frozenset[Any]] = {}
    for key, pred in flt.pairs:
        if key.startswith("@") or "." in key:
            continue
        if isinstance(pred, Eq) and pred.key is not None:
            pinned.setdefault(key, frozenset({pred.key}))
        elif isinstance(pred, Within) and not pred.unhashable:
            pinned.setdefault(key, frozenset(pred.strs | pred.others))
    if not pinned:
        return None
    best = min(pinned, key=lambda k: ANCHOR_PREFERENCE.index(k) if k in ANCHOR_PREFERENCE else 99)
    return best, pinned[best]


def node_terms(node: GraphElement, key: str) -> Iterable[Any]:
    """The values of `key` on a node as the anchor index holds them (list values element by element)."""
    if key == ID_KEY:
        return (node.ID,)
    v = node.Metadata.get(key)
    if v is None:
        return ()
    if isinstance(v, list):
        return [_term_key(x) for x in v if isinstance(x, (str, int, float))]
    if isinstance(v, (str, int, float)):
        return (_term_key(v),)
    return ()


def changed_keys(old: GraphElement, new: GraphElement) -> set[str]:
    """Top-level metadata keys whose value differs; `*` too when Host, Origin or the endpoints changed."""
    a, b = old.Metadata, new.Metadata
    out = set(a.keys() ^ b.keys())
    for k, v in b.items():
        if k in a and a[k] != v:
            out.add(k)
    if old.Host != new.Host or old.Origin != new.Origin or old.Parent != new.Parent or old.Child != new.Child:
        out.add("*")
    return out


class DependencyIndex:
    """Alerts indexed by what can affect them; `affected(events)` gives the alerts to re-evaluate."""

    def __init__(self) -> None:
        self.deps: dict[str, Dependencies] = {}
        self.everything: set[str] = set()
        self.unanchored: set[str] = set()
        """Affected by any node added or deleted."""
        self.local_anchor: dict[str, dict[Any, set[str]]] = {}
        """Local anchored alerts: anchor key -> value -> alerts (the only nodes that matter to them)."""
        self.start_anchor: dict[str, dict[Any, set[str]]] = {}
        """Edge-walking anchored alerts: a node added/deleted matters only if it matches the anchor."""
        self.update_keys: dict[str, set[str]] = {}
        """Alerts not local-anchored, by metadata key read: a NodeUpdated changing the key matters."""
        self.edge_alerts: set[str] = set()
        self.edge_keys: dict[str, set[str]] = {}
        self.prev_nodes: dict[str, GraphElement] = {}
        self.prev_edges: dict[str, GraphElement] = {}
        """The elements as of the last event seen (references, not copies): the 'before' of a change."""

    def __len__(self) -> int:
        return len(self.deps)

    def add(self, uuid: str, deps: Dependencies) -> None:
        self.remove(uuid)
        self.deps[uuid] = deps
        if deps.everything:
            self.everything.add(uuid)
            return
        if deps.anchor is None:
            self.unanchored.add(uuid)
        else:
            table = self.local_anchor if deps.local else self.start_anchor
            by_value = table.setdefault(deps.anchor[0], {})
            for term in deps.anchor[1]:
                by_value.setdefault(term, set()).add(uuid)
        if not (deps.local and deps.anchor is not None):
            for key in deps.keys:
                self.update_keys.setdefault(key, set()).add(uuid)
        if deps.edges:
            self.edge_alerts.add(uuid)
            for key in deps.keys:
                self.edge_keys.setdefault(key, set()).add(uuid)

    def remove(self, uuid: str) -> None:
        deps = self.deps.pop(uuid, None)
        if deps is None:
            return
        self.everything.discard(uuid)
        self.unanchored.discard(uuid)
        self.edge_alerts.discard(uuid)
        for table in (self.local_anchor, self.start_anchor):
            for by_value in table.values():
                for ids in by_value.values():
                    ids.discard(uuid)
        for index in (self.update_keys, self.edge_keys):
            for ids in index.values():
                ids.discard(uuid)

    def reset(self, nodes: dict[str, GraphElement], edges: dict[str, GraphElement]) -> None:
        """After a snapshot: the graph as it is now is the 'before' of the next events."""
        self.prev_nodes = dict(nodes)
        self.prev_edges = dict(edges)

    def affected(self, events: list[GraphEvent]) -> set[str]:
        """The alerts some of these (already applied, in order) events can affect."""
        out: set[str] = set(self.everything)
        for ev in events:
            obj, kind = ev.obj, ev.type
            if kind[0] == "N":
                old = self.prev_nodes.get(obj.ID)
                if kind == "NodeDeleted":
                    self.prev_nodes.pop(obj.ID, None)
                else:
                    self.prev_nodes[obj.ID] = obj
                if kind == "NodeUpdated" and old is not None:
                    self._node_updated(old, obj, out)
                else:
                    out |= self.unanchored
                    self._anchored(self.local_anchor, obj, out)
                    self._anchored(self.start_anchor, obj, out)
                    if old is not None:
                        self._anchored(self.local_anchor, old, out)
                        self._anchored(self.start_anchor, old, out)
            else:
                old = self.prev_edges.get(obj.ID)
                if kind == "EdgeDeleted":
                    self.prev_edges.pop(obj.ID, None)
                else:
                    self.prev_edges[obj.ID] = obj
                if kind == "EdgeUpdated" and old is not None:
                    for key in changed_keys(old, obj) | {"*"}:
                        out |= self.edge_keys.get(key, set())
                else:
                    out |= self.edge_alerts
        return out

    def _node_updated(self, old: GraphElement, new: GraphElement, out: set[str]) -> None:
        changed = changed_keys(old, new)
        if not changed:
            return
        update_keys = self.update_keys
        for key in changed:
            ids = update_keys.get(key)
            if ids:
                out |= ids
        wildcard = update_keys.get("*")
        if wildcard:
            out |= wildcard
        deps = self.deps
        for key, by_value in self.local_anchor.items():
            for node in (old, new):
                for term in node_terms(node, key):
                    for uuid in by_value.get(term, ()):
                        if uuid not in out:
                            keys = deps[uuid].keys
                            if "*" in keys or not keys.isdisjoint(changed):
                                out.add(uuid)

    @staticmethod
    def _anchored(table: dict[str, dict[Any, set[str]]], node: GraphElement, out: set[str]) -> None:
        for key, by_value in table.items():
            for term in node_terms(node, key):
                ids = by_value.get(term)
                if ids:
                    out |= ids
