"""Flow updates: probe-flow / sFlow collector -> JetStream stream -> flow-enricher -> ClickHouse.

The shape is Skydive's flow model (`flow/flow.proto`), field names identical, so a Skydive client or a
third party reading the enriched subject sees familiar objects. Times are Unix milliseconds; RTT is in
nanoseconds (as in Skydive). Many flows travel in one `FlowUpdateBatch` (JetStream publishes are the
bottleneck, so batching is what makes >100k flows/s possible).
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec


class FlowLayer(msgspec.Struct, omit_defaults=True):
    """Link (Protocol ETHERNET, A/B MACs, ID = VLAN ids), Network (IPV4/IPV6, A/B IPs, ID = VNI or GRE key),
    or Transport (TCP/UDP/SCTP, A/B ports as ints, ID)."""

    Protocol: str
    A: Any
    B: Any
    ID: int = 0


class ICMPLayer(msgspec.Struct, omit_defaults=True):
    Type: str
    Code: int = 0
    ID: int = 0


class FlowMetric(msgspec.Struct, omit_defaults=True):
    """Totals (`Metric`) or the delta since the previous update (`LastUpdateMetric`)."""

    ABPackets: int = 0
    ABBytes: int = 0
    BAPackets: int = 0
    BABytes: int = 0
    Start: int = 0
    Last: int = 0
    RTT: int = 0
    ABDrops: int = 0
    """Packets of the flow the kernel dropped (capture option DropReasons, eBPF `kfree_skb`), A to B."""
    BADrops: int = 0


class TCPMetric(msgspec.Struct, omit_defaults=True):
    ABSynStart: int = 0
    BASynStart: int = 0
    ABSynTTL: int = 0
    BASynTTL: int = 0
    ABFinStart: int = 0
    BAFinStart: int = 0
    ABRstStart: int = 0
    BARstStart: int = 0
    # TCP reassembly (capture option ReassembleTCP), as Skydive's flow/tcpassembler.go fills them
    ABSegmentOutOfOrder: int = 0
    ABSegmentSkipped: int = 0
    ABSegmentSkippedBytes: int = 0
    ABPackets: int = 0
    ABBytes: int = 0
    ABSawStart: int = 0
    ABSawEnd: int = 0
    BASegmentOutOfOrder: int = 0
    BASegmentSkipped: int = 0
    BASegmentSkippedBytes: int = 0
    BAPackets: int = 0
    BABytes: int = 0
    BASawStart: int = 0
    BASawEnd: int = 0


class IPMetric(msgspec.Struct, omit_defaults=True):
    Fragments: int = 0
    FragmentErrors: int = 0


class RawPacket(msgspec.Struct, omit_defaults=True):
    Timestamp: int
    Index: int
    Data: bytes
    LinkType: int = 1


class Flow(msgspec.Struct, omit_defaults=True):
    """One flow's state at an update. Optional layers are absent (None) when the packet had no such layer."""

    UUID: str
    LayersPath: str
    Application: str
    TrackingID: str
    L3TrackingID: str
    NodeTID: str
    Start: int
    Last: int
    Metric: FlowMetric
    LastUpdateMetric: FlowMetric | None = None
    Link: FlowLayer | None = None
    Network: FlowLayer | None = None
    Transport: FlowLayer | None = None
    ICMP: ICMPLayer | None = None
    TCPMetric: TCPMetric | None = None
    IPMetric: IPMetric | None = None
    ParentUUID: str = ""
    CaptureID: str = ""
    FinishType: str = "NOT_FINISHED"
    """NOT_FINISHED, TIMEOUT, TCP_FIN or TCP_RST."""
    RawPacketsCaptured: int = 0
    LastRawPackets: list[RawPacket] = []
    SamplingRate: int = 0
    """Non-zero for sFlow: counts were scaled by this rate (the flow is sampled)."""
    Extra: dict[str, Any] = {}
    """Decoded application layers (DNS, DHCPv4, NDPI ...) keyed by layer name."""
    DropReasons: dict[str, int] = {}
    """Kernel drop reason (this kernel's `enum skb_drop_reason` name without `SKB_DROP_REASON_`, e.g.
    NO_SOCKET, NETFILTER_DROP) -> packets of the flow dropped for it, both directions (capture option
    DropReasons); totals, like Metric."""
    # Enrichment, filled by flow-enricher (empty in raw updates)
    NodeID: str = ""
    """Graph node ID of the capture interface (NodeTID resolved)."""
    ANodeID: str = ""
    """Graph node ID owning Link.A / Network.A."""
    BNodeID: str = ""
    Host: str = ""


class FlowUpdateBatch(msgspec.Struct):
    """Message on `<prefix>.flows.raw.<host>` (JetStream) and `<prefix>.flows.enriched` (core NATS).

    `batch_id` is unique per batch (host + boot + sequence) and makes ClickHouse inserts idempotent: a
    redelivered batch carries the same ID and is not counted twice."""

    VERSION: ClassVar[int] = 1
    host: str
    batch_id: str
    ts: int
    flows: list[Flow]
    v: int = 1
