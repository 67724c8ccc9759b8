"""What a benchmark scenario returns (a titled table plus notes), and the page it is written into.

docs/benchmarks.md is written only by `make bench` (`python -m bench`; `python -m bench NAME` replaces only
that scenario's section). Every section ends with its own stamp: the date of its run, the machine, how long
it took and the 1-min load average just before and just after it, so a reader knows what each figure was
measured under. `SECTION_STAMP` is the one definition of that line (tests/unit/test_benchmarks_page.py
checks the published page against it).
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass, field
from typing import Any

PAGE_HEADER = [
    "# Benchmarks",
    "",
    "Written only by `make bench` (`python -m bench`; `python -m bench NAME` rewrites only that scenario's "
    "section): never edit this page by hand. Each section states its own date, machine and the 1-min load "
    "average before and after its run; ratios divide by figures measured in the same run (peers on the same "
    "machine).",
    "",
]

SECTION_MARK = "<!-- scenario:"

SECTION_STAMP = re.compile(
    r"^_Measured (?P<date>\d{4}-\d{2}-\d{2} \d{2}:\d{2}) UTC by `python -m bench (?P<name>\w+)` "
    r"on (?P<machine>.+?), "
    r"in (?P<took>\d+) s; 1-min load average (?P<before>\d+\.\d\d) before, (?P<after>\d+\.\d\d) after\._$",
    re.MULTILINE,
)
"""The last line of every section."""

LEGACY_STAMP = re.compile(r"^_Load average not recorded for this section[^\n]*_$", re.MULTILINE)
"""What the writer appends to a section kept from a page older than the stamps (rerun the scenario)."""


@dataclass
class Result:
    title: str
    columns: list[str]
    rows: list[list[Any]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_markdown(self) -> str:
        out = [
            f"## {self.title}",
            "",
            "| " + " | ".join(self.columns) + " |",
            "|" + "---|" * len(self.columns),
        ]
        for row in self.rows:
            out.append("| " + " | ".join(_fmt(v) for v in row) + " |")
        if self.notes:
            out.append("")
            out.extend(f"- {n}" for n in self.notes)
        return "\n".join(out) + "\n"


def stamp(
    name: str, started: dt.datetime, machine: str, took_s: float, load_before: float, load_after: float
) -> str:
    """The closing line of a section (matches SECTION_STAMP)."""
    return (
        f"_Measured {started:%Y-%m-%d %H:%M} UTC by `python -m bench {name}` on {machine}, "
        f"in {round(took_s)} s; 1-min load average {load_before:.2f} before, {load_after:.2f} after._"
    )


def read_sections(text: str) -> dict[str, str]:
    """The scenario sections of a benchmarks page, by scenario name."""
    out: dict[str, str] = {}
    for chunk in text.split(SECTION_MARK)[1:]:
        name, _, body = chunk.partition(" -->\n")
        out[name.strip()] = body.rstrip("\n") + "\n"
    return out


def with_stamp(name: str, body: str) -> str:
    """A kept section as written: unchanged when stamped, else marked as lacking its load average."""
    if SECTION_STAMP.search(body) or LEGACY_STAMP.search(body):
        return body
    return (
        body.rstrip("\n") + f"\n\n_Load average not recorded for this section (measured before the page "
        f"stamped each run): rerun `python -m bench {name}`._\n"
    )


def render_page(machine_lines: list[str], sections: dict[str, str], order: list[str]) -> str:
    """The whole page: header, machine and peers of the last run, then the sections in `order`."""
    body = [
        f"{SECTION_MARK}{name} -->\n{with_stamp(name, sections[name])}" for name in order if name in sections
    ]
    return "\n".join([*PAGE_HEADER, *machine_lines, ""]) + "\n" + "\n".join(body)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3g}" if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return str(v)
