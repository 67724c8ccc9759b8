"""The one pcap import path of query-api and probe-flow (`netsonde.flow.pcapimport`)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from netsonde.flow.pcap import PcapError, flows_from_pcap
from netsonde.flow.pcapimport import PcapImport, import_pcap, packet_options

PCAP = Path(__file__).resolve().parents[1] / "data" / "eth-ip4-arp-dns-req-http-google.pcap"


def test_import_gives_the_flows_of_the_reference_path() -> None:
    result = import_pcap(PCAP.read_bytes(), PcapImport("node-1", "cap-1"))
    assert (result.packets, len(result.flows), result.bad_packets) == (58, 6, 0)
    assert sorted(f.Application for f in result.flows) == ["ARP", "ARP", "DNS", "DNS", "TCP", "TCP"]
    assert sum(f.Metric.ABPackets + f.Metric.BAPackets for f in result.flows) == 58
    assert {f.NodeTID for f in result.flows} == {"node-1"}
    assert {f.CaptureID for f in result.flows} == {"cap-1"}
    reference = flows_from_pcap(PCAP, node_tid="node-1", capture_id="cap-1")
    assert msgspec.to_builtins(result.flows) == msgspec.to_builtins(reference)


def test_import_options_and_replay() -> None:
    dns = import_pcap(PCAP, PcapImport("n", extra_layers=2))
    assert sum("DNS" in f.Extra for f in dns.flows) == 2
    at = 1_800_000_000_000_000_000
    moved = import_pcap(PCAP, PcapImport("n", replay_at_ns=at))
    assert min(f.Start for f in moved.flows) == at // 1_000_000


def test_bad_input_is_a_value_error() -> None:
    with pytest.raises(PcapError, match="not a pcap"):
        import_pcap(b"definitely not a pcap", PcapImport("n"))
    with pytest.raises(ValueError, match="layer_key_mode"):
        import_pcap(PCAP, PcapImport("n", layer_key_mode="L4"))
    assert packet_options({"IPDefrag": "true", "ReassembleTCP": "0", "ExtraLayers": "6"}) == (True, False, 6)
    with pytest.raises(ValueError, match="ExtraLayers must be a bitmask"):
        packet_options({"ExtraLayers": "DNSX"})
