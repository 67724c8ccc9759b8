"""Predicates usable as the value of a key in Has / HasEither / Out / Flows ... filters.

Each predicate is a small class with `test(present, values)`: `present` says whether the key exists, `values`
are its leaf values (arrays flattened). Positive predicates match when any value matches; the negative ones
(`Ne`, `Nee`, `Without`) are the negation of that, `Ne` also requiring the key.
"""

from __future__ import annotations

import ipaddress
from typing import Any, Callable, ClassVar

import re2  # google-re2: linear-time matching, Go/ClickHouse syntax

from . import ast
from .errors import GremlinError

PREDICATES: dict[str, type["Predicate"]] = {}
"""Upper-cased predicate name -> class (aliases map to the same class)."""


def predicate(*names: str) -> Callable[[type["Predicate"]], type["Predicate"]]:
    def register(cls: type[Predicate]) -> type[Predicate]:
        for n in names:
            PREDICATES[n.upper()] = cls
        cls.NAME = names[0]
        return cls
    return register


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def equal(a: Any, b: Any) -> bool:
    """Term equality: numbers compare by value (floats and ints alike), strings and bools by identity of type."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if is_number(a) and is_number(b):
        return a == b
    return type(a) is type(b) and a == b


class Predicate:
    NAME: ClassVar[str] = ""
    ARGS: ClassVar[tuple[int, int | None]] = (1, 1)
    """(min, max) number of arguments."""

    def __init__(self, args: list[Any], pos: int) -> None:
        self.args = args
        self.pos = pos

    def test(self, present: bool, values: list[Any]) -> bool:
        return any(self.match(v) for v in values)

    def test_one(self, v: Any) -> bool:
        """`test(True, [v])` for one scalar value (the common case, without building a list)."""
        return self.test(True, [v])

    def match(self, v: Any) -> bool:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{self.NAME}({', '.join(map(repr, self.args))})"


def _term_key(v: Any) -> Any:
    """A hashable key under which term-equal values collide: numbers by value, bools apart from numbers."""
    if isinstance(v, bool):
        return ("b", v)
    if isinstance(v, float) and v.is_integer():
        return int(v)
    return v


def _hashable(v: Any) -> bool:
    return isinstance(v, (str, int, float))


@predicate("Eq")
class Eq(Predicate):
    """A plain literal: term equality (array values: any element)."""

    def __init__(self, args: list[Any], pos: int) -> None:
        super().__init__(args, pos)
        self.key = _term_key(args[0]) if _hashable(args[0]) else None

    def test(self, present: bool, values: list[Any]) -> bool:
        key = self.key
        if key is None:
            return any(equal(v, self.args[0]) for v in values)
        for v in values:
            if _hashable(v) and _term_key(v) == key:
                return True
        return False

    def test_one(self, v: Any) -> bool:
        if self.key is None:
            return equal(v, self.args[0])
        return _hashable(v) and _term_key(v) == self.key

    def match(self, v: Any) -> bool:
        return equal(v, self.args[0])


@predicate("Ne", "NE")
class Ne(Predicate):
    """Key present and no value equals the argument."""

    def test(self, present: bool, values: list[Any]) -> bool:
        return present and not any(equal(v, self.args[0]) for v in values)


@predicate("Nee", "NEE")
class Nee(Predicate):
    """No value equals the argument (an element without the key matches)."""

    def test(self, present: bool, values: list[Any]) -> bool:
        return not any(equal(v, self.args[0]) for v in values)


class _TermSet(Predicate):
    ARGS = (1, None)

    def __init__(self, args: list[Any], pos: int) -> None:
        super().__init__(args, pos)
        self.strs = {a for a in args if isinstance(a, str)}
        self.others = {_term_key(a) for a in args if _hashable(a) and not isinstance(a, str)}
        self.unhashable = [a for a in args if not _hashable(a)]

    def match(self, v: Any) -> bool:
        if isinstance(v, str):
            return v in self.strs
        if _hashable(v) and _term_key(v) in self.others:
            return True
        return any(equal(v, a) for a in self.unhashable)


@predicate("Within")
class Within(_TermSet):
    """Any value equals one of the arguments."""

    def test_one(self, v: Any) -> bool:
        return self.match(v)


@predicate("Without")
class Without(_TermSet):
    """No value equals any of the arguments (an element without the key matches)."""

    def test(self, present: bool, values: list[Any]) -> bool:
        return not any(self.match(v) for v in values)


class _Numeric(Predicate):
    OP: ClassVar[str] = ""

    def test_one(self, v: Any) -> bool:
        return self.match(v)

    def __init__(self, args: list[Any], pos: int) -> None:
        super().__init__(args, pos)
        for a in args:
            if not is_number(a):
                raise GremlinError(f"{self.NAME}() takes numbers, got {a!r}", position=pos)


@predicate("Gt")
class Gt(_Numeric):
    OP = ">"

    def match(self, v: Any) -> bool:
        return is_number(v) and v > self.args[0]


@predicate("Gte")
class Gte(_Numeric):
    OP = ">="

    def match(self, v: Any) -> bool:
        return is_number(v) and v >= self.args[0]


@predicate("Lt")
class Lt(_Numeric):
    OP = "<"

    def match(self, v: Any) -> bool:
        return is_number(v) and v < self.args[0]


@predicate("Lte")
class Lte(_Numeric):
    OP = "<="

    def match(self, v: Any) -> bool:
        return is_number(v) and v <= self.args[0]


@predicate("Inside")
class Inside(_Numeric):
    """a < x < b."""

    ARGS = (2, 2)

    def match(self, v: Any) -> bool:
        return is_number(v) and self.args[0] < v < self.args[1]


@predicate("Outside")
class Outside(_Numeric):
    """x < a or x > b (the correct reading; Skydive ANDs the two, which never matches)."""

    ARGS = (2, 2)

    def match(self, v: Any) -> bool:
        return is_number(v) and (v < self.args[0] or v > self.args[1])


@predicate("Between")
class Between(_Numeric):
    """a <= x < b."""

    ARGS = (2, 2)

    def match(self, v: Any) -> bool:
        return is_number(v) and self.args[0] <= v < self.args[1]


_RE2_OPTIONS = re2.Options()
_RE2_OPTIONS.log_errors = False  # a bad pattern is the user's 400, not a line on stderr


@predicate("Regex")
class Regex(Predicate):
    """Implicitly anchored regular expression on string values (`^`/`$` are redundant but accepted).

    RE2 syntax, as Skydive's Go regexp and ClickHouse's match() (flows): matching time is linear in the value,
    so a pattern such as `(a+)+b` cannot hold a query past its time limit (Python's backtracking `re` could)."""

    def __init__(self, args: list[Any], pos: int) -> None:
        super().__init__(args, pos)
        if not isinstance(args[0], str):
            raise GremlinError(f"Regex() takes a string, got {args[0]!r}", position=pos)
        try:
            self.rx = re2.compile(args[0], _RE2_OPTIONS)
        except re2.error as e:
            reason = e.args[0].decode(errors="replace") if e.args and isinstance(e.args[0], bytes) else str(e)
            raise GremlinError(f"invalid regular expression {args[0]!r}: {reason}", position=pos) from None

    def match(self, v: Any) -> bool:
        return isinstance(v, str) and self.rx.fullmatch(v) is not None

    test_one = match


@predicate("Ipv4Range", "IPV4RANGE")
class Ipv4Range(Predicate):
    """IPv4 CIDR membership of an address, or of the address part of a `10.0.0.5/24` interface value."""

    def __init__(self, args: list[Any], pos: int) -> None:
        super().__init__(args, pos)
        try:
            self.net = ipaddress.IPv4Network(str(args[0]), strict=False)
        except ValueError:
            raise GremlinError(f"Ipv4Range() takes an IPv4 CIDR, got {args[0]!r}", position=pos) from None
        self.lo = int(self.net.network_address)
        self.hi = int(self.net.broadcast_address)

    def match(self, v: Any) -> bool:
        if not isinstance(v, str):
            return False
        try:
            ip = int(ipaddress.IPv4Address(v.split("/", 1)[0]))
        except ValueError:
            return False
        return self.lo <= ip <= self.hi


def literal_value(arg: ast.Arg, what: str = "a value") -> Any:
    if isinstance(arg, ast.Literal):
        return arg.value
    if isinstance(arg, ast.Keyword):
        raise GremlinError(f"{arg.name} is not allowed here: expected {what}", position=arg.pos)
    raise GremlinError(f"{arg.written or arg.name}() is not allowed here: expected {what}", position=arg.pos)


def make_predicate(arg: ast.Arg) -> Predicate:
    """A literal means equality; a call names a predicate."""
    if isinstance(arg, ast.Literal):
        v = arg.value
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        return Eq([v], arg.pos)
    if isinstance(arg, ast.Keyword):
        raise GremlinError(f"{arg.name} is not a value: expected a literal or a predicate", position=arg.pos)
    cls = PREDICATES.get(arg.name)
    if cls is None:
        raise GremlinError(f"unknown predicate {arg.written or arg.name}(): expected one of "
                           f"{', '.join(sorted({c.NAME for c in PREDICATES.values() if c is not Eq}))}",
                           position=arg.pos)
    lo, hi = cls.ARGS
    if len(arg.args) < lo or (hi is not None and len(arg.args) > hi):
        want = f"exactly {lo}" if lo == hi else (f"at least {lo}" if hi is None else f"{lo} to {hi}")
        raise GremlinError(f"{cls.NAME}() takes {want} argument(s), got {len(arg.args)}", position=arg.pos)
    return cls([literal_value(a, f"a literal inside {cls.NAME}()") for a in arg.args], arg.pos)
