"""docs/benchmarks.md is one a reader can trust: every section states its own date, machine and load.

The page is written only by `make bench` (bench/result.py); each section ends with the stamp of its own run
(`SECTION_STAMP`: date, machine, duration, 1-min load average before and after). A section kept from a page
older than the stamps carries the writer's explicit "load average not recorded" line instead.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from bench.result import LEGACY_STAMP, PAGE_HEADER, SECTION_STAMP, read_sections, render_page, stamp

PAGE = Path(__file__).resolve().parents[2] / "docs" / "benchmarks.md"


def page_problems(text: str) -> list[str]:
    """What makes a benchmarks page untrustworthy: a missing header, a section without its stamp line."""
    problems = []
    if "Written only by `make bench`" not in text:
        problems.append("the header does not say the page is written only by `make bench`")
    sections = read_sections(text)
    if not sections:
        problems.append("no scenario sections")
    for name, body in sections.items():
        last = body.rstrip("\n").splitlines()[-1] if body.strip() else ""
        m = SECTION_STAMP.fullmatch(last)
        if m is None:
            if not LEGACY_STAMP.fullmatch(last):
                problems.append(
                    f"section {name!r} does not end with its date/load line (last line: {last!r})"
                )
            continue
        if m["name"] != name:
            problems.append(f"section {name!r} carries the stamp of {m['name']!r}")
        dt.datetime.strptime(m["date"], "%Y-%m-%d %H:%M")
        if float(m["before"]) < 0 or float(m["after"]) < 0:
            problems.append(f"section {name!r}: negative load average")
    return problems


def test_published_page_states_date_and_load_for_every_section() -> None:
    assert page_problems(PAGE.read_text()) == []


def test_the_check_fails_on_a_section_without_its_stamp() -> None:
    at = dt.datetime(2026, 12, 6, 1, 30, tzinfo=dt.UTC)
    good = (
        "## Gremlin\n\n| a |\n|---|\n| 1 |\n\n" + stamp("gremlin", at, "2 CPUs (x)", 41.6, 0.5, 1.25) + "\n"
    )
    page = render_page(["- Machine: 2 CPUs (x)"], {"gremlin": good}, ["gremlin"])
    assert page_problems(page) == []
    assert (
        "\n_Measured 2026-12-06 01:30 UTC by `python -m bench gremlin` on 2 CPUs (x), in 42 s; 1-min load "
        "average 0.50 before, 1.25 after._\n" in page
    )
    assert page.startswith("\n".join(PAGE_HEADER))
    # a hand-written or stripped section: no stamp line -> reported
    hand = page.replace(
        stamp("gremlin", at, "2 CPUs (x)", 41.6, 0.5, 1.25), "_Measured yesterday, load 2-4._"
    )
    assert page_problems(hand) == [
        "section 'gremlin' does not end with its date/load line "
        "(last line: '_Measured yesterday, load 2-4._')"
    ]
    # the stamp of another scenario -> reported
    moved = page.replace("<!-- scenario:gremlin -->", "<!-- scenario:memory -->")
    assert page_problems(moved) == ["section 'memory' carries the stamp of 'gremlin'"]
    assert page_problems(page.replace("Written only by", "Written by")) == [
        "the header does not say the page is written only by `make bench`"
    ]


def test_writer_marks_a_kept_section_without_stamp() -> None:
    page = render_page(
        [], {"store": "## Store\n\n| a |\n|---|\n\n_Measured 2026-11-25 11:58 UTC._\n"}, ["store"]
    )
    assert page.rstrip("\n").endswith(
        "_Load average not recorded for this section (measured before the page "
        "stamped each run): rerun `python -m bench store`._"
    )
    assert page_problems(page) == []
    assert render_page([], read_sections(page), ["store"]) == page  # marked once, not again at the next write
