"""The step framework: a registry of step classes, argument helpers and element filters.

A step class parses and checks its arguments in `__init__` (so a bad argument is a 400 before anything
runs) and implements `on_<kind>` for each kind of input it accepts (`on_graph`, `on_nodes`, `on_edges`,
`on_paths`, `on_values`, `on_metrics` ...). A value type may also handle steps itself (`FlowsT` does,
like Skydive's flow traversal, so that Flows().Has().Sort().Limit() becomes one SQL query).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterable

from netsonde.common.bus.graph import GraphElement

from . import ast
from .errors import GremlinError
from .fields import element_values
from .predicates import Eq, Predicate, Within, literal_value, make_predicate
from .traversal import Context, Value

CORE_STEPS: dict[str, type["Step"]] = {}
"""Graph steps from graffiti's core (V, E, Has, Out, Dedup, Count ...)."""
EXTENSION_STEPS: dict[str, type["Step"]] = {}
"""Skydive's extension steps (Flows, Metrics, Descendants, NextHop ...)."""


def core_step(*names: str) -> Callable[[type["Step"]], type["Step"]]:
    return _register(CORE_STEPS, names)


def extension_step(*names: str) -> Callable[[type["Step"]], type["Step"]]:
    return _register(EXTENSION_STEPS, names)


def _register(table: dict[str, type["Step"]], names: tuple[str, ...]) -> Callable[[type["Step"]], type["Step"]]:
    def deco(cls: type[Step]) -> type[Step]:
        cls.NAME = names[0]
        for n in names:
            table[n.upper()] = cls
        return cls
    return deco


def lookup_step(call: ast.StepCall) -> "Step":
    cls = CORE_STEPS.get(call.name) or EXTENSION_STEPS.get(call.name)
    if cls is None:
        raise GremlinError(f"unknown step {call.written}()", position=call.pos)
    return cls(call)


class Step:
    NAME: ClassVar[str] = ""

    def __init__(self, call: ast.StepCall) -> None:
        self.call = call
        self.args = call.args
        self.pos = call.pos
        self.setup()

    def setup(self) -> None:
        """Check and convert arguments (override)."""

    # --- argument helpers ---------------------------------------------------------------------------------
    def error(self, message: str, arg: ast.Arg | None = None, status: int = 400) -> GremlinError:
        return GremlinError(f"{self.call.written}(): {message}", status=status,
                            position=arg.pos if arg is not None else self.pos)

    def nargs(self, lo: int, hi: int | None) -> None:
        n = len(self.args)
        if n < lo or (hi is not None and n > hi):
            if lo == hi:
                want = f"exactly {lo}"
            elif hi is None:
                want = f"at least {lo}"
            else:
                want = f"{lo} to {hi}"
            raise self.error(f"takes {want} argument(s), got {n}")

    def str_arg(self, i: int, what: str = "a string") -> str:
        a = self.args[i]
        if not (isinstance(a, ast.Literal) and isinstance(a.value, str)):
            raise self.error(f"argument {i + 1} must be {what}", a)
        return a.value

    def int_arg(self, i: int, what: str = "an integer") -> int:
        a = self.args[i]
        if isinstance(a, ast.Literal) and isinstance(a.value, float) and a.value.is_integer():
            return int(a.value)
        if not (isinstance(a, ast.Literal) and isinstance(a.value, int) and not isinstance(a.value, bool)):
            raise self.error(f"argument {i + 1} must be {what}", a)
        return a.value

    def str_args(self) -> list[str]:
        return [self.str_arg(i) for i in range(len(self.args))]

    # --- dispatch -----------------------------------------------------------------------------------------
    def apply(self, ctx: Context, value: Value) -> Value:
        handler = getattr(self, "on_" + value.KIND, None)
        if handler is None:
            own = getattr(value, "step_handler", None)
            if own is not None:
                fn = own(self)
                if fn is not None:
                    return fn(ctx)
            raise self.error(f"cannot follow a step that returns {value.KIND}")
        return handler(ctx, value)


@dataclass(frozen=True)
class Filter:
    """AND (or, for HasEither, OR) of (key, predicate) pairs over graph elements."""

    pairs: tuple[tuple[str, Predicate], ...]
    any_of: bool = False

    def __bool__(self) -> bool:
        return bool(self.pairs)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_tests", tuple(_pair_test(k, p) for k, p in self.pairs))

    def match(self, el: GraphElement) -> bool:
        tests: tuple[Callable[[GraphElement], bool], ...] = self._tests  # type: ignore[attr-defined]
        if self.any_of:
            return any(t(el) for t in tests)
        for t in tests:
            if not t(el):
                return False
        return True

    def apply(self, elems: Iterable[GraphElement], ctx: Context) -> list[GraphElement]:
        match = self.match
        if isinstance(elems, list):
            out = [el for el in elems if match(el)]
            ctx.tick(len(elems))
            return out
        out = []
        n = 0
        for el in elems:
            n += 1
            if n & 4095 == 0:
                ctx.tick(4096)
            if match(el):
                out.append(el)
        return out

    def index_candidate(self) -> tuple[str, list[Any]] | None:
        """The first (key, [literals]) pair usable for an index lookup: an equality or a Within()."""
        if self.any_of:
            return None
        for k, p in self.pairs:
            if isinstance(p, Eq):
                return k, [p.args[0]]
            if isinstance(p, Within):
                return k, list(p.args)
        return None


_MISSING = object()


def _pair_test(key: str, pred: Predicate) -> Callable[[GraphElement], bool]:
    """A per-element test for one (key, predicate) pair; plain top-level metadata keys skip the path walk."""
    if key[:1] == "@" or "." in key:
        return lambda el: pred.test(*element_values(el, key))
    test, test_one = pred.test, pred.test_one

    def plain(el: GraphElement) -> bool:
        v = el.Metadata.get(key, _MISSING)
        if v is _MISSING:
            return test(False, [])
        if type(v) is list:
            return test(True, v)
        return test_one(v)
    return plain


class HasPredicate(Predicate):
    """`Has(k)`: the key exists."""

    NAME = "Has"

    def test(self, present: bool, values: list[Any]) -> bool:
        return present


class HasNotPredicate(Predicate):
    NAME = "HasNot"

    def test(self, present: bool, values: list[Any]) -> bool:
        return not present


def parse_pairs(step: Step, args: tuple[ast.Arg, ...], any_of: bool = False,
                allow_single_key: bool = False) -> Filter:
    """`k1, v1, k2, v2 ...` -> Filter. With `allow_single_key`, a lone key means "key exists" (Has('k'))."""
    if allow_single_key and len(args) == 1:
        return Filter(((_key(step, args[0]), HasPredicate([], args[0].pos)),))
    if len(args) % 2:
        raise step.error("takes key/value pairs: the last key has no value", args[-1])
    pairs = tuple((_key(step, args[i]), make_predicate(args[i + 1])) for i in range(0, len(args), 2))
    return Filter(pairs, any_of)


def _key(step: Step, arg: ast.Arg) -> str:
    if not (isinstance(arg, ast.Literal) and isinstance(arg.value, str)):
        raise step.error("a key must be a string", arg)
    return arg.value


def metadata_filter(step: Step, arg: ast.Arg) -> Filter:
    """`Metadata(k, v, ...)` argument -> Filter."""
    if not (isinstance(arg, ast.Call) and arg.name == "METADATA"):
        raise step.error("expected Metadata(key, value, ...)", arg)
    return parse_pairs(step, arg.args)


__all__ = ["CORE_STEPS", "EXTENSION_STEPS", "Filter", "Step", "core_step", "extension_step", "literal_value",
           "lookup_step", "metadata_filter", "parse_pairs"]
