"""Skydive's Gremlin dialect over Netsonde's graph, its history and its flows.

    from netsonde.gremlin import GremlinEngine, GremlinError, QueryLimits, HistoryStore, FlowStore
    engine = GremlinEngine(graph=live_graph, history=HistoryStore(client_factory), flows=FlowStore(client_factory),
                           limits=QueryLimits(timeout_s=10.0, max_results=100_000))
    engine.execute("G.V().Has('Name', 'eth0')")        # JSON-ready value in Skydive's shape
    engine.execute_raw("G.V().Count()")                # (7, "count")
"""

from .engine import GremlinEngine
from .errors import GremlinError
from .flowsql import FlowStore
from .history import HistoryStore, RevisionGraph
from .traversal import QueryLimits

__all__ = ["GremlinEngine", "FlowStore", "GremlinError", "HistoryStore", "QueryLimits", "RevisionGraph"]
