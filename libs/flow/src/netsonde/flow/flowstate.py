"""The state a FlowTable keeps per flow, and the table's counters.

Kept apart from the table so the modules that work on flows (`options.py`, the batch intake in
`fastfold.py`, the Flow building in `flowreport.py`) share one definition.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from netsonde.common.bus.flows import RawPacket

from .decode import Segment

if TYPE_CHECKING:
    from .kerneldrops import FlowDrops

DEFAULT_APP_TIMEOUTS_MS = {"ARP": 10_000, "DNS": 10_000}
"""Early expiry per Application (Skydive's `flow.application_timeout`)."""


@dataclass
class TableStats:
    """Counters of one table; the probe exports them as metrics and in CaptureStatus."""

    packets: int = 0
    bytes: int = 0
    flows_created: int = 0
    flows_expired: int = 0
    flows_dropped: int = 0
    """New flows refused because the table was full (`max_entries`)."""
    decode_errors: dict[str, int] = field(default_factory=dict)
    """Frames that could not be decoded, by kind (truncated, malformed ...); each is counted, none raises."""
    events: dict[str, int] = field(default_factory=dict)
    """Capture option counters (`options.py`): defrag_reassembled, defrag_timeouts, defrag_evicted,
    defrag_errors, tcp_buffer_overflows, layer_errors."""

    @property
    def bad_packets(self) -> int:
        return sum(self.decode_errors.values())


class FlowState:
    """Mutable per-flow state (kept small: __slots__, ints and bytes only until an update is built)."""

    __slots__ = ("key", "uuid", "tracking_id", "l3_tracking_id", "parent_uuid", "layers_path", "application",
                 "mac_a", "mac_b", "vlan", "net_proto", "ip_a", "ip_b", "net_id", "tr_proto", "port_a",
                 "port_b", "tr_id", "tunnel", "icmp_type", "icmp_code", "icmp_id", "ab_p", "ab_b", "ba_p",
                 "ba_b", "start", "last", "rtt", "rtt_t0", "sent", "tcp", "frags", "frag_err", "finish",
                 "touched", "raw", "raw_count", "fastkeys", "sampling", "dpi", "extra", "drops", "template")

    def __init__(self) -> None:
        self.ab_p = self.ab_b = self.ba_p = self.ba_b = 0
        self.rtt = 0
        self.rtt_t0 = 0
        self.sent = (0, 0, 0, 0)
        self.tcp: list[int] | None = None
        self.frags = self.frag_err = 0
        self.finish = "NOT_FINISHED"
        self.touched = True
        self.raw: list[RawPacket] | None = None
        self.raw_count = 0
        self.fastkeys: list[bytes] | None = None
        self.sampling = 0
        self.dpi: tuple[str, str] | None = None
        """(application, category) once nDPI decided; None while undecided or without DPI."""
        self.extra: dict | None = None
        """Extra layers (DNS, DHCPv4, VRRPv2) decoded by the ExtraLayers option."""
        self.drops: FlowDrops | None = None
        """Kernel drops of the flow (capture option DropReasons, kerneldrops.py); None without any."""
        self.template: Any = None
        """The Flow fields fixed when the flow is created (IDs, Start, Link/Network/Transport/ICMP layers),
        built once per flow (flowreport.py); every update is a copy of it with the counters set."""

    def is_ab(self, seg: Segment) -> bool:
        if self.net_proto and self.ip_a != self.ip_b:
            return seg.ip_src == self.ip_a
        if self.net_proto and not self.tunnel and self.port_a != self.port_b:
            return seg.sport == self.port_a
        return seg.mac_src == self.mac_a


AggLevel = tuple[FlowState, bool, bool, int, int, int, int]
"""One encapsulation level of a pre-folded header (`process_aggregates`): (flow, packet is A->B, header has
a TCP/ICMP event to note, TCP flags, TTL, ICMP type, bytes of the outer headers)."""
