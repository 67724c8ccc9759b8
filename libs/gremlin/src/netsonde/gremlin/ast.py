"""The parsed query: a list of step calls whose arguments are literals, keywords or nested calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Union


@dataclass(slots=True)
class Literal:
    """A string, int, float or bool as written in the query."""

    value: Any
    pos: int


@dataclass(slots=True)
class Keyword:
    """A bare keyword: ASC, DESC, NOW, FOREVER (upper-cased)."""

    name: str
    pos: int


@dataclass(slots=True)
class Call:
    """A nested call used as an argument: a predicate (`Gt(3)`) or `Metadata(k, v, ...)`. Name upper-cased."""

    name: str
    args: tuple["Arg", ...]
    pos: int
    written: str = ""


Arg = Union[Literal, Keyword, Call]


@dataclass(slots=True)
class StepCall:
    """One `.Step(args)` of the query. `name` is upper-cased, `written` is as the user typed it."""

    name: str
    written: str
    args: tuple[Arg, ...]
    pos: int


@dataclass(slots=True)
class Query:
    steps: tuple[StepCall, ...] = field(default_factory=tuple)
    text: str = ""
