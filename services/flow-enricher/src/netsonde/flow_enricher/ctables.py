"""Checks that the C hot path (`_fastflow.c`) writes the columns `netsonde.common.flowschema` defines.

The C encoder keeps its own column tables (`FLOWCOLS`, `METCOLS`, `RAWCOLS`: name, wire type) because its
code fills each column by position; this module reads them from the C source and compares them with the
Python definition, name by name and type by type (`flowschema.native_type`), plus the FlowMetric keys the C
decoder knows (`METRIC_KEYS`). Run at install (`make install`) and by the unit tests, so a column added to
flowschema fails loudly until the C path writes it too:

    .venv/bin/python -m netsonde.flow_enricher.ctables
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from netsonde.common import flowschema as fs
from netsonde.common.bus.flows import FlowMetric

C_SOURCE = Path(__file__).with_name("_fastflow.c")

_TABLE = re.compile(r"static const col_t (\w+)\[\w+\] = \{(.*?)\};", re.S)
_ENTRY = re.compile(r'\{"([^"]+)", "([^"]+)", \w+\}')
_METRIC_KEYS = re.compile(r"static const char \*METRIC_KEYS\[\d+\] = \{(.*?)\};", re.S)


def c_tables(source: str) -> dict[str, list[tuple[str, str]]]:
    """{C table name: [(column, wire type), ...]} as written in the C source."""
    return {name: _ENTRY.findall(body) for name, body in _TABLE.findall(source)}


def c_metric_keys(source: str) -> list[str]:
    m = _METRIC_KEYS.search(source)
    return re.findall(r'"([^"]+)"', m.group(1)) if m else []


def expected_tables() -> dict[str, list[tuple[str, str]]]:
    """The same tables derived from flowschema."""
    return {
        "FLOWCOLS": [(c.name, fs.native_type(c.type)) for c in fs.FLOW_COLUMNS],
        "METCOLS": [(c.name, fs.native_type(c.type)) for c in fs.METRIC_COLUMNS],
        "RAWCOLS": [(c.name, fs.native_type(c.type)) for c in fs.RAW_PACKET_COLUMNS],
    }


def mismatches(source: str) -> list[str]:
    """What differs between the C tables and flowschema, one line each (empty: they agree)."""
    found, out = c_tables(source), []
    for table, want in expected_tables().items():
        got = found.get(table)
        if got is None:
            out.append(f"{table}: table not found in the C source")
            continue
        for i in range(max(len(got), len(want))):
            g = got[i] if i < len(got) else None
            w = want[i] if i < len(want) else None
            if g != w:
                out.append(f"{table}[{i}]: C has {g}, flowschema has {w}")
        defined = re.search(rf"#define N{table} (\d+)", source)
        if defined is None or int(defined.group(1)) != len(want):
            out.append(
                f"N{table}: C defines {defined.group(1) if defined else None}, flowschema has {len(want)}"
            )
    keys = c_metric_keys(source)
    if keys != list(FlowMetric.__struct_fields__):
        out.append(f"METRIC_KEYS: C has {keys}, FlowMetric has {list(FlowMetric.__struct_fields__)}")
    return out


def main() -> int:
    problems = mismatches(C_SOURCE.read_text())
    for line in problems:
        print(f"_fastflow.c differs from netsonde.common.flowschema: {line}", file=sys.stderr)
    if problems:
        print(
            "teach the C path the new columns (FLOWCOLS and the writer in _fastflow.c), then reinstall",
            file=sys.stderr,
        )
        return 1
    print(f"_fastflow.c column tables match flowschema ({len(fs.FLOW_COLUMNS)} flow columns)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
