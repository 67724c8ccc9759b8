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

LOCAL_STEPS = frozenset(
    {
        "V",
        "Has",
        "HasEither",
        "HasKey",
        "HasNot",
        "Dedup",
        "Count",
        "Limit",
        "Range",
        "Sort",
        "Values",
        "ValueMap",
        "Keys",
        "Sum",
        "As",
        "Select",
    }
)
"""Steps that neither move along edges nor read anything but the keys they name (or all keys: `*`)."""
EDGE_STEPS = frozenset(
    {"E", "Out", "In", "Both", "OutE", "InE", "BothE", "OutV", "InV", "BothV", "ShortestPathTo", "SubGraph"}
)
NODE_MOVES = frozenset({"Out", "In", "Both"})
"""Moves from nodes to nodes: each starts a new stage (its own arguments filter the nodes reached)."""
FILTER_STEPS = frozenset({"Has", "HasEither", "HasKey", "HasNot"})
KEY_READERS = frozenset({"Values", "ValueMap", "Keys", "Sort", "Sum", "Dedup"})
"""Steps reading keys of every element of the current set (Dedup() without a key reads only the ID)."""
ALL_KEYS_WITHOUT_ARGS = frozenset({"ValueMap", "Keys", "Sort", "Sum"})
"""Without arguments these read every key (Sort() sorts by CreatedAt)."""
ANCHOR_PREFERENCE = ("@ID", "TID", "Name", "MAC", "IfIndex", "Type")
"""Most selective first when the start filter pins several keys."""
ID_KEY = "@ID"

Pin = tuple[str, frozenset[Any]]


@dataclass(frozen=True)
class Dependencies:
    everything: bool
    edges: bool
    local: bool
    keys: frozenset[str]
    anchor: Pin | None
    """The start stage's pin: a node added or deleted matters only if it matches it."""
    pins: tuple[Pin, ...] | None = None
    """One pin per stage (start, and after each Out/In/Both) when every stage that filters or reads keys is
    pinned: a NodeUpdated then matters only for a node matching one of them. None: route by keys only."""
    filters: tuple[Filter, ...] | None = None
    """Local queries: the start stage's filters, tested on the changed node itself (old and new)."""
    node_id: str | None = None
    """`V('<id>')`: only that node matters to a local query."""


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
    local = not edges and not everything
    stages = _stages(steps) if steps and steps[0].NAME == "V" and not everything else None
    pins: tuple[Pin, ...] | None = None
    anchor: Pin | None = None
    filters: tuple[Filter, ...] | None = None
    node_id: str | None = None
    if stages is not None:
        anchor = stages[0].pin
        if all(st.pin is not None for st in stages if st.filters or st.reads or st.node_id):
            pins = tuple(st.pin for st in stages if st.pin is not None)
        if local:
            filters, node_id = tuple(stages[0].filters), stages[0].node_id
    return Dependencies(
        everything=everything,
        edges=edges,
        local=local,
        keys=frozenset(keys),
        anchor=anchor,
        pins=pins,
        filters=filters,
        node_id=node_id,
    )


@dataclass
class _Stage:
    filters: list[Filter]
    reads: bool = False
    node_id: str | None = None

    @property
    def pin(self) -> Pin | None:
        if self.node_id is not None:
            return ID_KEY, frozenset({self.node_id})
        return _pin(self.filters)


def _stages(steps: tuple[Step, ...]) -> list[_Stage] | None:
    """The query cut at each node-to-node move; None when it also walks edges (then no stage routing)."""
    first = steps[0]
    node_id = getattr(first, "node_id", None)
    flt: Filter | None = getattr(first, "flt", None)
    stages = [_Stage([flt] if flt else [], node_id=node_id if isinstance(node_id, str) else None)]
    for step in steps[1:]:
        name = step.NAME
        if name in FILTER_STEPS:
            stages[-1].filters.append(step.flt)  # type: ignore[attr-defined]
        elif name in NODE_MOVES:
            move_flt: Filter | None = getattr(step, "flt", None)
            stages.append(_Stage([move_flt] if move_flt else []))
        elif name in KEY_READERS:
            if step.args or name in ALL_KEYS_WITHOUT_ARGS:
                stages[-1].reads = True
        elif name in EDGE_STEPS:
            return None
    return stages


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


def _pin(filters: list[Filter]) -> Pin | None:
    """The most selective key a stage's filters pin to literals (an equality or a Within()), if any."""
    pinned: dict[str, frozenset[Any]] = {}
    for flt in filters:
        if flt.any_of:
            continue
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


def passes(deps: Dependencies, node: GraphElement) -> bool:
    """A local query: can this node be in its start set (its own filters, tested on it alone)?"""
    if deps.node_id is not None and node.ID != deps.node_id:
        return False
    if deps.filters is None:
        return True
    for flt in deps.filters:
        if not flt.match(node):
            return False
    return True


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
        """Affected by any node added or deleted (their start stage pins nothing)."""
        self.start_index: dict[str, dict[Any, set[str]]] = {}
        """Anchored alerts: anchor key -> value -> alerts; a node added/deleted matters only if it matches."""
        self.pin_index: dict[str, dict[Any, set[str]]] = {}
        """Alerts with stage pins: key -> value -> alerts; a NodeUpdated matters only for a matching node."""
        self.update_keys: dict[str, set[str]] = {}
        """Alerts without stage pins, by metadata key read: a NodeUpdated changing the key matters."""
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
            _index(self.start_index, deps.anchor, uuid)
        if deps.pins is not None:
            for pin in deps.pins:
                _index(self.pin_index, pin, uuid)
        else:
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
        for table in (self.start_index, self.pin_index):
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
                    changed = changed_keys(old, obj)
                    if changed:
                        self._keyed(self.update_keys, changed, old, obj, out)
                        self._pinned(self.pin_index, old, obj, changed, out)
                else:
                    self._local_only(self.unanchored, obj, old, out)
                    self._pinned(self.start_index, old or obj, obj, None, out)
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

    def _matters(
        self, uuid: str, old: GraphElement | None, new: GraphElement, changed: set[str] | None
    ) -> bool:
        deps = self.deps[uuid]
        if changed is not None and "*" not in deps.keys and deps.keys.isdisjoint(changed):
            return False
        if deps.local:
            return passes(deps, new) or (old is not None and passes(deps, old))
        return True

    def _keyed(
        self,
        index: dict[str, set[str]],
        changed: set[str],
        old: GraphElement,
        new: GraphElement,
        out: set[str],
    ) -> None:
        for key in (*changed, "*"):
            for uuid in index.get(key, ()):
                if uuid not in out and self._matters(uuid, old, new, None):
                    out.add(uuid)

    def _local_only(self, ids: set[str], node: GraphElement, old: GraphElement | None, out: set[str]) -> None:
        for uuid in ids:
            if uuid not in out and self._matters(uuid, old, node, None):
                out.add(uuid)

    def _pinned(
        self,
        table: dict[str, dict[Any, set[str]]],
        old: GraphElement,
        new: GraphElement,
        changed: set[str] | None,
        out: set[str],
    ) -> None:
        for key, by_value in table.items():
            for node in (old, new) if old is not new else (new,):
                for term in node_terms(node, key):
                    for uuid in by_value.get(term, ()):
                        if uuid not in out and self._matters(uuid, old, new, changed):
                            out.add(uuid)


def _index(table: dict[str, dict[Any, set[str]]], pin: Pin, uuid: str) -> None:
    by_value = table.setdefault(pin[0], {})
    for term in pin[1]:
        by_value.setdefault(term, set()).add(uuid)
