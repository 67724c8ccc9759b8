"""Conformance suite of the Gremlin dialect: a table of queries over a fixed topology, its revision history and
a fixed flow set, all stored in a real ClickHouse (the `clickhouse_url` fixture) and a live graph.

The data is `tests/gremlin_testdata.py` (see its docstring for the topology and the timeline). Each case is
(query, expectation); expectations compare real values: counts, sorted values, node IDs, or an error status.
"""

from __future__ import annotations

import struct
import time
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from netsonde.common import flowschema as fs
from netsonde.common.clickhouse import connect, run_migrations
from netsonde.graph_builder.schema import MIGRATIONS as HISTORY_MIGRATIONS
from netsonde.gremlin import FlowStore, GremlinEngine, GremlinError, HistoryStore, QueryLimits
from tests import gremlin_testdata as td

T0 = td.T0


@dataclass(frozen=True)
class Case:
    query: str
    check: Callable[[Any], bool]
    expected: Any

    def __str__(self) -> str:
        return self.query


def count(q: str, n: int) -> Case:
    return Case(q, lambda r: r == n, n)


def values(q: str, vals: list[Any]) -> Case:
    """Same values, any order."""
    return Case(q, lambda r: isinstance(r, list) and sorted(map(repr, r)) == sorted(map(repr, vals)), vals)


def ordered(q: str, vals: list[Any]) -> Case:
    return Case(q, lambda r: r == vals, vals)


def ids(q: str, id_list: list[str]) -> Case:
    """Node/edge results with these IDs (any order, duplicates counted)."""
    return Case(q, lambda r: isinstance(r, list) and sorted(x["ID"] for x in r) == sorted(id_list), id_list)


def error(q: str, status: int = 400, text: str = "") -> Case:
    return Case(q, lambda r: isinstance(r, GremlinError) and r.status == status and text in str(r),
                f"GremlinError {status} {text!r}")


def check(q: str, fn: Callable[[Any], bool], what: str) -> Case:
    return Case(q, fn, what)


LIVE_GRAPH = [
    # sources, G forms, quoting
    count("G.V().Count()", 15),
    count("g.V().Count()", 15),
    count("G.E().Count()", 20),
    check("G", lambda r: len(r) == 1 and len(r[0]["Nodes"]) == 15 and len(r[0]["Edges"]) == 20, "whole graph"),
    ids("G.V('n-eth0')", ["n-eth0"]),
    ids('G.V("n-eth0")', ["n-eth0"]),
    ids("G.E('e-veth1')", ["e-veth1"]),
    ids("G.V('Name', 'lo')", ["n-lo", "n-vm1lo"]),
    ids("G.V('Name', 'eth0', 'Type', 'device')", ["n-eth0"]),
    count("G.E('RelationType', 'layer2').Count()", 6),
    # Has and friends
    ids("G.V().Has('Name', 'eth0')", ["n-eth0", "n-vm1eth0", "n-vm2eth0"]),
    ids("G.V().Has(\"Name\", \"br-int\", \"Type\", \"ovsbridge\")", ["n-brint"]),
    count("G.V().Has('Type', 'veth').Count()", 4),
    count("G.V().Has('Type', 'device').Count()", 3),
    count("G.V().Has('State').Count()", 7),
    count("G.V().HasKey('State').Count()", 7),
    count("G.V().HasNot('State').Count()", 8),
    count("G.V().Has('IPV4').Count()", 5),
    ids("G.V().Has('IPV4', '10.0.0.1/24')", ["n-eth0"]),
    ids("G.V().Has('IPV4', '10.1.0.20/16')", ["n-vm2eth0"]),
    ids("G.V().Has('MAC', '02:00:00:00:01:02')", ["n-vm1eth0"]),
    ids("G.V().Has('TID', 'tid-brint')", ["n-brint"]),
    ids("G.V().Has('IfIndex', 6)", ["n-vm1veth"]),
    ids("G.V().Has('Inode', 4002)", ["n-ns2"]),
    ids("G.V().Has('MTU', 9000)", ["n-eth0"]),
    ids("G.V().Has('MTU', 9000.0)", ["n-eth0"]),
    count("G.V().Has('Name', 'nothere').Count()", 0),
    count("G.V().HasEither('Type', 'netns', 'Type', 'host').Count()", 3),
    count("G.V().HasEither('Name', 'web', 'MTU', 9000).Count()", 2),
    ids("G.V().Has('Features.highdma', true)", ["n-eth0"]),
    ids("G.V().Has('Features.tso', false)", ["n-eth0"]),
    ids("G.V().Has('Docker.Labels.io.kubernetes.pod.namespace', 'my-ns')", ["n-ctr"]),
    ids("G.V().Has('Docker.Labels.app', 'web')", ["n-ctr"]),
    ids("G.V().Has('Docker.Image', 'nginx:1.25')", ["n-ctr"]),
    ids("G.V().Has('Captures.ID', 'cap-1')", ["n-vm1veth"]),
    ids("G.V().Has('Captures.State', 'active')", ["n-vm1veth"]),
    ids("G.V().Has('LinkFlags', 'LOWER_UP')", ["n-eth0"]),
    ids("G.V().Has('CPU.Cores', 2)", ["n-host"]),
    ids("G.V().Has('RoutingTables.Routes.Prefix', '0.0.0.0/0')", ["n-host"]),
    ids("G.V().Has('RoutingTables.Routes.NextHops.IP', '10.0.0.253')", ["n-host"]),
    ids("G.V().Has('@ID', 'n-lo')", ["n-lo"]),
    ids("G.V().Has('@Revision', 3)", ["n-eth0"]),
    ids("G.V().Has('@Revision', Gt(1))", ["n-eth0", "n-lo"]),
    count("G.V().Has('@Host', 'h1').Count()", 15),
    count("G.V().Has('@Origin', 'graph-builder.h1').Count()", 15),
    count(f"G.V().Has('@CreatedAt', Gte({T0 + 10})).Count()", 5),
    count("G.V().Has('@DeletedAt').Count()", 0),
    count("G.E().Has('@Parent', 'n-host').Count()", 7),
    count("G.E().Has('@Child', 'n-ns1').Count()", 2),
    # predicates
    count("G.V().Has('MTU', Gt(1500)).Count()", 3),
    count("G.V().Has('MTU', Gte(1500)).Count()", 6),
    count("G.V().Has('MTU', Lt(1500)).Count()", 2),
    count("G.V().Has('MTU', Lte(1500)).Count()", 5),
    count("G.V().Has('MTU', Inside(1450, 9000)).Count()", 3),
    count("G.V().Has('MTU', Outside(1450, 9000)).Count()", 2),
    count("G.V().Has('MTU', Between(1450, 1500)).Count()", 2),
    count("G.V().Has('MTU', Between(1450, 1501)).Count()", 5),
    count("G.V().Has('State', Ne('UP')).Count()", 1),
    count("G.V().Has('State', NE('UP')).Count()", 1),
    count("G.V().Has('State', Nee('UP')).Count()", 9),
    count("G.V().Has('State', NEE('UP')).Count()", 9),
    ids("G.V().Has('Name', 'br-int', 'Type', Ne('ovsbridge'))", ["n-brintif"]),
    count("G.V().Has('Type', Within('ovsbridge', 'ovsport')).Count()", 3),
    count("G.V().Has('Type', Without('veth', 'device')).Count()", 8),
    count("G.V().Has('Name', Regex('br-.*')).Count()", 2),
    count("G.V().Has('Name', Regex('eth')).Count()", 0),
    count("G.V().Has('Name', Regex('.*eth.*')).Count()", 5),
    count("G.V().Has('Name', Regex('e.h0')).Count()", 3),
    count("G.V().Has('Name', Regex('vm[12]-veth')).Count()", 2),
    count("G.V().Has('IPV4', Ipv4Range('10.0.0.0/8')).Count()", 2),
    count("G.V().Has('IPV4', Ipv4Range('192.168.1.0/24')).Count()", 2),
    count("G.V().Has('IPV4', IPV4RANGE('127.0.0.0/8')).Count()", 2),
    count("G.V().Has('IPV4', Ipv4Range('172.16.0.0/12')).Count()", 0),
    count("G.V().Has('Name', Regex('mir.*'), 'Type', 'internal').HasKey('TID').Count()", 0),
    count("G.V().Has('Name', Regex('br.*'), 'Type', 'internal').HasKey('TID').Count()", 1),
    # moves
    count("G.V().Has('Type', 'host').Out().Count()", 7),
    values("G.V().Has('Type', 'host').Out().Values('Name')",
           ["eth0", "lo", "br-int", "ns1", "ns2", "vm1-veth", "vm2-veth"]),
    count("G.V().Has('Name', 'br-int', 'Type', 'ovsbridge').Out().Count()", 5),
    count("G.V().Has('Name', 'br-int', 'Type', 'ovsbridge').Out().Dedup().Count()", 3),
    count("G.V().Has('Name', 'br-int', 'Type', 'ovsbridge').Out('Type', 'ovsport').Count()", 4),
    ids("G.V().Has('Name', 'br-int', 'Type', 'ovsbridge').Out('Type', 'internal', 'Driver', 'openvswitch')",
        ["n-brintif"]),
    ids("G.V().Has('Name', 'port1').In()", ["n-brint", "n-brint"]),
    ids("G.V().Has('Name', 'port1').In().Dedup()", ["n-brint"]),
    ids("G.V().Has('Name', 'vm1-veth').Both()", ["n-host", "n-port1", "n-vm1eth0"]),
    ids("G.V().Has('Name', 'vm1-veth').Both('Type', 'veth')", ["n-vm1eth0"]),
    ids("G.V().Has('Name', 'ns1', 'Type', 'netns').Out('Name', 'eth0', 'Type', 'veth')", ["n-vm1eth0"]),
    ids("G.V().Has('Type', 'veth', 'Name', 'vm2-veth').Both('Type', 'veth', 'Name', 'eth0')", ["n-vm2eth0"]),
    ids("G.V('n-ns1').In()", ["n-host", "n-ctr"]),
    ids("G.V('n-host').Out().Out()",
        ["n-port1", "n-port1", "n-port2", "n-port2", "n-brintif", "n-vm1eth0", "n-vm1lo", "n-vm2eth0",
         "n-vm1eth0", "n-vm2eth0"]),
    count("G.V('n-host').Out().Out().Out().Count()", 4),
    count("G.V('n-host').OutE().Count()", 7),
    count("G.V('n-host').OutE('RelationType', 'ownership').Count()", 7),
    ids("G.V('n-port1').BothE()", ["e-brint-port1-o", "e-brint-port1-l", "e-port1-vm1veth"]),
    ids("G.V('n-vm1eth0').InE()", ["e-ns1-vm1eth0", "e-veth1"]),
    ids("G.V('n-vm1eth0').InE('Type', 'veth')", ["e-veth1"]),
    ids("G.V('n-vm1eth0').InE().Has('RelationType', 'ownership').InV()", ["n-ns1"]),
    ids("G.V('n-vm1veth').OutE().Has('RelationType', 'layer2').OutV()", ["n-vm1eth0"]),
    ids("G.E('e-veth1').OutV()", ["n-vm1eth0"]),
    ids("G.E('e-veth1').InV()", ["n-vm1veth"]),
    ids("G.E('e-veth1').BothV()", ["n-vm1veth", "n-vm1eth0"]),
    ids("G.E('e-veth1').BothV('Name', 'eth0')", ["n-vm1eth0"]),
    ids("G.V().Has('Name', 'eth0', 'Type', Ne('device')).InE().Has('RelationType', 'ownership').InV()"
        ".Has('Type', 'netns')", ["n-ns1", "n-ns2"]),
    count("G.E().Has('RelationType', 'ownership').Count()", 13),
    count("G.E().Has('RelationType', 'layer2').Count()", 6),
    count("G.E().Has('Type', 'veth').Count()", 2),
    count("G.E().Has('Weight', Gt(2)).Count()", 1),
    count("G.E().HasNot('Type').Count()", 18),
    # dedup, count, slicing, sort
    count("G.V().Dedup().Count()", 15),
    count("G.V().Dedup('Name').Count()", 11),
    count("G.V().Dedup('Name', 'Type').Count()", 13),
    count("G.V().Values('Name').Dedup().Count()", 11),
    ordered("G.V().Sort().Limit(3).Values('Name')", ["h1", "eth0", "lo"]),
    ordered("G.V().Sort(ASC).Range(1, 3).Values('Name')", ["eth0", "lo"]),
    ordered("G.V().Sort(DESC).Limit(1).Values('Name')", ["web"]),
    ordered("G.V().Has('MTU').Sort('MTU').Values('MTU')", [1450, 1450, 1500, 1500, 1500, 9000, 65536, 65536]),
    ordered("G.V().Has('MTU').Sort(DESC, 'MTU').Values('MTU')", [65536, 65536, 9000, 1500, 1500, 1500, 1450, 1450]),
    ordered("G.V().Has('Type', 'netns').Sort(DESC, 'Name').Values('Name')", ["ns2", "ns1"]),
    ordered("G.V().Has('Type', 'netns').Sort('@ID').Values('@ID')", ["n-ns1", "n-ns2"]),
    count("G.V().Limit(4).Count()", 4),
    count("G.V().Limit(0).Count()", 0),
    count("G.V().Range(10, 100).Count()", 5),
    count("G.E().Limit(3).Count()", 3),
    # values, keys, maps, sums
    values("G.V().Has('Type', 'netns').Values('Path')", ["/var/run/netns/ns1", "/var/run/netns/ns2"]),
    values("G.V().Has('Name', 'vm2-veth').Values('State')", ["DOWN"]),
    values("G.V().Has('Type', 'netns').ValueMap('Name', 'Inode')",
           [{"Name": "ns1", "Inode": 4001}, {"Name": "ns2", "Inode": 4002}]),
    values("G.V('n-eth0').Values('IPV4')", [["10.0.0.1/24"]]),
    values("G.V('n-eth0').Values('Features.highdma')", [True]),
    values("G.V('n-ns1').Values('@ID')", ["n-ns1"]),
    values("G.V('n-eth0').Values('Revision')", [3]),
    ordered("G.V('n-ns1').Keys()",
            ["@CreatedAt", "@DeletedAt", "@Host", "@ID", "@Origin", "@Revision", "@UpdatedAt", "Inode", "Name",
             "Path", "TID", "Type"]),
    check("G.E('e-ctr-ns1').Keys()", lambda r: "@Parent" in r and "Weight" in r and "RelationType" in r, "edge keys"),
    count("G.V().Sum('MTU')", 147472),
    count("G.V().Has('Type', 'netns').Sum('Inode')", 8003),
    count("G.E().Sum('Weight')", 3),
    # As / Select
    count("G.V().Has('Type', 'netns').As('ns').Out().As('intf').Select('ns', 'intf').Count()", 5),
    ids("G.V().Has('Type', 'host').As('h').Out().Has('Type', 'netns').As('n').Select('h')", ["n-host"]),
    # graph algorithms
    check("G.V('n-vm1eth0').ShortestPathTo(Metadata('Name', 'vm2-veth'))",
          lambda r: len(r) == 1 and len(r[0]) == 4 and r[0][0]["ID"] == "n-vm1eth0" and r[0][-1]["ID"] == "n-vm2veth",
          "one 4-node path"),
    check("G.V('n-vm1eth0').ShortestPathTo(Metadata('Name', 'vm2-veth'), Metadata('RelationType', 'layer2'))",
          lambda r: [n["ID"] for n in r[0]] == ["n-vm1eth0", "n-vm1veth", "n-port1", "n-brint", "n-port2",
                                                "n-vm2veth"], "layer2 path"),
    count("G.V().Has('Type', 'netns').ShortestPathTo(Metadata('Type', 'host')).Count()", 2),
    count("G.V('n-vm1lo').ShortestPathTo(Metadata('Name', 'nothere')).Count()", 0),
    count("G.V('n-vm1eth0').ShortestPathTo(Metadata('Name', 'vm2-veth'), Metadata('RelationType', 'layer2'))"
          ".SubGraph().V().Count()", 6),
    count("G.V('n-vm1eth0').ShortestPathTo(Metadata('Name', 'vm2-veth'), Metadata('RelationType', 'layer2'))"
          ".SubGraph().E().Count()", 7),
    count("G.E().Has('RelationType', 'layer2').SubGraph().V().Count()", 7),
    count("G.E().Has('RelationType', 'layer2').SubGraph().E().Count()", 6),
    ids("G.E().Has('RelationType', 'layer2').SubGraph().V().Has('Name', 'eth0')", ["n-vm1eth0", "n-vm2eth0"]),
    count("G.V().Has('Type', Within('host', 'netns')).SubGraph().E().Count()", 2),
    count("G.V().Has('Type', Within('host', 'netns')).SubGraph('RelationType', 'layer2').E().Count()", 0),
    check("G.V().Has('Type', 'netns').SubGraph()",
          lambda r: len(r[0]["Nodes"]) == 2 and r[0]["Edges"] == [], "graph of 2 nodes"),
    ids("G.V('n-host').Descendants()",
        ["n-host", "n-eth0", "n-lo", "n-brint", "n-ns1", "n-ns2", "n-vm1veth", "n-vm2veth"]),
    count("G.V('n-host').Descendants(0).Count()", 14),
    count("G.V('n-host').Descendants(2).Count()", 14),
    count("G.V('n-brint').Descendants('RelationType', 'layer2', 0).Count()", 7),
    count("G.V('n-brint').Descendants('RelationType', 'layer2', 'RelationType', 'ownership', 1).Count()", 4),
    ids("G.V().Has('Docker.Labels.io.kubernetes.pod.namespace', 'my-ns').Descendants()", ["n-ctr"]),
    ids("G.V().Has('Docker.Labels.io.kubernetes.pod.namespace', 'my-ns').Descendants('RelationType', 'association')",
        ["n-ctr", "n-ns1"]),
    ids("G.V('n-vm1eth0').Ascendants()", ["n-vm1eth0", "n-ns1"]),
    ids("G.V('n-vm1eth0').Ascendants(0)", ["n-vm1eth0", "n-ns1", "n-host"]),
    ids("G.V('n-ns1').Neighbors()", ["n-ns1", "n-host", "n-vm1eth0", "n-vm1lo"]),
    ids("G.V('n-ns1').Neighbors('RelationType', 'association')", ["n-ns1", "n-ctr"]),
    count("G.V('n-ns1').Neighbors(0).Count()", 14),
    ordered("G.V('n-host').NextHop('8.8.8.8')",
            [{"n-host": {"Priority": 5, "IP": "10.0.0.253", "MAC": "aa:bb:cc:00:00:fd", "IfIndex": 2}}]),
    ordered("G.V('n-host').NextHop('10.0.0.7')",
            [{"n-host": {"Priority": 0, "IP": "10.0.0.7", "MAC": "aa:bb:cc:00:00:07", "IfIndex": 2}}]),
    ordered("G.V('n-host').NextHop('192.168.5.5')",
            [{"n-host": {"Priority": 0, "IP": "10.0.0.1", "MAC": "", "IfIndex": 2}}]),
    ordered("G.V('n-eth0').NextHop('8.8.8.8')", []),
    # interface metrics (live)
    check("G.V().Has('Name', 'eth0', 'Type', 'device').Metrics()",
          lambda r: list(r[0]) == ["n-eth0"] and r[0]["n-eth0"][0]["RxPackets"] == 30, "eth0's last metric"),
    count("G.V().Has('Type', 'device').Metrics().Sum('RxPackets')", 35),
    count("G.V().Has('Type', 'device').Metrics().Count()", 2),
    check("G.V().Has('Type', 'device').Metrics().Sum()",
          lambda r: r["RxPackets"] == 35 and r["TxBytes"] == 7000 and r["Start"] == T0 + 10_000
          and r["Last"] == T0 + 40_000, "one summed metric"),
    ordered("G.V().Has('Type', 'device').Metrics().Keys()",
            ["Last", "RxBytes", "RxPackets", "Start", "TxBytes", "TxPackets"]),
    check("G.V().Has('Type', 'device').Metrics().Aggregates(60)",
          lambda r: r == [{"Aggregated": [{"RxPackets": 35, "TxPackets": 70, "RxBytes": 3500, "TxBytes": 7000,
                                           "Start": T0, "Last": T0 + 60_000}]}], "one 60 s slice"),
    count("G.V().Has('Type', 'device').Metrics().Aggregates(10).Count()", 3),
    count("G.V().Has('Type', 'device').Metrics().Aggregates(60).Sum('TxPackets')", 70),
    ordered("G.V().Has('Type', 'netns').Metrics()", []),
]

HISTORY = [
    values(f"G.Context({T0 + 5000}).V().Has('Name', 'eth0', 'Type', 'device').Values('State')", ["UP"]),
    values(f"G.Context({T0 + 5000}).V().Has('Name', 'eth0', 'Type', 'device').Values('MTU')", [1500]),
    values(f"G.Context({T0 + 15000}).V().Has('Name', 'eth0', 'Type', 'device').Values('State')", ["DOWN"]),
    values(f"G.At({T0 + 15000}).V().Has('Name', 'eth0', 'Type', 'device').Values('@Revision')", [2]),
    values(f"G.Context({T0 + 25000}).V().Has('Name', 'eth0', 'Type', 'device').Values('MTU')", [9000]),
    count(f"G.Context({T0 + 15000}).V().Count()", 15),
    count(f"G.Context({T0 + 25000}).V().Count()", 16),
    count(f"G.Context({T0 + 25000}).E().Count()", 21),
    count(f"G.Context({T0 + 35000}).V().Count()", 15),
    count(f"G.Context({T0 + 35000}).E().Count()", 20),
    count(f"G.Context({T0 - 1000}).V().Count()", 0),
    count(f"G.Context({T0 + 7}).V().Count()", 8),
    count(f"G.Context({T0 + 25000}).V().Has('Name', 'h1').Out().Count()", 8),
    count(f"G.Context({T0 + 15000}).V().Has('Name', 'h1').Out().Count()", 7),
    count(f"G.Context({T0 + 30000}).V().Has('Name', 'tmp0').Count()", 0),
    count(f"G.Context({T0 + 29999}).V().Has('Name', 'tmp0').Count()", 1),
    values(f"G.Context({T0 + 45000}).V('n-lo').Values('@Revision')", [2]),
    ids(f"G.Context({T0 + 25000}).V().Has('Name', 'tmp0').In()", ["n-host"]),
    count(f"G.Context({T0 + 15000}).V().Has('IPV4', Ipv4Range('10.0.0.0/8')).Count()", 2),
    error(f"G.Context({T0 + 15000}).V('n-tmp0')", 400, "does not exist"),
    # time slices: every revision alive in the window
    count(f"G.Context({T0 + 35000}, 30).V().Has('Name', 'eth0', 'Type', 'device').Count()", 3),
    count(f"G.Context({T0 + 35000}, 30).V().Has('Name', 'eth0', 'Type', 'device').Dedup().Count()", 1),
    values(f"G.Context({T0 + 35000}, 30).V().Has('Name', 'eth0', 'Type', 'device').Values('State')",
           ["UP", "DOWN", "UP"]),
    values(f"G.Context({T0 + 35000}, '30s').V().Has('Name', 'tmp0').Values('@DeletedAt')", [T0 + 30000]),
    count(f"G.Context({T0 + 9000}, 5).V().Has('Name', 'eth0', 'Type', 'device').Count()", 1),
    count(f"G.Context({T0 + 12000}, '5s').V().Has('Name', 'eth0', 'Type', 'device').Count()", 2),
    values(f"G.Context({T0 + 45000}, FOREVER).V().Has('Name', 'eth0', 'Type', 'device').Values('@Revision')",
           [1, 2, 3]),
    count(f"G.Context({T0 + 45000}, FOREVER).V().Count()", 19),
    count(f"G.Context({T0 + 45000}, FOREVER).V().Dedup().Count()", 16),
    count(f"G.Context({T0 + 35000}, 30).V().Has('Type', 'host').Out().Has('Name', 'eth0').Count()", 3),
    count(f"G.Context({T0 + 35000}, 30).V().Has('State', 'DOWN').Count()", 2),
    count(f"G.Context({T0 + 35000}, '1m').E().Has('@DeletedAt').Count()", 1),
    count(f"G.Context({T0 + 45000}, 60).V().Has('Name', 'eth0', 'Type', 'device').Metrics().Count()", 3),
    count(f"G.Context({T0 + 45000}, 60).V().Has('Name', 'eth0', 'Type', 'device').Metrics().Sum('RxPackets')", 60),
    count(f"G.Context({T0 + 45000}, 60).V().Has('Name', 'lo', 'Type', 'device').Metrics().Count()", 2),
    count(f"G.Context({T0 + 45000}, 60).V().Has('Type', 'device').Metrics().Aggregates(120).Sum('RxPackets')", 66),
    # time formats
    values("G.At('2026-01-01T00:00:15Z').V().Has('Name', 'eth0', 'Type', 'device').Values('State')", ["DOWN"]),
    values("G.At('Thu, 01 Jan 2026 00:00:15 GMT').V().Has('Name', 'eth0', 'Type', 'device').Values('State')",
           ["DOWN"]),
    values(f"G.Context({(T0 + 15000) // 1000}).V().Has('Name', 'eth0', 'Type', 'device').Values('State')", ["DOWN"]),
    count("G.At('-1h').V().Count()", 15),
    count("G.Context('1 hour ago').V().Count()", 15),
    count("G.Context(NOW).V().Count()", 15),
    count("G.Context(NOW, '1h').V().Has('Name', 'eth0', 'Type', 'device').Count()", 1),
    count("G.Context('-1h', FOREVER).V().Has('Name', 'eth0', 'Type', 'device').Count()", 3),
]

FLOWS = [
    count("G.Flows().Count()", 6),
    values("G.Flows().Values('UUID')", ["f-icmp-a", "f-icmp-b", "f-tcp", "f-udp", "f-vxlan", "f-arp"]),
    count("G.Flows().Dedup().Count()", 5),
    count("G.Flows().Dedup('NodeTID').Count()", 5),
    count("G.Flows().Dedup('LayersPath').Count()", 5),
    count("G.Flows().Dedup('Network').Count()", 5),
    count("G.Flows().Has('Application', 'TCP').Count()", 1),
    count("G.Flows('Application', 'TCP').Count()", 1),
    count("G.Flows().Has('Network', '10.0.0.1').Count()", 3),
    count("G.Flows().Has('Network', '192.168.1.20').Count()", 2),
    values("G.Flows().Has('Network.B', '10.0.0.254').Values('UUID')", ["f-udp"]),
    values("G.Flows().Has('Link.B', 'ff:ff:ff:ff:ff:ff').Values('UUID')", ["f-arp"]),
    values("G.Flows().Has('Link', '02:00:00:00:00:0b').Values('UUID')", ["f-vxlan"]),
    count("G.Flows().HasEither('Network.A', '192.168.1.10', 'Transport.B', 53).Count()", 3),
    count("G.Flows().Has('Transport').Count()", 3),
    count("G.Flows().HasKey('ICMP').Count()", 2),
    values("G.Flows().HasNot('Network').Values('UUID')", ["f-arp"]),
    count("G.Flows().Has('ICMP.Type', 'ECHO').Count()", 2),
    count("G.Flows().Has('Metric.ABBytes', Gt(1065)).Count()", 2),
    count("G.Flows().Has('Metric.ABBytes', Inside(100, 1000)).Count()", 2),
    count("G.Flows().Has('Metric.ABBytes', Between(490, 1500)).Count()", 2),
    count("G.Flows().Has('Metric.ABBytes', Outside(100, 1000)).Count()", 4),
    count("G.Flows().Has('Metric.ABBytes', Lt(100)).Count()", 2),
    count("G.Flows().Has('Metric.ABBytes', Lte(80)).Count()", 2),
    count("G.Flows().Has('Metric.ABBytes', Gte(1500)).Count()", 2),
    count("G.Flows().Has('Metric.RTT', Gt(0)).Count()", 3),
    count("G.Flows().Has('LayersPath', Regex('Ethernet/IPv4/.*')).Count()", 5),
    count("G.Flows().Has('LayersPath', Regex('.*UDP.*')).Count()", 2),
    count("G.Flows().Has('LayersPath', Regex('UDP')).Count()", 0),
    count("G.Flows().Has('LayersPath', 'Ethernet/IPv4/ICMPv4').Count()", 2),
    count("G.Flows().Has('Transport.B', Within(53, 443)).Count()", 2),
    count("G.Flows().Has('Transport.B', Without(53, 443)).Count()", 4),
    count("G.Flows().Has('Network.A', Ne('10.0.0.1')).Count()", 2),
    count("G.Flows().Has('Network.A', Nee('10.0.0.1')).Count()", 3),
    count("G.Flows().Has('Network.B', Ipv4Range('10.0.0.0/24')).Count()", 2),
    count("G.Flows().Has('Network', Ipv4Range('192.168.0.0/16')).Count()", 2),
    values("G.Flows().Has('Transport.A', 43210).Values('UUID')", ["f-tcp"]),
    values("G.Flows().Has('Transport.A', '43210').Values('UUID')", ["f-tcp"]),
    count("G.Flows().Has('TrackingID', 'trk-icmp').Count()", 2),
    count("G.Flows().Has('NodeTID', 'tid-eth0', 'Application', 'DNS').Count()", 1),
    ordered("G.Flows().Sort().Values('UUID')", ["f-arp", "f-udp", "f-icmp-a", "f-icmp-b", "f-tcp", "f-vxlan"]),
    ordered("G.Flows().Sort(DESC, 'Start').Values('UUID')",
            ["f-icmp-a", "f-icmp-b", "f-udp", "f-arp", "f-vxlan", "f-tcp"]),
    ordered("G.Flows().Has('Network', '10.0.0.1').Sort('Metric.ABBytes').Values('Metric.ABBytes')", [80, 1500, 150000]),
    ordered("G.Flows().Sort().Limit(2).Values('UUID')", ["f-arp", "f-udp"]),
    ordered("G.Flows().Sort().Range(1, 3).Values('UUID')", ["f-udp", "f-icmp-a"]),
    values("G.Flows().Has('Application', 'DNS').Values('Network.A')", ["10.0.0.1"]),
    values("G.Flows().Has('Application', 'DNS').Values('Transport.B')", [53]),
    values("G.Flows().Has('Application', 'TCP').Values('Metric.ABPackets')", [12]),
    count("G.Flows().Sum('Metric.ABPackets')", 124),
    count("G.Flows().Dedup().Sum('Metric.ABPackets')", 119),
    count("G.Flows().Has('LayersPath', 'Ethernet/IPv4/ICMPv4').Dedup().Sum('Metric.ABPackets')", 5),
    check("G.Flows().Keys()", lambda r: "Network.A" in r and "Metric.ABBytes" in r and "UUID" in r, "flow keys"),
    check("G.Flows().Has('UUID', 'f-tcp')",
          lambda r: len(r) == 1 and r[0]["Transport"] == {"Protocol": "TCP", "A": 43210, "B": 443}
          and r[0]["Metric"]["ABPackets"] == 12 and r[0]["Network"]["B"] == "93.184.216.34", "latest f-tcp state"),
    count("G.V().Has('Name', 'eth0', 'Type', 'device').Flows().Count()", 2),
    count("G.V().Has('Type', 'host').Flows().Count()", 0),
    count("G.V().Has('Name', 'br-int', 'Type', 'ovsbridge').Flows().Count()", 1),
    count("G.V().Has('Type', 'netns').Out().Flows().Count()", 2),
    count("G.V().Flows('Application', 'ICMPv4').Count()", 2),
    count("G.V().Has('Name', 'br-int', 'Type', 'ovsbridge').Flows().Has('LayersPath', 'Ethernet/IPv4/UDP/VXLAN',"
          " 'NodeTID', 'tid-brint').Count()", 1),
    count("G.V('n-vm1eth0').ShortestPathTo(Metadata('Name', 'vm1-veth')).Flows().Count()", 2),
    ids("G.Flows().Has('Application', 'DNS').In()", ["n-eth0"]),
    ids("G.Flows().Has('Application', 'DNS').Out()", []),
    ids("G.Flows().Has('UUID', 'f-icmp-a').In()", ["n-vm1eth0"]),
    ids("G.Flows().Has('UUID', 'f-icmp-a').Out()", ["n-vm2eth0"]),
    ids("G.Flows().Has('UUID', 'f-icmp-a').Both()", ["n-vm1eth0", "n-vm2eth0"]),
    ids("G.Flows().Has('UUID', 'f-icmp-a').Out('Type', 'device')", []),
    ids("G.Flows().Has('UUID', 'f-vxlan').Hops()", ["n-brint"]),
    ids("G.Flows().Has('UUID', 'f-vxlan').CaptureNode()", ["n-brint"]),
    ids("G.Flows().Has('TrackingID', 'trk-icmp').Hops()", ["n-vm1eth0", "n-vm1veth"]),
    ids("G.Flows().Has('UUID', 'f-icmp-a').Nodes()", ["n-vm1eth0", "n-vm1eth0", "n-vm2eth0"]),
    ids("G.Flows().Has('UUID', 'f-arp').Nodes()", ["n-vm2eth0", "n-vm2eth0"]),
    count("G.Flows().Has('TrackingID', 'trk-icmp').Nodes().Dedup().Count()", 3),
    count("G.Flows().Group().Count()", 5),
    count("G.Flows().Group().MoreThan(1).Count()", 1),
    check("G.Flows().Group('NodeTID').MoreThan(1)",
          lambda r: list(r[0]) == ["tid-eth0"] and sorted(f["UUID"] for f in r[0]["tid-eth0"]) == ["f-tcp", "f-udp"],
          "tid-eth0 group"),
    count("G.Flows().Has('UUID', 'f-tcp').Metrics().Sum('ABPackets')", 6),
    count("G.Flows().Metrics().Count()", 6),
    check("G.Flows().Has('UUID', 'f-tcp').Metrics()",
          lambda r: list(r[0]) == ["f-tcp"] and r[0]["f-tcp"][0]["ABBytes"] == 750, "f-tcp last update metric"),
    check("G.Flows().Has('UUID', 'f-tcp').Metrics().Sum()", lambda r: r["BABytes"] == 4500, "summed flow metric"),
    count("G.Flows().Has('UUID', 'f-icmp-a').RawPackets().Count()", 2),
    count("G.Flows().Has('UUID', 'f-icmp-a').RawPackets().BPF('icmp[icmptype] == 0').Count()", 1),
    count("G.Flows().Has('UUID', 'f-icmp-a').RawPackets().BPF('icmp').Count()", 2),
    count("G.Flows().Has('UUID', 'f-icmp-a').RawPackets().BPF('tcp').Count()", 0),
    check("G.Flows().Has('UUID', 'f-icmp-a').RawPackets()",
          lambda r: [p["Index"] for p in r[0]["f-icmp-a"]] == [0, 1] and r[0]["f-icmp-a"][0]["LinkType"] == 1,
          "two raw packets"),
    ordered("G.Flows().Has('UUID', 'f-tcp').RawPackets()", []),
    # stored flows under a time context
    values(f"G.Context({T0 + 15000}, 10).Flows().Values('UUID')", ["f-old-1", "f-old-2"]),
    values(f"G.Context({T0 + 30000}, 10).Flows().Values('UUID')", ["f-old-3"]),
    values(f"G.Context({T0 + 30000}, 10).Flows().Values('Metric.ABPackets')", [7]),
    values(f"G.Context({T0 + 12000}).Flows().Values('Metric.ABPackets')", [25, 3]),
    values(f"G.Context({T0 + 16000}).Flows().Values('Metric.ABPackets')", [50, 3]),
    count(f"G.Context({T0 + 15000}, 10).Flows().Has('Application', 'TCP').Count()", 1),
    count(f"G.Context({T0 + 15000}, 10).V().Has('Name', 'eth0', 'Type', 'device').Flows().Count()", 1),
    count(f"G.Context({T0 + 16000}, 10).Flows().Has('UUID', 'f-old-1').Metrics().Count()", 2),
    count(f"G.Context({T0 + 16000}, 10).Flows().Has('UUID', 'f-old-1').Metrics().Sum('ABPackets')", 50),
    check(f"G.Context({T0 + 16000}, 10).Flows().Has('UUID', 'f-old-1').Metrics().Aggregates(60)",
          lambda r: r[0]["Aggregated"][0]["ABPackets"] == 50, "one aggregated slice"),
    count(f"G.Context({T0 + 60000}, 1).Flows().Count()", 0),
]

ERRORS = [
    error("G.V(", 400, "expected an argument"),
    error("G.V().Has('Name' 'x')", 400, "expected ',' or ')'"),
    error("G.V().Has('Name', 'x'", 400, "expected ',' or ')'"),
    error("G.V()..Count()", 400, "expected a step name"),
    error("x.V()", 400, "starts with 'G'"),
    error("G.V().Has('Name)", 400, "unterminated string"),
    error("G.V().Has(Name)", 400, "unknown keyword"),
    error("G.V().Foo()", 400, "unknown step Foo()"),
    error("G.V().Has('Name', Foo(1))", 400, "unknown predicate"),
    error("G.V().Has('MTU', Gt('x'))", 400, "takes numbers"),
    error("G.V().Has('MTU', Inside(1))", 400, "takes exactly 2"),
    error("G.V().Has('Name', Regex('('))", 400, "invalid regular expression"),
    error("G.V().Has('Name', 'a', 'Type')", 400, "key/value pairs"),
    error("G.V().Has(3, 'a')", 400, "key must be a string"),
    error("G.V().Limit('a')", 400, "must be a count"),
    error("G.V().Range(3, 1)", 400, "bad range"),
    error("G.V('nope')", 400, "does not exist"),
    error("G.E('nope')", 400, "does not exist"),
    error("G.V().Count().Out()", 400, "cannot follow"),
    error("G.V().Values('Name').Out()", 400, "cannot follow"),
    error("G.V().Select('x')", 400, "no node set named"),
    error("G.V().Context('-1h')", 400, "right after G"),
    error("G.Context('garbage').V()", 400, "cannot read time"),
    error("G.Context(NOW, 'soon').V()", 400, "cannot read duration"),
    error("G.V().ShortestPathTo('Name')", 400, "Metadata("),
    error("G.V().Sort(UP)", 400, "unknown keyword"),
    error("G.V().Sort(NOW)", 400, "ASC or DESC"),
    error("G.V().NextHop('not-an-ip')", 400, "not an IP"),
    error("G.Flows().Has('Bogus', 1)", 400, "unknown flow field"),
    error("G.Flows().Has('LayersPath', Gt(3))", 400, "numeric flow fields"),
    error("G.Flows().Sum()", 400, "needs a flow field"),
    error("G.Flows().RawPackets().BPF('not a filter (')", 400, "bad BPF expression"),
    error("G.V().Aggregates()", 400, "cannot follow"),
]

CASES = LIVE_GRAPH + HISTORY + FLOWS + ERRORS


@pytest.fixture(scope="module")
def engine(clickhouse_url: str, unique: str):
    db = f"gremlin_{unique}"
    run_migrations(clickhouse_url, db, "graph-builder", HISTORY_MIGRATIONS)
    run_migrations(clickhouse_url, db, fs.COMPONENT, fs.migrations(0))
    client = connect(clickhouse_url, db)
    td.insert_revisions(client, td.revisions())
    td.insert_flows(client, td.flow_updates(int(time.time() * 1000)))
    history = HistoryStore(lambda: connect(clickhouse_url, db))
    flows = FlowStore(lambda: connect(clickhouse_url, db))
    yield GremlinEngine(td.live_graph(), history=history, flows=flows,
                        limits=QueryLimits(timeout_s=30.0, max_results=10_000))
    history.close()
    flows.close()
    client.command(f"DROP DATABASE IF EXISTS `{db}`")
    client.close()


@pytest.fixture(scope="module")
def unique() -> str:  # module-scoped override: one database for the whole table
    import uuid
    return uuid.uuid4().hex[:8]


def test_table_size() -> None:
    assert len(CASES) >= 150
    assert len({c.query for c in CASES}) == len(CASES), "duplicate queries in the table"


@pytest.mark.parametrize("case", CASES, ids=str)
def test_query(engine: GremlinEngine, case: Case) -> None:
    try:
        result: Any = engine.execute(case.query)
    except GremlinError as exc:
        result = exc
    assert case.check(result), f"{case.query}\n  expected: {case.expected!r}\n  got: {result!r}"


def test_pcap_output(engine: GremlinEngine) -> None:
    body, kind = engine.execute_raw("G.Flows().Has('UUID', 'f-icmp-a').RawPackets()",
                                    accept="application/vnd.tcpdump.pcap")
    assert kind == "pcap"
    magic, major, minor, _, _, snaplen, linktype = struct.unpack("<IHHiIII", body[:24])
    assert (magic, major, minor, linktype) == (0xA1B2C3D4, 2, 4, 1)
    _, _, caplen, length = struct.unpack("<IIII", body[24:40])
    assert caplen == length == 50
    assert body[40 + 12:40 + 14] == b"\x08\x00"  # EtherType IPv4 of the first frame


def test_flow_filters_are_parameters(engine: GremlinEngine) -> None:
    """A user value never appears in the SQL text: it travels as a typed server-side parameter."""
    assert engine.execute("G.Flows().Has('Network.A', '10.0.0.1\\' OR 1=1 --').Count()") == 0
    sql = engine.flows.last_sql
    assert "OR 1=1" not in sql and "{p" in sql


def test_history_cache(engine: GremlinEngine) -> None:
    before = engine.history.queries
    assert engine.execute(f"G.Context({T0 + 17000}).V().Count()") == 15
    assert engine.execute(f"G.Context({T0 + 17000}).V().Has('Type', 'netns').Count()") == 2
    assert engine.history.queries == before + 1
    assert engine.execute(f"G.Context({T0 + 17001}).V().Count()") == 15  # absolute instants stay exact
    assert engine.history.queries == before + 2


def test_result_size_limit(engine: GremlinEngine) -> None:
    small = GremlinEngine(engine.graph, history=engine.history, flows=engine.flows,
                          limits=QueryLimits(timeout_s=30.0, max_results=3))
    assert small.execute("G.V().Has('Type', 'netns').Count()") == 2
    for q in ("G.V().Has('Type', 'veth')", "G.Flows()", "G.V('n-host').Out()"):
        with pytest.raises(GremlinError) as err:
            small.execute(q)
        assert err.value.status == 413, q


def test_time_limit(engine: GremlinEngine) -> None:
    slow = GremlinEngine(engine.graph, history=engine.history, flows=engine.flows,
                         limits=QueryLimits(timeout_s=0.0, max_results=1000))
    with pytest.raises(GremlinError) as err:
        slow.execute("G.V().Out().Out()")
    assert err.value.status == 408


def test_no_history_backend() -> None:
    plain = GremlinEngine(td.live_graph())
    with pytest.raises(GremlinError) as err:
        plain.execute("G.Context('-1h').V()")
    assert err.value.status == 400 and "history" in str(err.value)
    with pytest.raises(GremlinError) as err:
        plain.execute("G.Flows()")
    assert "flow store" in str(err.value)


def test_history_unavailable_is_503(clickhouse_url: str) -> None:
    """A database without graph_revisions: a clean 503, not a crash."""
    import uuid
    db = f"gremlin_empty_{uuid.uuid4().hex[:8]}"
    admin = connect(clickhouse_url)
    admin.command(f"CREATE DATABASE IF NOT EXISTS `{db}`")
    try:
        engine = GremlinEngine(td.live_graph(), history=HistoryStore(lambda: connect(clickhouse_url, db)),
                               flows=FlowStore(lambda: connect(clickhouse_url, db)))
        for q in ("G.At('-1m').V()", "G.Flows().Count()"):
            with pytest.raises(GremlinError) as err:
                engine.execute(q)
            assert err.value.status == 503, q
        assert engine.execute("G.V().Count()") == 15  # the live graph still answers
    finally:
        admin.command(f"DROP DATABASE IF EXISTS `{db}`")
        admin.close()
