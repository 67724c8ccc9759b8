"""Capture options on real traffic: a veth pair into a namespace, AF_PACKET capture on the host end.

- IPDefrag: `ping -s 3000` sends real IPv4 fragments (3 per echo at MTU 1500); with the option each echo is one
  packet of its reassembled size, without it each fragment counts.
- ExtraLayers DNS: a real DNS query/answer (a small UDP DNS server in the namespace) fills the flow's DNS field.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from typing import Iterator

import pytest
from scapy.layers.dns import DNS, DNSQR

from netsonde.flow.capture import AfPacketCapture
from netsonde.flow.table import FlowTable
from tests.integration.netns_veth import sh, veth_into_namespace

pytestmark = pytest.mark.root

DNS_SERVER = r"""
import socket, struct, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 53))
print("ready", flush=True)
q, peer = s.recvfrom(512)
qend = 12
while q[qend]:
    qend += 1 + q[qend]
qend += 5
answer = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(sys.argv[2])
s.sendto(q[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + q[12:qend] + answer, peer)
"""


@pytest.fixture
def veth(unique: str) -> Iterator[dict[str, str]]:
    with veth_into_namespace(unique, "fo", 1) as v:
        yield v


def captured(v: dict[str, str], table: FlowTable, bpf: str, traffic) -> list:
    reader = AfPacketCapture(v["host"], table, bpf=bpf, snaplen=4096, block_timeout_ms=10)
    reader.start()
    try:
        traffic()
        time.sleep(0.3)
    finally:
        reader.stop()
    return table.flush()


def big_ping(v: dict[str, str]) -> None:
    sh("ping", "-c", "3", "-i", "0.2", "-W", "1", "-s", "3000", v["peer_ip"])


def test_ip_defrag_on_real_fragments(veth) -> None:
    flows = captured(veth, FlowTable("n", ip_defrag=True), "icmp or (ip[6:2] & 0x3fff != 0)", lambda: big_ping(veth))
    icmp = [f for f in flows if f.Application == "ICMPv4"]
    assert len(icmp) == 1, flows
    f = icmp[0]
    assert (f.Network.A, f.Network.B) == (veth["ip"], veth["peer_ip"])
    assert (f.Metric.ABPackets, f.Metric.BAPackets) == (3, 3)
    assert (f.Metric.ABBytes, f.Metric.BABytes) == (3 * 3042, 3 * 3042)  # 14 + 20 + 8 + 3000 per echo
    assert f.IPMetric.Fragments == 18 and f.IPMetric.FragmentErrors == 0
    assert not [x for x in flows if x.LayersPath.endswith("Fragment")]


def test_ipv6_defrag_on_real_fragments(veth, unique: str) -> None:
    n = int(unique[:4], 16)
    a, b = f"fd00:{n:x}::1", f"fd00:{n:x}::2"
    sh("ip", "-6", "addr", "add", f"{a}/64", "dev", veth["host"], "nodad")
    sh("ip", "-n", veth["ns"], "-6", "addr", "add", f"{b}/64", "dev", veth["peer"], "nodad")
    flows = captured(veth, FlowTable("n", ip_defrag=True), "icmp6 or (ip6 and ip6[6] == 44)",
                     lambda: sh("ping", "-6", "-c", "3", "-i", "0.2", "-W", "1", "-s", "3000", b))
    echo = [f for f in flows if f.ICMP is not None and f.ICMP.Type == "ECHO"]
    assert len(echo) == 1, flows
    f = echo[0]
    assert (f.Network.A, f.Network.B, f.LayersPath) == (a, b, "Ethernet/IPv6/ICMPv6/ICMPv6Echo")
    assert (f.Metric.ABPackets, f.Metric.BAPackets) == (3, 3)
    assert (f.Metric.ABBytes, f.Metric.BABytes) == (3 * 3062, 3 * 3062)  # 14 + 40 + 8 + 3000 per echo
    assert f.IPMetric.Fragments == 18


def test_without_ip_defrag_each_fragment_counts(veth) -> None:
    flows = captured(veth, FlowTable("n"), "icmp or (ip[6:2] & 0x3fff != 0)", lambda: big_ping(veth))
    icmp = [f for f in flows if f.Application == "ICMPv4"]
    assert len(icmp) == 1
    assert (icmp[0].Metric.ABPackets, icmp[0].Metric.BAPackets) == (9, 9)
    assert icmp[0].IPMetric.Fragments == 18


def dns_exchange(v: dict[str, str], name: str, answer_ip: str) -> None:
    server = subprocess.Popen(["ip", "netns", "exec", v["ns"], sys.executable, "-c", DNS_SERVER, v["peer_ip"],
                               answer_ip], stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout is not None and server.stdout.readline().strip() == "ready"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as c:
            c.settimeout(5)
            c.bind((v["ip"], 0))
            c.sendto(bytes(DNS(id=0x5151, rd=1, qd=DNSQR(qname=name, qtype="A"))), (v["peer_ip"], 53))
            reply = DNS(c.recv(512))
        assert reply.an[0].rdata == answer_ip
        server.wait(5)
    finally:
        server.kill()


def test_extra_layers_dns_on_real_traffic(veth) -> None:
    flows = captured(veth, FlowTable("n", extra_layers=2), "udp port 53",
                     lambda: dns_exchange(veth, "www.netsonde.test", "192.0.2.77"))
    f, = flows
    assert f.Application == "DNS" and (f.Metric.ABPackets, f.Metric.BAPackets) == (1, 1)
    d = f.Extra["DNS"]
    assert (d["ID"], d["QR"], d["response_code"], d["a_n_count"]) == (0x5151, True, "No Error", 1)
    assert d["questions"] == [{"name": "www.netsonde.test", "type": "A", "class": "IN"}]
    assert d["answers"] == [{"name": "www.netsonde.test", "type": "A", "class": "IN", "TTL": 60, "data_length": 4,
                             "IP": "192.0.2.77"}]


# --- end to end: the options and a NetFlow target set on a capture through the API ---------------------------
from tests.integration.test_flow_targets import (gre_receiver, nfacctd, nfacctd_totals,  # noqa: E402,F401
                                                 receive_erspan)


def post(port: int, path: str, body: dict) -> tuple[int, object]:
    import urllib.error
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


@pytest.mark.slow
def test_capture_options_and_target_through_the_services(nats_url: str, clickhouse_url: str, unique: str, veth,
                                                         nfacctd, gre_receiver) -> None:
    from bench.services import ServiceProcs
    from tests.integration.flow_stack import cli_capture_create, start_flow_stack
    from netsonde.common.testing import wait_until
    from tests.integration.query_api_http import gremlin

    nf_port, nf_out = nfacctd
    procs = ServiceProcs(nats_url, clickhouse_url, prefix=f"o{unique}")
    procs.env["NETSONDE_CLICKHOUSE_DATABASE"] = f"flow_options_{unique}"
    try:
        api, probe = start_flow_stack(procs)
        # an option the type cannot honour is refused, naming both
        code, text = post(api, "/api/capture", {"GremlinQuery": f"G.V().Has('Name','{veth['host']}')",
                                                "Type": "ovssflow", "IPDefrag": True})
        assert code == 400 and "IPDefrag" in str(text) and "ovssflow" in str(text)
        sel = f"G.V().Has('Name','{veth['host']}')"
        cap = cli_capture_create(api, sel, "--ip-defrag", "--extra-layer", "DNS",
                                 "--bpf", "udp port 53 or icmp or (ip[6:2] & 0x3fff != 0)")
        assert (cap["ExtraLayers"], cap["IPDefrag"]) == (2, True)  # Skydive's ["DNS"] form, as its bitmask
        code, text = post(api, "/api/capture", {"GremlinQuery": sel, "TargetType": "netflow9", "Target": "h:1"})
        assert code == 400 and "netflow9" in str(text)
        code, nf_cap = post(api, "/api/capture", {"GremlinQuery": sel, "BPFFilter": "icmp",
                                                  "TargetType": "netflowv5", "Target": f"127.0.0.1:{nf_port}"})
        assert code == 200, nf_cap
        def states() -> list:
            nodes = gremlin(api, sel) or [{}]
            return sorted(c.get("State", "") for c in nodes[0].get("Metadata", {}).get("Captures", []))

        code, er_cap = post(api, "/api/capture", {"GremlinQuery": sel, "BPFFilter": "icmp",
                                                  "TargetType": "erspanv1", "Target": "127.0.0.1"})
        assert code == 200, er_cap
        wait_until(lambda: states() == ["active"] * 3, 30, "the three captures active on the veth")

        dns_exchange(veth, "www.netsonde.test", "192.0.2.77")
        big_ping(veth)

        q = f"G.Flows().Has('CaptureID','{cap['UUID']}', 'DNS.Questions.Name', 'www.netsonde.test')"
        dns = wait_until(lambda: gremlin(api, q), 60, "the DNS flow with its DNS field")
        assert len(dns) == 1
        d = dns[0]["DNS"]
        assert (d["ID"], d["response_code"], d["answers"][0]["IP"]) == (0x5151, "No Error", "192.0.2.77")
        assert gremlin(api, f"G.Flows().Has('DNS.ResponseCode','No Error','DNS.ID',{0x5151}).Count()") == 1
        assert gremlin(api, f"G.Flows().Has('CaptureID','{cap['UUID']}').Has('DNS').Count()") == 1

        q = f"G.Flows().Has('CaptureID','{cap['UUID']}','Application','ICMPv4')"
        icmp = wait_until(lambda: [f for f in gremlin(api, q) or [] if f["Metric"]["BAPackets"] == 3], 60,
                          "the reassembled ping flow")
        f = icmp[0]
        assert (f["Metric"]["ABPackets"], f["Metric"]["ABBytes"]) == (3, 3 * 3042)
        assert f["IPMetric"]["Fragments"] == 18

        totals = nfacctd_totals(nf_out, 2, timeout=20)
        # the option counters in probe-flow's Prometheus metrics (3 echoes + 3 replies reassembled)
        import urllib.request

        def metric(event: str) -> float:
            with urllib.request.urlopen(f"http://127.0.0.1:{probe}/metrics", timeout=10) as r:
                for line in r.read().decode().splitlines():
                    if line.startswith(f'netsonde_probe_flow_option_events_total{{event="{event}"}}'):
                        return float(line.split()[-1])
            return -1.0

        wait_until(lambda: metric("defrag_reassembled") == 6.0 and metric("erspan_packets") == 18.0, 20,
                   "the option counters")

        # the ERSPAN mirror: every fragment of the 3 echoes and 3 replies, in GRE sequence
        mirrored = receive_erspan(gre_receiver, 3.0)
        assert len(mirrored) == 18 and [m["seq"] for m in mirrored] == list(range(18))
        assert sorted(len(m["frame"]) for m in mirrored) == [82] * 6 + [256] * 12  # cut to HeaderSize 256
        assert sum(m["t"] for m in mirrored) == 12

        # no IPDefrag on that capture: 9 fragments each way, IP bytes 1500 + 1500 + 68 per echo. First what the
        # probe sent (dPkts / dOctets of its records), then what nfacctd totalled: a mismatch names its side.
        deadline = time.monotonic() + 10
        while (sent := (metric("netflow_packets"), metric("netflow_bytes"))) != (18.0, 6 * 3068.0) and \
                time.monotonic() < deadline:
            time.sleep(0.3)
        assert sent == (18.0, 6 * 3068.0), f"the probe exported {sent} (packets, bytes), not (18, {6 * 3068})"
        expected = {(veth["ip"], veth["peer_ip"], "icmp"): (9, 3 * 3068),
                    (veth["peer_ip"], veth["ip"], "icmp"): (9, 3 * 3068)}
        if totals != expected:  # say which purges and which probe counters disagree before failing
            with urllib.request.urlopen(f"http://127.0.0.1:{probe}/metrics", timeout=10) as r:
                counters = [x for x in r.read().decode().splitlines() if "netflow" in x or "option_events" in x]
            raise AssertionError(f"nfacctd totals {totals} != {expected}\nnfacctd CSV:\n{nf_out.read_text()}\n"
                                 f"probe counters:\n" + "\n".join(counters))
    finally:
        procs.stop()
