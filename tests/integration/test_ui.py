"""The web UI in headless Chromium (Debian's `chromium`, Playwright from PyPI) against Netsonde's services running
as processes: a namespace and veth created here appear on the map and in its node list, the node panel shows
the MAC and metrics, a capture created from the UI shows active on the node, the time slider shows the graph of
past instants, and a 10 000-node topology loads to a usable map (the time is printed).

Screenshots of each step go to a temporary directory printed at the start (NETSONDE_UI_SHOTS to choose it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import pytest

from bench.services import ServiceProcs
from tests.integration.flow_stack import TOPOLOGY_PLAIN, start_flow_stack
from netsonde.common.bus import Subjects, encode
from netsonde.common.bus import topology as topo
from tests.integration.query_api_http import api_call, gremlin, wait_until

pytestmark = [pytest.mark.root, pytest.mark.slow]

CHROMIUM = "/usr/bin/chromium"


def sh(*cmd: str) -> str:
    return subprocess.run(list(cmd), check=True, capture_output=True, text=True, timeout=30).stdout


@pytest.fixture(scope="module")
def shots() -> Path:
    d = Path(os.environ.get("NETSONDE_UI_SHOTS") or tempfile.mkdtemp(prefix="netsonde-ui-"))
    d.mkdir(parents=True, exist_ok=True)
    print(f"\nUI screenshots in {d}")
    return d


@contextlib.contextmanager
def ui_services(
    nats_url: str, clickhouse_url: str, name: str, alerts: bool = False, **topology: str
) -> Iterator[tuple[int, str]]:
    """Netsonde's services as processes under a fresh prefix `<name><tag>` (graph-builder, probe-topology with
    `topology` settings, query-api, flow-enricher, probe-flow, and alert-evaluator with `alerts`); yields the API
    port and the prefix once the host is in the API."""
    bundle = (
        Path(__file__).resolve().parents[2]
        / "services/query-api/src/netsonde/query_api/static/ui/manifest.json"
    )
    assert bundle.is_file(), f"the web UI bundle is not built ({bundle}): run `make ui`"
    assert Path(CHROMIUM).is_file(), f"{CHROMIUM} missing: `make deps` installs Debian's chromium"
    tag = f"{int(time.time() * 1000) % 10**9:09d}"
    prefix = f"{name}{tag}"
    procs = ServiceProcs(nats_url, clickhouse_url, prefix=prefix)
    procs.env["NETSONDE_CLICKHOUSE_DATABASE"] = f"{name}_{tag}"
    try:
        api, _ = start_flow_stack(procs, graph_builder={"history_flush_interval_s": "0.2"},
                                  topology={**TOPOLOGY_PLAIN, "metrics_interval_s": "1", **topology})
        if alerts:
            procs.start("alert_evaluator")
        wait_until(lambda: gremlin(api, "G.V().Has('Type','host').Count()") == 1, 30, "the host in the API")
        yield api, prefix
    finally:
        procs.stop()


@pytest.fixture(scope="module")
def stack(nats_url: str, clickhouse_url: str) -> Iterator[tuple[int, str]]:
    """graph-builder, probe-topology, query-api, flow-enricher and probe-flow as processes; yields the API port and the prefix."""
    with ui_services(nats_url, clickhouse_url, "ui") as api_prefix:
        yield api_prefix


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM)
        yield b
        b.close()


class Page:
    """A page of the UI that records console errors and uncaught exceptions."""

    def __init__(self, browser: Any, port: int) -> None:
        self.page = browser.new_page(viewport={"width": 1600, "height": 900})
        self.errors: list[str] = []
        self.page.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.failed: list[str] = []
        self.page.on(
            "response",
            lambda r: (
                self.failed.append(f"{r.status} {r.request.method} {r.url} {r.request.post_data or ''}")
                if r.status >= 400
                else None
            ),
        )
        self.url = f"http://127.0.0.1:{port}/"

    def open(self) -> float:
        started = time.perf_counter()
        self.page.goto(self.url)
        self.page.wait_for_selector("body[data-ready='1']", timeout=60_000)
        return time.perf_counter() - started

    def listed(self, name: str) -> bool:
        return bool(
            self.page.evaluate(
                "n => [...document.querySelectorAll('#node-list li button')].some(b => b.firstChild.textContent === n)",
                name,
            )
        )

    def on_map(self, name: str) -> bool:
        return bool(
            self.page.evaluate("n => window.netsonde.map.cy.nodes().some(x => x.data('name') === n)", name)
        )

    def wait(self, fn: Any, timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        while not fn():
            assert time.monotonic() < deadline, f"timed out waiting for {what} (page errors: {self.errors})"
            self.page.wait_for_timeout(100)

    def shot(self, d: Path, name: str) -> None:
        self.page.screenshot(path=str(d / name))


def test_map_panel_capture_and_time_slider(
    stack: tuple[int, str], browser: Any, shots: Path, unique: str
) -> None:
    api, _ = stack
    ns, vb, pb = f"uin{unique}", f"uv{unique}", f"up{unique}"
    xss = "<img src=x onerror=window.__xss=1>"
    status, _ = api_call(
        api, "/api/node", {"ID": f"xss{unique}", "Metadata": {"Name": xss, "Type": "switch"}}, "POST"
    )
    assert status == 201
    page = Page(browser, api)
    try:
        page.open()
        page.shot(shots, "01-map-loaded.png")
        # strings from the graph are text: a node named like markup is listed as such and runs nothing
        page.wait(lambda: page.listed(xss), 5, "the static node in the list")
        page.page.locator("#node-list li button", has_text=xss).first.click()
        page.page.locator("#pane-node table.metadata").wait_for()
        assert page.page.locator("#pane-node h2").inner_text() == xss
        assert page.page.evaluate("document.querySelectorAll('img').length") == 0
        assert page.page.evaluate("window.__xss") is None
        t_before = int(time.time() * 1000)
        time.sleep(0.3)

        # a namespace and a veth pair appear on the map and in the node list
        sh("ip", "netns", "add", ns)
        created = time.perf_counter()
        sh("ip", "link", "add", vb, "type", "veth", "peer", "name", pb, "netns", ns)
        sh("ip", "link", "set", vb, "up")
        page.wait(
            lambda: page.listed(vb) and page.on_map(vb) and page.on_map(ns), 10, f"{vb} and {ns} on the map"
        )
        print(f"veth on the map {time.perf_counter() - created:.2f} s after `ip link add`")
        if not page.on_map(pb):  # a big graph (grouped view): the new namespace comes collapsed; expand it
            page.page.locator("#node-list li button", has_text=ns).first.click()
            page.page.locator("#pane-node button", has_text="Expand").click()
        page.wait(lambda: page.listed(pb) and page.on_map(pb), 10, f"{pb} in its namespace on the map")
        assert (
            page.page.evaluate(
                "n => { const x = window.netsonde.map.cy.nodes().filter(e => e.data('name') === n)[0];"
                " return x.parent().data('name'); }",
                pb,
            )
            == ns
        ), "the namespaced end is drawn inside its namespace"
        page.shot(shots, "02-veth-appeared.png")

        # node panel: MAC and metrics
        mac = json.loads(sh("ip", "-j", "link", "show", vb))[0]["address"]
        page.page.locator("#node-list li button", has_text=vb).first.click()
        panel = page.page.locator("#pane-node")
        # the previous node's panel also has a metadata table: wait for this node's panel, by its title
        page.wait(lambda: panel.locator("h2").inner_text() == vb, 5, f"the panel of {vb}")
        assert mac in panel.locator("table.metadata").inner_text()
        metrics = panel.locator('[data-section="metrics"]')
        page.wait(
            lambda: "RxBytes/s" in metrics.inner_text() and metrics.locator("table.kv").count() == 1,
            15,
            "the metrics charts and totals",
        )
        assert "TxPackets" in metrics.locator("table.kv").inner_text()
        page.shot(shots, "03-node-panel.png")

        # a capture created from the UI shows active on the node
        form = panel.locator("form.capture-form")
        assert form.locator("input[name=GremlinQuery]").input_value().startswith("G.V('")
        form.locator("input[name=BPFFilter]").fill("icmp")
        form.locator("input[name=Name]").fill(f"ui-{unique}")
        form.locator("button[type=submit]").click()
        page.wait(
            lambda: "created" in form.locator(".result").inner_text(), 10, "the capture creation answer"
        )
        caps = panel.locator('[data-section="captures"]')
        page.wait(lambda: "active" in caps.inner_text(), 20, "the capture active on the node")
        assert page.page.evaluate(
            "n => window.netsonde.map.cy.nodes().filter(e => e.data('name') === n)[0].hasClass('captured')",
            vb,
        )
        page.shot(shots, "04-capture-active.png")
        status, listing = api_call(api, "/api/capture")
        [cap] = [c for c in listing.values() if c["Name"] == f"ui-{unique}"]
        assert cap["BPFFilter"] == "icmp" and cap["GremlinQuery"].startswith("G.V('")

        # three pings through the captured veth: the flow in the node's flow table, its path on the map
        net = f"10.{int(unique[:2], 16)}.{int(unique[2:4], 16)}"
        sh("ip", "addr", "add", f"{net}.1/30", "dev", vb)
        sh("ip", "netns", "exec", ns, "ip", "addr", "add", f"{net}.2/30", "dev", pb)
        sh("ip", "netns", "exec", ns, "ip", "link", "set", pb, "up")
        sh("ping", "-c", "3", "-i", "0.2", "-W", "2", f"{net}.2")
        flows = panel.locator('[data-section="flows"]')
        deadline = time.monotonic() + 30
        while f"{net}.2" not in flows.inner_text():
            assert time.monotonic() < deadline, f"no flow to {net}.2 in the panel: {flows.inner_text()}"
            page.page.wait_for_timeout(1000)
            page.page.locator(
                "#node-list li button", has_text=vb
            ).first.click()  # the panel reloads its flows
            panel.locator('[data-section="flows"]').wait_for()
        row = flows.locator("table.flows tbody tr", has_text=f"{net}.2").first
        row.wait_for()
        cells: list[str] = []

        def icmp_row() -> bool:  # the panel refreshes its flows: read the row again if it was just replaced
            nonlocal cells
            cells = row.locator("td").all_inner_texts()
            return len(cells) > 4 and cells[0] == "ICMPv4" and cells[3:5] == ["3", "3"]

        page.wait(icmp_row, 10, "the ICMP flow row with 3 packets each way")
        # the veth's routes, the protocol by name: the kernel's route to the /30 it got
        route = panel.locator('[data-section="routes"] tr', has_text=f"{net}.0/30").first
        page.wait(lambda: route.count() == 1, 10, f"the route to {net}.0/30 in the panel")
        assert route.locator("td").all_inner_texts()[1:3] == [f"{net}.0/30", "kernel (2)"]
        assert cells[0] == "ICMPv4" and cells[3:5] == ["3", "3"], cells  # packets each way
        header = flows.locator("table.flows th", has_text="Bytes A→B")
        header.click()
        assert header.get_attribute("aria-sort") == "descending"
        flows.locator("table.flows tbody tr", has_text=f"{net}.2").first.click()
        page.wait(lambda: "path:" in flows.locator(".flowchart").inner_text(), 15, "the flow's path")
        assert vb in flows.locator(".flowchart").inner_text()
        assert page.page.evaluate(
            "n => window.netsonde.map.cy.nodes('.path').some(x => x.data('name') === n)", vb
        ), "the capture node of the flow is highlighted on the map"
        page.shot(shots, "04b-flow-path.png")
        page.page.click("#tab-captures")
        page.page.locator("#capture-list tr", has_text=f"ui-{unique}").locator("button").click()
        wait_until(
            lambda: f"ui-{unique}" not in json.dumps(api_call(api, "/api/capture")[1]), 10, "capture deleted"
        )

        # deleted: gone from the live map
        time.sleep(1.0)
        t_during = int(time.time() * 1000)
        time.sleep(0.5)
        sh("ip", "link", "del", vb)
        sh("ip", "netns", "del", ns)
        page.wait(lambda: not page.listed(vb) and not page.on_map(pb), 10, f"{vb} removed from the map")
        page.shot(shots, "05-veth-deleted.png")

        # the time slider: before the veth existed it is not there; while it existed (after its deletion) it is
        def go(at: int) -> None:
            page.page.fill("#time-at", str(at))
            page.page.press("#time-at", "Enter")
            page.page.wait_for_function(
                "at => document.getElementById('time-label').className === 'past' && window.netsonde.map.at === at",
                arg=at,
                timeout=20_000,
            )

        go(t_before)
        assert page.on_map("lo") and not page.on_map(vb) and not page.listed(vb)
        page.shot(shots, "06-slider-before.png")
        deadline = time.monotonic() + 20
        go(t_during)
        while not page.on_map(vb):  # the revisions reach the store within a flush interval
            assert time.monotonic() < deadline, f"{vb} not in the graph of {t_during}"
            page.page.wait_for_timeout(500)
            go(t_during - 1)
            go(t_during)
        assert page.listed(vb) and page.on_map(pb)
        page.shot(shots, "07-slider-while-it-existed.png")
        # at the instant the veth was created, it is marked as added since the change before
        [created_at] = gremlin(api, f"G.At({t_during}).V().Has('Name', '{vb}').Values('@CreatedAt')")
        go(created_at)
        assert page.page.evaluate(
            "n => window.netsonde.map.cy.nodes().filter(e => e.data('name') === n)[0].hasClass('added')", vb
        ), "the veth is highlighted as added at its creation instant"
        page.shot(shots, "07b-slider-added.png")
        page.page.click("#time-live")
        page.page.wait_for_function("document.getElementById('time-label').className === 'live'")

        # the instant the veth was deleted: drawn as a "removed" ghost against the change before it
        now_ms = int(time.time() * 1000)
        deleted = wait_until(
            lambda: [
                t
                for t in gremlin(api, f"G.Context({now_ms}, 300).V().Has('Name','{vb}').Values('@DeletedAt')")
                or []
                if t
            ],
            20,
            f"the deletion of {vb} in the history",
        )
        classes = (
            "n => { const x = window.netsonde.map.cy.nodes().filter(e => e.data('name') === n)[0];"
            " return x ? x.classes() : null; }"
        )
        go(deleted[0] + 1)
        assert page.page.evaluate(classes, vb) is None, "after its deletion instant the veth is not drawn"
        go(deleted[0])
        assert "removed" in page.page.evaluate(classes, vb), (
            "the veth is a removed ghost at its deletion instant"
        )
        page.shot(shots, "07c-slider-removed.png")
        # one revision back: an instant before the deletion; play: the instant moves forward on its own, then stops
        page.page.click("button[aria-label='previous revision']")
        page.page.wait_for_function("d => window.netsonde.map.at < d", arg=deleted[0], timeout=10_000)
        at0 = page.page.evaluate("window.netsonde.map.at")
        page.page.click("#time-play")
        page.page.wait_for_function("a => window.netsonde.map.at > a", arg=at0, timeout=10_000)
        page.page.click("#time-play")
        page.page.click("#time-live")
        page.page.wait_for_function("document.getElementById('time-label').className === 'live'")

        assert page.errors == [], "\n".join(page.failed)

        # the Gremlin console: an error names its position (the browser logs the 400), node results go on the map
        page.page.click("#tab-gremlin")
        page.page.fill("#gremlin-input", "G.V().Has('Name'")
        page.page.click("#gremlin-run")
        page.page.locator("#gremlin-output pre.caret").wait_for()
        page.page.fill("#gremlin-input", "G.V().Has('Name', 'lo')")
        page.page.click("#gremlin-run")
        page.page.locator("#gremlin-output table.results").wait_for()
        assert "lo" in page.page.locator("#gremlin-output table.results").inner_text()
        page.page.click("#gremlin-show")
        page.wait(
            lambda: page.page.evaluate("window.netsonde.map.cy.nodes('.found').length") >= 1, 5, "lo shown"
        )
        page.shot(shots, "08-gremlin-console.png")
        assert [e for e in page.errors if "400 (Bad Request)" not in e] == [], page.errors
    finally:
        page.page.close()
        api_call(api, f"/api/node/xss{unique}", method="DELETE")
        subprocess.run(["ip", "link", "del", vb], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def synthetic_host(host: str, namespaces: int, per_ns: int) -> list[topo.TopologyMessage]:
    """A host state of 1 + namespaces * (1 + per_ns) nodes (veth pairs linked by layer2 edges), in parts."""
    hid = f"{host}-host"
    nodes = [topo.ProbeNode(ID=hid, Metadata={"Name": host, "Type": "host"})]
    edges: list[topo.ProbeEdge] = []
    for n in range(namespaces):
        nsid = f"{host}-ns{n}"
        nodes.append(topo.ProbeNode(ID=nsid, Metadata={"Name": f"ns{n}", "Type": "netns"}))
        edges.append(
            topo.ProbeEdge(ID=f"{nsid}-own", Parent=hid, Child=nsid, Metadata={"RelationType": "ownership"})
        )
        for i in range(per_ns):
            iid = f"{nsid}-if{i}"
            nodes.append(
                topo.ProbeNode(
                    ID=iid,
                    Metadata={
                        "Name": f"veth{n}-{i}",
                        "Type": "veth",
                        "State": "UP",
                        "MTU": 1500,
                        "IfIndex": i + 2,
                        "MAC": f"02:00:{n >> 8 & 255:02x}:{n & 255:02x}:{i >> 8 & 255:02x}:{i & 255:02x}",
                    },
                )
            )
            edges.append(
                topo.ProbeEdge(
                    ID=f"{iid}-own", Parent=nsid, Child=iid, Metadata={"RelationType": "ownership"}
                )
            )
            if i % 2:
                edges.append(
                    topo.ProbeEdge(
                        ID=f"{iid}-l2",
                        Parent=f"{nsid}-if{i - 1}",
                        Child=iid,
                        Metadata={"RelationType": "layer2", "Type": "veth"},
                    )
                )
    size = 1000
    parts = (len(nodes) + size - 1) // size
    per_edge = (len(edges) + parts - 1) // parts
    return [
        topo.TopologyMessage(
            host=host,
            kind="full",
            boot="synthetic",
            seq=p,
            ts=int(time.time() * 1000),
            nodes=nodes[p * size : (p + 1) * size],
            edges=edges[p * per_edge : (p + 1) * per_edge],
            part=p,
            parts=parts,
        )
        for p in range(parts)
    ]


def publish(nats_url: str, prefix: str, msgs: list[topo.TopologyMessage]) -> None:
    """Publish probe states on the bus, as a probe-topology would (from a thread: pytest-asyncio's loop runs)."""
    import nats

    async def run() -> None:
        nc = await nats.connect(nats_url)
        try:
            for m in msgs:
                await nc.publish(Subjects(prefix).topology(m.host), encode(m))
            await nc.flush()
        finally:
            await nc.close()

    with ThreadPoolExecutor(1) as pool:
        pool.submit(asyncio.run, run()).result(timeout=60)


def test_10k_node_topology_loads_grouped(
    stack: tuple[int, str], browser: Any, shots: Path, nats_url: str, unique: str
) -> None:
    api, prefix = stack
    host = f"synth{unique}"
    msgs = synthetic_host(host, namespaces=100, per_ns=99)
    assert sum(len(m.nodes) for m in msgs) == 10_001
    publish(nats_url, prefix, msgs)
    try:
        wait_until(
            lambda: gremlin(api, f"G.V().Has('@Host', '{host}').Count()") == 10_001, 60, "the 10 001 nodes"
        )

        def synth_summary() -> Any:
            status, summary = api_call(api, "/api/topology/summary")
            assert status == 200
            synth = [g for g in summary["Groups"] if g["Type"] == "host" and g["Host"] == host]
            return summary if synth and synth[0]["Nodes"] == 100 else None

        # the events of the 10 001 nodes and their edges reach the replica in several batches
        summary = wait_until(synth_summary, 30, "the synthetic host's 100 namespaces in the summary")
        assert summary["Nodes"] > 10_001
        [synth] = [g for g in summary["Groups"] if g["Type"] == "host" and g["Host"] == host]
        assert synth["Types"] == {"netns": 100}
        ns0 = [g for g in summary["Groups"] if g["Host"] == host and g["Name"] == "ns0"][0]
        assert ns0["Nodes"] == 99 and ns0["Types"] == {"veth": 99} and ns0["Group"] == synth["ID"]

        calls = []
        for _ in range(3):
            started = time.perf_counter()
            api_call(api, "/api/topology/summary")
            calls.append(time.perf_counter() - started)
        print(f"GET /api/topology/summary: {[f'{c * 1000:.0f} ms' for c in calls]}")
        times = []
        for i in range(2):
            page = Page(browser, api)
            wall = page.open()
            in_page = page.page.evaluate("window.netsonde.readyMs") / 1000
            print(
                f"page load {i + 1}: {wall:.2f} s, in the page (ms): {page.page.evaluate('window.netsonde.timings')}"
            )
            times.append((wall, in_page))
            drawn = page.page.evaluate("window.netsonde.map.cy.nodes().length")
            assert page.on_map("ns42") and not page.on_map("veth42-7"), "namespaces drawn collapsed"
            if i == 0:
                page.shot(shots, "09-10k-grouped.png")
                started = time.perf_counter()
                page.page.evaluate(f"window.netsonde.map.expand('{host}-ns42')")
                page.wait(lambda: page.on_map("veth42-7"), 10, "ns42 expanded")
                expand = time.perf_counter() - started
                page.shot(shots, "10-10k-ns-expanded.png")
            assert page.errors == [], page.errors
            page.page.close()
        # live in the grouped view: a veth added in a collapsed namespace counts there and shows when it is
        # expanded; an update of a node in a collapsed namespace draws nothing
        page = Page(browser, api)
        page.open()
        new = topo.ProbeNode(
            ID=f"{host}-ns41-new", Metadata={"Name": "veth41-new", "Type": "veth", "State": "UP"}
        )
        changed = topo.ProbeNode(
            ID=f"{host}-ns7-if3", Metadata={"Name": "veth7-3", "Type": "veth", "MTU": 9000}
        )
        own = topo.ProbeEdge(
            ID=f"{host}-ns41-new-own",
            Parent=f"{host}-ns41",
            Child=new.ID,
            Metadata={"RelationType": "ownership"},
        )
        publish(
            nats_url,
            prefix,
            [
                topo.TopologyMessage(
                    host=host,
                    kind="delta",
                    boot="synthetic",
                    seq=len(msgs),
                    ts=int(time.time() * 1000),
                    nodes=[new, changed],
                    edges=[own],
                )
            ],
        )
        label = "id => window.netsonde.map.cy.getElementById(id).data('label')"
        page.wait(
            lambda: page.page.evaluate(label, f"{host}-ns41") == "ns41\n100 nodes", 10, "ns41 counts 100"
        )
        assert not page.on_map("veth41-new") and not page.on_map("veth7-3")
        page.page.evaluate(f"window.netsonde.map.expand('{host}-ns41')")
        page.wait(lambda: page.on_map("veth41-new"), 10, "the new veth in the expanded ns41")
        assert not page.on_map("veth7-3") and page.errors == [], page.errors
        page.page.close()

        wall, in_page = min(times)
        print(
            f"10 001-node topology: usable map in {wall:.2f} s from navigation (in-page {in_page:.2f} s; "
            f"runs {[f'{w:.2f}' for w, _ in times]}), {drawn} elements drawn; a 99-node namespace expands in "
            f"{expand:.2f} s"
        )
        assert wall < 15, f"page load to a usable 10k-node map took {wall:.2f} s"
    finally:
        publish(
            nats_url,
            prefix,
            [
                topo.TopologyMessage(
                    host=host, kind="full", boot="synthetic-end", seq=0, ts=int(time.time() * 1000)
                )
            ],
        )


def test_the_page_follows_the_api_authentication(
    stack: tuple[int, str], browser: Any, nats_url: str, clickhouse_url: str, tmp_path: Path
) -> None:
    """A query-api with authentication on: without credentials the page is a 401; with a reader's Basic
    credentials the map loads and the live feed connects; creating a capture shows the API's 403."""
    from netsonde.query_api.auth import hash_password

    _, prefix = stack
    users = tmp_path / "users.toml"
    users.write_text(f'[users.ruth]\npassword = "{hash_password("ruth-Pw-123!")}"\nrole = "reader"\n')
    procs = ServiceProcs(nats_url, clickhouse_url, prefix=prefix)
    try:
        api = procs.start("query_api", auth="on", users_file=str(users))
        status, _ = api_call(api, "/")
        assert status == 401
        ctx = browser.new_context(http_credentials={"username": "ruth", "password": "ruth-Pw-123!"})
        page = ctx.new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(f"http://127.0.0.1:{api}/")
        page.wait_for_selector("body[data-ready='1']", timeout=30_000)
        page.wait_for_function("document.querySelectorAll('#node-list li').length > 0")
        assert "offline" not in (page.get_attribute("#status", "class") or "")
        page.locator("#node-list li button", has_text="lo").first.click()
        form = page.locator("#pane-node form.capture-form")
        form.locator("button[type=submit]").click()
        page.wait_for_function(
            "() => (document.querySelector('#pane-node .result') || {}).textContent?.includes('403')"
        )
        assert "needs the admin role" in form.locator(".result").inner_text()
        assert errors == [], errors
        ctx.close()
    finally:
        procs.stop()
