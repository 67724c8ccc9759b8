"""Capture definitions (JetStream KV bucket `<prefix>_captures`, key = UUID) and their status on nodes.

Fields and defaults follow Skydive's `/api/capture` object so Skydive clients work unchanged.
"""

from __future__ import annotations

from typing import ClassVar

import msgspec


class Capture(msgspec.Struct):
    VERSION: ClassVar[int] = 1
    UUID: str
    GremlinQuery: str
    BPFFilter: str = ""
    Name: str = ""
    Description: str = ""
    Type: str = ""
    """afpacket, pcap, pcapsocket, ovsmirror, ovssflow, sflow, ebpf ("" = the node type's default, see
    `netsonde.common.capture_types`)."""
    HeaderSize: int = 0
    RawPacketLimit: int = 0
    ExtraTCPMetric: bool = False
    IPDefrag: bool = False
    ReassembleTCP: bool = False
    LayerKeyMode: str = "L2"
    ExtraLayers: int = 0
    NDPI: bool = False
    """Deep packet inspection (nDPI protocol/category names as Application)."""
    DropReasons: bool = False
    """`ebpf` only: count the packets of each flow the kernel drops, per drop reason (skb:kfree_skb), in
    Metric.ABDrops/BADrops and DropReasons (docs/ebpf.md)."""
    SamplingRate: int = 1
    PollingInterval: int = 10
    Port: int = 0
    Target: str = ""
    TargetType: str = ""
    v: int = 1


class CaptureStatus(msgspec.Struct):
    """A probe reports a capture running (or failing) on one node: shown as `Captures` metadata."""

    VERSION: ClassVar[int] = 1
    host: str
    node_id: str
    capture_id: str
    state: str
    """active, stopped or error."""
    type: str = ""
    error: str = ""
    packets_received: int = 0
    packets_dropped: int = 0
    pcap_socket: str = ""
    """`pcapsocket`: host:port of the TCP listener that takes a pcap stream (node's `Captures[].PCAPSocket`)."""
    mirror_of: str = ""
    """`ovsmirror`: on the mirror interface's node, the ID of the mirrored ovsport (`Captures[].MirrorOf`)."""
    sflow_socket: str = ""
    """`sflow`: host:port of the UDP listener for the external sFlow agent (`Captures[].SFlowSocket`)."""
    v: int = 1
