"""probe-topology on real parts: namespaces, veth, bridge, vxlan, macvlan, tap created with `ip`, changes,
deletes, restarts, resync requests, digests and a 500-veth-pair burst; received by a plain nats-py +
msgpack subscriber."""

from __future__ import annotations

import subprocess
import uuid

import msgpack
import pytest

from netsonde.probe_topology.testing import Mirror, sh, start_probe, until

pytestmark = [pytest.mark.root]


@pytest.fixture
def cleanup():
    cmds: list[list[str]] = []
    yield cmds
    for cmd in reversed(cmds):
        sh(*cmd, check=False)


async def test_netns_veth_bridge_addresses(nats_url, unique, cleanup):
    ns, a, b, br = f"pn{unique}", f"pa{unique}", f"pb{unique}", f"pr{unique}"
    cleanup += [["ip", "netns", "del", ns], ["ip", "link", "del", a], ["ip", "link", "del", br]]
    svc, m = await start_probe(nats_url, unique)
    try:
        sh("ip", "netns", "add", ns)
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        sh("ip", "link", "set", b, "netns", ns)
        sh("ip", "-n", ns, "addr", "add", "10.77.1.2/24", "dev", b)
        sh("ip", "-n", ns, "link", "set", b, "up")
        sh("ip", "link", "add", br, "type", "bridge")
        sh("ip", "link", "set", a, "master", br)
        sh("ip", "link", "set", a, "up")
        sh("ip", "link", "set", br, "up")

        def ready():
            nb = m.one(Name=b, Type="veth")
            na = m.one(Name=a, Type="veth")
            return nb and na and nb["Metadata"].get("IPV4") == ["10.77.1.2/24"] \
                and m.one(Name=ns, Type="netns") and m.one(Name=br, Type="bridge") \
                and na["Metadata"].get("MasterIndex") and m.edges_between(na["ID"], nb["ID"], Type="veth")
        assert await until(ready), f"missing objects; have {sorted(n['Metadata']['Name'] for n in m.nodes.values())}"

        host = m.one(Type="host")
        nsn = m.one(Name=ns, Type="netns")
        na, nb, nbr = m.one(Name=a, Type="veth"), m.one(Name=b, Type="veth"), m.one(Name=br, Type="bridge")
        assert host["Metadata"]["Name"] == f"h{unique}"
        assert nsn["Metadata"]["Path"] == f"/var/run/netns/{ns}"  # as `ip netns` and Skydive name it
        assert nsn["Metadata"]["Inode"] > 0
        # ownership: host -> netns -> b ; host -> a, bridge
        assert m.edge(host["ID"], nsn["ID"], RelationType="ownership")
        assert m.edge(nsn["ID"], nb["ID"], RelationType="ownership")
        assert m.edge(host["ID"], na["ID"], RelationType="ownership")
        assert m.edge(host["ID"], nbr["ID"], RelationType="ownership")
        # layer2: bridge -> member, veth <-> peer
        assert m.edge(nbr["ID"], na["ID"], RelationType="layer2")
        (veth_edge,) = m.edges_between(na["ID"], nb["ID"], RelationType="layer2")
        assert veth_edge["Metadata"]["Type"] == "veth"
        mda, mdb = na["Metadata"], nb["Metadata"]
        assert mda["PeerIfIndex"] == mdb["IfIndex"] and mdb["PeerIfIndex"] == mda["IfIndex"]
        assert mda["LinkNetNsName"] == ns
        assert "LinkNetNsID" in mda and "LinkNetNsID" in mdb
        assert mdb["NetNsPath"] == nsn["Metadata"]["Path"] and "NetNsPath" not in mda
        assert mdb["State"] == "UP" or mdb["State"] == "DOWN"  # UP once the peer is up (it is down: no carrier)
        assert mda["MasterIndex"] == nbr["Metadata"]["IfIndex"]
        assert mda["Driver"] == "veth" and mda["Speed"] == 10000 and nbr["Metadata"]["Driver"] == "bridge"
        assert mda["Host"] == f"h{unique}" and "TID" in mda and "TID" in nsn["Metadata"]
        assert set(mda["Metric"]) >= {"RxPackets", "TxPackets", "RxBytes", "TxBytes", "Start", "Last"}
        assert "UP" in mda["LinkFlags"] and mda["MAC"].count(":") == 5 and mda["MTU"] == 1500
        # Skydive TID rules
        host_tid = str(uuid.uuid5(uuid.NAMESPACE_OID, f"h{unique}"))
        assert host["Metadata"]["TID"] == host_tid
        assert nsn["Metadata"]["TID"] == str(uuid.uuid5(uuid.NAMESPACE_OID, host_tid + nsn["Metadata"]["Path"] + "netns"))
        assert mdb["TID"] == str(uuid.uuid5(uuid.NAMESPACE_OID, nsn["Metadata"]["TID"] + b + "veth"))
        # a digest computed by the plain subscriber matches the probe's
        assert await digests_agree(svc, m)

        # namespace removal takes its interfaces (and the peer, destroyed by the kernel) away
        sh("ip", "netns", "del", ns)
        assert await until(lambda: not m.find(Name=ns, Type="netns") and not m.find(Name=b) and not m.find(Name=a))
        assert m.one(Name=br, Type="bridge")
    finally:
        await svc.stop()
        await m.close()


async def test_changes_keep_ids_and_deletes(nats_url, unique, cleanup):
    a, b, renamed = f"ca{unique}", f"cb{unique}", f"cr{unique}"
    cleanup += [["ip", "link", "del", a], ["ip", "link", "del", renamed]]
    svc, m = await start_probe(nats_url, unique)
    try:
        sh("ip", "link", "add", a, "type", "veth", "peer", "name", b)
        sh("ip", "link", "set", a, "up")
        sh("ip", "link", "set", b, "up")
        assert await until(lambda: (n := m.one(Name=a)) and n["Metadata"]["State"] == "UP")
        node_id = m.one(Name=a)["ID"]
        peer_id = m.one(Name=b)["ID"]
        assert m.edges_between(node_id, peer_id, Type="veth")
        assert "LinkNetNsName" not in m.one(Name=a)["Metadata"]

        sh("ip", "link", "set", a, "mtu", "1400")
        assert await until(lambda: m.nodes[node_id]["Metadata"].get("MTU") == 1400)
        sh("ip", "link", "set", a, "address", "02:11:22:33:44:55")
        assert await until(lambda: m.nodes[node_id]["Metadata"].get("MAC") == "02:11:22:33:44:55")
        sh("ip", "link", "set", a, "down")
        assert await until(lambda: m.nodes[node_id]["Metadata"].get("State") == "DOWN"
                           and "UP" not in m.nodes[node_id]["Metadata"]["LinkFlags"])
        sh("ip", "link", "set", a, "name", renamed)
        assert await until(lambda: m.nodes[node_id]["Metadata"].get("Name") == renamed)
        assert not m.find(Name=a)
        sh("ip", "addr", "add", "10.77.2.1/24", "dev", renamed)
        sh("ip", "addr", "add", "fd77::1/64", "dev", renamed)
        assert await until(lambda: m.nodes[node_id]["Metadata"].get("IPV4") == ["10.77.2.1/24"]
                           and "fd77::1/64" in m.nodes[node_id]["Metadata"].get("IPV6", []))
        sh("ip", "addr", "del", "10.77.2.1/24", "dev", renamed)
        assert await until(lambda: "IPV4" not in m.nodes[node_id]["Metadata"])

        sh("ip", "link", "del", renamed)
        assert await until(lambda: node_id not in m.nodes and peer_id not in m.nodes)
        assert not [e for e in m.edges.values() if node_id in (e["Parent"], e["Child"])]
        assert await digests_agree(svc, m)
    finally:
        await svc.stop()
        await m.close()


async def _digest(svc, m):
    n = len(m.digests)
    await svc.publish_digest()
    assert await until(lambda: len(m.digests) > n)
    return m.digests[-1]


async def digests_agree(svc, m, timeout: float = 10.0) -> bool:
    """The plain subscriber's digest equals the probe's. The probe watches the whole machine, where other
    work may change something between a digest and the comparison: ask again until both agree."""
    async def agree() -> bool:
        return m.digest() == await _digest(svc, m)
    return await until(agree, timeout)


async def test_vxlan_macvlan_tap(nats_url, unique, cleanup):
    vx, base, peer, mv, tap = f"vx{unique}", f"mb{unique}", f"mp{unique}", f"mv{unique}", f"tp{unique}"
    cleanup += [["ip", "link", "del", vx], ["ip", "link", "del", mv], ["ip", "link", "del", base],
                ["ip", "tuntap", "del", "dev", tap, "mode", "tap"]]
    svc, m = await start_probe(nats_url, unique)
    try:
        sh("ip", "link", "add", vx, "type", "vxlan", "id", "4242", "remote", "10.9.9.9", "local", "10.9.9.1",
           "dstport", "4789")
        sh("ip", "link", "add", base, "type", "veth", "peer", "name", peer)
        sh("ip", "link", "add", mv, "link", base, "type", "macvlan", "mode", "bridge")
        sh("ip", "tuntap", "add", "dev", tap, "mode", "tap")
        assert await until(lambda: m.one(Name=vx) and m.one(Name=mv) and m.one(Name=tap) and m.one(Name=base))
        v = m.one(Name=vx)["Metadata"]
        assert v["Type"] == "vxlan" and v["VNI"] == 4242 and v["RemoteIP"] == "10.9.9.9"
        assert v["LocalIP"] == "10.9.9.1" and v["Port"] == 4789 and v["Driver"] == "vxlan"
        mvn, basen = m.one(Name=mv), m.one(Name=base)
        assert mvn["Metadata"]["Type"] == "macvlan" and mvn["Metadata"]["ParentIndex"] == basen["Metadata"]["IfIndex"]
        assert m.edge(basen["ID"], mvn["ID"], RelationType="layer2", Type="macvlan")
        t = m.one(Name=tap)["Metadata"]
        assert t["Type"] == "tun" and t["TunType"] == "tap" and t["Driver"] == "tun"
        sh("ip", "link", "del", vx)
        sh("ip", "tuntap", "del", "dev", tap, "mode", "tap")
        assert await until(lambda: not m.find(Name=vx) and not m.find(Name=tap))
    finally:
        await svc.stop()
        await m.close()


async def test_restart_keeps_ids_and_resync_request(nats_url, unique, cleanup):
    ns, a, b = f"rn{unique}", f"ra{unique}", f"rb{unique}"
    cleanup += [["ip", "netns", "del", ns], ["ip", "link", "del", a]]
    sh("ip", "netns", "add", ns)
    sh("ip", "link", "add", a, "type", "veth", "peer", "name", b, "netns", ns)
    svc, m = await start_probe(nats_url, unique)
    try:
        assert m.one(Name=a) and m.one(Name=b) and m.one(Name=ns, Type="netns")  # present in the first full
        first = {(n["Metadata"]["Name"], n["Metadata"]["Type"]): n["ID"] for n in m.nodes.values()
                 if n["Metadata"]["Name"] in (a, b, ns)}
        first_edges = {e["ID"] for e in m.edges.values()}
        # a resync request (plain msgpack, as any client could send) gets a full
        fulls = m.kinds.count("full")
        await m.nc.publish(f"t{unique}.control.resync", msgpack.packb({"host": f"h{unique}", "reason": "test", "v": 1}))
        await m.nc.publish(f"t{unique}.control.resync", msgpack.packb({"host": "someone-else", "v": 1}))
        await m.nc.publish(f"t{unique}.control.resync", b"\xc1garbage")
        assert await until(lambda: m.kinds.count("full") == fulls + 1)
        assert m.messages[-1]["digest"] == m.digest()
        await svc.stop()
        svc, m2 = await start_probe(nats_url, unique)
        await m2.close()
        second = {(n["Metadata"]["Name"], n["Metadata"]["Type"]): n["ID"] for n in m.nodes.values()
                  if n["Metadata"]["Name"] in (a, b, ns)}
        assert first == second and len(first) == 3
        assert first_edges <= {e["ID"] for e in m.edges.values()} | _churn(m)
        assert m.messages[-1]["boot"] != m.messages[0]["boot"]
    finally:
        await svc.stop()
        await m.close()


def _churn(m):
    """Edge IDs that other tests running at the same time may have removed meanwhile."""
    return {eid for msg in m.messages for eid in msg.get("deleted_edges", [])} | \
        {e["ID"] for msg in m.messages if msg["kind"] == "full" for e in msg.get("edges", [])}


async def test_process_held_namespace(nats_url, unique):
    import subprocess
    proc = subprocess.Popen(["unshare", "--net", "sh", "-c", f"ip link add pq{unique} type veth peer name pr{unique}; exec sleep 60"])
    try:
        svc, m = await start_probe(nats_url, unique)
        try:
            assert await until(lambda: m.one(Name=f"pq{unique}") is not None)
            n = m.one(Name=f"pq{unique}")["Metadata"]
            assert n["NetNsPath"].startswith("/proc/") and n["NetNsPath"].endswith("/ns/net")
            owner = [e for e in m.edges.values() if e["Child"] == m.one(Name=f"pq{unique}")["ID"]
                     and e["Metadata"]["RelationType"] == "ownership"]
            assert len(owner) == 1 and m.nodes[owner[0]["Parent"]]["Metadata"]["Type"] == "netns"
            assert m.nodes[owner[0]["Parent"]]["Metadata"]["Manager"] == "process"
            proc.kill()
            proc.wait()
            assert await until(lambda: not m.find(Name=f"pq{unique}"))
        finally:
            await svc.stop()
            await m.close()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.slow
async def test_burst_of_500_veth_pairs_loses_nothing(nats_url, unique):
    names = [(f"u{unique[:6]}{i:03d}a", f"u{unique[:6]}{i:03d}b") for i in range(500)]
    svc, m = await start_probe(nats_url, unique)
    try:
        sh("ip", "-batch", "-", input="".join(f"link add {a} type veth peer name {b}\n" for a, b in names))
        wanted = {n for pair in names for n in pair}

        def missing():
            by_name = {n["Metadata"]["Name"]: n["ID"] for n in m.nodes.values()}
            pairs = {frozenset((e["Parent"], e["Child"])) for e in m.edges.values() if e["Metadata"].get("Type") == "veth"}
            return [(a, b) for a, b in names if a not in by_name or b not in by_name
                    or frozenset((by_name[a], by_name[b])) not in pairs]
        assert await until(lambda: not missing(), 60), f"missing {len(missing())} pairs, e.g. {missing()[:3]}"
        deltas = [x for x in m.messages if x["kind"] == "delta"]
        assert all(len(x.get("nodes", [])) + len(x.get("edges", [])) + len(x.get("deleted_nodes", []))
                   + len(x.get("deleted_edges", [])) <= 500 for x in deltas)
        assert len(deltas) < 200  # coalesced: far fewer messages than the ~2000 netlink events
        sh("ip", "-batch", "-", input="".join(f"link del {a}\n" for a, _ in names))
        assert await until(lambda: not (wanted & {n["Metadata"]["Name"] for n in m.nodes.values()}), 60)
        assert await digests_agree(svc, m)
    finally:
        sh("ip", "-batch", "-", input="".join(f"link del {a}\n" for a, _ in names), check=False)
        await svc.stop()
        await m.close()


async def test_netlink_overrun_resyncs_without_loss(nats_url, unique):
    """A tiny receive buffer forces ENOBUFS during a burst: the probe dumps again and sends a full."""
    names = [(f"o{unique[:6]}{i:03d}a", f"o{unique[:6]}{i:03d}b") for i in range(150)]
    svc, m = await start_probe(nats_url, unique, netlink_rcvbuf=4096)
    try:
        fulls = m.kinds.count("full")
        sh("ip", "-batch", "-", input="".join(f"link add {a} type veth peer name {b}\n" for a, b in names))
        wanted = {n for pair in names for n in pair}
        assert await until(lambda: wanted <= {n["Metadata"]["Name"] for n in m.nodes.values()}, 60)
        root = next(w for w in svc.watchers.values() if w.ns.kind == "root")
        assert root.overruns > 0
        assert await until(lambda: m.kinds.count("full") > fulls)
    finally:
        sh("ip", "-batch", "-", input="".join(f"link del {a}\n" for a, _ in names), check=False)
        await svc.stop()
        await m.close()


def _kernel_can(kind_args: list[str], ns: str) -> bool:
    return subprocess.run(["ip", "-n", ns, "link", "add", *kind_args], capture_output=True).returncode == 0


async def test_real_bond_vlan_dummy_gre_geneve_where_the_kernel_has_them(nats_url, unique):
    """Runs the device kinds this kernel may lack (capability check in a scratch netns); the parsing of each
    kind is covered on crafted netlink messages in tests/unit/test_topology_netlink.py either way."""
    ns = f"kc{unique}"
    sh("ip", "netns", "add", ns)
    try:
        checks = {
            "dummy": ["kd0", "type", "dummy"],
            "bond": ["kb0", "type", "bond", "mode", "active-backup"],
            "gre": ["kg0", "type", "gre", "local", "10.0.0.1", "remote", "10.0.0.2"],
            "geneve": ["kn0", "type", "geneve", "id", "7", "remote", "10.0.0.2"],
        }
        available = {k: _kernel_can(v, ns) for k, v in checks.items()}
        if available["dummy"]:
            available["vlan"] = _kernel_can(["kv0", "link", "kd0", "type", "vlan", "id", "10"], ns)
        if not any(available.values()):
            pytest.skip(f"kernel has none of {sorted(checks)} + vlan (capability check in a scratch netns)")
        svc, m = await start_probe(nats_url, unique)
        try:
            assert await until(lambda: m.one(Name=ns, Type="netns") is not None)
            if available["dummy"]:
                assert await until(lambda: m.one(Name="kd0", Type="dummy", NetNsName=ns) is not None)
            if available.get("vlan"):
                assert await until(lambda: (v := m.one(Name="kv0", NetNsName=ns)) is not None
                                   and v["Metadata"]["Vlan"] == 10)
                parent, child = m.one(Name="kd0", NetNsName=ns), m.one(Name="kv0", NetNsName=ns)
                assert m.edge(parent["ID"], child["ID"], RelationType="layer2", Type="vlan")
            if available["bond"]:
                assert await until(lambda: (b := m.one(Name="kb0", NetNsName=ns)) is not None
                                   and b["Metadata"]["BondMode"] == "active-backup")
            if available["gre"]:
                assert await until(lambda: (g := m.one(Name="kg0", NetNsName=ns)) is not None
                                   and g["Metadata"]["RemoteIP"] == "10.0.0.2")
            if available["geneve"]:
                assert await until(lambda: (g := m.one(Name="kn0", NetNsName=ns)) is not None
                                   and g["Metadata"]["VNI"] == 7)
        finally:
            await svc.stop()
            await m.close()
    finally:
        sh("ip", "netns", "del", ns, check=False)


async def test_full_split_in_parts(nats_url, unique, cleanup):
    """With a small message limit the full state goes out in several parts that a consumer reassembles."""
    ns = f"sp{unique}"
    cleanup += [["ip", "netns", "del", ns]]
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", ns, "-batch", "-",
       input="".join(f"link add s{i:02d} type veth peer name t{i:02d}\n" for i in range(20)))
    svc, m = await start_probe(nats_url, unique, message_max_bytes=10_000)
    try:
        fulls = [x for x in m.messages if x["kind"] == "full"]
        assert fulls[0]["parts"] > 1 and [x["part"] for x in fulls] == list(range(fulls[0]["parts"]))
        assert [x["seq"] for x in fulls] == list(range(fulls[0]["seq"], fulls[0]["seq"] + len(fulls)))
        assert all(len(msgpack.packb(x)) <= 10_000 for x in fulls)
        assert len([n for n in m.nodes.values() if n["Metadata"].get("NetNsName") == ns]) == 41  # 40 veth + lo
        # the parts reassembled give the digest the last part carries (a delta may already have followed)
        reassembled = Mirror()
        for x in fulls:
            reassembled.apply(x)
        assert fulls[-1]["digest"] == reassembled.digest() and not any(x.get("digest") for x in fulls[:-1])
    finally:
        await svc.stop()
        await m.close()


async def test_veth_between_two_namespaces(nats_url, unique, cleanup):
    """Peers in two non-root namespaces, linked through the nsids the kernel reports (RTM_GETNSID)."""
    na, nb = f"va{unique}", f"vb{unique}"
    cleanup += [["ip", "netns", "del", na], ["ip", "netns", "del", nb]]
    sh("ip", "netns", "add", na)
    sh("ip", "netns", "add", nb)
    svc, m = await start_probe(nats_url, unique)
    try:
        sh("ip", "-n", na, "link", "add", "e0", "type", "veth", "peer", "name", "e1", "netns", nb)
        assert await until(lambda: m.one(Name="e0", NetNsName=na) and m.one(Name="e1", NetNsName=nb)
                           and m.edges_between(m.one(Name="e0", NetNsName=na)["ID"],
                                               m.one(Name="e1", NetNsName=nb)["ID"], Type="veth"))
        assert await until(lambda: m.one(Name="e0", NetNsName=na)["Metadata"].get("LinkNetNsName") == nb
                           and m.one(Name="e1", NetNsName=nb)["Metadata"].get("LinkNetNsName") == na)
        w = next(w for w in svc.watchers.values() if w.ns.name == na)
        assert await until(lambda: set(w.nsids.values()) >= {next(x.ns.inode for x in svc.watchers.values()
                                                                   if x.ns.name == nb)})
    finally:
        await svc.stop()
        await m.close()


async def test_link_counters_refresh(nats_url, unique, cleanup):
    """`Metric` follows the kernel counters at each refresh (`metrics_interval_s`, shortened here)."""
    ns = f"mc{unique}"
    cleanup += [["ip", "netns", "del", ns]]
    sh("ip", "netns", "add", ns)
    sh("ip", "-n", ns, "link", "set", "lo", "up")
    svc, m = await start_probe(nats_url, unique, metrics_interval_s=0.3)
    try:
        assert await until(lambda: m.one(Name="lo", NetNsName=ns) is not None)
        before = m.one(Name="lo", NetNsName=ns)["Metadata"]["Metric"]
        sh("ip", "netns", "exec", ns, "ping", "-c", "3", "-i", "0.01", "-q", "127.0.0.1")
        assert await until(lambda: m.one(Name="lo", NetNsName=ns)["Metadata"]["Metric"]["RxPackets"]
                           >= before["RxPackets"] + 6)
        after = m.one(Name="lo", NetNsName=ns)["Metadata"]["Metric"]
        assert after["TxPackets"] >= before["TxPackets"] + 6 and after["RxBytes"] > before["RxBytes"]
        assert after["Start"] == before["Start"] and after["Last"] > before["Last"]
    finally:
        await svc.stop()
        await m.close()
