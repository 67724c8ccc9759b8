"""Which capture types run on which node types, and which capture options each type honours.

The one home of Skydive's capture capabilities (`flow/probes/capabilities.go`): query-api validates a capture
with it (unknown type, option a type cannot honour: 400), the probes and the sFlow collector resolve the type
a node gets (`capture_type_for_node`) and report `State: error` where a type is not allowed on a node, and
`V().Flows()` keeps the nodes a capture can run on (`CAPTURABLE_NODE_TYPES`).

A capture option is "set" when it differs from its default in `Capture`; a set option must be in the
type's `options`, otherwise the capture is refused (explicit Type) or in error on that node (Type chosen by
node type). Whoever implements an option for a type adds it to that type's `options` here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from netsonde.common.bus.captures import Capture

__all__ = ["CaptureTypeSpec", "CAPTURE_TYPE_SPECS", "LINUX_INTERFACE_TYPES", "NODE_CAPTURE_TYPES",
           "CAPTURABLE_NODE_TYPES", "CaptureTypeError", "capture_type_for_node", "set_options",
           "unsupported_options", "nodes_in_result"]


@dataclass(frozen=True)
class CaptureTypeSpec:
    """One capture type: the service that runs it and the capture options it honours."""

    name: str
    service: str
    """`probe-flow` or `sflow-collector` (the service that starts it on a node of its host)."""
    options: frozenset[str]
    """Capture fields (besides GremlinQuery, Name, Description, Type) this type honours when set."""
    multiple_per_node: bool = False
    """Several captures of this type may run on one node (Skydive: afpacket and pcap)."""


_PACKET_TABLE_OPTIONS = frozenset({"BPFFilter", "HeaderSize", "RawPacketLimit", "ExtraTCPMetric", "LayerKeyMode",
                                   "NDPI", "IPDefrag", "ReassembleTCP", "ExtraLayers", "Target", "TargetType"})
"""What a probe-flow packet reader feeding a `FlowTable` honours (kernel/libpcap BPF, snaplen, table options;
packet options and targets through `netsonde.flow.targets.table_for_capture`)."""

CAPTURE_TYPE_SPECS: dict[str, CaptureTypeSpec] = {s.name: s for s in (
    CaptureTypeSpec("afpacket", "probe-flow", _PACKET_TABLE_OPTIONS, multiple_per_node=True),
    CaptureTypeSpec("pcap", "probe-flow", _PACKET_TABLE_OPTIONS, multiple_per_node=True),
    CaptureTypeSpec("pcapsocket", "probe-flow", _PACKET_TABLE_OPTIONS),
    CaptureTypeSpec("ovsmirror", "probe-flow", _PACKET_TABLE_OPTIONS),
    # counts per header key in the kernel (TC program); the table derives flows from each key's first header
    # DropReasons: a kfree_skb tracepoint program counts the kernel's drops per flow and reason
    CaptureTypeSpec("ebpf", "probe-flow", frozenset({"ExtraTCPMetric", "LayerKeyMode", "DropReasons"})),
    # sFlow samples: OVS samples 1/SamplingRate packets, cut to HeaderSize, counters every PollingInterval s
    CaptureTypeSpec("ovssflow", "sflow-collector", frozenset({"HeaderSize", "SamplingRate", "PollingInterval"})),
    # an external sFlow agent: probe-flow listens on Port (0: a free one) in the node's namespace
    CaptureTypeSpec("sflow", "probe-flow", frozenset({"Port", "LayerKeyMode"})),
)}
"""Every capture type Netsonde knows, by Skydive's name (an unknown Type is a 400)."""

LINUX_INTERFACE_TYPES = frozenset({
    "internal", "veth", "tun", "tap", "tuntap", "bridge", "dummy", "gre", "bond", "can", "hsr", "ifb", "macvlan",
    "macvtap", "vlan", "vxlan", "gretap", "ip6gretap", "geneve", "ipoib", "vcan", "ipip", "ipvlan", "lowpan",
    "ip6tnl", "ip6gre", "sit", "device", "loopback"})
"""Linux interface node types: packet captures (afpacket by default) run on them."""

NODE_CAPTURE_TYPES: dict[str, tuple[tuple[str, ...], str]] = {
    "ovsbridge": (("ovssflow", "pcapsocket"), "ovssflow"),
    "ovsport": (("ovsmirror",), "ovsmirror"),
    "dpdkport": (("dpdk",), "dpdk"),  # no DPDK capture in Netsonde: such a node shows State error
    **{t: (("afpacket", "pcap", "pcapsocket", "sflow", "ebpf"), "afpacket") for t in LINUX_INTERFACE_TYPES},
}
"""node Type -> (allowed capture types, default type). Other node types (host, netns ...) are skipped."""

CAPTURABLE_NODE_TYPES = frozenset(NODE_CAPTURE_TYPES)
"""Node types a capture can run on (their flows are what `V(...).Flows()` returns)."""


class CaptureTypeError(ValueError):
    """A capture type that is not allowed on a node type, or an option its type cannot honour."""


def capture_type_for_node(node_type: str, requested: str) -> str | None:
    """The capture type a node of `node_type` gets for a capture of Type `requested` ("" = the default).
    None: the node type cannot be captured (skipped). Raises CaptureTypeError when `requested` is not allowed
    on that node type."""
    entry = NODE_CAPTURE_TYPES.get(node_type)
    if entry is None:
        return None
    allowed, default = entry
    if not requested:
        return default
    if requested not in allowed:
        raise CaptureTypeError(f"capture type {requested} not allowed on node type {node_type} "
                               f"(allowed: {', '.join(allowed)})")
    return requested


_DEFAULTS = Capture(UUID="", GremlinQuery="")
_NOT_OPTIONS = frozenset({"UUID", "GremlinQuery", "Name", "Description", "Type", "v"})


def set_options(cap: Capture) -> list[str]:
    """The options of `cap` that differ from their default (LayerKeyMode 'L2', SamplingRate 1 ... are unset)."""
    return [f for f in Capture.__struct_fields__
            if f not in _NOT_OPTIONS and getattr(cap, f) != getattr(_DEFAULTS, f)]


def unsupported_options(cap: Capture, capture_type: str) -> list[str]:
    """The set options of `cap` that `capture_type` cannot honour."""
    honoured = CAPTURE_TYPE_SPECS[capture_type].options
    return [o for o in set_options(cap) if o not in honoured]


def nodes_in_result(result: Any) -> list[dict[str, Any]]:
    """The nodes (Skydive JSON) in a Gremlin result: a node list, the nodes of `ShortestPathTo` paths, or of a
    `SubGraph()`; each node once, in order of appearance. Anything else (counts, flows ...) selects nothing."""
    out: dict[str, dict[str, Any]] = {}

    def walk(value: Any) -> None:
        if isinstance(value, list):
            for v in value:
                walk(v)
        elif isinstance(value, dict):
            if "Metadata" in value and "ID" in value and "Parent" not in value:
                out.setdefault(str(value["ID"]), value)
            elif isinstance(value.get("Nodes"), list):
                walk(value["Nodes"])

    walk(result)
    return list(out.values())
