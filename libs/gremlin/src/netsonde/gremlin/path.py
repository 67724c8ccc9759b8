"""Flows laid onto their path: the capture points that saw one packet stream (one TrackingID), in path
order, with packets/bytes per direction at each hop and the loss between consecutive hops; and the loss
report over every stream seen at two or more capture points.

Counts come from `flow_metrics` (each row one update's delta; every capture of one probe-flow flushes at the
same tick, so the hops' rows cover the same update windows), summed over (lo, hi] by update time. Direction
is the first hop's: a hop whose Network.A is the other end has its AB/BA swapped.

Order: the capture nodes' positions on the shortest path between the stream's two ends (the nodes holding
Network.A / Network.B as an address, else Link.A / Link.B as MAC), walked over any edge but never through a
`host` node (which owns every root-namespace interface and would shortcut the path), then through host nodes
when that finds nothing. A capture node off the path (or no path) falls back to the RTT order of `Hops()`:
the capture nearer the sender sees the longer round trip.

Loss between hop i and i+1: AB packets counted at i and not at i+1, BA packets counted at i+1 and not at i.
Uncertainty: packets in flight at a window edge can be counted at one hop inside the window and at the next
outside it; the hops' update rows within `settle_ms` of an edge are that uncertainty (0 when the stream is
idle at both edges: it started after lo and its last update is more than `settle_ms` before hi).

Kernel drop reasons: a hop seen by an `ebpf` capture with the option `DropReasons` carries its flow's
`DropReasons` (reason -> packets the kernel dropped there, `drop_reasons()`); other hops, and hops with no
drop, carry null.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from netsonde.common import flowschema as fs
from netsonde.common.bus.graph import GraphElement

from .errors import GremlinError
from .flows import FlowsT
from .flowsql import FlowStore
from .steps import Step, extension_step
from .timeparse import now_ms, parse_duration_ms
from .traversal import Context, GraphT, GraphView, MapT, Value

_STREAM_SQL = f"""
SELECT if(f.L3 != '', f.L3, m.TrackingID) AS stream, m.NodeTID, sum(m.ABPackets), sum(m.ABBytes),
       sum(m.BAPackets), sum(m.BABytes),
       sumIf(m.ABPackets + m.BAPackets,
             m.Last > {{hi:Int64}} - {{settle:Int64}} OR m.Start <= {{lo:Int64}} + {{settle:Int64}}),
       max(m.Last), groupUniqArray(m.UUID)
FROM (SELECT * FROM {fs.METRICS_TABLE}
      WHERE Last > {{lo:Int64}} AND Last <= {{hi:Int64}} AND {{where}}
      ORDER BY UUID, Start, Last LIMIT 1 BY UUID, Start, Last) AS m
LEFT JOIN (SELECT UUID, any(L3TrackingID) AS L3 FROM {fs.FLOWS_TABLE}
           WHERE Last > {{lo:Int64}} - {{expire:Int64}} AND Start <= {{hi:Int64}} AND {{where}}
           GROUP BY UUID) AS f
       ON m.UUID = f.UUID
GROUP BY stream, m.NodeTID
"""
"""Per (stream, capture point): packets/bytes per direction in (lo, hi], the packets of the update rows near
a window edge (the uncertainty), the last update time, the flow UUIDs. A stream is the L3TrackingID (one
conversation across routers, whose L2 TrackingID changes at each routed hop), else the TrackingID."""

_HOP_SQL = f"""
SELECT NodeTID, sum(ABPackets), sum(ABBytes), sum(BAPackets), sum(BABytes),
       sumIf(ABPackets + BAPackets,
             Last > {{hi:Int64}} - {{settle:Int64}} OR Start <= {{lo:Int64}} + {{settle:Int64}}),
       max(Last), groupUniqArray(UUID)
FROM (SELECT UUID, NodeTID, ABPackets, ABBytes, BAPackets, BABytes, Start, Last FROM {fs.METRICS_TABLE}
      WHERE UUID IN {{uuids:Array(String)}} AND Last > {{lo:Int64}} AND Last <= {{hi:Int64}}
      ORDER BY UUID, Start, Last LIMIT 1 BY UUID, Start, Last)
GROUP BY NodeTID
"""
"""One stream's counts per capture point, read by UUID (the flow_metrics sorting key)."""

_STREAM_FLOWS_SQL = f"""
SELECT UUID, TrackingID, L3TrackingID, NodeTID, NodeID, Host, LinkA, LinkB, NetworkA, NetworkB, Start, Last,
       MetricRTT, Application, LayersPath, DropReasons
FROM {fs.FLOWS_TABLE}
PREWHERE TrackingID = {{tid:String}} OR L3TrackingID = {{tid:String}}
   OR L3TrackingID IN (SELECT L3TrackingID FROM {fs.FLOWS_TABLE}
                       WHERE TrackingID = {{tid:String}} AND L3TrackingID != '')
ORDER BY Last DESC LIMIT 1 BY UUID
"""
"""The flows of one stream (its TrackingID, or its L3TrackingID, or the L3 stream of a TrackingID). PREWHERE:
the two ID columns are read first and the other columns only for the matching granules (4-5x faster than
letting the OR with a subquery stay a WHERE)."""

_FLOW_SQL = f"""
SELECT UUID, TrackingID, NodeTID, NodeID, Host, LinkA, LinkB, NetworkA, NetworkB, Start, Last, MetricRTT,
       Application, LayersPath, DropReasons
FROM {fs.FLOWS_TABLE}
WHERE UUID IN {{uuids:Array(String)}}
ORDER BY Last DESC LIMIT 1 BY UUID
"""


def drop_reasons(flow: dict[str, Any]) -> dict[str, int] | None:
    """Kernel drop reasons of a hop's flow (reason -> packets, capture option DropReasons); None if none."""
    reasons = flow.get("DropReasons")
    return {str(k): int(v) for k, v in reasons.items()} if reasons else None


class PathFinder:
    """Shortest paths on one graph, cached per pair of ends (the loss report asks for the same pair often)."""

    def __init__(self, view: GraphView) -> None:
        self.view = view
        self._cache: dict[tuple[str, str], list[str]] = {}
        self._by_addr: dict[str, list[str]] | None = None

    def node_for(self, ip: str, macs: set[str]) -> str | None:
        """The node holding `ip` as an address (IPV4/IPV6, with prefix length; among several, the one
        whose MAC is in `macs`), else a node whose MAC is in `macs`."""
        if self._by_addr is None:
            self._by_addr = {}
            for n in self.view.nodes():
                for key in ("IPV4", "IPV6"):
                    for cidr in n.Metadata.get(key) or ():
                        if isinstance(cidr, str):
                            self._by_addr.setdefault(cidr.split("/")[0], []).append(n.ID)
        nodes = self.view.graph.nodes
        holders = self._by_addr.get(ip, []) if ip else []
        for nid in holders:
            if nid in nodes and nodes[nid].Metadata.get("MAC") in macs:
                return nid
        if holders:
            return holders[0]
        for mac in sorted(m for m in macs if m):
            hits = self.view.lookup("MAC", mac)
            if hits is None:
                hits = [n for n in self.view.nodes() if n.Metadata.get("MAC") == mac]
            if hits:
                return hits[0].ID
        return None

    def path(self, a: str, b: str) -> list[str]:
        key = (a, b)
        if key not in self._cache:
            self._cache[key] = self._bfs(a, b, through_hosts=False) or self._bfs(a, b, through_hosts=True)
        return self._cache[key]

    def _bfs(self, a: str, b: str, through_hosts: bool) -> list[str]:
        graph = self.view.graph
        prev: dict[str, str] = {a: ""}
        queue = deque([a])
        while queue:
            nid = queue.popleft()
            if nid == b:
                out = [b]
                while prev[out[-1]]:
                    out.append(prev[out[-1]])
                return out[::-1]
            node = graph.nodes.get(nid)
            if nid != a and not through_hosts and node is not None and node.Metadata.get("Type") == "host":
                continue
            for eid in (*graph.out_edges.get(nid, ()), *graph.in_edges.get(nid, ())):
                e = graph.edges.get(eid)
                if e is None:
                    continue
                nxt = e.Child if e.Parent == nid else e.Parent
                if nxt not in prev:
                    prev[nxt] = nid
                    queue.append(nxt)
        return []


def _capture_node(view: GraphView, tid: str, node_id: str) -> GraphElement | None:
    if node_id and node_id in view.graph.nodes:
        return view.graph.nodes[node_id]
    hits = view.lookup("TID", tid)
    if hits is None:
        hits = [n for n in view.nodes() if n.Metadata.get("TID") == tid]
    return hits[0] if hits else None


def lay_on_path(
    view: GraphView,
    finder: PathFinder,
    tracking_id: str,
    hops: list[dict[str, Any]],
    flows: dict[str, dict[str, Any]],
    settle_ms: int,
    lo: int,
    hi: int,
) -> dict[str, Any]:
    """One stream's answer from its per-capture-point counts (`hops`) and flow rows (`flows` by UUID)."""
    for h in hops:
        rows = [flows[u] for u in h["UUIDs"] if u in flows]
        h["Flow"] = max(rows, key=lambda r: r["Last"]) if rows else None
        h["FirstSeen"] = min((r["Start"] for r in rows), default=None)
        h["RTT"] = max((r["MetricRTT"] for r in rows), default=0)
    known = [h for h in hops if h["Flow"] is not None]
    ref = min(known, key=lambda h: h["FirstSeen"])["Flow"] if known else None
    for h in hops:  # one direction for every hop: the first hop's A -> B
        f = h["Flow"]
        if (
            ref is not None
            and f is not None
            and f["NetworkA"]
            and f["NetworkA"] == ref["NetworkB"]
            and f["NetworkB"] == ref["NetworkA"]
        ):
            h["AB"], h["BA"] = h["BA"], h["AB"]
    order, ends, path_ids = "rtt", None, []
    if ref is not None:
        rows = [h["Flow"] for h in known]
        a = finder.node_for(
            ref["NetworkA"], {ref["LinkA"]} if ref["NetworkA"] else {r["LinkA"] for r in rows}
        )
        b = finder.node_for(ref["NetworkB"], {r["LinkB"] for r in rows} | {r["LinkA"] for r in rows})
        ends = (a, b)
        if a and b:
            path_ids = finder.path(a, b)
    pos = {nid: i for i, nid in enumerate(path_ids)}
    for h in hops:
        node = _capture_node(view, h["NodeTID"], (h["Flow"] or {}).get("NodeID", ""))
        h["Node"] = node
        h["PathIndex"] = pos.get(node.ID) if node is not None else None
    if hops and all(h["PathIndex"] is not None for h in hops):
        order = "path"
        hops.sort(key=lambda h: (h["PathIndex"], h["FirstSeen"] or 0))
    else:
        hops.sort(key=lambda h: (-h["RTT"], h["FirstSeen"] or 0, h["NodeTID"]))
    out_hops = []
    for h in hops:
        node, f = h["Node"], h["Flow"] or {}
        out_hops.append(
            {
                "NodeTID": h["NodeTID"],
                "Node": node.ID if node is not None else f.get("NodeID", ""),
                "Name": node.Metadata.get("Name", "") if node is not None else "",
                "Type": node.Metadata.get("Type", "") if node is not None else "",
                "Host": f.get("Host", node.Host if node is not None else ""),
                "PathIndex": h["PathIndex"],
                "ABPackets": h["AB"][0],
                "ABBytes": h["AB"][1],
                "BAPackets": h["BA"][0],
                "BABytes": h["BA"][1],
                "FirstSeen": h["FirstSeen"],
                "LastUpdate": h["LastUpdate"],
                "UUIDs": sorted(h["UUIDs"]),
                "DropReasons": drop_reasons(f),
            }
        )
    links = []
    for i in range(len(hops) - 1):
        x, y = hops[i], hops[i + 1]
        fx, fy = x["FirstSeen"], y["FirstSeen"]
        same_host = out_hops[i]["Host"] == out_hops[i + 1]["Host"]
        links.append(
            {
                "From": out_hops[i]["Name"] or out_hops[i]["NodeTID"],
                "To": out_hops[i + 1]["Name"] or y["NodeTID"],
                "FromNode": out_hops[i]["Node"],
                "ToNode": out_hops[i + 1]["Node"],
                "ABLost": x["AB"][0] - y["AB"][0],
                "BALost": y["BA"][0] - x["BA"][0],
                "ABLostBytes": x["AB"][1] - y["AB"][1],
                "BALostBytes": y["BA"][1] - x["BA"][1],
                "Uncertainty": x["Edge"] + y["Edge"],
                "LatencyMs": (fy - fx) if fx is not None and fy is not None else None,
                "LatencyEstimate": not same_host,
            }
        )
    return {
        "TrackingID": tracking_id,
        "Order": order,
        "From": lo,
        "To": hi,
        "SettleMs": settle_ms,
        "Ends": list(ends) if ends else None,
        "Path": path_ids,
        "Hops": out_hops,
        "Links": links,
    }


def _stream_rows(
    store: FlowStore, where: str, params: dict[str, Any], lo: int, hi: int, settle_ms: int, timeout_s: float
) -> dict[str, list[dict[str, Any]]]:
    sql = _STREAM_SQL.replace("{where}", where)
    _, rows = store.query(
        sql, {"lo": lo, "hi": hi, "settle": settle_ms, "expire": store.expire_ms, **params}, timeout_s
    )
    streams: dict[str, list[dict[str, Any]]] = {}
    for tid, node_tid, abp, abb, bap, bab, edge, last, uuids in rows:
        streams.setdefault(tid, []).append(
            {
                "NodeTID": node_tid,
                "AB": (int(abp), int(abb)),
                "BA": (int(bap), int(bab)),
                "Edge": int(edge),
                "LastUpdate": last,
                "UUIDs": list(uuids),
            }
        )
    return streams


def _flow_rows(store: FlowStore, uuids: list[str], timeout_s: float) -> dict[str, dict[str, Any]]:
    if not uuids:
        return {}
    names, rows = store.query(_FLOW_SQL, {"uuids": uuids}, timeout_s)
    return {r[0]: dict(zip(names, r, strict=True)) for r in rows}


def flow_path(
    store: FlowStore,
    view: GraphView,
    tracking_id: str,
    lo: int = 0,
    hi: int | None = None,
    settle_ms: int = 10_000,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """The path answer for one TrackingID (or L3TrackingID) over (lo, hi] (default: its whole life)."""
    hi = int(time.time() * 1000) if hi is None else hi
    names, rows = store.query(_STREAM_FLOWS_SQL, {"tid": tracking_id}, timeout_s)
    flows = {r[0]: dict(zip(names, r, strict=True)) for r in rows if r[10] <= hi}
    _, hop_rows = (
        store.query(_HOP_SQL, {"uuids": sorted(flows), "lo": lo, "hi": hi, "settle": settle_ms}, timeout_s)
        if flows
        else ([], [])
    )
    if not hop_rows:
        raise GremlinError(f"no flow with TrackingID {tracking_id!r} between {lo} and {hi}", status=404)
    merged = {
        node_tid: {
            "NodeTID": node_tid,
            "AB": (int(abp), int(abb)),
            "BA": (int(bap), int(bab)),
            "Edge": int(edge),
            "LastUpdate": last,
            "UUIDs": list(uuids),
        }
        for node_tid, abp, abb, bap, bab, edge, last, uuids in hop_rows
    }
    return lay_on_path(view, PathFinder(view), tracking_id, list(merged.values()), flows, settle_ms, lo, hi)


def loss_report(
    store: FlowStore,
    view: GraphView,
    lo: int,
    hi: int,
    settle_ms: int = 10_000,
    top: int = 20,
    max_streams: int = 10_000,
    timeout_s: float = 10.0,
) -> dict[str, Any]:
    """The links (consecutive capture points of a stream) with the most packets lost in (lo, hi], each with
    the streams involved; over every stream seen at two or more capture points."""
    streams = {
        k: v for k, v in _stream_rows(store, "1", {}, lo, hi, settle_ms, timeout_s).items() if len(v) >= 2
    }
    if len(streams) > max_streams:
        raise GremlinError(
            f"loss report: more than {max_streams} streams seen at several capture points; "
            f"shorten the window",
            status=413,
        )
    flows = _flow_rows(store, [u for hs in streams.values() for h in hs for u in h["UUIDs"]], timeout_s)
    finder = PathFinder(view)
    links: dict[tuple[str, str], dict[str, Any]] = {}
    for tid, hops in streams.items():
        if len(hops) < 2:
            continue
        answer = lay_on_path(view, finder, tid, hops, flows, settle_ms, lo, hi)
        ref = next((flows[u] for h in answer["Hops"] for u in h["UUIDs"] if u in flows), {})
        for link in answer["Links"]:
            lost = max(link["ABLost"], 0) + max(link["BALost"], 0)
            key = (link["FromNode"] or link["From"], link["ToNode"] or link["To"])
            agg = links.setdefault(
                key,
                {
                    "From": link["From"],
                    "To": link["To"],
                    "FromNode": link["FromNode"],
                    "ToNode": link["ToNode"],
                    "Lost": 0,
                    "ABLost": 0,
                    "BALost": 0,
                    "Uncertainty": 0,
                    "Flows": [],
                },
            )
            agg["Lost"] += lost
            agg["ABLost"] += max(link["ABLost"], 0)
            agg["BALost"] += max(link["BALost"], 0)
            agg["Uncertainty"] += link["Uncertainty"]
            if lost:
                agg["Flows"].append(
                    {
                        "TrackingID": tid,
                        "ABLost": link["ABLost"],
                        "BALost": link["BALost"],
                        "Order": answer["Order"],
                        "NetworkA": ref.get("NetworkA", ""),
                        "NetworkB": ref.get("NetworkB", ""),
                        "Application": ref.get("Application", ""),
                    }
                )
    ranked = sorted(
        (v for v in links.values() if v["Lost"] > 0), key=lambda v: (-v["Lost"], v["From"], v["To"])
    )
    for v in ranked:
        v["Flows"].sort(key=lambda f: -(max(f["ABLost"], 0) + max(f["BALost"], 0)))
    return {"From": lo, "To": hi, "SettleMs": settle_ms, "Streams": len(streams), "Links": ranked[:top]}


MAX_PATH_STREAMS = 100
"""FlowPath() answers at most this many TrackingIDs (one path each)."""


@extension_step("FlowPath")
class FlowPath(Step):
    """`Flows()...FlowPath()`: for each stream among the selected flows (L3TrackingID, else TrackingID;
    at most 100), its capture points in path order with counts per direction and the loss between
    consecutive hops (module doc)."""

    def setup(self) -> None:
        self.nargs(0, 0)

    def on_flows(self, ctx: Context, value: FlowsT) -> Value:
        tids = sorted(
            {
                r.get("L3TrackingID") or r["TrackingID"]
                for r in value.rows()
                if r.get("L3TrackingID") or r.get("TrackingID")
            }
        )
        if len(tids) > MAX_PATH_STREAMS:
            raise self.error(
                f"{len(tids)} TrackingIDs selected, at most {MAX_PATH_STREAMS}: refine the selection",
                status=413,
            )
        lo = 0 if ctx.at_ms is None or ctx.window_ms is None else ctx.at_ms - ctx.window_ms
        hi = ctx.at_ms if ctx.at_ms is not None else now_ms()
        out = {t: flow_path(value.store, value.view, t, lo, hi, timeout_s=ctx.remaining_s()) for t in tids}
        return MapT(out, "flowpaths")


@extension_step("LossReport")
class LossReport(Step):
    """`G.LossReport([duration])`: the links between consecutive capture points with the most packets lost
    over the last `duration` (default '5m'; under Context(t) the duration before t)."""

    def setup(self) -> None:
        self.nargs(0, 1)
        self.window_ms = 300_000
        if self.args:
            d = parse_duration_ms(self.str_arg(0, "a duration like '5m'"))
            if d is None or d <= 0:
                raise self.error("expected a positive duration like '5m'", self.args[0])
            self.window_ms = int(d)

    def on_graph(self, ctx: Context, value: GraphT) -> Value:
        if ctx.flows is None:
            raise self.error("this engine has no flow store (flows need ClickHouse)")
        hi = ctx.at_ms if ctx.at_ms is not None else now_ms()
        report = loss_report(ctx.flows, value.view, hi - self.window_ms, hi, timeout_s=ctx.remaining_s())
        return MapT(report, "lossreport")


__all__ = ["FlowPath", "LossReport", "PathFinder", "drop_reasons", "flow_path", "lay_on_path", "loss_report"]
