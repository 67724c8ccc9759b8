"""One pcap import path for the services: a pcap/pcapng file in, the flows of its packets out.

query-api (`POST /api/pcap`) and probe-flow (`POST /pcap`) both call `import_pcap`: one `FlowTable` built
from a `PcapImport` request, every packet fed through it (`pcap.feed_pcap`), the table flushed. Each service
keeps its own query parameter names and publishes the flows with its own publisher.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from netsonde.common.bus.flows import Flow

from .pcap import feed_pcap
from .table import FlowTable


@dataclass(frozen=True)
class PcapImport:
    """What an import asks for: the flows' identity, the table's options and the time base."""

    node_tid: str = ""
    capture_id: str = ""
    layer_key_mode: str = "L2"
    ndpi: bool = False
    ip_defrag: bool = False
    reassemble_tcp: bool = False
    extra_layers: int = 0
    """Bitmask of the ExtraLayers capture option (VRRP=1, DNS=2, DHCPv4=4)."""
    replay_at_ns: int | None = None
    """None: flows keep the packets' own times; else the file's first packet is moved to this instant."""


@dataclass(frozen=True)
class PcapImportResult:
    """The flows (each in its final state) and what the table counted."""

    flows: list[Flow]
    packets: int
    bad_packets: int


def import_pcap(src: str | Path | BinaryIO | bytes, req: PcapImport) -> PcapImportResult:
    """Run a pcap file through a fresh flow table and flush it.

    Raises `PcapError` (a ValueError) for a file that is not a pcap, ValueError for a bad table option and
    RuntimeError when nDPI is asked for but not installed."""
    table = FlowTable(
        req.node_tid,
        req.capture_id,
        req.layer_key_mode,
        ndpi=req.ndpi,
        ip_defrag=req.ip_defrag,
        reassemble_tcp=req.reassemble_tcp,
        extra_layers=req.extra_layers,
    )
    packets = feed_pcap(table, src, req.replay_at_ns)
    flows = table.flush()
    return PcapImportResult(flows, packets, table.stats.bad_packets)


def packet_options(query: Mapping[str, str]) -> tuple[bool, bool, int]:
    """(IPDefrag, ReassembleTCP, ExtraLayers) from Skydive-named query parameters; ValueError if malformed."""
    ip_defrag, reassemble = (query.get(k, "").lower() in ("1", "true") for k in ("IPDefrag", "ReassembleTCP"))
    try:
        layers = int(query.get("ExtraLayers", "0") or 0)
    except ValueError:
        raise ValueError(
            f"ExtraLayers must be a bitmask (VRRP=1, DNS=2, DHCPv4=4, all=255), "
            f"not {query.get('ExtraLayers')!r}"
        ) from None
    return ip_defrag, reassemble, layers
