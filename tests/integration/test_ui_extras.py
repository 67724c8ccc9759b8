"""The web UI's alerts panel, "changes since" view, flow path view, and container / two-host grouping, in
headless Chromium against Netsonde's services as processes (alert-evaluator included).

- an alert on a real veth going down shows in the alerts panel (WebSocket `Alert` namespace) and clears on up;
- the time slider at a past instant lists what changed since, `MTU: 1500 -> 1400` as text (GET /api/diff);
- a ping across a bridge with two afpacket capture points: the flow's path view shows both hops with 3/3;
- a container (synthetic probe state) is a group holding its namespace group holding its interface, and a
  tunnel between two hosts is drawn as a tunnel edge, also between the collapsed host groups;
- a real podman container (deploy/podman-setup.sh, busybox) is drawn host > container > netns > eth0.

Screenshots go to the directory test_ui.py prints (NETSONDE_UI_SHOTS to choose it).
"""

from __future__ import annotations

import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

from netsonde.common.bus import topology as topo
from tests.integration.test_containers import ENGINE, Podman, engine  # noqa: F401 (fixture)
from tests.integration.test_ui import (  # noqa: F401 (fixtures)
    CHROMIUM,
    Page,
    api_call,
    browser,
    gremlin,
    publish,
    sh,
    shots,
    ui_services,
    wait_until,
)

pytestmark = [pytest.mark.root, pytest.mark.slow]


@pytest.fixture(scope="module")
def stack(nats_url: str, clickhouse_url: str, engine: str) -> Iterator[tuple[int, str]]:
    """graph-builder, probe-topology (with podman's Docker API, set up by deploy/podman-setup.sh), query-api,
    flow-enricher, probe-flow and alert-evaluator as processes."""
    with ui_services(nats_url, clickhouse_url, "uix", alerts=True, docker_socket=engine) as api_prefix:
        yield api_prefix


def alert_state(api: int, uuid: str) -> str:
    status, body = api_call(api, f"/api/alert/{uuid}")
    assert status == 200, body
    return str(body["Status"]["State"])


def click_listed(page: Page, name: str) -> None:
    """Click the node list's button of exactly this name (has_text would also match longer names)."""
    page.wait(lambda: page.listed(name), 10, f"{name} in the node list")
    page.page.evaluate(
        "n => [...document.querySelectorAll('#node-list li button')].find(b => b.firstChild.textContent === n).click()",
        name,
    )


def test_alerts_panel_and_changes_since(
    stack: tuple[int, str], browser: Any, shots: Path, unique: str
) -> None:
    api, _ = stack
    ns, vb, pb = f"uan{unique}", f"uav{unique}", f"uap{unique}"
    sh("ip", "netns", "add", ns)
    page = Page(browser, api)
    uuid = ""
    try:
        sh("ip", "link", "add", vb, "type", "veth", "peer", "name", pb, "netns", ns)
        sh("ip", "-n", ns, "link", "set", pb, "up")
        sh("ip", "link", "set", vb, "up")
        wait_until(
            lambda: gremlin(api, f"G.V().Has('Name','{vb}','State','UP').Count()") == 1, 15, f"{vb} UP"
        )
        name = f"{vb} down"
        status, made = api_call(
            api,
            "/api/alert",
            {"Name": name, "Expression": f"G.V().Has('Name','{vb}','State','DOWN')"},
            "POST",
        )
        assert status == 200, made
        uuid = made["UUID"]
        wait_until(lambda: alert_state(api, uuid) == "ok", 15, "the alert evaluated (ok)")

        page.open()
        badge = page.page.locator("#alert-badge")
        page.wait(lambda: badge.inner_text() == "no alerts", 5, "the badge saying no alerts")
        firing_rows = "#alert-list tr.alert-firing"

        sh("ip", "link", "set", vb, "down")
        downed = time.perf_counter()
        page.wait(lambda: badge.inner_text() == "1 alert firing", 10, "the alert firing in the badge")
        print(f"alert in the page {time.perf_counter() - downed:.2f} s after `ip link set down`")
        badge.click()
        row = page.page.locator(firing_rows)
        assert row.count() == 1
        assert row.locator("td.name").inner_text() == name
        assert row.locator("td.state").inner_text() == "firing"
        assert vb in row.inner_text()  # ReasonData: the node that matched
        row.get_by_role("button", name="show on map").click()  # the expression's nodes, highlighted
        found = "() => window.netsonde.map.cy.nodes('.found').map(n => n.data('name'))"
        page.wait(lambda: page.page.evaluate(found) == [vb], 10, f"{vb} highlighted on the map")
        assert page.page.locator("#alert-show").inner_text() == f"{name}: 1 node(s) on the map"
        page.shot(shots, "x01-alert-firing.png")
        # a reload reads the firing state from GET /api/alert (not only from events)
        page.open()
        page.wait(lambda: badge.inner_text() == "1 alert firing", 10, "the firing alert after a reload")

        sh("ip", "link", "set", vb, "up")
        page.wait(lambda: badge.inner_text() == "no alerts", 10, "the alert cleared")
        badge.click()
        assert page.page.locator(firing_rows).count() == 0
        assert alert_state(api, uuid) == "ok"
        page.shot(shots, "x02-alert-cleared.png")

        # changes since a past instant: the MTU change as text
        t0 = int(time.time() * 1000)
        time.sleep(0.3)
        sh("ip", "link", "set", vb, "mtu", "1400")
        vb_id = wait_until(
            lambda: gremlin(api, f"G.V().Has('Name','{vb}','MTU',1400).Values('@ID')"), 10, "MTU 1400"
        )[0]

        def diffed() -> bool:
            status, d = api_call(api, f"/api/diff?from={t0}&flows=0")
            assert status == 200, d
            return any(n["ID"] == vb_id for n in d["Nodes"]["Changed"])

        wait_until(diffed, 15, "the MTU change in GET /api/diff")
        page.page.fill("#time-at", str(t0))
        page.page.press("#time-at", "Enter")
        page.page.click("#tab-changes")
        details = page.page.locator(f"#change-list tr[data-id='{vb_id}'] td.detail div")
        details.first.wait_for(timeout=10_000)
        assert "MTU: 1500 -> 1400" in details.all_inner_texts()
        row = page.page.locator(f"#change-list tr[data-id='{vb_id}']")
        assert row.locator("td.change").inner_text() == "changed"
        assert row.locator("td.name").inner_text() == vb
        page.shot(shots, "x03-changes-since.png")
        page.page.click("#time-live")
        assert page.errors == [], page.errors
    finally:
        if uuid:
            api_call(api, f"/api/alert/{uuid}", method="DELETE")
        page.page.close()
        subprocess.run(["ip", "link", "del", vb], capture_output=True)
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def test_flow_path_view_per_hop_counts(
    stack: tuple[int, str], browser: Any, shots: Path, unique: str
) -> None:
    api, _ = stack
    u = unique[:6]
    o = 100 + int(unique[:4], 16) % 100
    na, nb, br = f"ufa{u}", f"ufb{u}", f"ufbr{u}"
    a, b, pa, pb = f"ufia{u}", f"ufib{u}", f"ufpa{u}", f"ufpb{u}"
    ipa, ipb = f"10.{o}.77.1", f"10.{o}.77.2"
    page = Page(browser, api)
    try:
        sh("ip", "link", "add", br, "type", "bridge")
        sh("ip", "link", "set", br, "up")
        for ns, dev, peer, ip in ((na, a, pa, ipa), (nb, b, pb, ipb)):
            sh("ip", "netns", "add", ns)
            sh("ip", "-n", ns, "link", "add", dev, "type", "veth", "peer", "name", peer, "netns", "1")
            sh("ip", "-n", ns, "addr", "add", f"{ip}/24", "dev", dev)
            sh("ip", "-n", ns, "link", "set", dev, "up")
            sh("ip", "link", "set", peer, "master", br, "up")
        wait_until(
            lambda: gremlin(api, f"G.V().Has('Name', Within('{pa}','{pb}')).Count()") == 2, 15, "ports"
        )
        status, cap = api_call(
            api,
            "/api/capture",
            {
                "GremlinQuery": f"G.V().Has('Name', Within('{pa}','{pb}'))",
                "Type": "afpacket",
                "BPFFilter": "icmp",
            },
            "POST",
        )
        assert status == 200, cap
        wait_until(
            lambda: (
                gremlin(api, f"G.V().Has('Captures.ID','{cap['UUID']}','Captures.State','active').Count()")
                == 2
            ),
            20,
            "the capture active on both ports",
        )
        time.sleep(1.0)
        sh("ip", "netns", "exec", na, "ping", "-c", "3", "-i", "0.2", "-W", "1", ipb)
        q = f"G.Flows().Has('Network.A','{ipa}','Network.B','{ipb}')"
        wait_until(
            lambda: (
                sorted((f["Metric"]["ABPackets"], f["Metric"]["BAPackets"]) for f in gremlin(api, q) or [])
                == [(3, 3), (3, 3)]
            ),
            30,
            "the ping at both capture points with 3/3",
        )
        [tid] = {f["TrackingID"] for f in gremlin(api, q)}
        status, path = api_call(api, f"/api/flowpath/{tid}")
        assert status == 200, path
        assert [(h["Name"], h["ABPackets"], h["BAPackets"]) for h in path["Hops"]] == [(pa, 3, 3), (pb, 3, 3)]

        page.open()
        click_listed(page, pa)
        flow_row = page.page.locator("#pane-node table.flows tbody tr", has_text=ipb)
        flow_row.first.wait_for(timeout=15_000)
        flow_row.first.click()
        hops = page.page.locator("#pane-node [data-section='flowpath'] table.flowpath tr.hop")
        page.wait(lambda: hops.count() == 2, 15, "the two hops in the path view")
        got = [
            (
                r.locator("td.name").inner_text(),
                r.locator("td.ab").inner_text(),
                r.locator("td.ba").inner_text(),
            )
            for r in hops.all()
        ]
        assert got == [(pa, "3", "3"), (pb, "3", "3")]
        loss = page.page.locator("#pane-node table.flowpath tr.link td.loss").inner_text()
        assert loss.startswith("↓ lost A→B 0, B→A 0"), loss
        hops.first.scroll_into_view_if_needed()
        page.shot(shots, "x04-flow-path.png")
        assert page.errors == [], page.errors
        api_call(api, f"/api/capture/{cap['UUID']}", method="DELETE")
    finally:
        page.page.close()
        for ns in (na, nb):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", br], capture_output=True)


def two_hosts(unique: str) -> tuple[list[topo.TopologyMessage], dict[str, str]]:
    """Two probe states: host A runs a container (container -> netns -> eth0) and a VXLAN endpoint, host B the
    other VXLAN endpoint (graph-builder links the two: RemoteIP = the other's LocalIP, same VNI)."""
    o = 1 + int(unique[:4], 16) % 250
    ha, hb = f"uca{unique}", f"ucb{unique}"
    ids = {
        "ha": f"{ha}-host",
        "hb": f"{hb}-host",
        "ctr": f"{ha}-ctr",
        "ns": f"{ha}-ns",
        "eth0": f"{ha}-eth0",
        "vxa": f"{ha}-vx",
        "vxb": f"{hb}-vx",
        "ctr_name": f"web{unique}",
    }
    ip_a, ip_b = f"198.18.{o}.1", f"198.18.{o}.2"

    def own(p: str, c: str) -> topo.ProbeEdge:
        return topo.ProbeEdge(ID=f"{p}>{c}", Parent=p, Child=c, Metadata={"RelationType": "ownership"})

    def vxlan(nid: str, local: str, remote: str) -> topo.ProbeNode:
        return topo.ProbeNode(
            ID=nid,
            Metadata={
                "Name": "vxlan42",
                "Type": "vxlan",
                "State": "UP",
                "VNI": 42,
                "LocalIP": local,
                "RemoteIP": remote,
            },
        )

    a = topo.TopologyMessage(
        host=ha,
        kind="full",
        boot="synthetic",
        seq=0,
        ts=int(time.time() * 1000),
        part=0,
        parts=1,
        nodes=[
            topo.ProbeNode(ID=ids["ha"], Metadata={"Name": ha, "Type": "host"}),
            topo.ProbeNode(
                ID=ids["ctr"], Metadata={"Name": ids["ctr_name"], "Type": "container", "Manager": "docker"}
            ),
            topo.ProbeNode(ID=ids["ns"], Metadata={"Name": f"ctr-ns{unique}", "Type": "netns"}),
            topo.ProbeNode(ID=ids["eth0"], Metadata={"Name": "eth0", "Type": "veth", "State": "UP"}),
            vxlan(ids["vxa"], ip_a, ip_b),
        ],
        edges=[
            own(ids["ha"], ids["ctr"]),
            own(ids["ctr"], ids["ns"]),
            own(ids["ns"], ids["eth0"]),
            own(ids["ha"], ids["vxa"]),
        ],
    )
    b = topo.TopologyMessage(
        host=hb,
        kind="full",
        boot="synthetic",
        seq=0,
        ts=int(time.time() * 1000),
        part=0,
        parts=1,
        nodes=[
            topo.ProbeNode(ID=ids["hb"], Metadata={"Name": hb, "Type": "host"}),
            vxlan(ids["vxb"], ip_b, ip_a),
        ],
        edges=[own(ids["hb"], ids["vxb"])],
    )
    return [a, b], ids


def test_container_group_and_tunnel_between_hosts(
    stack: tuple[int, str], browser: Any, shots: Path, nats_url: str, unique: str
) -> None:
    api, prefix = stack
    msgs, ids = two_hosts(unique)
    publish(nats_url, prefix, msgs)
    wait_until(
        lambda: gremlin(api, f"G.V('{ids['vxa']}').Both().Has('@ID','{ids['vxb']}').Count()") == 1,
        15,
        "graph-builder's tunnel edge between the two hosts",
    )

    # the summary endpoint: the container is a group in host A holding the namespace group
    status, s = api_call(api, "/api/topology/summary?open=hosts")
    assert status == 200, s
    groups = {g["ID"]: g for g in s["Groups"]}
    assert groups[ids["ctr"]]["Type"] == "container" and groups[ids["ctr"]]["Group"] == ids["ha"]
    assert groups[ids["ctr"]]["Types"] == {"netns": 1}
    assert groups[ids["ns"]]["Group"] == ids["ctr"] and groups[ids["ns"]]["Types"] == {"veth": 1}
    assert groups[ids["ha"]]["Types"] == {"container": 1, "vxlan": 1}
    ends = sorted([ids["ha"], ids["hb"]])
    assert {"A": ends[0], "B": ends[1], "RelationType": "tunnel", "Count": 1} in s["Links"]
    assert [n["ID"] for n in s["Open"][ids["ha"]]["Nodes"] if n["Metadata"]["Type"] == "container"] == [
        ids["ctr"]
    ]
    status, members = api_call(api, f"/api/topology/group/{ids['ctr']}")
    assert status == 200, members
    assert [n["ID"] for n in members["Nodes"]] == [ids["ns"]] and members["Total"] == 1

    # the map: host A > container > namespace > eth0, and the tunnel edge between the hosts
    page = Page(browser, api)
    try:
        page.open()
        parent = "id => window.netsonde.map.cy.getElementById(id).parent().map(p => p.id())[0] || ''"
        page.wait(
            lambda: page.page.evaluate(parent, ids["eth0"]) == ids["ns"], 10, "eth0 in the namespace group"
        )
        assert page.page.evaluate(parent, ids["ns"]) == ids["ctr"]
        assert page.page.evaluate(parent, ids["ctr"]) == ids["ha"]
        assert "container" in page.page.evaluate(
            "id => window.netsonde.map.cy.getElementById(id).classes()", ids["ctr"]
        )
        tunnels = "() => window.netsonde.map.cy.edges('.tunnel').map(e => [e.source().id(), e.target().id()].sort().join(' '))"
        assert " ".join(sorted([ids["vxa"], ids["vxb"]])) in page.page.evaluate(tunnels)
        click_listed(page, ids["ctr_name"])
        page.shot(shots, "x05-container-and-tunnel.png")
        # collapsed: one tunnel edge between the two host groups
        page.page.click("#collapse-all")
        page.wait(
            lambda: " ".join(ends) in page.page.evaluate(tunnels), 5, "the tunnel between collapsed hosts"
        )
        page.shot(shots, "x06-hosts-collapsed-tunnel.png")
        assert page.errors == [], page.errors
    finally:
        page.page.close()


def test_real_container_is_a_group_holding_its_interfaces(
    stack: tuple[int, str], browser: Any, shots: Path, unique: str
) -> None:
    api, _ = stack
    pm = Podman(unique)
    name = f"uic-{unique}"
    page = Page(browser, api)
    try:
        started = time.perf_counter()
        pm.run(name)
        ran = time.perf_counter()
        web = f"G.V().Has('Type','container','Name','{name}')"
        wait_until(lambda: gremlin(api, f"{web}.Out().Out().Count()") == 2, 30, "the container's interfaces")
        print(f"podman run {ran - started:.1f} s, in the API {time.perf_counter() - ran:.1f} s later")
        [ctr] = gremlin(api, f"{web}.Values('@ID')")
        [host] = gremlin(api, f"{web}.In().Has('Type','host').Values('@ID')")
        [ns] = gremlin(api, f"{web}.Out().Has('Type','netns').Values('@ID')")
        [eth0] = gremlin(api, f"{web}.Out().Out().Has('Name','eth0').Values('@ID')")
        status, s = api_call(api, "/api/topology/summary")
        assert status == 200, s
        groups = {g["ID"]: g for g in s["Groups"]}
        assert (groups[ctr]["Type"], groups[ctr]["Group"], groups[ns]["Group"]) == ("container", host, ctr)
        assert groups[ns]["Types"] == {"device": 1, "veth": 1}  # lo and eth0

        page.open()
        if not page.page.evaluate("id => window.netsonde.map.cy.getElementById(id).length", eth0):
            # a big machine graph (other work's namespaces) loads grouped and collapsed: reveal the interface
            page.page.evaluate("id => window.netsonde.map.revealMany([id])", eth0)
        parent = "id => window.netsonde.map.cy.getElementById(id).parent().map(p => p.id())[0] || ''"
        page.wait(
            lambda: page.page.evaluate(parent, eth0) == ns, 10, "eth0 in the container's namespace group"
        )
        assert page.page.evaluate(parent, ns) == ctr
        assert page.page.evaluate(parent, ctr) == host
        click_listed(page, name)
        page.wait(lambda: page.page.locator("#pane-node h2").inner_text() == name, 5, f"the panel of {name}")
        page.page.locator("#pane-node table.metadata").wait_for()
        page.shot(shots, "x07-real-container.png")  # (zooming onto the group first: slow on a CPU renderer)
        assert page.errors == [], page.errors
    finally:
        page.page.close()
        pm.cleanup()


def test_two_simulated_hosts_with_the_tunnel_between_them(
    stack: tuple[int, str], browser: Any, shots: Path, nats_url: str, unique: str, tmp_path: Path
) -> None:
    """The demo's two simulated hosts (netsonde.cli.demo: own namespaces, OVS and probes each, a VXLAN tunnel
    over an underlay veth): two host groups, graph-builder's tunnel edge between them, drawn as a tunnel."""
    from netsonde.cli import demo as D

    api, prefix = stack
    u = unique[:6]
    env = {"NETSONDE_SUBJECT_PREFIX": prefix, "NETSONDE_LOG_LEVEL": "warning"}
    demo = D.start(
        tmp_path / "hosts", int(nats_url.rsplit(":", 1)[1]), env=env, underlay_ends=(f"uu{u}a", f"uu{u}b")
    )
    page = Page(browser, api)
    try:
        [edge] = wait_until(
            lambda: gremlin(api, "G.V().Has('Host','host-a','Type','vxlan').BothE().Has('Type','tunnel')"),
            30,
            "the tunnel edge between host-a and host-b",
        )
        hosts = {h: gremlin(api, f"G.V().Has('Type','host','Host','{h}').Values('@ID')")[0] for h in D.HOSTS}
        status, s = api_call(api, "/api/topology/summary")
        assert status == 200, s
        ends = sorted(hosts.values())
        assert {"A": ends[0], "B": ends[1], "RelationType": "tunnel", "Count": 1} in s["Links"]

        page.open()
        tunnels = (
            "() => window.netsonde.map.cy.edges('.tunnel')"
            ".map(e => [e.source().id(), e.target().id()].sort().join(' '))"
        )
        pair = " ".join(sorted([edge["Parent"], edge["Child"]]))
        page.wait(lambda: pair in page.page.evaluate(tunnels), 10, "the tunnel edge on the map")
        top = "id => { let n = window.netsonde.map.cy.getElementById(id); while (n.parent().length) n = n.parent(); return n.id(); }"
        assert {page.page.evaluate(top, edge[k]) for k in ("Parent", "Child")} == set(hosts.values())
        page.shot(shots, "x08-two-hosts-tunnel.png")
        page.page.click("#collapse-all")
        page.wait(
            lambda: " ".join(ends) in page.page.evaluate(tunnels), 5, "the tunnel between collapsed hosts"
        )
        page.shot(shots, "x09-two-hosts-collapsed.png")
        assert page.errors == [], page.errors
    finally:
        page.page.close()
        D.stop(demo)
