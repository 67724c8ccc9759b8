"""`netsonde client ...`: talk to query-api over HTTP (Skydive's `skydive client` verbs)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any

import httpx


def add_parser(sub: Any) -> None:
    p = sub.add_parser("client", help="query and control a running Netsonde through its API")
    p.add_argument("--analyzer", default=os.environ.get("NETSONDE_ANALYZER", "127.0.0.1:8082"),
                   help="query-api address host:port (default 127.0.0.1:8082)")
    csub = p.add_subparsers(dest="client_command", required=True)

    topo = csub.add_parser("topology", help="the graph").add_subparsers(dest="verb", required=True)
    q = topo.add_parser("query", help="run a Gremlin query")
    q.add_argument("--gremlin", required=True, help="e.g. \"G.V().Has('Type','veth')\"")
    q.add_argument("--output", choices=["json", "pcap"], default="json")

    csub.add_parser("status", help="the API's status")

    cap = csub.add_parser("capture", help="flow captures").add_subparsers(dest="verb", required=True)
    c = cap.add_parser("create", help="start capturing on the nodes a Gremlin query selects")
    c.add_argument("--gremlin", required=True)
    c.add_argument("--type", default="", help="afpacket, pcap, ovssflow, sflow ...")
    c.add_argument("--bpf", default="", help="BPF filter applied in the kernel")
    c.add_argument("--name", default="")
    c.add_argument("--description", default="")
    c.add_argument("--header-size", type=int, default=0)
    c.add_argument("--sampling-rate", type=int, default=1)
    c.add_argument("--polling-interval", type=int, default=10)
    c.add_argument("--layer-key-mode", default="L2", choices=["L2", "L3"])
    c.add_argument("--extra-tcp-metric", action="store_true")
    c.add_argument("--ndpi", action="store_true", help="deep packet inspection (nDPI application names)")
    c.add_argument("--ip-defrag", action="store_true", help="reassemble IPv4/IPv6 fragments before keying flows")
    c.add_argument("--reassemble-tcp", "--reassamble-tcp", action="store_true",
                   help="reassemble TCP streams (TCPMetric reassembly counters, DNS over TCP)")
    c.add_argument("--extra-layer", action="append", default=[], choices=["DNS", "DHCPv4", "VRRP"],
                   help="decode this application layer into the flow (repeatable)")
    c.add_argument("--target", default="", help="collector address for --target-type (host:port)")
    c.add_argument("--target-type", default="", choices=["", "netflowv5", "erspanv1"],
                   help="also export the flows as NetFlow v5 / mirror the packets as ERSPAN to --target")
    cap.add_parser("list", help="list captures")
    g = cap.add_parser("get", help="show one capture")
    g.add_argument("id")
    d = cap.add_parser("delete", help="stop and remove a capture")
    d.add_argument("id")

    df = csub.add_parser("diff", help="what changed in the graph (and flows) between two instants")
    df.add_argument("--from", dest="since", default="-1h", help="an instant: -1h, now, Unix s/ms, ISO 8601")
    df.add_argument("--to", default="now")
    df.add_argument("--scope", default="", help="a Gremlin query selecting the nodes to look at")
    df.add_argument("--no-flows", action="store_true", help="leave out the flow changes")
    df.add_argument("--json", action="store_true", help="print the API's JSON answer")
    pa = csub.add_parser("path", help="a TrackingID's capture points along its path, loss between hops")
    pa.add_argument("trackingid")
    pa.add_argument("--settle", default="10s", help="updates this close to now count as uncertainty")
    pa.add_argument("--json", action="store_true")
    lo = csub.add_parser("loss", help="where packets are lost: links ranked by packets lost")
    lo.add_argument("--window", default="5m")
    lo.add_argument("--settle", default="10s")
    lo.add_argument("--json", action="store_true")

    alert = csub.add_parser("alert", help="alerts: Gremlin expressions watched by alert-evaluator")
    al = alert.add_subparsers(dest="verb", required=True)
    a = al.add_parser("create", help="fire when the expression returns something (a node, a non-zero count ...)")
    a.add_argument("--expression", required=True, help="e.g. \"G.V().Has('Name','eth0','State','DOWN')\"")
    a.add_argument("--trigger", default="graph", help="graph (default), periodic:<duration> or duration:<duration>")
    a.add_argument("--action", default="", help="webhook URL called with each firing/resolved event")
    a.add_argument("--name", default="")
    a.add_argument("--description", default="")
    al.add_parser("list", help="list alerts with their state")
    ag = al.add_parser("get", help="show one alert")
    ag.add_argument("id")
    ad = al.add_parser("delete", help="remove an alert")
    ad.add_argument("id")

    pcap = csub.add_parser("pcap", help="turn a pcap file into flows (stored like captured ones)")
    pcap.add_argument("file")
    pcap.add_argument("--node-tid", default="", help="NodeTID to give the flows")
    when = pcap.add_mutually_exclusive_group()
    when.add_argument("--keep-time", action="store_true",
                      help="flows carry the packets' own timestamps (the default)")
    when.add_argument("--replay", action="store_true",
                      help="replay the file now at capture speed: times shifted so its first packet is now")


def _url(args: argparse.Namespace, path: str) -> str:
    base = args.analyzer if args.analyzer.startswith("http") else f"http://{args.analyzer}"
    return base.rstrip("/") + path


def _show(resp: httpx.Response) -> int:
    if resp.status_code >= 400:
        print(f"error {resp.status_code}: {resp.text.strip()}", file=sys.stderr)
        return 1
    if resp.content:
        try:
            print(json.dumps(resp.json(), indent=2))
        except ValueError:
            print(resp.text)
    return 0


def run(args: argparse.Namespace) -> int:
    try:
        with httpx.Client(timeout=60) as http:
            return _run(args, http)
    except httpx.HTTPError as exc:
        print(f"cannot reach the API at {args.analyzer}: {exc}", file=sys.stderr)
        return 2


def _run(args: argparse.Namespace, http: httpx.Client) -> int:
    cmd = args.client_command
    if cmd == "status":
        return _show(http.get(_url(args, "/api/status")))
    if cmd == "topology":
        headers = {"Accept": "application/vnd.tcpdump.pcap"} if args.output == "pcap" else {}
        resp = http.post(_url(args, "/api/topology"), json={"GremlinQuery": args.gremlin}, headers=headers)
        if args.output == "pcap" and resp.status_code == 200:
            sys.stdout.buffer.write(resp.content)
            return 0
        return _show(resp)
    if cmd == "capture":
        if args.verb == "create":
            body = {"GremlinQuery": args.gremlin, "Type": args.type, "BPFFilter": args.bpf, "Name": args.name,
                    "Description": args.description, "HeaderSize": args.header_size,
                    "SamplingRate": args.sampling_rate, "PollingInterval": args.polling_interval,
                    "LayerKeyMode": args.layer_key_mode, "ExtraTCPMetric": args.extra_tcp_metric, "NDPI": args.ndpi,
                    "IPDefrag": args.ip_defrag, "ReassembleTCP": args.reassemble_tcp,
                    "ExtraLayers": args.extra_layer, "Target": args.target, "TargetType": args.target_type}
            return _show(http.post(_url(args, "/api/capture"), json=body))
        if args.verb == "list":
            return _show(http.get(_url(args, "/api/capture")))
        if args.verb == "get":
            return _show(http.get(_url(args, f"/api/capture/{args.id}")))
        if args.verb == "delete":
            return _show(http.delete(_url(args, f"/api/capture/{args.id}")))
    if cmd in ("diff", "path", "loss"):
        from .diff_tables import render_diff, render_loss, render_path
        if cmd == "diff":
            params = {"from": args.since, "to": args.to, "flows": "0" if args.no_flows else "1"}
            if args.scope:
                params["scope"] = args.scope
            resp, render = http.get(_url(args, "/api/diff"), params=params), render_diff
        elif cmd == "path":
            resp = http.get(_url(args, f"/api/flowpath/{args.trackingid}"), params={"settle": args.settle})
            render = render_path
        else:
            resp = http.get(_url(args, "/api/loss"), params={"window": args.window, "settle": args.settle})
            render = render_loss
        if args.json or resp.status_code >= 400:
            return _show(resp)
        print(render(resp.json()))
        return 0
    if cmd == "alert":
        if args.verb == "create":
            body = {"Expression": args.expression, "Trigger": args.trigger, "Action": args.action,
                    "Name": args.name, "Description": args.description}
            return _show(http.post(_url(args, "/api/alert"), json=body))
        if args.verb == "list":
            return _show(http.get(_url(args, "/api/alert")))
        path = _url(args, f"/api/alert/{args.id}")
        return _show(http.get(path) if args.verb == "get" else http.delete(path))
    if cmd == "pcap":
        with open(args.file, "rb") as f:
            resp = http.post(_url(args, "/api/pcap"), content=f.read(),
                             params={"NodeTID": args.node_tid, "KeepTime": "0" if args.replay else "1"},
                             headers={"Content-Type": "application/vnd.tcpdump.pcap"})
        return _show(resp)
    return 2
