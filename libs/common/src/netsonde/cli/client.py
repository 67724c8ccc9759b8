"""`netsonde client ...`: talk to query-api over HTTP (Skydive's `skydive client` verbs), on click + rich.

Answers print as JSON by default (as Skydive's client), or `--format yaml|table`; a refused request prints the
server's message on stderr and exits 1; an unreachable API exits 2.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import httpx
from rich.progress import BarColumn, DownloadColumn, Progress, TransferSpeedColumn

from . import output

FORMAT = click.Choice(output.FORMATS)


@dataclass
class ClientContext:
    """What every client command shares: the API address and the output format chosen on `client`."""

    analyzer: str
    format: str | None
    busy: bool = False
    """A progress bar is on screen (no spinner on top of it)."""

    def url(self, path: str) -> str:
        base = self.analyzer if self.analyzer.startswith("http") else f"http://{self.analyzer}"
        return base.rstrip("/") + path


def format_option(default: str | None = None) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """`--format` on a leaf command (overrides the one given to `client`)."""
    return click.option(
        "--format", "-o", "fmt", type=FORMAT, default=default, help="json (default), yaml, or a table"
    )


def _call(ctx: ClientContext, request: Callable[[httpx.Client], httpx.Response], fmt: str | None) -> None:
    """Send one request and print its answer in the chosen format (exits as `_send` does)."""
    resp = _send(ctx, request)
    if resp.content:
        try:
            data = resp.json()
        except ValueError:
            sys.stdout.write(resp.text)
            return
        output.emit(data, fmt or ctx.format or "json")


def _send(ctx: ClientContext, request: Callable[[httpx.Client], httpx.Response]) -> httpx.Response:
    """The answer of one request; exits 2 if the API cannot be reached, 1 (server's message) if it refuses.

    On a terminal a spinner shows while the API works (a long Gremlin query, a diff over hours), unless a
    progress bar (pcap upload) is already shown."""
    err = output.stderr()
    waiting: AbstractContextManager[object] = (
        err.status(f"waiting for {ctx.analyzer}") if err.is_terminal and not ctx.busy else nullcontext()
    )
    try:
        with waiting, httpx.Client(timeout=60) as http:
            resp = request(http)
    except httpx.HTTPError as exc:
        output.stderr().print(
            f"Error: cannot reach the API at {ctx.analyzer}: {exc}", markup=False, highlight=False
        )
        sys.exit(2)
    if resp.status_code >= 400:
        sys.exit(output.report_error(resp))
    return resp


@click.group("client", help="query and control a running Netsonde through its API")
@click.option(
    "--analyzer",
    default=lambda: os.environ.get("NETSONDE_ANALYZER", "127.0.0.1:8082"),
    show_default="127.0.0.1:8082, or $NETSONDE_ANALYZER",
    help="query-api address host:port",
)
@click.option(
    "--format",
    "-o",
    "fmt",
    type=FORMAT,
    default=None,
    help="output of every command: json (default), yaml, or a table",
)
@click.pass_context
def client(ctx: click.Context, analyzer: str, fmt: str | None) -> None:
    ctx.obj = ClientContext(analyzer, fmt)


pass_client = click.make_pass_decorator(ClientContext)


def crud_commands(group: click.Group, path: str, listed: str, shown: str, deleted: str) -> None:
    """`list`, `get ID` and `delete ID` of a group whose objects live at `/api/<path>[/<ID>]`."""

    @group.command("list", help=listed)
    @format_option()
    @pass_client
    def list_all(ctx: ClientContext, fmt: str | None) -> None:
        _call(ctx, lambda http: http.get(ctx.url(f"/api/{path}")), fmt)

    for verb, text in (("get", shown), ("delete", deleted)):
        _by_id_command(group, path, verb, text)


def _by_id_command(group: click.Group, path: str, verb: str, text: str) -> None:
    """`get ID` / `delete ID`: the HTTP method of the same name on `/api/<path>/<ID>`."""
    method = verb.upper()

    @group.command(verb, help=text)
    @click.argument("id_", metavar="ID")
    @format_option()
    @pass_client
    def by_id(ctx: ClientContext, id_: str, fmt: str | None) -> None:
        _call(ctx, lambda http: http.request(method, ctx.url(f"/api/{path}/{id_}")), fmt)


@client.group(help="the graph")
def topology() -> None:
    pass


@topology.command("query", help="run a Gremlin query")
@click.option("--gremlin", "-q", "query", required=True, help="e.g. \"G.V().Has('Type','veth')\"")
@click.option(
    "--output",
    "out_kind",
    type=click.Choice(["json", "pcap"]),
    default="json",
    help="pcap: the flows' packets as a pcap file on stdout",
)
@format_option()
@pass_client
def topology_query(ctx: ClientContext, query: str, out_kind: str, fmt: str | None) -> None:
    if out_kind == "pcap":
        headers = {"Accept": "application/vnd.tcpdump.pcap"}
        resp = _send(
            ctx,
            lambda http: http.post(ctx.url("/api/topology"), json={"GremlinQuery": query}, headers=headers),
        )
        sys.stdout.buffer.write(resp.content)
        return
    _call(ctx, lambda http: http.post(ctx.url("/api/topology"), json={"GremlinQuery": query}), fmt)


@client.command(help="the API's status")
@format_option()
@pass_client
def status(ctx: ClientContext, fmt: str | None) -> None:
    _call(ctx, lambda http: http.get(ctx.url("/api/status")), fmt)


@client.group(help="flow captures")
def capture() -> None:
    pass


@capture.command("create", help="start capturing on the nodes a Gremlin query selects")
@click.option("--gremlin", "-q", required=True)
@click.option("--type", "type_", default="", help="afpacket, pcap, ovssflow, sflow ...")
@click.option("--bpf", default="", help="BPF filter applied in the kernel")
@click.option("--name", default="")
@click.option("--description", default="")
@click.option("--header-size", type=int, default=0)
@click.option("--sampling-rate", type=int, default=1)
@click.option("--polling-interval", type=int, default=10)
@click.option("--layer-key-mode", type=click.Choice(["L2", "L3"]), default="L2")
@click.option("--extra-tcp-metric", is_flag=True)
@click.option("--ndpi", is_flag=True, help="deep packet inspection (nDPI application names)")
@click.option("--ip-defrag", is_flag=True, help="reassemble IPv4/IPv6 fragments before keying flows")
@click.option(
    "--drop-reasons", is_flag=True, help="ebpf: count the packets the kernel drops per flow and reason"
)
@click.option(
    "--reassemble-tcp",
    "--reassamble-tcp",
    is_flag=True,
    help="reassemble TCP streams (TCPMetric reassembly counters, DNS over TCP)",
)
@click.option(
    "--extra-layer",
    multiple=True,
    type=click.Choice(["DNS", "DHCPv4", "VRRP"]),
    help="decode this application layer into the flow (repeatable)",
)
@click.option("--target", default="", help="collector address for --target-type (host:port)")
@click.option(
    "--target-type",
    type=click.Choice(["", "netflowv5", "erspanv1"]),
    default="",
    help="also export the flows as NetFlow v5 / mirror the packets as ERSPAN to --target",
)
@format_option()
@pass_client
def capture_create(
    ctx: ClientContext,
    gremlin: str,
    type_: str,
    bpf: str,
    name: str,
    description: str,
    header_size: int,
    sampling_rate: int,
    polling_interval: int,
    layer_key_mode: str,
    extra_tcp_metric: bool,
    ndpi: bool,
    ip_defrag: bool,
    drop_reasons: bool,
    reassemble_tcp: bool,
    extra_layer: tuple[str, ...],
    target: str,
    target_type: str,
    fmt: str | None,
) -> None:
    body = {
        "GremlinQuery": gremlin,
        "Type": type_,
        "BPFFilter": bpf,
        "Name": name,
        "Description": description,
        "HeaderSize": header_size,
        "SamplingRate": sampling_rate,
        "PollingInterval": polling_interval,
        "LayerKeyMode": layer_key_mode,
        "ExtraTCPMetric": extra_tcp_metric,
        "NDPI": ndpi,
        "IPDefrag": ip_defrag,
        "DropReasons": drop_reasons,
        "ReassembleTCP": reassemble_tcp,
        "ExtraLayers": list(extra_layer),
        "Target": target,
        "TargetType": target_type,
    }
    _call(ctx, lambda http: http.post(ctx.url("/api/capture"), json=body), fmt)


crud_commands(capture, "capture", "list captures", "show one capture", "stop and remove a capture")


def _rendered(
    ctx: ClientContext,
    request: Callable[[httpx.Client], httpx.Response],
    json_flag: bool,
    fmt: str | None,
    render: Callable[[Any], str],
) -> None:
    """diff/path/loss: their own text table by default; --json or --format json/yaml/table otherwise."""
    chosen = "json" if json_flag else (fmt or ctx.format)
    if chosen is not None:
        _call(ctx, request, chosen)
        return
    print(render(_send(ctx, request).json()))


@client.command(help="what changed in the graph (and flows) between two instants")
@click.option("--from", "since", default="-1h", help="an instant: -1h, now, Unix s/ms, ISO 8601")
@click.option("--to", "until", default="now")
@click.option("--scope", default="", help="a Gremlin query selecting the nodes to look at")
@click.option("--no-flows", is_flag=True, help="leave out the flow changes")
@click.option("--json", "json_flag", is_flag=True, help="print the API's JSON answer")
@format_option()
@pass_client
def diff(
    ctx: ClientContext, since: str, until: str, scope: str, no_flows: bool, json_flag: bool, fmt: str | None
) -> None:
    from .diff_tables import render_diff

    params = {"from": since, "to": until, "flows": "0" if no_flows else "1"}
    if scope:
        params["scope"] = scope
    _rendered(ctx, lambda http: http.get(ctx.url("/api/diff"), params=params), json_flag, fmt, render_diff)


@client.command(help="a TrackingID's capture points along its path, loss between hops")
@click.argument("trackingid")
@click.option("--settle", default="10s", help="updates this close to now count as uncertainty")
@click.option("--json", "json_flag", is_flag=True)
@format_option()
@pass_client
def path(ctx: ClientContext, trackingid: str, settle: str, json_flag: bool, fmt: str | None) -> None:
    from .diff_tables import render_path

    _rendered(
        ctx,
        lambda http: http.get(ctx.url(f"/api/flowpath/{trackingid}"), params={"settle": settle}),
        json_flag,
        fmt,
        render_path,
    )


@client.command(help="where packets are lost: links ranked by packets lost")
@click.option("--window", default="5m")
@click.option("--settle", default="10s")
@click.option("--json", "json_flag", is_flag=True)
@format_option()
@pass_client
def loss(ctx: ClientContext, window: str, settle: str, json_flag: bool, fmt: str | None) -> None:
    from .diff_tables import render_loss

    _rendered(
        ctx,
        lambda http: http.get(ctx.url("/api/loss"), params={"window": window, "settle": settle}),
        json_flag,
        fmt,
        render_loss,
    )


@client.group(help="alerts: Gremlin expressions watched by alert-evaluator")
def alert() -> None:
    pass


@alert.command("create", help="fire when the expression returns something (a node, a non-zero count ...)")
@click.option("--expression", required=True, help="e.g. \"G.V().Has('Name','eth0','State','DOWN')\"")
@click.option(
    "--trigger", default="graph", help="graph (default), periodic:<duration> or duration:<duration>"
)
@click.option("--action", default="", help="webhook URL called with each firing/resolved event")
@click.option("--name", default="")
@click.option("--description", default="")
@format_option()
@pass_client
def alert_create(
    ctx: ClientContext,
    expression: str,
    trigger: str,
    action: str,
    name: str,
    description: str,
    fmt: str | None,
) -> None:
    body = {
        "Expression": expression,
        "Trigger": trigger,
        "Action": action,
        "Name": name,
        "Description": description,
    }
    _call(ctx, lambda http: http.post(ctx.url("/api/alert"), json=body), fmt)


crud_commands(alert, "alert", "list alerts with their state", "show one alert", "remove an alert")


def _upload(file: Path, progress: Progress) -> Iterator[bytes]:
    """The file in 1 MiB chunks, advancing the progress bar as httpx sends them."""
    task = progress.add_task(f"upload {file.name}", total=file.stat().st_size)
    with file.open("rb") as f:
        while chunk := f.read(1 << 20):
            yield chunk
            progress.advance(task, len(chunk))


@client.command(help="turn a pcap file into flows (stored like captured ones)")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--node-tid", default="", help="NodeTID to give the flows")
@click.option("--keep-time", is_flag=True, help="flows carry the packets' own timestamps (the default)")
@click.option(
    "--replay",
    is_flag=True,
    help="replay the file now at capture speed: times shifted so its first packet is now",
)
@format_option()
@pass_client
def pcap(
    ctx: ClientContext, file: Path, node_tid: str, keep_time: bool, replay: bool, fmt: str | None
) -> None:
    if keep_time and replay:
        raise click.UsageError("--keep-time and --replay exclude each other")
    err = output.stderr()
    progress = Progress(
        *Progress.get_default_columns()[:1],
        BarColumn(),
        DownloadColumn(),
        TransferSpeedColumn(),
        console=err,
        transient=True,
        disable=not err.is_terminal,
    )
    params = {"NodeTID": node_tid, "KeepTime": "0" if replay else "1"}
    headers = {"Content-Type": "application/vnd.tcpdump.pcap", "Content-Length": str(file.stat().st_size)}
    ctx.busy = True
    with progress:
        _call(
            ctx,
            lambda http: http.post(
                ctx.url("/api/pcap"), content=_upload(file, progress), params=params, headers=headers
            ),
            fmt,
        )
