"""Interface metadata from netlink and ethtool on real namespaces, veths and traffic: RoutingTables (real
`ip route`), Neighbors (real `ip neigh`), Features/Speed/Duplex, Metric/LastUpdateMetric from the kernel
counters (exact packet deltas of a real ping), host metadata from the configuration; then the same through
graph-builder, ClickHouse history and query-api: `Context().Metrics().Sum()/Aggregates()`, `NextHop()`,
`Has()` on configured arrays."""

from __future__ import annotations

import subprocess
import time
from typing import Any

import httpx
import pytest

from netsonde.common.service import wait_for
from netsonde.probe_topology.testing import sh, start_probe, until
from tests.integration.static_stack import Stack, client

pytestmark = [pytest.mark.root]

HOST_METADATA = {"tags": ["red", "blue"], "mydict": {"value": 123},
                 "myarrays": {"integers": [1, 2], "strings": ["cat", "dog"], "bools": [True]}}
PING_FRAME = 98  # Ethernet 14 + IPv4 20 + ICMP 8 + 56 bytes of data


@pytest.fixture
def pair(unique: str):
    """Two namespaces without IPv6 (no stray packets), a veth between them, static neighbours both ways."""
    n = {"ns1": f"im1-{unique}", "ns2": f"im2-{unique}", "a": f"ima{unique}", "b": f"imb{unique}"}
    try:
        for ns in (n["ns1"], n["ns2"]):
            sh("ip", "netns", "add", ns)
            sh("ip", "netns", "exec", ns, "sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1",
               "net.ipv6.conf.default.disable_ipv6=1")
        sh("ip", "link", "add", n["a"], "netns", n["ns1"], "type", "veth", "peer", "name", n["b"], "netns", n["ns2"])
        n["mac_a"] = _mac(n["ns1"], n["a"])
        n["mac_b"] = _mac(n["ns2"], n["b"])
        sh("ip", "-n", n["ns1"], "addr", "add", "10.94.0.1/24", "dev", n["a"])
        sh("ip", "-n", n["ns2"], "addr", "add", "10.94.0.2/24", "dev", n["b"])
        sh("ip", "-n", n["ns1"], "neigh", "add", "10.94.0.2", "lladdr", n["mac_b"], "dev", n["a"], "nud", "permanent")
        sh("ip", "-n", n["ns2"], "neigh", "add", "10.94.0.1", "lladdr", n["mac_a"], "dev", n["b"], "nud", "permanent")
        sh("ip", "-n", n["ns1"], "link", "set", n["a"], "up")
        sh("ip", "-n", n["ns2"], "link", "set", n["b"], "up")
        yield n
    finally:
        for ns in (n["ns1"], n["ns2"]):
            sh("ip", "netns", "del", ns, check=False)


def _mac(ns: str, dev: str) -> str:
    return sh("ip", "-n", ns, "-br", "link", "show", dev).split()[2]


def _ping(ns: str, ip: str, count: int) -> None:
    subprocess.run(["ip", "netns", "exec", ns, "ping", "-q", "-c", str(count), "-i", "0.05", "-W", "1", ip],
                   check=True, capture_output=True, timeout=30)


def _tables(md: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {t["ID"]: t for t in md.get("RoutingTables") or []}


def _route(md: dict[str, Any], table: int, prefix: str) -> dict[str, Any] | None:
    for r in _tables(md).get(table, {}).get("Routes", []):
        if r["Prefix"] == prefix:
            return r
    return None


async def test_routes_neighbours_ethtool_and_host_metadata(nats_url, unique, pair):
    ns1, a, mac_b = pair["ns1"], pair["a"], pair["mac_b"]
    br = f"imbr{unique}"
    svc, m = await start_probe(nats_url, unique, metadata=HOST_METADATA)
    try:
        sh("ip", "link", "add", br, "type", "bridge")
        assert await until(lambda: m.one(Name=a) and m.one(Name=br)
                           and _route(m.one(Name=a)["Metadata"], 254, "10.94.0.0/24"))
        md = m.one(Name=a)["Metadata"]
        index = md["IfIndex"]
        # the prefix route of the address (kernel protocol 2, scope link) and the local table's routes
        assert _route(md, 254, "10.94.0.0/24") == {"Protocol": 2, "Prefix": "10.94.0.0/24",
                                                   "NextHops": [{"Priority": 0, "IfIndex": index}]}
        assert _tables(md)[254]["Src"] == "10.94.0.1"
        assert _route(md, 255, "10.94.0.1/32") == {"Protocol": 2, "Prefix": "10.94.0.1/32",
                                                   "NextHops": [{"Priority": 0, "IfIndex": index}]}
        # static neighbour (ARP table), the configured host metadata, ethtool
        assert md["Neighbors"] == [{"IP": "10.94.0.2", "MAC": mac_b, "State": ["NUD_PERMANENT"], "IfIndex": index}]
        host = m.one(Type="host")["Metadata"]
        assert {k: host[k] for k in HOST_METADATA} == HOST_METADATA
        assert md["Speed"] == 10000 and md["Duplex"] == "full"
        assert md["Features"]["highdma"] is True and md["Features"]["tx-checksum-ip-generic"] is True
        assert m.one(Name=br)["Metadata"]["Features"]["highdma"] is True

        # routes added with `ip route` arrive by netlink events: another table, a default route with a metric
        sh("ip", "-n", ns1, "route", "add", "10.93.0.0/16", "via", "10.94.0.2", "table", "2", "proto", "static")
        sh("ip", "-n", ns1, "route", "add", "default", "via", "10.94.0.2", "metric", "7")
        assert await until(lambda: _route(m.one(Name=a)["Metadata"], 2, "10.93.0.0/16")
                           and _route(m.one(Name=a)["Metadata"], 254, "0.0.0.0/0"), 5)
        md = m.one(Name=a)["Metadata"]
        assert _tables(md)[2] == {"ID": 2, "Routes": [{"Protocol": 4, "Prefix": "10.93.0.0/16", "NextHops": [
            {"Priority": 0, "IP": "10.94.0.2", "IfIndex": index}]}]}
        assert _route(md, 254, "0.0.0.0/0") == {"Protocol": 3, "Prefix": "0.0.0.0/0", "NextHops": [
            {"Priority": 7, "IP": "10.94.0.2", "IfIndex": index}]}
        # a second neighbour, then its removal, and the table-2 route's removal
        sh("ip", "-n", ns1, "neigh", "add", "10.94.0.77", "lladdr", "a6:d1:a0:51:03:49", "dev", a)
        assert await until(lambda: len(m.one(Name=a)["Metadata"].get("Neighbors", [])) == 2, 5)
        assert m.one(Name=a)["Metadata"]["Neighbors"][1] == {
            "IP": "10.94.0.77", "MAC": "a6:d1:a0:51:03:49", "State": ["NUD_PERMANENT"], "IfIndex": index}
        sh("ip", "-n", ns1, "neigh", "del", "10.94.0.77", "dev", a)
        sh("ip", "-n", ns1, "route", "del", "10.93.0.0/16", "table", "2")
        assert await until(lambda: 2 not in _tables(m.one(Name=a)["Metadata"])
                           and len(m.one(Name=a)["Metadata"]["Neighbors"]) == 1, 5)
        # a neighbour learned by ARP: b's namespace forgets its static entry, then pings a
        ns2, b, mac_a = pair["ns2"], pair["b"], pair["mac_a"]
        sh("ip", "-n", ns2, "neigh", "del", "10.94.0.1", "dev", b)
        assert await until(lambda: not m.one(Name=b)["Metadata"].get("Neighbors"), 5)
        _ping(ns2, "10.94.0.1", 1)
        b_index = m.one(Name=b)["Metadata"]["IfIndex"]
        assert await until(lambda: m.one(Name=b)["Metadata"].get("Neighbors") == [
            {"IP": "10.94.0.1", "MAC": mac_a, "State": ["NUD_REACHABLE"], "IfIndex": b_index}], 5), \
            m.one(Name=b)["Metadata"].get("Neighbors")
        # a link set down: the kernel flushes its IPv4 routes without a netlink event; the probe dumps again
        sh("ip", "-n", ns1, "link", "set", a, "down")
        assert await until(lambda: _route(m.one(Name=a)["Metadata"], 254, "0.0.0.0/0") is None
                           and _route(m.one(Name=a)["Metadata"], 254, "10.94.0.0/24") is None, 5)
        # ethtool -K changes a feature: the kernel sends a link event, the probe reads the features again
        sh("ip", "netns", "exec", ns1, "ethtool", "-K", a, "tx-checksum-ip-generic", "off")
        assert await until(lambda: m.one(Name=a)["Metadata"]["Features"]["tx-checksum-ip-generic"] is False, 5)
    finally:
        await svc.stop()
        await m.close()
        sh("ip", "link", "del", br, check=False)


async def test_counter_deltas_of_a_real_ping(nats_url, unique, pair):
    ns1, a, b = pair["ns1"], pair["a"], pair["b"]
    svc, m = await start_probe(nats_url, unique, metrics_interval_s=0.5)
    try:
        assert await until(lambda: m.one(Name=a) and m.one(Name=b))
        before = dict(m.one(Name=a)["Metadata"]["Metric"])
        t0 = int(time.time() * 1000)
        _ping(ns1, "10.94.0.2", 7)
        assert await until(lambda: m.one(Name=a)["Metadata"]["Metric"]["TxPackets"] - before["TxPackets"] == 7, 5)
        await until(lambda: m.one(Name=a)["Metadata"]["Metric"]["RxPackets"] - before["RxPackets"] == 7, 5)
        md = m.one(Name=a)["Metadata"]
        metric = md["Metric"]
        counters = ("TxPackets", "RxPackets", "TxBytes", "RxBytes", "TxErrors", "RxErrors", "TxDropped", "RxDropped")
        assert {k: metric[k] - before[k] for k in counters} == {
            "TxPackets": 7, "RxPackets": 7, "TxBytes": 7 * PING_FRAME, "RxBytes": 7 * PING_FRAME,
            "TxErrors": 0, "RxErrors": 0, "TxDropped": 0, "RxDropped": 0}
        # the last refresh's delta: within the ping, and the peer counts the same packets the other way
        lum = md["LastUpdateMetric"]
        assert lum["Start"] >= t0 - 1000 and lum["Last"] == metric["Last"] and lum["Start"] < lum["Last"]
        assert 0 < lum["TxPackets"] <= 7 and lum["TxBytes"] == lum["TxPackets"] * PING_FRAME
        assert await until(lambda: m.one(Name=b)["Metadata"]["Metric"]["RxPackets"] == 7, 5)
        peer = m.one(Name=b)["Metadata"]["Metric"]  # nothing else crossed the pair: no IPv6, static ARP
        assert (peer["RxPackets"], peer["TxPackets"], peer["RxBytes"]) == (7, 7, 7 * PING_FRAME)
    finally:
        await svc.stop()
        await m.close()


@pytest.fixture
async def stack(nats_url: str, clickhouse_url: str, unique: str):
    s = Stack(dict(env={}, nats_url=nats_url, subject_prefix=f"im{unique}", host_id=f"host-{unique}",
                   clickhouse_url=clickhouse_url, clickhouse_database=f"im_{unique}"))
    await s.start_host(metrics_interval_s=1.0, metadata=HOST_METADATA)
    async with client(s) as http:
        yield http, f"host-{unique}"
    await s.stop()


async def _q(http: httpx.AsyncClient, q: str) -> Any:
    r = await http.post("/api/topology", json={"GremlinQuery": q})
    assert r.status_code == 200, f"{q}: {r.status_code} {r.text}"
    return r.json()


def _split(metrics: list[dict[str, Any]], slice_ms: int, key: str) -> dict[int, int]:
    """Slice start -> counter, each metric spread in proportion to its time in each slice (Skydive)."""
    sums: dict[int, float] = {}
    for mt in metrics:
        s, last = mt["Start"], mt["Last"]
        for t in range(s // slice_ms * slice_ms, last + 1, slice_ms):
            share = (min(t + slice_ms, last) - max(t, s)) / (last - s)
            if share > 0:
                sums[t] = sums.get(t, 0.0) + mt[key] * share
    return {t: round(v) for t, v in sums.items()}


@pytest.mark.slow
async def test_history_metrics_nexthop_and_host_metadata_through_the_api(stack, pair):
    http, host = stack
    ns1, a, mac_b = pair["ns1"], pair["a"], pair["mac_b"]
    sh("ip", "-n", ns1, "route", "add", "10.93.0.0/16", "via", "10.94.0.2", "metric", "5")

    async def nexthop() -> Any:
        r = await http.post("/api/topology", json={"GremlinQuery": f"G.V().Has('Name','{a}').NextHop('10.93.1.1')"})
        return r.json() if r.status_code == 200 else None

    assert await wait_for(lambda: _has_nexthop(nexthop), 10)
    [node] = await _q(http, f"G.V().Has('Name','{a}')")
    assert await nexthop() == [{node["ID"]: {"Priority": 5, "IP": "10.94.0.2", "MAC": mac_b,
                                             "IfIndex": node["Metadata"]["IfIndex"]}}]
    # an address on the link itself: no gateway, the MAC from the neighbour table
    assert await _q(http, f"G.V().Has('Name','{a}').NextHop('10.94.0.2')") == [
        {node["ID"]: {"Priority": 0, "IP": "10.94.0.2", "MAC": mac_b, "IfIndex": node["Metadata"]["IfIndex"]}}]
    # host metadata from the configuration; arrays match element-wise
    for q in ("Has('tags','blue')", "Has('tags','red')", "Has('mydict.value',123)", "Has('myarrays.integers',1)",
              "Has('myarrays.strings','cat')", "Has('myarrays.bools',true)"):
        assert await _q(http, f"G.V().Has('Type','host','Name','{host}').{q}.Count()") == 1, q
    assert await _q(http, f"G.V().Has('Type','host','Name','{host}').Has('tags','green').Count()") == 0

    # 9 pings: the counters go to history, a revision per refresh that saw them move
    t0 = int(time.time() * 1000)
    _ping(ns1, "10.94.0.2", 9)

    async def summed() -> Any:
        now = int(time.time() * 1000)
        r = await http.post("/api/topology", json={
            "GremlinQuery": f"G.Context({now}, {(now - t0) // 1000 + 5}).V().Has('Name','{a}').Metrics().Sum()"})
        return r.json() if r.status_code == 200 else r.text

    async def nine() -> bool:
        s = await summed()
        return isinstance(s, dict) and s.get("TxPackets") == 9 and s.get("RxPackets") == 9

    assert await wait_for(nine, 15), await summed()
    now = int(time.time() * 1000)
    window = (now - t0) // 1000 + 5
    total = await _q(http, f"G.Context({now}, {window}).V().Has('Name','{a}').Metrics().Sum()")
    assert {k: total[k] for k in ("TxPackets", "RxPackets", "TxBytes", "RxBytes", "TxErrors", "RxDropped")} == {
        "TxPackets": 9, "RxPackets": 9, "TxBytes": 9 * PING_FRAME, "RxBytes": 9 * PING_FRAME, "TxErrors": 0,
        "RxDropped": 0}
    [per_node] = await _q(http, f"G.Context({now}, {window}).V().Has('Name','{a}').Metrics()")
    metrics = per_node[node["ID"]]
    assert sum(mt["TxPackets"] for mt in metrics) == 9 and all(mt["Start"] < mt["Last"] for mt in metrics)
    [agg] = await _q(http, f"G.Context({now}, {window}).V().Has('Name','{a}').Metrics().Aggregates(10)")
    slices = agg["Aggregated"]
    assert all(s["Last"] - s["Start"] == 10_000 and s["Start"] % 10_000 == 0 for s in slices)
    assert {s["Start"]: s["TxPackets"] for s in slices} == _split(metrics, 10_000, "TxPackets")
    # live, the node shows its last refresh's delta only
    [live] = await _q(http, f"G.V().Has('Name','{a}').Metrics()")
    assert live[node["ID"]] == [metrics[-1]]


async def _has_nexthop(nexthop: Any) -> bool:
    got = await nexthop()
    return bool(got) and bool(got[0])
