"""Tables for `netsonde client diff`, `path` and `loss`: the JSON answers of /api/diff, /api/flowpath and
/api/loss as aligned text columns (`--json` prints the answer itself)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any


def table(headers: list[str], rows: list[list[Any]]) -> str:
    """Columns padded to their widest cell; the last column is not padded (it may be long)."""
    cells = [[str(c) for c in headers]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = []
    for n, r in enumerate(cells):
        lines.append("  ".join(c.ljust(widths[i]) if i < len(r) - 1 else c for i, c in enumerate(r)).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _when(ms: int | None) -> str:
    if ms is None:
        return ""
    return datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%H:%M:%S.%f")[:-3]


def _value(v: Any) -> str:
    return json.dumps(v, separators=(",", ":")) if isinstance(v, (dict, list)) else str(v)


def _change(c: dict[str, Any]) -> str:
    old = "-" if c["Change"] == "added" else _value(c["Old"])
    new = "-" if c["Change"] == "removed" else _value(c["New"])
    return f"{c['Key']}: {old} -> {new}"


def render_diff(d: dict[str, Any]) -> str:
    rows: list[list[Any]] = []
    for what in ("Nodes", "Edges"):
        kind = what[:-1].lower()
        for verb in ("Added", "Removed"):
            for el in d[what][verb]:
                md = el.get("Metadata") or {}
                name = md.get("Name") or (
                    f"{el.get('Parent', '')[:8]}->{el.get('Child', '')[:8]} {md.get('RelationType', '')}"
                )
                rows.append(
                    [_when(el["ChangedAt"]), kind, verb.lower(), name, md.get("Type", ""), el["ID"], ""]
                )
        for el in d[what]["Changed"]:
            for i, c in enumerate(el["Changes"]):
                rows.append(
                    [
                        _when(el["ChangedAt"]) if i == 0 else "",
                        kind if i == 0 else "",
                        "changed" if i == 0 else "",
                        el.get("Name", "") if i == 0 else "",
                        el.get("Type", "") if i == 0 else "",
                        el["ID"] if i == 0 else "",
                        _change(c),
                    ]
                )
    out = [f"graph changes {_when(d['From'])} -> {_when(d['To'])} UTC"]
    out.append(
        table(["WHEN", "KIND", "CHANGE", "NAME", "TYPE", "ID", "DETAIL"], rows) if rows else "(no change)"
    )
    if d.get("FlowsError"):
        out.append(f"\nflow changes unavailable: {d['FlowsError']}")
    flows = d.get("Flows")
    if flows is not None:
        frows = []
        for verb, key in (("started", "Started"), ("stopped", "Stopped"), ("rate", "RateChanged")):
            for f in flows[key]:
                rate = (
                    f"{f['BytesPerSecBefore']:.0f} -> {f['BytesPerSecAfter']:.0f} B/s"
                    if key == "RateChanged"
                    else ""
                )
                frows.append(
                    [
                        verb,
                        f["NodeTID"],
                        f"{f['NetworkA']} -> {f['NetworkB']}",
                        f["Application"],
                        f["ABPackets"] + f["BAPackets"],
                        f["TrackingID"],
                        rate,
                    ]
                )
        out.append("")
        out.append("flow changes")
        out.append(
            table(["CHANGE", "NODETID", "NETWORK", "APP", "PACKETS", "TRACKINGID", "RATE"], frows)
            if frows
            else "(no change)"
        )
    return "\n".join(out)


def render_path(p: dict[str, Any]) -> str:
    rows = []
    for i, h in enumerate(p["Hops"]):
        rows.append(
            [
                i,
                h["Name"] or h["NodeTID"],
                h["Type"],
                h["Host"],
                h["ABPackets"],
                h["ABBytes"],
                h["BAPackets"],
                h["BABytes"],
                _when(h["FirstSeen"]),
            ]
        )
        if i < len(p["Links"]):
            link = p["Links"][i]
            lat = (
                ""
                if link["LatencyMs"] is None
                else (
                    f"{link['LatencyMs']} ms" + (" (estimate, other host)" if link["LatencyEstimate"] else "")
                )
            )
            rows.append(
                [
                    "",
                    f"  lost AB {link['ABLost']} BA {link['BALost']} (+/- {link['Uncertainty']})",
                    "",
                    "",
                    "",
                    "",
                    "",
                    "",
                    lat,
                ]
            )
    head = f"TrackingID {p['TrackingID']}: {len(p['Hops'])} capture points in {p['Order']} order"
    return (
        head
        + "\n"
        + table(
            [
                "#",
                "HOP",
                "TYPE",
                "HOST",
                "AB PKTS",
                "AB BYTES",
                "BA PKTS",
                "BA BYTES",
                "FIRST SEEN / LATENCY",
            ],
            rows,
        )
    )


def render_loss(r: dict[str, Any]) -> str:
    rows = [
        [
            link["From"],
            link["To"],
            link["Lost"],
            link["ABLost"],
            link["BALost"],
            link["Uncertainty"],
            ", ".join(f["TrackingID"] for f in link["Flows"][:5])
            + (" ..." if len(link["Flows"]) > 5 else ""),
        ]
        for link in r["Links"]
    ]
    head = f"loss {_when(r['From'])} -> {_when(r['To'])} UTC over {r['Streams']} streams"
    return (
        head
        + "\n"
        + (table(["FROM", "TO", "LOST", "AB", "BA", "+/-", "FLOWS"], rows) if rows else "(no loss)")
    )


__all__ = ["render_diff", "render_loss", "render_path", "table"]
