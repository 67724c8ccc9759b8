"""A capture that stops counts every packet it saw: what its ring still holds goes into its flow table
before the final flush (netsonde.flow.capture, docs/flows.md "Stopping a capture")."""

from __future__ import annotations

import time
from typing import Iterator

import pytest

from netsonde.flow.capture import AfPacketCapture
from netsonde.flow.table import FlowTable
from tests.integration.netns_veth import sh, veth_into_namespace

pytestmark = pytest.mark.root


@pytest.fixture
def veth(unique: str) -> Iterator[dict[str, str]]:
    with veth_into_namespace(unique, "sd", 0) as v:
        yield v


def test_afpacket_stop_counts_the_block_the_kernel_is_filling(veth: dict[str, str]) -> None:
    """With a 60 s block timeout the kernel never retires the block it fills during the test, so the capture
    thread has read nothing when it stops: 5 echoes (5 requests + 5 replies of 98 B: 84 B IP + 14 B Ethernet)
    must still be in the table after stop, and the stop must not wait for the block timeout."""
    table = FlowTable("sd")
    cap = AfPacketCapture(veth["host"], table, bpf="icmp", block_timeout_ms=60_000)
    cap.start()
    try:
        sh("ping", "-c", "5", "-i", "0.2", "-W", "1", veth["peer_ip"])
        assert cap.packets_received == 0  # still in the open block
    finally:
        t0 = time.monotonic()
        cap.stop()
        stop_s = time.monotonic() - t0
    assert not cap.running and stop_s < 1.0, stop_s
    assert cap.packets_received == 10
    flows = [f for f in table.flush() if f.Application == "ICMPv4"]
    assert len(flows) == 1
    m = flows[0].Metric
    assert (m.ABPackets, m.ABBytes, m.BAPackets, m.BABytes) == (5, 5 * 98, 5, 5 * 98)
