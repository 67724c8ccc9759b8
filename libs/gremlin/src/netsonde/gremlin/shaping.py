"""Core steps (graffiti's) that shape what a traversal returns: Dedup, Count, Limit, Range, Sort, Values,
ValueMap, Keys, Sum, As, Select."""

from __future__ import annotations

import itertools
from typing import Any, Iterable

from netsonde.common.bus.graph import GraphElement

from .fields import EDGE_AT_KEYS, NODE_AT_KEYS, element_value, element_values, flatten_keys
from .predicates import is_number
from .steps import Step, core_step
from .traversal import (AggregatedT, Context, EdgesT, MetricsT, NodesT, PathsT, ScalarT,
                        Value, ValuesT)
from .core import dedup_key, parse_sort_args, sort_key


@core_step("Dedup")
class Dedup(Step):
    """`Dedup()` by ID (values: by value), `Dedup(k, ...)` by the values of the keys."""

    def setup(self) -> None:
        self.keys = self.str_args()

    def _dedup(self, elems: Iterable[GraphElement]) -> list[GraphElement]:
        seen: set[Any] = set()
        out = []
        for el in elems:
            if self.keys:
                k = tuple(dedup_key(element_value(el, key)) for key in self.keys)
            else:
                k = el.ID
            if k not in seen:
                seen.add(k)
                out.append(el)
        return out

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        return NodesT(value.view, self._dedup(value.iter()))

    def on_edges(self, ctx: Context, value: EdgesT) -> Value:
        return EdgesT(value.view, self._dedup(value.iter()))

    def on_values(self, ctx: Context, value: ValuesT) -> Value:
        seen: set[Any] = set()
        out = []
        for v in value.values:
            k = dedup_key(v)
            if k not in seen:
                seen.add(k)
                out.append(v)
        return ValuesT(out)


@core_step("Count")
class Count(Step):
    def setup(self) -> None:
        self.nargs(0, 0)

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        return ScalarT(value.view.node_count() if value.elems is None else len(value.elems))

    def on_edges(self, ctx: Context, value: EdgesT) -> Value:
        return ScalarT(len(value.items()))

    def on_values(self, ctx: Context, value: ValuesT) -> Value:
        return ScalarT(len(value.values))

    def on_paths(self, ctx: Context, value: PathsT) -> Value:
        return ScalarT(len(value.paths))

    def on_metrics(self, ctx: Context, value: Value) -> Value:
        if isinstance(value, AggregatedT):
            return ScalarT(len(value.slices))
        assert isinstance(value, MetricsT)
        return ScalarT(sum(len(v) for v in value.metrics.values()))


class _Slice(Step):
    def bounds(self) -> tuple[int, int]:
        raise NotImplementedError

    def _slice(self, items: Iterable[Any]) -> list[Any]:
        a, b = self.bounds()
        return list(itertools.islice(items, a, b))

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        return NodesT(value.view, self._slice(value.iter()))

    def on_edges(self, ctx: Context, value: EdgesT) -> Value:
        return EdgesT(value.view, self._slice(value.iter()))

    def on_values(self, ctx: Context, value: ValuesT) -> Value:
        return ValuesT(self._slice(value.values))

    def on_paths(self, ctx: Context, value: PathsT) -> Value:
        return PathsT(value.view, self._slice(value.paths))


@core_step("Limit")
class Limit(_Slice):
    """`Limit(n)`: the first n."""

    def setup(self) -> None:
        self.nargs(1, 1)
        self.n = self.int_arg(0, "a count")
        if self.n < 0:
            raise self.error("the count cannot be negative", self.args[0])

    def bounds(self) -> tuple[int, int]:
        return 0, self.n


@core_step("Range")
class Range(_Slice):
    """`Range(a, b)`: items a (included) to b (excluded)."""

    def setup(self) -> None:
        self.nargs(2, 2)
        self.a, self.b = self.int_arg(0, "a start index"), self.int_arg(1, "an end index")
        if self.a < 0 or self.b < self.a:
            raise self.error(f"bad range [{self.a}, {self.b}): need 0 <= start <= end")

    def bounds(self) -> tuple[int, int]:
        return self.a, self.b


@core_step("Sort")
class Sort(Step):
    """`Sort([ASC|DESC,] [key])`: nodes/edges by a metadata key or element field (default CreatedAt);
    elements lacking the key come last."""

    def setup(self) -> None:
        self.desc, self.key = parse_sort_args(self, "CreatedAt")

    def _sort(self, elems: list[GraphElement]) -> list[GraphElement]:
        present = [(sort_key(element_value(e, self.key)), e) for e in elems]
        with_key = [p for p in present if p[0][0] != 3]
        without = [p[1] for p in present if p[0][0] == 3]
        with_key.sort(key=lambda p: p[0], reverse=self.desc)
        return [p[1] for p in with_key] + without

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        return NodesT(value.view, self._sort(value.items()))

    def on_edges(self, ctx: Context, value: EdgesT) -> Value:
        return EdgesT(value.view, self._sort(value.items()))

    def on_values(self, ctx: Context, value: ValuesT) -> Value:
        return ValuesT(sorted(value.values, key=sort_key, reverse=self.desc))


@core_step("Values")
class Values(Step):
    """`Values(k)`: the value of k for each element that has it (empty lists/maps skipped)."""

    def setup(self) -> None:
        self.nargs(1, 1)
        self.key = self.str_arg(0, "a key")

    def _values(self, elems: Iterable[GraphElement]) -> ValuesT:
        out = []
        for el in elems:
            v = element_value(el, self.key)
            if v is None or (isinstance(v, (list, dict)) and not v):
                continue
            out.append(v)
        return ValuesT(out)

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        return self._values(value.iter())

    def on_edges(self, ctx: Context, value: EdgesT) -> Value:
        return self._values(value.iter())


@core_step("ValueMap")
class ValueMap(Step):
    """`ValueMap(k1, k2 ...)`: one `{k: v}` map per element (only keys it has); no key = all metadata."""

    def setup(self) -> None:
        self.keys = self.str_args()

    def _maps(self, elems: Iterable[GraphElement]) -> ValuesT:
        out = []
        for el in elems:
            if not self.keys:
                out.append(dict(el.Metadata))
                continue
            m = {}
            for k in self.keys:
                v = element_value(el, k)
                if v is not None:
                    m[k] = v
            out.append(m)
        return ValuesT(out)

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        return self._maps(value.iter())

    def on_edges(self, ctx: Context, value: EdgesT) -> Value:
        return self._maps(value.iter())


@core_step("Keys")
class Keys(Step):
    """`Keys()`: sorted union of the keys (nested as dotted paths) plus the `@` element keys."""

    def setup(self) -> None:
        self.nargs(0, 0)

    def _keys(self, elems: Iterable[GraphElement], at_keys: tuple[str, ...]) -> ValuesT:
        keys: set[str] = set()
        any_el = False
        for el in elems:
            any_el = True
            keys.update(flatten_keys(el.Metadata))
        if any_el:
            keys.update(at_keys)
        return ValuesT(sorted(keys))

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        return self._keys(value.iter(), NODE_AT_KEYS)

    def on_edges(self, ctx: Context, value: EdgesT) -> Value:
        return self._keys(value.iter(), EDGE_AT_KEYS)

    def on_metrics(self, ctx: Context, value: Value) -> Value:
        keys: set[str] = set()
        ms = value.slices if isinstance(value, AggregatedT) else \
            [m for lst in value.metrics.values() for m in lst]  # type: ignore[attr-defined]
        for m in ms:
            keys.update(m)
        return ValuesT(sorted(keys))


def _sum(values: Iterable[Any]) -> int | float:
    total: int | float = 0
    for v in values:
        if is_number(v):
            total += v
    return total


@core_step("Sum")
class Sum(Step):
    """`Sum(k)`: sum of the numeric values of k. On metrics, `Sum()` is one summed metric."""

    def setup(self) -> None:
        self.nargs(0, 1)
        self.key = self.str_arg(0, "a key") if self.args else None

    def _need_key(self) -> str:
        if self.key is None:
            raise self.error("needs a key on nodes and edges")
        return self.key

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        key = self._need_key()
        return ScalarT(_sum(v for n in value.iter() for v in element_values(n, key)[1]), "sum")

    def on_edges(self, ctx: Context, value: EdgesT) -> Value:
        key = self._need_key()
        return ScalarT(_sum(v for n in value.iter() for v in element_values(n, key)[1]), "sum")

    def on_values(self, ctx: Context, value: ValuesT) -> Value:
        return ScalarT(_sum(value.values), "sum")

    def on_metrics(self, ctx: Context, value: Value) -> Value:
        ms = value.slices if isinstance(value, AggregatedT) else \
            [m for lst in value.metrics.values() for m in lst]  # type: ignore[attr-defined]
        if self.key is not None:
            return ScalarT(_sum(m.get(self.key) for m in ms), "sum")
        return ScalarT(sum_metrics(ms), "metric")


def sum_metrics(ms: list[dict[str, Any]]) -> dict[str, Any]:
    """One metric: counters summed, Start = min, Last = max."""
    out: dict[str, Any] = {}
    for m in ms:
        for k, v in m.items():
            if k == "Start":
                out[k] = v if "Start" not in out else min(out[k], v)
            elif k == "Last":
                out[k] = v if "Last" not in out else max(out[k], v)
            elif is_number(v):
                out[k] = out.get(k, 0) + v
    return out


@core_step("As")
class As(Step):
    """`As('name')`: remember the current node set under a name for Select()."""

    def setup(self) -> None:
        self.nargs(1, 1)
        self.name = self.str_arg(0, "a name")

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        ctx.named[self.name] = value.items()
        return value


@core_step("Select")
class Select(Step):
    """`Select('a', 'b' ...)`: the union (by ID, first seen order) of node sets named with As()."""

    def setup(self) -> None:
        self.nargs(1, None)
        self.names = self.str_args()

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        seen: set[tuple[str, int]] = set()
        out: list[GraphElement] = []
        for i, name in enumerate(self.names):
            if name not in ctx.named:
                raise self.error(f"no node set named {name!r} (name one with As({name!r}))", self.args[i])
            for n in ctx.named[name]:
                k = (n.ID, n.Revision)
                if k not in seen:
                    seen.add(k)
                    out.append(n)
        return NodesT(value.view, out)


# --- graph algorithms ---------------------------------------------------------------------------------------
