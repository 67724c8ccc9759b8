"""Every kind of loss provoked on real processes and read back, per host and per stage, in query-api's
`GET /api/status` (`Drops`), which sums the stages' DropCounters (`<prefix>.status.drops`).

Provoked here: sFlow sequence gaps (datagrams with sequence numbers 100, 101, 105), an undecodable flow batch
in the stream (enricher reject), flow batches given up while NATS was down (publish failure), ClickHouse
inserts failing while the store was down and the batch redelivered to the restarted enricher (insert failure,
redelivery; the batch still stored once), graph history writes failing; with root: kernel ring drops
(PACKET_STATISTICS, the probe stopped with SIGSTOP during a burst) and packets of new flows refused by a full
flow table.
"""

from __future__ import annotations

import asyncio
import json
import signal
import socket
import struct
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any, Callable, Iterator

import msgpack
import nats
import pytest

from netsonde.common.bus import Subjects
from netsonde.common.testing import Proc, free_port, start_nats, start_store
from tests.integration.fault_pipeline import FLOWS_PER_POST, Services, flows_pcap, wait_stored
from tests.integration.netns_veth import veth_pair_into
from tests.unit.test_sflow_decode import DATAGRAMS

pytestmark = [pytest.mark.slow]

FAST = {"status_interval_s": "0.5"}


def api_drops(port: int) -> dict[str, Any]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/status", timeout=10) as r:
        drops: dict[str, Any] = json.loads(r.read())["Drops"]
        return drops


def wait_drops(port: int, ok: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        last = api_drops(port)
        try:
            if ok(last):
                return last
        except KeyError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"timed out waiting for {what} in /api/status Drops: {json.dumps(last, indent=1)}")


def print_drops(drops: dict[str, Any]) -> None:
    print("\nDROPS per host and stage (from /api/status):")
    for host, stages in sorted(drops["Hosts"].items()):
        for stage, counters in sorted(stages.items()):
            shown = {k: v for k, v in counters.items() if v}
            print(f"  {host} {stage}: {shown}")
    print(f"  Total lost: {drops['Total']} (reporters: {drops['Reporters']})")


def sflow_with_seq(seq: int) -> bytes:
    """A real OVS datagram (IPv4 agent) with its sequence number set to `seq`."""
    data = next(d for d in DATAGRAMS if struct.unpack_from(">I", d, 4)[0] == 1)
    return data[:16] + struct.pack(">I", seq) + data[20:]


@pytest.fixture
def own_bus_and_store() -> Iterator[tuple[Proc, Proc]]:
    """A nats-server and a store of this test's own: both are stopped and started again mid-test."""
    nats_proc = start_nats(Path(tempfile.mkdtemp(prefix="netsonde-drops-nats-")), free_port())
    store = start_store(Path(tempfile.mkdtemp(prefix="netsonde-drops-store-")), free_port())
    nats_proc.keep = store.keep = True
    procs = [nats_proc, store]
    yield nats_proc, store
    for p in procs:
        p.keep = False
        p.stop()


def _kill(proc: Proc) -> None:
    proc.popen.send_signal(signal.SIGKILL)
    proc.popen.wait(10)


def _again(proc: Proc, starter: Callable[..., Proc]) -> None:
    """Start a killed server again on the same port and data dir (the fixture's Proc follows)."""
    new = starter(proc.workdir, int(proc.url.rsplit(":", 1)[1]))
    proc.popen = new.popen


async def _publish_garbage(nats_url: str, prefix: str, host: str) -> None:
    """An undecodable message in the flow stream."""
    nc = await nats.connect(nats_url)
    try:
        await nc.jetstream().publish(Subjects(prefix).flows(host), b"\x93not a flow batch")
    finally:
        await nc.close()


async def _publish_topology(nats_url: str, prefix: str, host: str) -> None:
    """A probe's full topology (one host node): graph-builder writes its history."""
    nc = await nats.connect(nats_url)
    try:
        await nc.publish(Subjects(prefix).topology(host), msgpack.packb({
            "v": 1, "host": host, "kind": "full", "boot": "b1", "seq": 0, "ts": 0,
            "nodes": [{"ID": f"n-{host}", "Metadata": {"Name": host, "Type": "host"}}], "edges": []}))
        await nc.flush()
    finally:
        await nc.close()


def test_each_drop_counted_in_api_status(own_bus_and_store: tuple[Proc, Proc], unique: str) -> None:
    nats_proc, store = own_bus_and_store
    svc = Services(nats_proc.url, store.url, f"dr{unique}", f"drops_{unique}")
    host = f"h{svc.prefix}"
    tag = f"drop-{unique}"
    try:
        svc.start("graph_builder", history_flush_interval_s="0.2", **FAST)
        api = svc.start("query_api", **FAST)
        fe, pf = svc.flow_pipeline(probe={"publish_retry_s": "1", **FAST}, ack_wait_s="2", **FAST)
        sflow_port = free_port()
        svc.start("ovs_sflow_collector", listen_host="127.0.0.1", listen_port=str(sflow_port), manage_ovs="false", **FAST)

        # sFlow: 100, 101, then 105: three datagrams missing
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            for seq in (100, 101, 105):
                s.sendto(sflow_with_seq(seq), ("127.0.0.1", sflow_port))
                time.sleep(0.05)
        asyncio.run(_publish_garbage(nats_proc.url, svc.prefix, host))
        wait_drops(api.port, lambda d: d["Hosts"][host]["sflow-collector"]["sflow_sequence_gaps"] == 3
                   and d["Hosts"][host]["flow-enricher"]["rejects"] == 1, 20, "sflow gaps and the reject")

        # NATS down longer than publish_retry_s: the pcap's flows are given up, counted
        _kill(nats_proc)
        req = urllib.request.Request(f"http://127.0.0.1:{pf.port}/pcap?node_tid={tag}-lost", data=flows_pcap(),
                                     method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            assert json.loads(r.read())["flows"] == FLOWS_PER_POST
        _again(nats_proc, start_nats)
        wait_drops(api.port, lambda d: d["Hosts"][host]["probe-flow"]["flow_updates_dropped"] == FLOWS_PER_POST,
                   30, "the flow updates given up while NATS was down")

        # the store down: inserts fail (retried); the enricher killed holding the batch; JetStream redelivers
        # it to the restarted enricher, which stores it once
        _kill(store)
        asyncio.run(_publish_topology(nats_proc.url, svc.prefix, host))  # its history write fails, retried
        req = urllib.request.Request(f"http://127.0.0.1:{pf.port}/pcap?node_tid={tag}-kept-0", data=flows_pcap(),
                                     method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            assert json.loads(r.read())["flows"] == FLOWS_PER_POST
        wait_drops(api.port, lambda d: d["Hosts"][host]["flow-enricher"]["insert_failures"] > 0, 30,
                   "failed inserts")
        fe.kill()
        _again(store, start_store)
        fe.restart()
        drops = wait_drops(api.port, lambda d: d["Hosts"][host]["flow-enricher"]["redeliveries"] >= 1
                           and d["Hosts"][host]["graph-builder"]["history_failures"] > 0, 30, "the redelivery")
        count = wait_stored(store.url, svc.database, f"{tag}-kept", FLOWS_PER_POST, 30)
        print_drops(drops)
        print(f"DROPS the batch redelivered after the store outage: sent={FLOWS_PER_POST} stored={count.stored}")
        at = drops["Hosts"][host]
        assert at["sflow-collector"]["sflow_sequence_gaps"] == 3
        assert at["flow-enricher"]["rejects"] == 1
        assert at["probe-flow"]["flow_updates_dropped"] == FLOWS_PER_POST
        assert at["probe-flow"]["publish_failures"] >= 1
        assert at["flow-enricher"]["redeliveries"] >= 1  # once per delivery after the first: may repeat
        assert at["flow-enricher"]["insert_failures"] >= 1
        assert count.stored == count.distinct == FLOWS_PER_POST
        assert drops["Stages"]["probe-flow"]["flow_updates_dropped"] == FLOWS_PER_POST
        assert drops["Total"] == 3 + 1 + FLOWS_PER_POST + at["probe-flow"]["publish_failures"]
    finally:
        svc.stop()


@pytest.fixture
def udp_target(unique: str) -> Iterator[dict[str, str]]:
    """veth `va` (root namespace, captured) to `vb` in a namespace; a /30 of its own per test."""
    u = unique[:6]
    octet = int(unique[:2], 16) % 200 + 20
    n = {"ns": f"dn-{u}", "va": f"dva{u}", "vb": f"dvb{u}", "ipa": f"10.{octet}.{int(unique[2:4], 16)}.1",
         "ipb": f"10.{octet}.{int(unique[2:4], 16)}.2"}
    with veth_pair_into(n["ns"], n["va"], n["vb"], f"{n['ipa']}/30", f"{n['ipb']}/30"):
        yield n


def _udp(s: socket.socket, dst: str, ports: range, repeat: int = 1, pause_s: float = 0.0) -> None:
    """Datagrams from one socket (one source port): a destination port is one flow."""
    for _ in range(repeat):
        for port in ports:
            s.sendto(b"d" * 64, (dst, port))
            if pause_s:
                time.sleep(pause_s)


@pytest.mark.root
def test_kernel_drops_and_full_flow_table_counted_in_api_status(nats_url: str, clickhouse_url: str, unique: str,
                                                                 udp_target: dict[str, str]) -> None:
    n = udp_target
    svc = Services(nats_url, clickhouse_url, f"dk{unique}", f"drops_{unique}")
    host = f"h{svc.prefix}"
    try:
        svc.start("graph_builder", history="false", **FAST)
        svc.start("probe_topology", ovsdb="", process_netns="false", **FAST)
        api = svc.start("query_api", history="false", flows="false", **FAST)
        pf = svc.start("probe_flow", ovsdb="", update_interval_s="0.5", reconcile_interval_s="0.5",
                       max_entries="10", ring_block_size="4096", ring_blocks="2", **FAST)
        deadline = time.monotonic() + 30
        body = json.dumps({"GremlinQuery": f"G.V().Has('Name', '{n['va']}')", "BPFFilter": f"udp and dst host {n['ipb']}"}).encode()
        while True:  # the API answers once the interface is in its graph
            try:
                req = urllib.request.Request(f"http://127.0.0.1:{api.port}/api/capture", data=body, method="POST")
                with urllib.request.urlopen(req, timeout=10):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        deadline = time.monotonic() + 30
        while pf.metric("netsonde_probe_flow_captures_running") < 1:
            assert time.monotonic() < deadline, "the capture did not start"
            time.sleep(0.2)
        time.sleep(0.5)

        # 40 flows into a table of 10: the packets of 30 new flows refused
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        _udp(sock, n["ipb"], range(30000, 30040), pause_s=0.005)
        refused = wait_drops(api.port, lambda d: d["Hosts"][host]["probe-flow"]["table_full"] >= 30, 30,
                             "refused flows")["Hosts"][host]["probe-flow"]["table_full"]
        # the probe stopped (SIGSTOP): a burst fills the 8 KiB ring, the kernel drops the rest
        assert pf.popen is not None
        pf.popen.send_signal(signal.SIGSTOP)
        try:
            _udp(sock, n["ipb"], range(30000, 30010), repeat=300)
        finally:
            pf.popen.send_signal(signal.SIGCONT)
            sock.close()
        drops = wait_drops(api.port, lambda d: d["Hosts"][host]["probe-flow"]["kernel_drops"] > 0
                           and d["Hosts"][host]["probe-flow"]["table_full"] >= 30, 30, "kernel drops")
        time.sleep(1.5)  # settled: the metric and the report agree
        drops = api_drops(api.port)
        print_drops(drops)
        at = drops["Hosts"][host]["probe-flow"]
        kernel = pf.metric("netsonde_probe_flow_kernel_drops_total")
        seen = pf.metric("netsonde_probe_flow_packets_total")
        print(f"DROPS 3040 packets sent (burst of 3000 with the probe stopped): seen={seen:.0f} "
              f"kernel_drops={at['kernel_drops']} (Prometheus {kernel:.0f}), table_full={at['table_full']}")
        assert refused == 30 and at["table_full"] == 30  # the burst's packets belong to flows in the table
        assert 0 < at["kernel_drops"] == kernel < 3000
        # every packet sent is either seen by the flow tables or counted as dropped by the kernel
        assert pf.metric("netsonde_probe_flow_packets_total") + kernel == 40 + 3000
    finally:
        svc.stop()


def test_stream_retention_discards_counted(nats_url: str, clickhouse_url: str, unique: str) -> None:
    """The enricher stopped while the probe keeps publishing into a 100 kB stream: the oldest batches are
    discarded by the stream's limits before anyone reads them. The restarted enricher counts them
    (`stream_discarded`), and sent = stored + discarded, exactly."""
    svc = Services(nats_url, clickhouse_url, f"ds{unique}", f"drops_{unique}")
    host = f"h{svc.prefix}"
    tag = f"ret-{unique}"
    posts = 60
    try:
        api = svc.start("query_api", history="false", snapshot_timeout_s="0.5", **FAST)  # no graph-builder here
        fe, pf = svc.flow_pipeline(stream_max_bytes="100000", **FAST)
        fe.kill()  # idle, nothing unacked: a kill is a stop without the 5 s drain
        pcap = flows_pcap()
        for i in range(posts):
            req = urllib.request.Request(f"http://127.0.0.1:{pf.port}/pcap?node_tid={tag}-{i}", data=pcap,
                                         method="POST")
            with urllib.request.urlopen(req, timeout=30) as r:
                assert json.loads(r.read())["flows"] == FLOWS_PER_POST
        fe.start()
        drops = wait_drops(api.port, lambda d: d["Hosts"][host]["flow-enricher"]["stream_discarded"] > 0, 30,
                           "the discarded batches")
        discarded = drops["Hosts"][host]["flow-enricher"]["stream_discarded"]
        expected = (posts - discarded) * FLOWS_PER_POST
        count = wait_stored(clickhouse_url, svc.database, tag, expected, 30)
        print(f"\nDROPS stream retention (100 kB) while the enricher was down: sent={posts * FLOWS_PER_POST} "
              f"stored={count.stored} discarded={discarded} batches ({discarded * FLOWS_PER_POST} flow updates)")
        assert 0 < discarded < posts
        assert count.stored == count.distinct == expected
        assert api_drops(api.port)["Hosts"][host]["flow-enricher"]["stream_discarded"] == discarded
    finally:
        svc.stop()
