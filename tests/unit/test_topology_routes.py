"""Route and neighbour parsing (messages built with pyroute2's rtmsg/ndmsg), Skydive's RoutingTables grouping,
the watcher's counter deltas (LastUpdateMetric), and the host metadata of the builder as the Gremlin engine
sees it (arrays match element-wise)."""

from __future__ import annotations

from typing import Any

import pytest
from pyroute2.netlink.rtnl.ndmsg import ndmsg
from pyroute2.netlink.rtnl.rtmsg import rtmsg

from netsonde.common.bus.graph import GraphElement
from netsonde.common.graph import Graph
from netsonde.gremlin import GremlinEngine
from netsonde.probe_topology.builder import build
from netsonde.probe_topology.config import ProbeTopologyConfig
from netsonde.common.config import ConfigError
from netsonde.probe_topology.netlink import iter_messages
from netsonde.probe_topology.netns import NetNs
from netsonde.probe_topology.nswatch import NsWatcher
from netsonde.probe_topology.routes import RouteState, parse_neigh_at, parse_route_at


def _wire(msg: Any) -> tuple[bytes, int, int]:
    msg.encode()
    data = bytes(msg.data)
    [(_t, _f, _s, off, end)] = list(iter_messages(data))
    return data, off, end


def route(family: int, dst_len: int, attrs: list, table: int = 254, proto: int = 3, flags: int = 0,
          rtype: int = 1) -> tuple:
    msg = rtmsg()
    msg["family"], msg["dst_len"], msg["table"], msg["proto"], msg["type"] = family, dst_len, table, proto, rtype
    msg["scope"], msg["flags"] = 0, flags
    msg["header"]["type"] = 24
    msg["attrs"] = attrs
    return parse_route_at(*_wire(msg))


def neigh(family: int, index: int, state: int, flags: int, attrs: list) -> tuple:
    msg = ndmsg()
    msg["family"], msg["ifindex"], msg["state"], msg["flags"], msg["ndm_type"] = family, index, state, flags, 1
    msg["header"]["type"] = 28
    msg["attrs"] = attrs
    return parse_neigh_at(*_wire(msg))


def test_ipv4_routes_default_table_and_metric():
    key, r = route(2, 0, [("RTA_GATEWAY", "10.0.0.254"), ("RTA_OIF", 3), ("RTA_PRIORITY", 100),
                          ("RTA_TABLE", 254)])
    assert (r.table, r.prefix, r.protocol, r.priority, r.hops) == (254, "0.0.0.0/0", 3, 100, (("10.0.0.254", 3),))
    _k, big = route(2, 24, [("RTA_DST", "10.1.0.0"), ("RTA_OIF", 4), ("RTA_TABLE", 1000),
                            ("RTA_PREFSRC", "10.1.0.5")], table=252, proto=2)
    assert (big.table, big.prefix, big.src, big.hops) == (1000, "10.1.0.0/24", "10.1.0.5", (("", 4),))
    assert route(2, 32, [("RTA_DST", "10.0.0.9"), ("RTA_OIF", 3)], flags=0x200) is None  # cache clone
    assert route(7, 0, [("RTA_OIF", 3)]) is None


def test_multipath_and_ipv6():
    _k, r = route(2, 16, [("RTA_DST", "10.9.0.0"), ("RTA_PRIORITY", 5), ("RTA_MULTIPATH", [
        {"oif": 3, "hops": 0, "attrs": [("RTA_GATEWAY", "10.0.0.1")]},
        {"oif": 4, "hops": 0, "attrs": [("RTA_GATEWAY", "10.0.1.1")]}])])
    assert r.hops == (("10.0.0.1", 3), ("10.0.1.1", 4)) and r.priority == 5
    k1, v6 = route(10, 64, [("RTA_DST", "2001:db8::"), ("RTA_OIF", 3), ("RTA_GATEWAY", "fe80::1")])
    k2, _ = route(10, 64, [("RTA_DST", "2001:db8::"), ("RTA_OIF", 4), ("RTA_GATEWAY", "fe80::2")])
    assert v6.prefix == "2001:db8::/64" and v6.hops == (("fe80::1", 3),)
    assert k1 != k2  # IPv6 ECMP siblings come (and go) one next hop per event


def test_routing_tables_grouped_as_skydive():
    st = RouteState()
    for msg in (route(2, 0, [("RTA_GATEWAY", "10.0.0.254"), ("RTA_OIF", 3), ("RTA_PRIORITY", 10)]),
                route(2, 0, [("RTA_GATEWAY", "10.0.0.253"), ("RTA_OIF", 3), ("RTA_PRIORITY", 20)]),
                route(2, 24, [("RTA_DST", "10.0.0.0"), ("RTA_OIF", 3), ("RTA_PREFSRC", "10.0.0.1")], proto=2),
                route(2, 16, [("RTA_DST", "192.168.0.0"), ("RTA_GATEWAY", "10.0.0.1"), ("RTA_OIF", 3),
                              ("RTA_TABLE", 2)], table=2),
                route(2, 8, [("RTA_DST", "172.0.0.0"), ("RTA_OIF", 9)]),
                route(2, 8, [("RTA_DST", "11.0.0.0")], rtype=6)):  # blackhole: no interface
        assert st.route_event(*msg)
    tables = st.routing_tables()
    assert sorted(tables) == [3, 9]
    assert tables[3] == [
        {"ID": 2, "Routes": [{"Protocol": 3, "Prefix": "192.168.0.0/16",
                              "NextHops": [{"Priority": 0, "IfIndex": 3, "IP": "10.0.0.1"}]}]},
        {"ID": 254, "Src": "10.0.0.1", "Routes": [
            {"Protocol": 3, "Prefix": "0.0.0.0/0", "NextHops": [{"Priority": 10, "IfIndex": 3, "IP": "10.0.0.254"},
                                                                {"Priority": 20, "IfIndex": 3, "IP": "10.0.0.253"}]},
            {"Protocol": 2, "Prefix": "10.0.0.0/24", "NextHops": [{"Priority": 0, "IfIndex": 3}]}]}]
    assert st.routing_tables() is tables  # cached until the next change
    key, _ = route(2, 8, [("RTA_DST", "172.0.0.0"), ("RTA_OIF", 9)])
    assert st.route_event(key, None) and 9 not in st.routing_tables()
    assert not st.route_event(key, None)
    assert st.drop_interface(3) and st.routing_tables() == {}


def test_neighbours():
    key, nb = neigh(2, 3, 0x02, 0x80, [("NDA_DST", "10.0.0.2"), ("NDA_LLADDR", "a6:d1:a0:51:03:49")])
    assert key == (3, 2, "10.0.0.2")
    assert nb == {"IP": "10.0.0.2", "IfIndex": 3, "State": ["NUD_REACHABLE"], "MAC": "a6:d1:a0:51:03:49",
                  "Flags": ["NTF_ROUTER"]}
    _k, incomplete = neigh(10, 3, 0x01, 0, [("NDA_DST", "fe80::9")])
    assert incomplete == {"IP": "fe80::9", "IfIndex": 3, "State": ["NUD_INCOMPLETE"]}
    assert neigh(7, 3, 0x80, 0x02, [("NDA_LLADDR", "a6:d1:a0:51:03:49")]) is None  # bridge FDB: not Neighbors
    st = RouteState()
    st.neigh_event(*neigh(2, 3, 0x80, 0, [("NDA_DST", "10.0.0.9"), ("NDA_LLADDR", "02:00:00:00:00:09")]))
    st.neigh_event(key, nb)
    assert [n["IP"] for n in st.neighbors()[3]] == ["10.0.0.2", "10.0.0.9"]
    st.forget_links({4})
    assert st.neighbors() == {}


def test_last_update_metric_is_the_delta_between_refreshes():
    w = NsWatcher(NetNs(1, "/proc/self/ns/net", "", "root"), lambda *_: None)
    c = {"RxPackets": 10, "TxPackets": 5, "RxBytes": 1000, "TxBytes": 500}
    w._refresh_metrics({2: dict(c)})
    assert 2 not in w.last_update  # nothing to compare with yet
    first = w._last_refresh_ms
    w._refresh_metrics({2: dict(c)})
    assert 2 not in w.last_update  # no change: no delta, Metric.Last stays
    w._last_refresh_ms = first  # as if the previous refresh were the first one
    w._refresh_metrics({2: {"RxPackets": 17, "TxPackets": 9, "RxBytes": 1700, "TxBytes": 900}})
    lum = w.last_update[2]
    assert {k: lum[k] for k in c} == {"RxPackets": 7, "TxPackets": 4, "RxBytes": 700, "TxBytes": 400}
    assert lum["Start"] == first and lum["Last"] == w.metric_ts[2] >= first


def test_host_metadata_and_array_has():
    cfg = ProbeTopologyConfig.load(env={"NETSONDE_METADATA": '{"tags": ["red", "blue"], "rack": {"row": 3}}'},
                                   host_id="h1", ovsdb="")
    state = build("h1", "box", [], None, cfg.metadata)
    [host] = state.nodes.values()
    assert host.Metadata["tags"] == ["red", "blue"] and host.Metadata["Name"] == "h1"
    g = Graph()
    g.upsert_node(GraphElement(ID=host.ID, Metadata=host.Metadata, Host="h1", Origin="o", CreatedAt=1,
                               UpdatedAt=1, Revision=1))
    e = GremlinEngine(g)
    assert e.execute("G.V().Has('tags', 'blue').Count()") == 1
    assert e.execute("G.V().Has('tags', Within('green', 'red')).Count()") == 1
    assert e.execute("G.V().Has('tags', 'green').Count()") == 0
    assert e.execute("G.V().Has('rack.row', 3).Count()") == 1
    with pytest.raises(ConfigError, match="Name"):
        ProbeTopologyConfig.load(env={"NETSONDE_METADATA": '{"Name": "x"}'}, ovsdb="")
    with pytest.raises(ConfigError, match="metadata"):
        ProbeTopologyConfig.load(env={"NETSONDE_METADATA": '[1]'}, ovsdb="")
    with pytest.raises(ConfigError, match="JSON"):
        ProbeTopologyConfig.load(env={"NETSONDE_METADATA": '{nope'}, ovsdb="")
