"""OVS capture types end to end, on private Open vSwitch daemons and every service a real process, each capture
created BEFORE its bridge exists: `ovsmirror` (a mirror of the port to a new internal port `mir-...` captured
with afpacket, `Captures[].MirrorOf`, everything removed on delete) and `ovssflow` (the default type of an
`ovsbridge`), and `pcapsocket` on a bridge."""

from __future__ import annotations

import time
from typing import Any, Iterator

import pytest

from bench.services import ServiceProcs
from tests.integration.flow_stack import TOPOLOGY_PLAIN, start_flow_stack
from tests.integration.ovs_fixture import OvsDaemons, attach_netns_pair, detach_netns_pair, ovs  # noqa: F401
from tests.integration.test_captures_standing import (PCAP, api_call, captures_of, create, delete, gremlin,
                                                      send_stream, sh, wait_until)

pytestmark = [pytest.mark.root, pytest.mark.ovs, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(nats_url: str, clickhouse_url: str, ovs: OvsDaemons) -> Iterator[int]:  # noqa: F811
    """The services on the private OVS (probe-topology, probe-flow and the sFlow collector use its OVSDB)."""
    tag = f"{int(time.time() * 1000) % 10**9:09d}"
    procs = ServiceProcs(nats_url, clickhouse_url, prefix=f"co{tag}")
    procs.env["NETSONDE_CLICKHOUSE_DATABASE"] = f"captures_ovs_{tag}"
    try:
        api, _ = start_flow_stack(procs, topology={**TOPOLOGY_PLAIN, "ovsdb": ovs.db}, probe_flow={"ovsdb": ovs.db})
        procs.start("ovs_sflow_collector", listen_host="127.0.0.1", listen_port="0", ovs_db=ovs.db,
                    update_interval_s="1", reconcile_interval_s="0.5")
        wait_until(lambda: gremlin(api, "G.V().Has('Type','host').Count()") == 1, 30, "the host in the API")
        yield api
    finally:
        procs.stop()


def icmp_totals(flows: list[dict[str, Any]]) -> tuple[int, int]:
    return (sum(f["Metric"]["ABPackets"] for f in flows), sum(f["Metric"]["BAPackets"] for f in flows))


def test_ovsmirror_created_before_the_bridge(stack: int, ovs: OvsDaemons, unique: str) -> None:  # noqa: F811
    api = stack
    br = f"bm{unique[:8]}"
    port = f"sa{unique[:8]}p"
    cap = create(api, GremlinQuery=f"G.V().Has('Name', '{port}', 'Type', 'ovsport')", BPFFilter="icmp")
    assert "selects no node" in cap["Warning"]
    pair = None
    try:
        ovs.vsctl("add-br", br, "--", "set", "bridge", br, "datapath_type=netdev")
        pair = attach_netns_pair(ovs, br, unique[:8], subnet="10.97.3")
        assert pair.port_a == port
        mirrored = wait_until(lambda: gremlin(api, f"G.V().Has('Name', '{port}', 'Type', 'ovsport')"), 30,
                              "the ovsport")[0]
        mirror = wait_until(lambda: [n for n in gremlin(api, "G.V().Has('Type', 'internal')")
                                     if n["Metadata"]["Name"].startswith("mir-")
                                     and any(c.get("MirrorOf") for c in n["Metadata"].get("Captures") or [])],
                            30, "the mirror interface with its capture")[0]
        assert [(c["ID"], c["State"], c["Type"], c["MirrorOf"]) for c in mirror["Metadata"]["Captures"]] == \
            [(cap["UUID"], "active", "ovsmirror", mirrored["ID"])]
        assert [(c["ID"], c["State"], c["Type"]) for c in captures_of(api, port) if c["Type"] == "ovsmirror"] == \
            [(cap["UUID"], "active", "ovsmirror")]
        name = mirror["Metadata"]["Name"]
        assert name in ovs.vsctl("list-ports", br).split()
        sh("ip", "netns", "exec", pair.ns_a, "ping", "-c", "5", "-i", "0.2", "-W", "1", pair.ip_b)
        q = (f"G.Flows().Has('NodeTID', '{mirror['Metadata']['TID']}', 'LayersPath', 'Ethernet/IPv4/ICMPv4', "
             f"'Network.A', '{pair.ip_a}')")
        flows = wait_until(lambda: [f for f in gremlin(api, q) if icmp_totals([f]) == (5, 5)], 60,
                           "the ping through the mirror")
        assert len(gremlin(api, q)) == 1 and flows[0]["Metric"]["ABBytes"] == 5 * 98
    finally:
        delete(api, cap["UUID"])
    wait_until(lambda: not [p for p in ovs.vsctl("list-ports", br).split() if p.startswith("mir-")], 30,
               "the mirror port removed")
    assert ovs.vsctl("--bare", "--columns=_uuid", "list", "Mirror").strip() == ""
    if pair is not None:
        detach_netns_pair(ovs, br, pair)
    ovs.vsctl("--if-exists", "del-br", br)


def test_ovssflow_by_default_on_a_bridge_created_later(stack: int, ovs: OvsDaemons, unique: str) -> None:  # noqa: F811
    api = stack
    br = f"bs{unique[:8]}"
    cap = create(api, GremlinQuery=f"G.V().Has('Name', '{br}', 'Type', 'ovsbridge')", PollingInterval=1)
    pair = None
    try:
        ovs.vsctl("add-br", br, "--", "set", "bridge", br, "datapath_type=netdev")
        pair = attach_netns_pair(ovs, br, unique[:8], subnet="10.97.4")
        got = wait_until(lambda: captures_of(api, br), 30, "the sFlow capture on the new bridge")
        assert [(c["ID"], c["State"], c["Type"]) for c in got] == [(cap["UUID"], "active", "ovssflow")]
        assert cap["UUID"] in ovs.vsctl("--bare", "--columns=external_ids", "list", "sFlow")
        # the collector knows both ports once their sFlow counters (every PollingInterval = 1 s) reach them
        ports = f"G.V().Has('Name', Within('{pair.port_a}', '{pair.port_b}'), 'Type', 'ovsport').Has('SFlow')"
        wait_until(lambda: gremlin(api, f"{ports}.Count()") == 2, 30, "sFlow counters of both ports")
        sh("ip", "netns", "exec", pair.ns_a, "ping", "-c", "5", "-i", "0.2", "-W", "1", pair.ip_b)
        q = (f"G.V().Has('Name', '{br}', 'Type', 'ovsbridge').Flows()"
             f".Has('LayersPath', 'Ethernet/IPv4/ICMPv4', 'Network.A', '{pair.ip_a}')")
        # every packet sampled (SamplingRate 1): one flow on the bridge, 5 echoes and 5 replies (as Skydive)
        try:
            wait_until(lambda: [icmp_totals([f]) for f in gremlin(api, q)] == [(5, 5)], 60, "the sampled ping")
        except AssertionError as e:
            every = gremlin(api, "G.Flows().Has('LayersPath', 'Ethernet/IPv4/ICMPv4')")
            bridge = gremlin(api, f"G.V().Has('Name', '{br}')")
            raise AssertionError(f"{e}; bridge {bridge}; ICMP flows: {every}") from None
        tid = gremlin(api, f"G.V().Has('Name', '{br}', 'Type', 'ovsbridge').Values('TID')")
        assert [f["NodeTID"] for f in gremlin(api, q)] == tid
    finally:
        delete(api, cap["UUID"])
    wait_until(lambda: ovs.vsctl("--bare", "--columns=_uuid", "list", "sFlow").strip() == "", 30,
               "the sFlow row removed")
    if pair is not None:
        detach_netns_pair(ovs, br, pair)
    ovs.vsctl("--if-exists", "del-br", br)
    assert api_call(api, f"/api/capture/{cap['UUID']}")[0] == 404


def test_mirrors_left_by_a_previous_run_are_removed(ovs: OvsDaemons, unique: str) -> None:  # noqa: F811
    """A probe that was killed leaves its mirror in OVS; the next run removes it on its first reconcile."""
    from netsonde.probe_flow.controller import CaptureController
    from netsonde.probe_flow.mirror import OvsMirrors

    br, port = f"bl{unique[:8]}", f"pl{unique[:8]}"
    ovs.vsctl("add-br", br, "--", "set", "bridge", br, "datapath_type=netdev")
    try:
        ovs.vsctl("add-port", br, port, "--", "set", "Interface", port, "type=internal")
        mirrors = OvsMirrors(ovs.db)
        assert mirrors.create(port, "mir-0badc0de", "gone-capture") == br
        assert mirrors.owned() == ["mir-0badc0de"]
        assert len(ovs.vsctl("--bare", "--columns=_uuid", "list", "Mirror").split()) == 1
        CaptureController("h1", lambda q: [], ovsdb=ovs.db).reconcile()
        assert mirrors.owned() == []
        assert ovs.vsctl("list-ports", br).split() == [port]
        assert ovs.vsctl("--bare", "--columns=_uuid", "list", "Mirror").strip() == ""
    finally:
        ovs.vsctl("--if-exists", "del-br", br)


def test_pcapsocket_on_a_bridge_created_later(stack: int, ovs: OvsDaemons, unique: str) -> None:  # noqa: F811
    """Skydive's TestPCAPSocket: Skydive's test pcap written to the PCAPSocket of an ovsbridge gives 6 flows
    with the bridge's TID, 2 of them DNS (the packets keep their 2016 timestamps)."""
    api = stack
    br = f"bp{unique[:8]}"
    cap = create(api, GremlinQuery=f"G.V().Has('Name', '{br}', 'Type', 'ovsbridge')", Type="pcapsocket")
    try:
        ovs.vsctl("add-br", br, "--", "set", "bridge", br, "datapath_type=netdev")
        got = wait_until(lambda: [c for c in captures_of(api, br) if c.get("PCAPSocket")], 30, "the PCAPSocket")
        assert [(c["ID"], c["State"], c["Type"]) for c in got] == [(cap["UUID"], "active", "pcapsocket")]
        send_stream(got[0]["PCAPSocket"], PCAP.read_bytes())
        tid = gremlin(api, f"G.V().Has('Name', '{br}', 'Type', 'ovsbridge').Values('TID')")[0]
        q = f"G.Context(NOW, FOREVER).Flows().Has('NodeTID', '{tid}')"
        wait_until(lambda: gremlin(api, f"{q}.Count()") == 6, 30, "the 6 flows of the pcap")
        assert gremlin(api, f"{q}.Has('Application', 'DNS').Count()") == 2
        assert sum(f["Metric"]["ABPackets"] + f["Metric"]["BAPackets"] for f in gremlin(api, q)) == 58
    finally:
        delete(api, cap["UUID"])
        ovs.vsctl("--if-exists", "del-br", br)
