"""Memory: bytes per graph node in a query-api replica, and per active flow in probe-flow's flow table.

Measured with tracemalloc (Python allocations, which is what grows with the graph or the table) on structures
built the way the services build them: graph elements decoded from the bus (GraphElement with Skydive-style
interface metadata) inserted into `Graph` with its indexes; flows created by feeding distinct UDP frames to
`FlowTable.process_frame`.
"""

from __future__ import annotations

import gc
import struct
import tracemalloc
import uuid

from netsonde.common.bus import decode, encode
from netsonde.common.bus.graph import GraphElement, GraphEvent, GraphEventBatch
from netsonde.common.graph import Graph
from netsonde.flow.table import FlowTable

from .result import Result


def _interface(i: int) -> GraphElement:
    return GraphElement(
        ID=str(uuid.UUID(int=i)), Host="h1", Origin="probe-topology.h1", CreatedAt=1, UpdatedAt=1, Revision=1,
        Metadata={"Name": f"veth{i}", "Type": "veth", "IfIndex": i, "MAC": f"02:00:{i >> 16 & 255:02x}:"
                  f"{i >> 8 & 255:02x}:{i & 255:02x}:01", "MTU": 1500, "State": "UP", "Driver": "veth",
                  "EncapType": "ether", "LinkFlags": ["UP", "BROADCAST", "MULTICAST", "LOWER_UP"],
                  "IPV4": [f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}/24"], "TID": str(uuid.UUID(int=i + 1)),
                  "Metric": {"RxPackets": 10, "TxPackets": 12, "RxBytes": 1000, "TxBytes": 1200, "Last": 1},
                  "Host": "h1", "PeerIfIndex": i + 1})


def graph_bytes_per_node(n: int) -> tuple[float, float]:
    """(bytes per node, bytes per edge) in a replica Graph fed from bus-decoded events."""
    nodes = [_interface(i) for i in range(n)]
    edges = [GraphElement(ID=str(uuid.UUID(int=10**9 + j)), Metadata={"RelationType": "layer2"}, Host="h1",
                          Origin="o", CreatedAt=1, UpdatedAt=1, Revision=1, Parent=nodes[j % n].ID,
                          Child=nodes[(j * 7 + 1) % n].ID) for j in range(2 * n)]
    node_msgs = [encode(GraphEventBatch(epoch="e", events=[GraphEvent(seq=j + 1, type="NodeAdded", obj=nd)
                                                           for j, nd in enumerate(nodes[k:k + 1000])]))
                 for k in range(0, n, 1000)]
    edge_msgs = [encode(GraphEventBatch(epoch="e", events=[GraphEvent(seq=j + 1, type="EdgeAdded", obj=ed)
                                                           for j, ed in enumerate(edges[k:k + 1000])]))
                 for k in range(0, len(edges), 1000)]
    del nodes, edges
    gc.collect()
    tracemalloc.start()
    g = Graph()
    base = tracemalloc.get_traced_memory()[0]
    for m in node_msgs:
        for ev in decode(m, GraphEventBatch).events:
            g.apply(ev)
    after_nodes = tracemalloc.get_traced_memory()[0]
    for m in edge_msgs:
        for ev in decode(m, GraphEventBatch).events:
            g.apply(ev)
    after_edges = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(g.nodes) == n and len(g.edges) == 2 * n
    return (after_nodes - base) / n, (after_edges - after_nodes) / len(g.edges)


def flow_bytes_per_flow(n: int) -> float:
    table = FlowTable("tid-1")
    frames = []
    for i in range(n):
        src = struct.pack("!I", 0x0A000000 + i)
        ip = (b"\x45\x00\x00\x20\x00\x00\x00\x00\x40\x11\x00\x00" + src + b"\xc6\x12\x00\x02")
        udp = struct.pack("!HHHH", 1024 + i % 50000, 53, 12, 0) + b"abcd"
        frames.append(b"\x02\x00\x00\x00\x00\x02\x02\x00\x00\x00\x00\x01\x08\x00" + ip + udp)
    gc.collect()
    tracemalloc.start()
    base = tracemalloc.get_traced_memory()[0]
    for i, frame in enumerate(frames):
        table.process_frame(frame, 1_000 + i // 1000, len(frame))
    if hasattr(table, "harvest"):
        table.harvest()
    used = tracemalloc.get_traced_memory()[0] - base
    tracemalloc.stop()
    assert len(table) == n, f"expected {n} flows, table holds {len(table)}"
    return used / n


def run(small: bool) -> Result:
    n_nodes = 5_000 if small else 100_000
    n_flows = 5_000 if small else 100_000
    per_node, per_edge = graph_bytes_per_node(n_nodes)
    per_flow = flow_bytes_per_flow(n_flows)
    res = Result("Memory", ["structure", "count", "bytes each", "notes"])
    res.rows.append(["graph node in a query-api replica (with indexes)", n_nodes, round(per_node),
                     "interface node with 15 metadata keys as probe-topology sends them"])
    res.rows.append(["graph edge in a query-api replica", 2 * n_nodes, round(per_edge), "with adjacency sets"])
    res.rows.append(["active flow in probe-flow's flow table", n_flows, round(per_flow), "UDP flows, L2 key mode"])
    res.notes.append("tracemalloc of Python allocations while the structure is built; interpreter and "
                     "library baseline excluded.")
    return res
