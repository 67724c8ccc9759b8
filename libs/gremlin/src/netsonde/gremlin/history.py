"""Past graphs rebuilt from the revision history in ClickHouse (`graph_revisions`, written by graph-builder,
defined in `netsonde.common.graphschema`).

Each row is one revision of a node or edge, valid from its `updated_at` until the next revision's (exclusive),
or forever when it is the latest; a deletion is a last row with `deleted_at` set. So:

- the graph at instant t = per ID, the latest revision with updated_at <= t, unless that row is a deletion;
- a window [t-d, t] = every revision whose validity overlaps the window; a revision followed by a deletion
  carries that deletion time as DeletedAt. Several revisions of one ID are kept as distinct elements.

Both are one parameterised SQL query (a window function pairs each revision with the next one). Rebuilt
graphs are cached per (time bucket, duration).
"""

from __future__ import annotations

import gc
import threading
import time
from collections import OrderedDict
from typing import Any, Callable

import msgspec

from netsonde.common import graphschema
from netsonde.common.bus.graph import GraphElement
from netsonde.common.graph import Graph

from .errors import GremlinError

HISTORY_DDL = graphschema.CREATE_TABLE
"""The table as graph-builder creates it (for tests that run without graph-builder's migrations)."""

_JSON_ROW = """concat('{"ID":', toJSONString(id), ',"Metadata":', if(metadata = '', '{}', replaceAll(metadata, '\\n', ' ')),
    ',"Host":', toJSONString(toString(host)), ',"Origin":', toJSONString(toString(origin)),
    ',"CreatedAt":', toString(toUnixTimestamp64Milli(created_at)),
    ',"UpdatedAt":', toString(toUnixTimestamp64Milli(updated_at)), ',"Revision":', toString(revision),
    if(next_del IS NULL, '', concat(',"DeletedAt":', toString(toUnixTimestamp64Milli(assumeNotNull(next_del))))),
    ',"Parent":', toJSONString(parent), ',"Child":', toJSONString(child), '}')"""
"""One JSON object per row in the GraphElement shape (the stored metadata JSON embedded as is), so the whole
answer decodes in one msgspec call. Edges are the elements with a Parent."""

_SQL_POINT = f"""
SELECT {_JSON_ROW}
FROM (
    SELECT *, CAST(NULL AS Nullable(DateTime64(3, 'UTC'))) AS next_del
    FROM {{table}}
    WHERE updated_at <= fromUnixTimestamp64Milli({{at:Int64}}, 'UTC')
    ORDER BY kind, id, revision DESC
    LIMIT 1 BY kind, id
)
WHERE deleted_at IS NULL
"""
"""The graph at an instant: per ID the latest revision at or before it, unless that is a deletion."""

_SQL_WINDOW = f"""
SELECT {_JSON_ROW}
FROM (
    SELECT id, revision, host, origin, created_at, updated_at, deleted_at, parent, child, metadata,
           leadInFrame(toNullable(updated_at)) OVER w AS next_at,
           leadInFrame(toNullable(revision)) OVER w AS next_rev,
           leadInFrame(deleted_at) OVER w AS next_del
    FROM {{table}}
    WHERE updated_at <= fromUnixTimestamp64Milli({{at:Int64}}, 'UTC')
    WINDOW w AS (PARTITION BY kind, id ORDER BY revision ASC, updated_at ASC
                 ROWS BETWEEN CURRENT ROW AND 1 FOLLOWING)
)
WHERE deleted_at IS NULL
  AND (next_rev IS NULL OR next_rev != revision)
  AND (next_at IS NULL OR next_at > fromUnixTimestamp64Milli({{lo:Int64}}, 'UTC'))
"""
"""Every revision alive in [lo, at]: each row is paired with the next revision of its ID (window function);
a row is kept if the next one starts after `lo` (or there is none); duplicates of one revision collapse to
the last; a revision followed by a deletion carries its time as DeletedAt."""


class RevisionGraph(Graph):
    """A Graph holding, besides the latest revision of each ID (in `nodes`/`edges`), the older revisions
    alive in a time window (`older_nodes`/`older_edges`: ID -> revisions, oldest first, each revision once)."""

    def __init__(self) -> None:
        super().__init__()
        self.older_nodes: dict[str, list[GraphElement]] = {}
        self.older_edges: dict[str, list[GraphElement]] = {}

    def add_revision(self, el: GraphElement, is_edge: bool) -> None:
        """Add one revision; a revision already held (same ID and number) is ignored."""
        current = (self.edges if is_edge else self.nodes).get(el.ID)
        older = self.older_edges if is_edge else self.older_nodes
        if current is not None and (el.Revision == current.Revision
                                    or any(o.Revision == el.Revision for o in older.get(el.ID, ()))):
            return
        if current is None:
            (self.upsert_edge if is_edge else self.upsert_node)(el)
        elif el.Revision > current.Revision:
            older.setdefault(el.ID, []).append(current)
            if is_edge:
                self.edges[el.ID] = el
                self.out_edges[el.Parent].add(el.ID)
                self.in_edges[el.Child].add(el.ID)
            else:
                self._index_remove(current)
                self.nodes[el.ID] = el
                self._index_add(el)
        else:
            older.setdefault(el.ID, []).append(el)
            if is_edge:
                self.out_edges[el.Parent].add(el.ID)
                self.in_edges[el.Child].add(el.ID)


class PastGraph(Graph):
    """A read-only past graph whose metadata indexes are built lazily, one key at a time, on the first
    lookup (a rebuild then pays only for the indexes its queries use)."""

    def __init__(self) -> None:
        super().__init__()
        self._built: set[str] = set()

    def lookup(self, key: str, value: Any) -> set[str]:
        if key not in self._built:
            bucket = self.index[key]
            for nid, node in self.nodes.items():
                v = node.Metadata.get(key)
                if v is None:
                    continue
                if isinstance(v, list):
                    for item in v:
                        if isinstance(item, (str, int)):
                            bucket[item].add(nid)
                elif isinstance(v, (str, int)) and not isinstance(v, bool):
                    bucket[v].add(nid)
            self._built.add(key)
        return super().lookup(key, value)


class HistoryStore:
    """Rebuilds the graph at a past instant or over a window from `<db>.<table>` (the client's database).

    `client_factory()` returns a clickhouse-connect client (`netsonde.common.clickhouse.connect(url, db)`);
    one client is created lazily and shared under a lock. Rebuilt graphs are cached per exact (instant,
    duration); `Context()` rounds relative instants (NOW, '-1h', '1 hour ago') down to a bucket of at least
    `bucket_ms` that grows with the age (about 1/1000 of it: 10 s for '-1h'), so repeated relative queries share
    an entry, while absolute instants stay exact. Entries for instants older than `settle_ms` live until evicted (LRU,
    `cache_size`), more recent ones `recent_ttl_s`. A past graph larger than `max_rows` revisions is refused
    (413).
    """

    def __init__(self, client_factory: Callable[[], Any], table: str = graphschema.TABLE, bucket_ms: int = 1000,
                 cache_size: int = 16, settle_ms: int = 10_000, recent_ttl_s: float = 1.0,
                 max_rows: int = 2_000_000) -> None:
        if not table.replace("_", "").replace(".", "").isalnum():
            raise ValueError(f"bad table name {table!r}")
        self.client_factory = client_factory
        self.table = table
        self.bucket_ms = max(bucket_ms, 1)
        self.cache_size = cache_size
        self.settle_ms = settle_ms
        self.recent_ttl_s = recent_ttl_s
        self.max_rows = max_rows
        self._client: Any = None
        self._lock = threading.Lock()
        self._cache: OrderedDict[tuple[int, int | None], tuple[float, Graph]] = OrderedDict()
        self.queries = 0
        """How many rebuilds went to ClickHouse (cache misses)."""
        self.last_timings: dict[str, float] = {}
        """Split of the last rebuild: query_s (ClickHouse + transfer), decode_s, build_s, rows, bytes."""

    def client(self) -> Any:
        if self._client is None:
            self._client = self.client_factory()
        return self._client

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def graph_at(self, at_ms: int, window_ms: int | None = None, timeout_s: float | None = None) -> Graph:
        """The graph at `at_ms` (Unix ms), or every revision alive in [at_ms - window_ms, at_ms]."""
        at = at_ms
        key = (at, window_ms)
        now = time.monotonic()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None and hit[0] > now:
                self._cache.move_to_end(key)
                return hit[1]
        graph = self._rebuild(at, window_ms, timeout_s)
        recent = at > time.time() * 1000 - self.settle_ms
        expires = now + self.recent_ttl_s if recent else float("inf")
        with self._lock:
            self._cache[key] = (expires, graph)
            self._cache.move_to_end(key)
            while len(self._cache) > self.cache_size:
                self._cache.popitem(last=False)
        return graph

    def _rebuild(self, at: int, window_ms: int | None, timeout_s: float | None) -> Graph:
        lo = at - window_ms if window_ms is not None else at
        settings: dict[str, Any] = {"max_result_rows": self.max_rows + 1, "result_overflow_mode": "throw"}
        if timeout_s is not None:
            settings["max_execution_time"] = max(int(timeout_s + 0.999), 1)
        sql = (_SQL_WINDOW if window_ms is not None else _SQL_POINT).replace("{table}", self.table)
        started = time.perf_counter()
        try:
            with self._lock:
                body = self.client().raw_query(sql, parameters={"at": at, "lo": lo}, settings=settings,
                                               fmt="TabSeparatedRaw")
        except Exception as e:  # the driver raises its own DatabaseError / OperationalError types
            text = str(e)
            if "TOO_MANY_ROWS" in text or "Limit for result exceeded" in text:
                raise GremlinError(f"past graph too large: more than {self.max_rows} revisions", status=413) from e
            if "TIMEOUT_EXCEEDED" in text or "Timeout exceeded" in text:
                raise GremlinError("past-graph rebuild exceeded the query time limit", status=408) from e
            raise GremlinError(f"graph history unavailable: {text.splitlines()[0] if text else e!r}",
                               status=503) from e
        self.queries += 1
        fetched = time.perf_counter()
        gc_was_enabled = gc.isenabled()
        gc.disable()  # tens of thousands of new dicts: don't let the collector walk the live graph meanwhile
        try:
            try:
                elements = _decode_elements(b"[" + body.rstrip(b"\n").replace(b"\n", b",") + b"]")
            except msgspec.DecodeError as e:
                raise GremlinError(f"graph history holds malformed metadata: {e}", status=500) from e
            decoded = time.perf_counter()
            graph = build_graph(elements, revisions=window_ms is not None)
            self.last_timings = {"query_s": fetched - started, "decode_s": decoded - fetched,
                                 "build_s": time.perf_counter() - decoded, "rows": len(elements),
                                 "bytes": len(body)}
            return graph
        finally:
            if gc_was_enabled:
                gc.enable()


_decode_elements = msgspec.json.Decoder(list[GraphElement]).decode


def build_graph(elements: list[GraphElement], revisions: bool) -> Graph:
    """Elements of the history query -> Graph (or RevisionGraph when several revisions per ID may appear)."""
    if revisions:
        rg = RevisionGraph()
        for el in elements:
            if not el.Parent:
                rg.add_revision(el, False)
        for el in elements:
            if el.Parent:
                rg.add_revision(el, True)
        for older in (rg.older_nodes, rg.older_edges):
            for revs in older.values():
                revs.sort(key=lambda e: e.Revision)
        return rg
    # One revision per ID: fill the dicts directly (what upsert_node/upsert_edge do, without the checks
    # for an existing element); the metadata indexes are built per key on first use.
    g = PastGraph()
    nodes, edges = g.nodes, g.edges
    out_edges, in_edges = g.out_edges, g.in_edges
    for el in elements:
        if el.Parent:
            edges[el.ID] = el
            out_edges[el.Parent].add(el.ID)
            in_edges[el.Child].add(el.ID)
        else:
            nodes[el.ID] = el
    return g
