"""How `netsonde client` prints the API's answers: JSON (the default, as Skydive's client), YAML, or rich
tables; and how it reports an error (the server's own message, on stderr)."""

from __future__ import annotations

import json
import sys
from typing import Any

import httpx
import yaml  # type: ignore[import-untyped]
from rich.console import Console
from rich.table import Table
from rich.text import Text

FORMATS = ("json", "yaml", "table")

GRAPH_COLUMNS = ("ID", "Name", "Type", "Host", "Parent", "Child", "RelationType")
"""Columns of a table of graph elements (Metadata's Name/Type/RelationType lifted up)."""


def stdout() -> Console:
    """The console of tables: the terminal's width, or a wide one when piped (IDs are never folded)."""
    console = Console(soft_wrap=False)
    return console if console.is_terminal else Console(soft_wrap=False, width=max(console.width, 240))


def stderr() -> Console:
    return Console(stderr=True, soft_wrap=True)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        return json.dumps(value, separators=(",", ":"), sort_keys=True)
    return str(value)


def _graph_row(element: dict[str, Any]) -> dict[str, Any]:
    meta = element.get("Metadata") or {}
    return {
        "ID": element.get("ID"),
        "Name": meta.get("Name"),
        "Type": meta.get("Type"),
        "Host": element.get("Host"),
        "Parent": element.get("Parent"),
        "Child": element.get("Child"),
        "RelationType": meta.get("RelationType"),
    }


def _rows(data: Any) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows) for any JSON answer: a list of objects, a map of ID -> object, one object, scalars."""
    if isinstance(data, dict) and data and all(isinstance(v, dict) for v in data.values()):
        rows = [{"ID": key, **value} for key, value in data.items()]  # {UUID: capture} as the API lists them
    elif isinstance(data, dict):
        return ["Key", "Value"], [{"Key": k, "Value": v} for k, v in data.items()]
    elif isinstance(data, list) and all(isinstance(v, dict) for v in data):
        rows = list(data)
    elif isinstance(data, list):
        return ["Value"], [{"Value": v} for v in data]
    else:
        return ["Value"], [{"Value": data}]
    if rows and all("Metadata" in r and "ID" in r for r in rows):
        rows = [_graph_row(r) for r in rows]
        columns = [c for c in GRAPH_COLUMNS if any(r.get(c) not in (None, "") for r in rows)]
        return columns, rows
    keys: list[str] = []
    for row in rows:
        keys += [k for k in row if k not in keys]
    return keys, rows


def table(data: Any) -> Table:
    """A rich table of an API answer."""
    columns, rows = _rows(data)
    out = Table(show_header=True, header_style="bold", show_lines=False)
    for column in columns:
        out.add_column(column, overflow="fold")
    for row in rows:
        out.add_row(*(_cell(row.get(c)) for c in columns))
    return out


def emit(data: Any, fmt: str) -> None:
    """Print one answer in `fmt` (json, yaml or table) on stdout."""
    if fmt == "json":
        sys.stdout.write(json.dumps(data, indent=2) + "\n")
    elif fmt == "yaml":
        sys.stdout.write(yaml.safe_dump(data, sort_keys=False, allow_unicode=True))
    elif fmt == "table":
        stdout().print(table(data))
    else:
        raise ValueError(f"unknown format {fmt!r}: one of {', '.join(FORMATS)}")


def server_message(resp: httpx.Response) -> str:
    """The server's explanation of a refusal: the `error`/`message` field of a JSON body, else its text."""
    try:
        body = resp.json()
    except ValueError:
        return resp.text.strip() or resp.reason_phrase
    if isinstance(body, dict):
        for key in ("error", "Error", "message", "Message"):
            if body.get(key):
                return str(body[key])
    return json.dumps(body)


def report_error(resp: httpx.Response) -> int:
    """Print `Error: <status> <reason>: <server's message>` on stderr; the exit status of a refusal."""
    stderr().print(
        Text.assemble(
            ("Error:", "bold red"), f" {resp.status_code} {resp.reason_phrase}: {server_message(resp)}"
        )
    )
    return 1
