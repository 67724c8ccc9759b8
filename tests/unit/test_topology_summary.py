"""The web UI's aggregated view: which group (host or namespace) each node is drawn in, the counts per group,
the links between groups, and what a group's members are."""

from __future__ import annotations

from netsonde.query_api.topology_summary import Element, Grouping


def node(id_: str, type_: str, host: str = "h1") -> Element:
    return Element(id_, host, {"Name": id_, "Type": type_})


def edge(parent: str, child: str, rel: str = "ownership") -> Element:
    return Element(f"{parent}->{child}:{rel}", "h1", {"RelationType": rel}, parent, child)


def graph() -> Grouping:
    nodes = [node("host1", "host"), node("eth0", "device"), node("br0", "ovsbridge"), node("p1", "ovsport"),
             node("ns1", "netns"), node("veth-in", "veth"), node("lo-in", "device"), node("veth-out", "veth"),
             node("stray", "device"), node("host2", "host", "h2"), node("eth0b", "device", "h2")]
    edges = [edge("host1", "eth0"), edge("host1", "br0"), edge("br0", "p1"), edge("host1", "ns1"),
             edge("ns1", "veth-in"), edge("ns1", "lo-in"), edge("host1", "veth-out"),
             edge("veth-out", "veth-in", "layer2"), edge("eth0", "eth0b", "layer2"), edge("br0", "eth0", "layer2")]
    return Grouping(nodes, edges)


def test_each_node_is_in_its_nearest_namespace_else_its_host() -> None:
    g = graph()
    assert g.group["veth-in"] == g.group["lo-in"] == "ns1"
    assert g.group["p1"] == "host1"  # owned by an OVS bridge owned by the host: the host's group
    assert g.group["stray"] == "host1"  # no owner: the host node of its Host
    assert g.group["ns1"] == "host1" and g.group["host1"] == ""
    assert g.group["eth0b"] == "host2"


def test_summary_counts_types_and_links_between_groups() -> None:
    s = graph().summary()
    assert s["Nodes"] == 11 and s["Edges"] == 10 and s["Ungrouped"] == 0
    groups = {x["ID"]: x for x in s["Groups"]}
    assert [x["ID"] for x in s["Groups"]] == ["host1", "host2", "ns1"]  # hosts first, then by name
    assert groups["host1"]["Nodes"] == 6 and groups["host1"]["Types"] == {
        "device": 2, "netns": 1, "ovsbridge": 1, "ovsport": 1, "veth": 1}
    assert groups["ns1"] == {"ID": "ns1", "Name": "ns1", "Type": "netns", "Host": "h1", "Group": "host1",
                             "Nodes": 2, "Types": {"device": 1, "veth": 1}}
    # layer2 edges between groups (br0-eth0 stays inside host1); a namespace counts as its own group
    assert s["Links"] == [{"A": "host1", "B": "host2", "RelationType": "layer2", "Count": 1},
                          {"A": "host1", "B": "ns1", "RelationType": "layer2", "Count": 1}]


def test_a_group_does_not_carry_its_nested_groups_members() -> None:
    g = graph()
    members = set(g.members("host1"))
    assert members == {"eth0", "br0", "p1", "ns1", "veth-out", "stray"}
    inside = [e.ID for e in g.edges if (e.Parent in members or e.Child in members) and not g.owns_inside(e, members)]
    assert "ns1->veth-in:ownership" not in inside and "host1->ns1:ownership" in inside
    assert "veth-out->veth-in:layer2" in inside
