"""GremlinEngine: parse a query, run its steps over the live graph (or a past one), return Skydive JSON."""

from __future__ import annotations

import functools
import logging
from typing import Any

from netsonde.common.graph import Graph

from . import core as _core  # noqa: F401  (registers the core steps)
from . import shaping as _shaping  # noqa: F401  (registers Dedup, Count, Sort, Values ...)
from . import paths as _paths  # noqa: F401  (registers ShortestPathTo, SubGraph)
from . import extensions as _extensions  # noqa: F401  (registers Skydive's extension steps)
from . import flows as _flows  # noqa: F401  (registers the flow steps)
from .flowvalues import RawPacketsT
from .parser import parse
from .steps import Step, lookup_step
from .traversal import Context, EdgesT, GraphT, GraphView, NodesT, PathsT, QueryLimits, Value, ValuesT

log = logging.getLogger(__name__)

PCAP_MIME = "application/vnd.tcpdump.pcap"


@functools.lru_cache(maxsize=1024)
def compile_query(query: str) -> tuple[Step, ...]:
    """Parse a query and build its steps (arguments checked). Steps hold no run state, so compiled queries
    are cached: a UI or an alert re-running the same query skips the parser."""
    return tuple(lookup_step(call) for call in parse(query).steps)


class GremlinEngine:
    """Runs Skydive-dialect Gremlin queries.

    `graph` is the live graph (read while the query runs: call `execute` from the thread/loop that mutates
    it, or hold that writer off). `history` (a `HistoryStore`) serves Context()/At(); `flows` (a
    `FlowStore`) serves Flows(). Either may be None: queries needing it fail with a 400 naming it.
    """

    def __init__(self, graph: Graph, history: Any = None, flows: Any = None,
                 limits: QueryLimits | None = None) -> None:
        self.graph = graph
        self.history = history
        self.flows = flows
        self.limits = limits or QueryLimits()
        self._live_view = GraphView(graph)

    def execute(self, query: str, accept: str = "") -> Any:
        """The JSON-ready result of `query` in Skydive's shape; raises GremlinError. With `accept`
        containing `application/vnd.tcpdump.pcap`, a RawPackets() result is returned as pcap bytes."""
        return self.execute_raw(query, accept)[0]

    def execute_raw(self, query: str, accept: str = "") -> tuple[Any, str]:
        """(JSON-ready result, kind); kind is nodes, edges, graph, paths, count, sum, values, metrics,
        metric, flows, nexthops, groups, rawpackets, or pcap (the value is then the pcap file as bytes)."""
        value = self.run(query)
        if PCAP_MIME in accept and isinstance(value, RawPacketsT):
            return value.pcap_bytes(), "pcap"
        return value.to_json(), value.KIND

    def run(self, query: str, ctx: Context | None = None) -> Value:
        """Evaluate to the last step's traversal value (not yet JSON)."""
        steps = compile_query(query)
        ctx = ctx or Context(self.limits, history=self.history, flows=self.flows)
        value: Value = GraphT(self._live_view)
        for i, step in enumerate(steps):
            if step.NAME == "Context" and i != 0:
                raise step.error("must come right after G (G.Context(...).V()...)")
            value = step.apply(ctx, value)
            ctx.check()
        _check_result_size(ctx, value)
        return value


def _check_result_size(ctx: Context, value: Value) -> None:
    """The final result obeys the size limit too (a bare `G.V()` or `G` is only materialised here)."""
    if isinstance(value, (NodesT, EdgesT)):
        n = value.view.node_count() if isinstance(value, NodesT) and value.elems is None else len(value.items())
        ctx.check_size(n, value.KIND)
    elif isinstance(value, GraphT):
        ctx.check_size(value.view.node_count() + len(value.view.graph.edges), "graph elements")
    elif isinstance(value, ValuesT):
        ctx.check_size(len(value.values), "values")
    elif isinstance(value, PathsT):
        ctx.check_size(sum(len(p) for p in value.paths), "path nodes")
