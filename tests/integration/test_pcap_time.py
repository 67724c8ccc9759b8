"""pcap import keeps the packets' own time, end to end with the real services (query-api, flow-enricher,
graph-builder, NATS, the ClickHouse store): Skydive's 2016 test capture is found with
`G.Context(<2016 instant>).Flows()`, through `POST /api/pcap` and through `netsonde client pcap`, with
`Application` DNS on its two DNS flows; `--replay` still shifts the file to now (capture speed kept)."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from bench.services import ServiceProcs
from netsonde.common.testing import wait_until
from tests.integration.query_api_http import gremlin

PCAP = Path(__file__).resolve().parents[1] / "data" / "eth-ip4-arp-dns-req-http-google.pcap"
IN_2016 = 1454659514
"""Seconds: one second after the capture's last packet (2016-02-05 08:05:13.532 UTC)."""

EXPECTED = {  # (Application, ABPackets, BAPackets, Start ms, Last ms) of the file's six flows
    ("ARP", 1, 0, 1454659513465, 1454659513465),
    ("ARP", 1, 0, 1454659513466, 1454659513466),
    ("DNS", 2, 2, 1454659513466, 1454659513476),
    ("DNS", 2, 2, 1454659513481, 1454659513491),
    ("TCP", 6, 4, 1454659513476, 1454659513531),
    ("TCP", 20, 18, 1454659513491, 1454659513532),
}


def _shape(flows: list[dict]) -> set[tuple]:
    return {(f["Application"], f["Metric"]["ABPackets"], f["Metric"]["BAPackets"], f["Start"], f["Last"])
            for f in flows}


@pytest.mark.slow
def test_pcap_import_keeps_packet_time(nats_url: str, clickhouse_url: str, unique: str) -> None:
    procs = ServiceProcs(nats_url, clickhouse_url, prefix=f"p{unique}")
    procs.env["NETSONDE_CLICKHOUSE_DATABASE"] = f"pcap_time_{unique}"
    try:
        procs.start("graph_builder")
        api = procs.start("query_api")
        procs.start("flow_enricher")

        # through the API, default: the packets' time
        tid = f"pcap-api-{unique}"
        req = urllib.request.Request(f"http://127.0.0.1:{api}/api/pcap?NodeTID={tid}", data=PCAP.read_bytes(),
                                     method="POST", headers={"Content-Type": "application/vnd.tcpdump.pcap"})
        with urllib.request.urlopen(req, timeout=60) as r:
            assert json.loads(r.read()) == {"Flows": 6}
        q = f"G.Context({IN_2016}).Flows().Has('NodeTID','{tid}')"
        flows = wait_until(lambda: (lambda fl: fl if len(fl) == 6 else None)(gremlin(api, q) or []), 60,
                           "the six 2016 flows at a 2016 instant")
        assert _shape(flows) == EXPECTED
        dns = gremlin(api, f"{q}.Has('Application','DNS')")
        assert len(dns) == 2 and {f["LayersPath"] for f in dns} == {"Ethernet/IPv4/UDP/DNS"}
        assert {f["Network"]["B"] for f in dns} == {"8.8.8.8"}
        assert gremlin(api, f"G.Context(NOW, 300).Flows().Has('NodeTID','{tid}').Count()") == 0

        # through the CLI, default: the packets' time too
        tid_cli = f"pcap-cli-{unique}"
        cli = [sys.executable, "-m", "netsonde.cli", "client", "--analyzer", f"127.0.0.1:{api}", "pcap", str(PCAP)]
        out = subprocess.run(cli + ["--node-tid", tid_cli], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout) == {"Flows": 6}
        q = f"G.Context({IN_2016}).Flows().Has('NodeTID','{tid_cli}')"
        flows = wait_until(lambda: (lambda fl: fl if len(fl) == 6 else None)(gremlin(api, q) or []), 60,
                           "the CLI's six 2016 flows")
        assert _shape(flows) == EXPECTED
        assert gremlin(api, f"{q}.Has('Application','DNS').Count()") == 2

        # replay at capture speed: shifted to now, the gaps between packets kept
        tid_now = f"pcap-now-{unique}"
        out = subprocess.run(cli + ["--node-tid", tid_now, "--replay"], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        q = f"G.Context(NOW, 300).Flows().Has('NodeTID','{tid_now}')"
        flows = wait_until(lambda: (lambda fl: fl if len(fl) == 6 else None)(gremlin(api, q) or []), 60,
                           "the replayed flows now")
        first = min(f["Start"] for f in flows)
        # a list, not _shape's set: shifted by a fraction of a ms, two ARP flows 1 ms apart may round together
        got = sorted((f["Application"], f["Metric"]["ABPackets"], f["Metric"]["BAPackets"], f["Start"] - first,
                      f["Last"] - first) for f in flows)
        want = sorted((a, ab, ba, s - 1454659513465, la - 1454659513465) for a, ab, ba, s, la in EXPECTED)
        for g, w in zip(got, want):  # same gaps, to the millisecond (the shift is applied in nanoseconds)
            assert g[:3] == w[:3] and abs(g[3] - w[3]) <= 1 and abs(g[4] - w[4]) <= 1, (got, want)
        assert gremlin(api, f"G.Context({IN_2016}).Flows().Has('NodeTID','{tid_now}').Count()") == 0

        # with the ExtraLayers option: Skydive's DNS fields, stored and queryable
        tid_dns = f"pcap-dns-{unique}"
        req = urllib.request.Request(f"http://127.0.0.1:{api}/api/pcap?NodeTID={tid_dns}&ExtraLayers=2",
                                     data=PCAP.read_bytes(), method="POST")
        with urllib.request.urlopen(req, timeout=60) as r:
            assert json.loads(r.read()) == {"Flows": 6}
        q = f"G.Context({IN_2016}).Flows().Has('NodeTID','{tid_dns}')"
        wait_until(lambda: gremlin(api, f"{q}.Count()") == 6, 60, "the flows with DNS fields")
        a = gremlin(api, f"{q}.Has('DNS.Questions.Name','www.google.com')")
        assert len(a) == 1 and a[0]["DNS"]["a_n_count"] == 5 and a[0]["DNS"]["response_code"] == "No Error"
        assert sorted(x["IP"] for x in a[0]["DNS"]["answers"]) == [f"173.194.40.{i}" for i in range(144, 149)]
        aaaa = gremlin(api, f"{q}.Has('DNS.Questions.Type','AAAA')")
        assert [f["DNS"]["questions"][0]["name"] for f in aaaa] == ["www.google.fr"]
        assert gremlin(api, f"{q}.Has('DNS').Count()") == 2

        bad = urllib.request.Request(f"http://127.0.0.1:{api}/api/pcap?ExtraLayers=DNSX", data=PCAP.read_bytes(),
                                     method="POST")
        with pytest.raises(urllib.error.HTTPError) as err:
            urllib.request.urlopen(bad, timeout=60)
        assert err.value.code == 400 and "ExtraLayers" in err.value.read().decode()
    finally:
        procs.stop()
