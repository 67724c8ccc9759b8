"""Interface counters for graph nodes: sFlow counter samples (and netlink stats) -> graph-builder.

Subject `<prefix>.metrics.<host>` (core NATS). graph-builder merges each `InterfaceMetrics` into the
metadata of the node whose `TID` is `NodeTID` (or, when empty, the node of `Host` with that `IfIndex` /
`Name`), under `Metadata[Key]`: `Metric` = the absolute counters, `LastUpdateMetric` = the delta since the
previous report with `Start`/`Last` (Skydive's `SFlow.LastUpdateMetric`, field names of Skydive's SFMetric).
"""

from __future__ import annotations

from typing import ClassVar

import msgspec

SFLOW_COUNTERS = (
    "IfInOctets",
    "IfInUcastPkts",
    "IfInMulticastPkts",
    "IfInBroadcastPkts",
    "IfInDiscards",
    "IfInErrors",
    "IfInUnknownProtos",
    "IfOutOctets",
    "IfOutUcastPkts",
    "IfOutMulticastPkts",
    "IfOutBroadcastPkts",
    "IfOutDiscards",
    "IfOutErrors",
)
"""Counter names of the sFlow generic interface record, as in Skydive's SFMetric."""

ETHERNET_COUNTERS = (
    "Dot3StatsAlignmentErrors",
    "Dot3StatsFCSErrors",
    "Dot3StatsSingleCollisionFrames",
    "Dot3StatsMultipleCollisionFrames",
    "Dot3StatsSQETestErrors",
    "Dot3StatsDeferredTransmissions",
    "Dot3StatsLateCollisions",
    "Dot3StatsExcessiveCollisions",
    "Dot3StatsInternalMacTransmitErrors",
    "Dot3StatsCarrierSenseErrors",
    "Dot3StatsFrameTooLongs",
    "Dot3StatsInternalMacReceiveErrors",
    "Dot3StatsSymbolErrors",
)
"""Counter names of the sFlow Ethernet interface record."""


class InterfaceMetrics(msgspec.Struct, omit_defaults=True):
    """Counters of one interface at one instant (Unix ms)."""

    Key: str
    """Metadata key to merge into: "SFlow" (sFlow counter samples) or "" (netlink: top-level Metric)."""
    Metric: dict[str, int]
    """Absolute counter values as reported (names: SFLOW_COUNTERS, ETHERNET_COUNTERS)."""
    LastUpdateMetric: dict[str, int]
    """Delta since the previous report of the same interface, plus Start and Last (ms); empty on the first."""
    Last: int
    NodeTID: str = ""
    """TID of the graph node the counters belong to ("" when the source could not resolve it)."""
    IfIndex: int = 0
    Name: str = ""
    OfPort: int = -1
    """OpenFlow port number (sFlow record 1004, sent by Open vSwitch); -1 when unknown."""
    Agent: str = ""
    """sFlow agent address."""
    IfSpeed: int = 0
    IfStatus: int = 0
    """sFlow ifStatus bits: 1 = admin up, 2 = oper up."""


class InterfaceMetricsBatch(msgspec.Struct):
    """Message on `<prefix>.metrics.<host>`."""

    VERSION: ClassVar[int] = 1
    host: str
    source: str
    """sflow or netlink."""
    ts: int
    items: list[InterfaceMetrics]
    v: int = 1
