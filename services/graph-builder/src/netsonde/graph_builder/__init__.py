"""graph-builder: the single writer of the graph.

Merges probe messages into nodes and edges (IDs come from the probes and are stable), assigns revisions and
times, publishes every change as a graph event, answers snapshot requests, and appends every revision to
ClickHouse (`graph_revisions`) so any past instant can be rebuilt.
"""
