"""`<prefix>.status.drops`: each pipeline stage's loss counters, published periodically (core NATS).

Every service that can lose something (a packet, a flow update, a bus message, a row) publishes a
`DropCounters` every `status_interval_s`: cumulative counts since that process started, one key per kind of
loss. query-api keeps the last message per (stage, host, instance) and `/api/status` sums them per host and
per stage (`netsonde.query_api.drops`). A restarted process is a new `instance` starting from zero; the
counts of the old one stay in the sums.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

DROP_KINDS: dict[str, str] = {
    "kernel_drops": "packets the kernel dropped before the capture read them (ring full: PACKET_STATISTICS)",
    "table_full": "packets of new flows refused because the flow table was full (max_entries)",
    "bad_packets": "frames that could not be decoded",
    "publish_retries": "flow batch publishes retried (NATS down or slow; not a loss by itself)",
    "publish_failures": "publishes that failed for good",
    "flow_updates_dropped": "flow updates given up after publish_retry_s of failed publishes",
    "sflow_sequence_gaps": "sFlow datagrams missing from an agent's sequence numbers",
    "sflow_malformed": "sFlow datagrams dropped as malformed",
    "socket_drops": "datagrams the kernel dropped at the collector's socket (queue full)",
    "stream_discarded": "flow batches the stream discarded (retention limits) before any enricher read them",
    "redeliveries": "flow batches JetStream delivered more than once (lost acks, crashed consumer)",
    "rejects": "bus messages dropped as undecodable",
    "insert_failures": "failed ClickHouse inserts (retried: rows are lost only if the stream drops them)",
    "history_failures": "failed graph history writes (retried)",
    "history_dropped": "graph revisions dropped from graph-builder's history buffer (full, ClickHouse down)",
}
"""Every kind of loss a stage may report, with what it means (docs/reliability.md lists the same)."""


class DropCounters(msgspec.Struct):
    VERSION: ClassVar[int] = 1
    host: str
    stage: str
    """The service: probe-flow, ovs-sflow-collector, flow-enricher, graph-builder."""
    instance: str
    """This process (service name, host and start time): a restart starts a new one."""
    ts: int
    """Milliseconds since the epoch."""
    counters: dict[str, int]
    """Cumulative counts since the process started, keys from DROP_KINDS."""
    v: int = 1
