"""Skydive's extension steps on the graph: Descendants, Ascendants, Neighbors, NextHop, Metrics, Aggregates.
(Flow steps live in `flows.py`.)"""

from __future__ import annotations

import ipaddress
from typing import Any

from netsonde.common.bus.graph import GraphElement

from .fields import metadata_value, missing
from .predicates import Eq, is_number
from .steps import Filter, Step, extension_step
from .traversal import AggregatedT, Context, MapT, MetricsT, NodesT, Value

DEFAULT_RELATION = Filter((("RelationType", Eq(["ownership"], 0)),))


def parse_edge_pairs_depth(step: Step) -> tuple[Filter, int]:
    """`([edge k, v ...][, depth])`: pairs OR'ed (default RelationType ownership), depth default 1."""
    args = list(step.args)
    depth = 1
    if len(args) % 2 == 1:
        depth = step.int_arg(len(args) - 1, "a depth (0 = unlimited)")
        if depth < 0:
            raise step.error("the depth cannot be negative", args[-1])
        args = args[:-1]
    if not args:
        return DEFAULT_RELATION, depth
    from .steps import parse_pairs
    return parse_pairs(step, tuple(args), any_of=True), depth


class _Walk(Step):
    """Input nodes plus the nodes reached over matching edges, breadth first, up to `depth` hops."""

    UP = False
    DOWN = True

    def setup(self) -> None:
        self.flt, self.depth = parse_edge_pairs_depth(self)

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        view = value.view
        out: list[GraphElement] = []
        seen: set[str] = set()
        frontier: list[str] = []
        for n in value.items():
            if n.ID not in seen:
                seen.add(n.ID)
                out.append(n)
                frontier.append(n.ID)
        level = 0
        while frontier and (self.depth == 0 or level < self.depth):
            level += 1
            nxt: list[str] = []
            for nid in frontier:
                ctx.tick()
                ends: list[str] = []
                if self.DOWN:
                    ends.extend(e.Child for e in view.out_edges(nid) if self.flt.match(e))
                if self.UP:
                    ends.extend(e.Parent for e in view.in_edges(nid) if self.flt.match(e))
                for end in ends:
                    if end in seen:
                        continue
                    seen.add(end)
                    revs = view.node_revs(end)
                    out.extend(revs)
                    if revs:
                        nxt.append(end)
            frontier = nxt
            ctx.check_size(len(out), "nodes")
        return NodesT(view, out)


@extension_step("Descendants")
class Descendants(_Walk):
    """`Descendants([edge k, v ...][, depth])`: the nodes and their children over ownership edges (or
    edges matching any of the pairs), `depth` levels (default 1, 0 = unlimited)."""


@extension_step("Ascendants")
class Ascendants(_Walk):
    """`Ascendants([edge k, v ...][, depth])`: the nodes and their parents, upward."""

    UP, DOWN = True, False


@extension_step("Neighbors")
class Neighbors(_Walk):
    """`Neighbors([edge k, v ...][, depth])`: the nodes and their neighbours in both directions."""

    UP, DOWN = True, True


@extension_step("NextHop")
class NextHop(Step):
    """`NextHop('ip')`: for each node, the route its RoutingTables use to reach the IP (longest prefix,
    then lowest Priority), MAC filled from the node's Neighbors: `[{nodeID: {Priority, IP, MAC, IfIndex}}]`."""

    def setup(self) -> None:
        self.nargs(1, 1)
        text = self.str_arg(0, "an IP address")
        try:
            self.ip = ipaddress.ip_address(text)
        except ValueError:
            raise self.error(f"{text!r} is not an IP address", self.args[0]) from None

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        out: dict[str, Any] = {}
        for n in value.iter():
            nh = self.lookup(n.Metadata)
            if nh is not None:
                out[n.ID] = nh
        return MapT(out, "nexthops")

    def lookup(self, md: dict[str, Any]) -> dict[str, Any] | None:
        best: tuple[int, dict[str, Any]] | None = None
        for table in md.get("RoutingTables") or ():
            for route in (table or {}).get("Routes") or ():
                try:
                    net = ipaddress.ip_network(route.get("Prefix", ""), strict=False)
                except ValueError:
                    continue
                if net.version != self.ip.version or self.ip not in net:
                    continue
                hops = route.get("NextHops") or [{}]
                hop = min(hops, key=lambda h: h.get("Priority", 0))
                if best is None or net.prefixlen > best[0]:
                    best = (net.prefixlen, hop)
        if best is None:
            return None
        hop = best[1]
        ip = hop.get("IP") or str(self.ip)
        result = {"Priority": hop.get("Priority", 0), "IP": ip, "MAC": hop.get("MAC", ""),
                  "IfIndex": hop.get("IfIndex", 0)}
        if not result["MAC"]:
            for nb in md.get("Neighbors") or ():
                if nb.get("IP") == ip and (not result["IfIndex"] or nb.get("IfIndex") in (None, result["IfIndex"])):
                    result["MAC"] = nb.get("MAC", "")
                    break
        return result


METRIC_KEYS = {"LASTUPDATEMETRIC": "LastUpdateMetric", "METRIC": "Metric", "SFLOW": "SFlow.LastUpdateMetric",
               "OVS": "Ovs.LastUpdateMetric"}


@extension_step("Metrics")
class Metrics(Step):
    """`Metrics([key])` on nodes: `{nodeID: [metric ...]}` from the interface metric in metadata (default
    `LastUpdateMetric`; `SFlow`, `Ovs` mean their `.LastUpdateMetric`). Live: each node's last metric;
    under `Context(t, d)`: every distinct metric of the revisions whose interval meets the window."""

    def setup(self) -> None:
        self.nargs(0, 1)
        key = self.str_arg(0, "a metric key") if self.args else "LastUpdateMetric"
        self.key = METRIC_KEYS.get(key.upper(), key)

    def on_nodes(self, ctx: Context, value: NodesT) -> Value:
        out: dict[str, list[dict[str, Any]]] = {}
        lo = hi = None
        if ctx.at_ms is not None and ctx.window_ms is not None:
            lo, hi = ctx.at_ms - ctx.window_ms, ctx.at_ms
        seen: set[tuple[str, Any, Any]] = set()
        for n in value.iter():
            m = metadata_value(n.Metadata, self.key)
            if missing(m) or not isinstance(m, dict) or not m:
                continue
            if lo is not None and hi is not None:
                s, last = m.get("Start", 0), m.get("Last", 0)
                if not (last >= lo and s <= hi):
                    continue
            k = (n.ID, m.get("Start"), m.get("Last"))
            if k in seen:
                continue
            seen.add(k)
            out.setdefault(n.ID, []).append(m)
        for lst in out.values():
            lst.sort(key=lambda m: (m.get("Start", 0), m.get("Last", 0)))
            if lo is None:
                del lst[:-1]
        return MetricsT(out, "nodes")


MAX_SLICES = 10_000


@extension_step("Aggregates")
class Aggregates(Step):
    """`Aggregates([seconds])`: every metric re-bucketed into slices of `seconds` (default 30), counters
    split in proportion to the time each metric spends in each slice and summed over all IDs."""

    def setup(self) -> None:
        self.nargs(0, 1)
        self.seconds = self.int_arg(0, "a slice length in seconds") if self.args else 30
        if self.seconds <= 0:
            raise self.error("the slice length must be positive", self.args[0] if self.args else None)

    def on_metrics(self, ctx: Context, value: Value) -> Value:
        if isinstance(value, AggregatedT):
            metrics = value.slices
        else:
            assert isinstance(value, MetricsT)
            metrics = [m for lst in value.metrics.values() for m in lst]
        return AggregatedT(aggregate(metrics, self.seconds * 1000, self))


def aggregate(metrics: list[dict[str, Any]], slice_ms: int, step: Step) -> list[dict[str, Any]]:
    metrics = [m for m in metrics if is_number(m.get("Start")) and is_number(m.get("Last"))]
    if not metrics:
        return []
    t0 = min(m["Start"] for m in metrics) // slice_ms * slice_ms
    t1 = max(m["Last"] for m in metrics)
    count = (t1 - t0) // slice_ms + 1
    if count > MAX_SLICES:
        raise step.error(f"{count} slices exceed the maximum of {MAX_SLICES}: use longer slices")
    sums: dict[int, dict[str, float]] = {}
    for m in metrics:
        s, last = m["Start"], m["Last"]
        counters = {k: v for k, v in m.items() if k not in ("Start", "Last") and is_number(v)}
        span = last - s
        first = (s - t0) // slice_ms
        end = (last - t0) // slice_ms if span > 0 else first
        for i in range(first, end + 1):
            a = t0 + i * slice_ms
            b = a + slice_ms
            frac = 1.0 if span <= 0 else (min(b, last) - max(a, s)) / span
            if frac <= 0 and span > 0:
                continue
            acc = sums.setdefault(i, {})
            for k, v in counters.items():
                acc[k] = acc.get(k, 0.0) + v * frac
    out = []
    for i in sorted(sums):
        row: dict[str, Any] = {k: int(round(v)) for k, v in sums[i].items()}
        row["Start"] = t0 + i * slice_ms
        row["Last"] = t0 + (i + 1) * slice_ms
        out.append(row)
    return out


from . import diff as _diff, flowchanges as _flowchanges, path as _path  # noqa: E402,F401  (Diff, FlowChanges, FlowPath, LossReport)

__all__ = ["Aggregates", "Ascendants", "Descendants", "Metrics", "Neighbors", "NextHop", "aggregate"]
