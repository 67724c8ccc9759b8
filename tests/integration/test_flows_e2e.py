"""Flows end to end, every service a real process: a capture created with the CLI on veths of two namespaces
joined by a bridge, a ping, and the flow seen through Gremlin (counts, TrackingID at every hop, Hops(), and
through Context after the ping ended)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest

from bench.services import ServiceProcs
from tests.integration.flow_stack import cli_capture_create, start_flow_stack
from netsonde.common.testing import wait_until
from tests.integration.query_api_http import gremlin


pytestmark = [pytest.mark.root, pytest.mark.slow]


def sh(*cmd: str) -> str:
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True, timeout=60).stdout


@pytest.fixture
def bridged_namespaces(unique: str):
    u = unique[:6]
    n = {"a": f"fa-{u}", "b": f"fb-{u}", "br": f"fbr{u}", "va": f"fva{u}", "vb": f"fvb{u}",
         "pa": f"fpa{u}", "pb": f"fpb{u}", "ipa": "10.91.0.1", "ipb": "10.91.0.2"}
    sh("ip", "netns", "add", n["a"])
    sh("ip", "netns", "add", n["b"])
    sh("ip", "link", "add", n["br"], "type", "bridge")
    sh("ip", "link", "set", n["br"], "up")
    for side in ("a", "b"):
        v, p = n[f"v{side}"], n[f"p{side}"]
        sh("ip", "link", "add", v, "type", "veth", "peer", "name", p)
        sh("ip", "link", "set", v, "netns", n[side])
        sh("ip", "link", "set", p, "master", n["br"])
        sh("ip", "link", "set", p, "up")
        sh("ip", "-n", n[side], "addr", "add", f"{n['ip' + side]}/24", "dev", v)
        sh("ip", "-n", n[side], "link", "set", v, "up")
        sh("ip", "-n", n[side], "link", "set", "lo", "up")
    yield n
    for side in ("a", "b"):
        subprocess.run(["ip", "netns", "del", n[side]], capture_output=True)
    subprocess.run(["ip", "link", "del", n["br"]], capture_output=True)


def test_capture_ping_flows_hops_and_history(nats_url: str, clickhouse_url: str, unique: str,
                                             bridged_namespaces) -> None:
    n = bridged_namespaces
    procs = ServiceProcs(nats_url, clickhouse_url, prefix=f"f{unique}")
    procs.env["NETSONDE_CLICKHOUSE_DATABASE"] = f"flows_e2e_{unique}"
    try:
        api, _ = start_flow_stack(procs)
        wait_until(lambda: gremlin(api, f"G.V().Has('Name','{n['va']}').Count()") == 1, 30, "the veth in the API")

        capture = cli_capture_create(api, f"G.V().Has('Name', Within('{n['va']}', '{n['vb']}', '{n['br']}'))",
                                     "--bpf", "icmp")
        assert capture["BPFFilter"] == "icmp"
        # the capture shows on the three nodes
        wait_until(lambda: gremlin(api, f"G.V().Has('Captures.ID','{capture['UUID']}').Count()") == 3, 30,
                   "Captures metadata on the three interfaces")

        sh("ip", "netns", "exec", n["a"], "ping", "-c", "5", "-i", "0.2", "-W", "1", n["ipb"])

        q = f"G.Flows().Has('Network.A','{n['ipa']}','LayersPath','Ethernet/IPv4/ICMPv4')"
        flows = wait_until(lambda: [f for f in gremlin(api, q) or []
                                    if f["Metric"]["ABPackets"] == 5 and f["Metric"]["BAPackets"] == 5]
                           if len(gremlin(api, q) or []) >= 3 else None, 60, "the ping flow at three capture points")
        flows = gremlin(api, q)
        assert len(flows) == 3, flows
        for f in flows:
            assert f["Network"]["B"] == n["ipb"] and f["Application"] == "ICMPv4"
            assert f["Metric"]["ABPackets"] == 5 and f["Metric"]["BAPackets"] == 5
            assert f["Metric"]["ABBytes"] == 5 * 98 and f["Metric"]["BABytes"] == 5 * 98
        assert len({f["TrackingID"] for f in flows}) == 1, "one packet stream, one TrackingID at every hop"
        assert len({f["NodeTID"] for f in flows}) == 3

        hops = gremlin(api, f"{q}.Hops().Values('Name')")
        assert sorted(hops) == sorted([n["va"], n["vb"], n["br"]])
        assert gremlin(api, f"G.V().Has('Name','{n['va']}').Flows().Has('Network.B','{n['ipb']}').Count()") == 1
        assert gremlin(api, f"{q}.Dedup().Count()") == 1

        # after the ping: the stored flow through a time context
        past = gremlin(api, f"G.Context(NOW, 300).Flows().Has('Network.A','{n['ipa']}').Dedup().Count()")
        assert past == 1

        # Skydive's packet injector: 3 ICMP echoes with a known id, from va to vb, through the API
        body = json.dumps({"Src": f"G.V().Has('Name','{n['va']}')", "Dst": f"G.V().Has('Name','{n['vb']}')",
                           "Type": "icmp4", "Count": 3, "Interval": 50, "ICMPID": 4242}).encode()
        req = urllib.request.Request(f"http://127.0.0.1:{api}/api/injectpacket", data=body, method="POST")
        with urllib.request.urlopen(req, timeout=30) as r:
            assert json.loads(r.read())["Sent"] == 3
        injected = f"G.Flows().Has('ICMP.ID', 4242).Has('NodeTID', '{flows[0]['NodeTID']}')"
        wait_until(lambda: [f for f in gremlin(api, injected) or [] if f["Metric"]["ABPackets"] == 3], 30,
                   "the injected packets as a flow")

        # pcap import through the CLI: the file's flows land in the same store
        pcap = str(Path(__file__).resolve().parents[1] / "data" / "eth-ip4-arp-dns-req-http-google.pcap")
        out = subprocess.run([sys.executable, "-m", "netsonde.cli", "client", "--analyzer", f"127.0.0.1:{api}",
                              "pcap", pcap, "--node-tid", "pcap-import"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        imported = json.loads(out.stdout)["Flows"]
        assert imported >= 3
        wait_until(lambda: gremlin(api, "G.Context(NOW, FOREVER).Flows().Has('NodeTID','pcap-import').Count()")
                   == imported, 30, "the imported flows")
    finally:
        procs.stop()
