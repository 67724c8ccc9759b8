"""The sFlow collector names OVS bridges and ports with the IDs probe-topology gives them (one home:
`netsonde.common.ids`), so its flows' NodeTID and its capture statuses land on the graph's nodes."""

from __future__ import annotations

import uuid

from netsonde.ovs_sflow_collector.ovs import bridge_node_id, bridge_tid, port_tid
from netsonde.probe_topology.builder import build
from netsonde.probe_topology.ovsdb import OvsBridge, OvsInterface, OvsPort, OvsState


def test_collector_ids_are_the_graph_ids() -> None:
    st = OvsState(version="3.1.0")
    st.bridges["3f1c0d52-0000-4000-8000-00000000000b"] = OvsBridge(
        "3f1c0d52-0000-4000-8000-00000000000b", "br-sf", ("3f1c0d52-0000-4000-8000-00000000000f",)
    )
    st.ports["3f1c0d52-0000-4000-8000-00000000000f"] = OvsPort(
        "3f1c0d52-0000-4000-8000-00000000000f", "veth-a", ("3f1c0d52-0000-4000-8000-00000000001f",)
    )
    st.interfaces["3f1c0d52-0000-4000-8000-00000000001f"] = OvsInterface(
        "3f1c0d52-0000-4000-8000-00000000001f", "veth-a", "", 1
    )
    state = build("h7", "h7", [], st)
    nodes = {(n.Metadata["Type"], n.Metadata["Name"]): n for n in state.nodes.values()}
    bridge, port = nodes[("ovsbridge", "br-sf")], nodes[("ovsport", "veth-a")]
    assert bridge_node_id("h7", "3f1c0d52-0000-4000-8000-00000000000b") == bridge.ID
    assert bridge_tid("h7", "3f1c0d52-0000-4000-8000-00000000000b") == bridge.Metadata["TID"]
    assert port_tid("h7", "3f1c0d52-0000-4000-8000-00000000000f") == port.Metadata["TID"]
    host_tid = str(uuid.uuid5(uuid.NAMESPACE_OID, "h7"))  # Skydive topology/tid.go, written out
    assert bridge.Metadata["TID"] == str(
        uuid.uuid5(uuid.NAMESPACE_OID, host_tid + "3f1c0d52-0000-4000-8000-00000000000b" + "ovsbridge")
    )
