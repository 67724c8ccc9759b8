"""probe-topology with Open vSwitch (private daemons, userspace datapath): bridges, ports, internal, patch,
vxlan and system interfaces merged with their Linux devices; the probe starts before OVS does."""

from __future__ import annotations

import os

import pytest

from netsonde.probe_topology.testing import sh, start_probe, until

from ovs_fixture import start_ovs, stop_ovs  # tests/integration/ovs_fixture.py (sFlow engineer's fixture)

pytestmark = [pytest.mark.root, pytest.mark.ovs]


async def test_ovs_bridges_ports_interfaces(nats_url, unique):
    link = f"/tmp/nsovs{unique}.sock"
    br, br2 = f"ob{unique}", f"oc{unique}"
    internal, pa, pb, vx = f"oi{unique}", f"op{unique}", f"oq{unique}", f"ov{unique}"
    veth, vpeer = f"oe{unique}", f"of{unique}"
    svc, m = await start_probe(nats_url, unique, ovsdb=f"unix:{link}")
    ovs = None
    try:
        assert not m.find(Type="ovsbridge")
        ovs = start_ovs()  # OVS comes up after the probe: the probe must pick it up
        os.symlink(ovs.dir / "db.sock", link)
        sh("ip", "link", "add", veth, "type", "veth", "peer", "name", vpeer)
        ovs.vsctl("add-br", br, "--", "set", "bridge", br, "datapath_type=netdev")
        ovs.vsctl("add-br", br2, "--", "set", "bridge", br2, "datapath_type=netdev")
        ovs.vsctl("add-port", br, internal, "--", "set", "interface", internal, "type=internal",
                  "external_ids:owner=test")
        ovs.vsctl("add-port", br, pa, "--", "set", "interface", pa, "type=patch", f"options:peer={pb}")
        ovs.vsctl("add-port", br2, pb, "--", "set", "interface", pb, "type=patch", f"options:peer={pa}")
        ovs.vsctl("add-port", br, vx, "--", "set", "interface", vx, "type=vxlan", "options:remote_ip=10.66.0.2",
                  "options:key=77")
        ovs.vsctl("add-port", br, veth)

        def ready():
            i = m.one(Name=internal, Type="internal")
            return m.one(Name=br, Type="ovsbridge") and i and "IfIndex" in i["Metadata"] \
                and m.one(Name=pa, Type="patch") and m.one(Name=vx, Type="vxlan") \
                and (v := m.one(Name=veth, Type="veth")) and "UUID" in v["Metadata"]
        assert await until(ready, 20), sorted((n["Metadata"]["Name"], n["Metadata"]["Type"]) for n in m.nodes.values()
                                              if unique in n["Metadata"]["Name"])
        host = m.one(Type="host")
        bridge = m.one(Name=br, Type="ovsbridge")
        assert m.edge(host["ID"], bridge["ID"], RelationType="ownership")
        assert bridge["Metadata"]["UUID"] and bridge["Metadata"]["TID"]
        # every port: owned by and layer2 to its bridge, layer2 to its interface
        for name in (internal, pa, vx, veth):
            port = m.one(Name=name, Type="ovsport")
            assert port is not None, name
            assert m.edge(bridge["ID"], port["ID"], RelationType="ownership")
            assert m.edge(bridge["ID"], port["ID"], RelationType="layer2")
            intf = [n for n in m.find(Name=name) if n["Metadata"]["Type"] != "ovsport"]
            assert len(intf) == 1, f"{name}: one interface node (netlink and OVS merged), got {intf}"
            assert m.edge(port["ID"], intf[0]["ID"], RelationType="layer2")
            assert intf[0]["Metadata"]["UUID"]
        # internal: the Linux tap device and the OVS interface are one node, owned by the host
        i = m.one(Name=internal, Type="internal")["Metadata"]
        assert i["Driver"] == "openvswitch" and i["ExtID"] == {"owner": "test"} and i["OfPort"] >= 1
        assert i["IfIndex"] > 0 and i["MAC"]
        assert m.edge(host["ID"], m.one(Name=internal, Type="internal")["ID"], RelationType="ownership")
        # system port keeps its netlink type
        assert m.one(Name=veth, Type="veth")["Metadata"]["Driver"] == "veth"
        # patch: owned by the bridge, peers linked by a layer2 `patch` edge
        npa = m.one(Name=pa, Type="patch")
        assert await until(lambda: m.one(Name=pb, Type="patch") is not None)
        npb = m.one(Name=pb, Type="patch")
        assert m.edge(bridge["ID"], npa["ID"], RelationType="ownership")
        assert m.edges_between(npa["ID"], npb["ID"], RelationType="layer2", Type="patch")
        assert npa["Metadata"]["PeerName"] == pb
        # tunnel: remote endpoint, owned by the bridge
        nvx = m.one(Name=vx, Type="vxlan")
        assert nvx["Metadata"]["RemoteIP"] == "10.66.0.2"
        assert m.edge(bridge["ID"], nvx["ID"], RelationType="ownership")

        ovs.vsctl("del-port", br, internal)
        assert await until(lambda: not m.find(Name=internal), 20)
        ovs.vsctl("del-br", br2)
        assert await until(lambda: not m.find(Name=br2) and not m.find(Name=pb))
        assert await digests_agree(svc, m)
    finally:
        await svc.stop()
        await m.close()
        sh("ip", "link", "del", veth, check=False)
        if os.path.lexists(link):
            os.unlink(link)
        if ovs is not None:
            stop_ovs(ovs)


async def digests_agree(svc, m, timeout: float = 10.0) -> bool:
    """The subscriber's digest equals the probe's (asked again while other work on the machine changes it)."""
    async def agree() -> bool:
        n = len(m.digests)
        await svc.publish_digest()
        assert await until(lambda: len(m.digests) > n)
        return m.digest() == m.digests[-1]
    return await until(agree, timeout)


async def test_ovsdb_restart_is_followed(nats_url, unique):
    """ovsdb-server goes away and comes back (same database): the IDL reconnects and changes keep flowing."""
    import subprocess

    ovs = start_ovs()
    svc = m = None
    try:
        svc, m = await start_probe(nats_url, unique, ovsdb=ovs.db)
        ovs.vsctl("add-br", f"rb{unique}", "--", "set", "bridge", f"rb{unique}", "datapath_type=netdev")
        assert await until(lambda: m.one(Name=f"rb{unique}", Type="ovsbridge") is not None)
        subprocess.run(["ovs-appctl", "-t", "ovsdb-server", "exit"], env=ovs.env, capture_output=True, timeout=20)
        d = ovs.dir
        subprocess.run(["ovsdb-server", str(d / "conf.db"), f"--remote=punix:{d / 'db.sock'}",
                        "--remote=db:Open_vSwitch,Open_vSwitch,manager_options",
                        f"--pidfile={d / 'ovsdb-server.pid'}", f"--log-file={d / 'ovsdb-server.log'}", "--detach"],
                       env=ovs.env, check=True, capture_output=True, timeout=20)
        ovs.vsctl("add-br", f"rc{unique}", "--", "set", "bridge", f"rc{unique}", "datapath_type=netdev")
        assert await until(lambda: m.one(Name=f"rc{unique}", Type="ovsbridge") is not None, 20)
        assert m.one(Name=f"rb{unique}", Type="ovsbridge") is not None  # kept across the outage
        ovs.vsctl("del-br", f"rb{unique}")
        assert await until(lambda: m.one(Name=f"rb{unique}", Type="ovsbridge") is None)
        assert svc.ovs is not None and svc.ovs.connected
    finally:
        if svc is not None:
            await svc.stop()
        if m is not None:
            await m.close()
        stop_ovs(ovs)


async def test_patch_peers_tunnels_and_netns_path_through_gremlin(nats_url, clickhouse_url, unique):
    """Through graph-builder and query-api, as a Skydive user queries them: patch ports linked to their peer,
    gre/vxlan/geneve ports (the userspace datapath accepts them without kernel modules) owned by their bridge
    with their remote IP, and an `ip netns` namespace's Path as /var/run/netns/<name>."""
    import httpx

    from netsonde.common.testing import free_port
    from netsonde.graph_builder.config import GraphBuilderConfig
    from netsonde.graph_builder.service import GraphBuilderService
    from netsonde.probe_topology.config import ProbeTopologyConfig
    from netsonde.probe_topology.service import ProbeTopologyService
    from netsonde.query_api.config import QueryApiConfig
    from netsonde.query_api.service import QueryApiService

    br, br2, p1, p2, ns = f"gb{unique}", f"gc{unique}", f"g1{unique}", f"g2{unique}", f"gn{unique}"
    tunnels = {f"gg{unique}": ("gre", "10.67.0.1"), f"gv{unique}": ("vxlan", "10.67.0.2"),
               f"ge{unique}": ("geneve", "10.67.0.3")}
    ovs = start_ovs()
    common = dict(env={}, nats_url=nats_url, subject_prefix=f"g{unique}", host_id=f"host-{unique}",
                  clickhouse_url=clickhouse_url, clickhouse_database=f"g_{unique}")
    services = []
    try:
        ovs.vsctl("add-br", br, "--", "set", "bridge", br, "datapath_type=netdev")
        ovs.vsctl("add-br", br2, "--", "set", "bridge", br2, "datapath_type=netdev")
        ovs.vsctl("add-port", br, p1, "--", "set", "interface", p1, "type=patch", f"options:peer={p2}")
        ovs.vsctl("add-port", br2, p2, "--", "set", "interface", p2, "type=patch", f"options:peer={p1}")
        for name, (kind, remote) in tunnels.items():
            ovs.vsctl("add-port", br, name, "--", "set", "interface", name, f"type={kind}",
                      f"options:remote_ip={remote}", "options:key=42")
        sh("ip", "netns", "add", ns)
        for svc in (GraphBuilderService(GraphBuilderConfig.load(**common, history_flush_interval_s=0.2)),
                    ProbeTopologyService(ProbeTopologyConfig.load(**common, ovsdb=ovs.db, process_netns=False))):
            await svc.start()
            services.append(svc)
        port = free_port()
        api = QueryApiService(QueryApiConfig.load(**common, http_port=port))
        await api.start()
        services.append(api)
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=20) as http:
            async def q(query: str):
                r = await http.post("/api/topology", json={"GremlinQuery": query})
                assert r.status_code == 200, r.text
                return r.json()

            async def ready() -> bool:
                return await q(f"G.V().Has('Name', Regex('g[12gve]{unique}')).Count()") >= 10
            assert await until(ready, 20)
            # no error from vswitchd on the tunnel ports: the userspace datapath took them (an OpenFlow port)
            def ofport(name: str) -> int:
                value = ovs.vsctl("get", "interface", name, "ofport").strip()
                return int(value) if value.lstrip("-").isdigit() else 0
            for name in tunnels:
                assert await until(lambda: ofport(name) > 0, 20), ovs.log()
                assert ovs.vsctl("get", "interface", name, "error").strip() in ("[]", ""), ovs.log()
            assert await q(f"G.V().Has('Type','patch','Name','{p1}').Both('Type','patch','Name','{p2}')"
                           ".Values('Name')") == [p2]
            assert await q(f"G.V().Has('Type','patch','Name','{p2}').Both('Type','patch').Values('Name')") == [p1]
            [edge] = await q(f"G.V().Has('Name','{p1}','Type','patch').BothE().Has('Type','patch')")
            assert edge["Metadata"]["RelationType"] == "layer2"
            for name, (kind, remote) in tunnels.items():
                [node] = await q(f"G.V().Has('Name','{name}','Type','{kind}')")
                assert node["Metadata"]["RemoteIP"] == remote, node
                assert node["Metadata"]["Ovs"]["Options"] == {"remote_ip": remote, "key": "42"}
                assert await q(f"G.V().Has('Name','{name}','Type','{kind}').In().Has('Type','ovsbridge')"
                               ".Values('Name')") == [br]
                assert await q(f"G.V().Has('Name','{name}','Type','{kind}').InE().Has('RelationType',"
                               "'ownership').InV().Values('Name')") == [br]  # Skydive: InV = parent
            assert await q(f"G.V().Has('Type','netns','Name','{ns}').Values('Path')") == [f"/var/run/netns/{ns}"]
    finally:
        for svc in reversed(services):
            await svc.stop()
        sh("ip", "netns", "del", ns, check=False)
        stop_ovs(ovs)
