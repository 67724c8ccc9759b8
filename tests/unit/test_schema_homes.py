"""Each schema has one home in libs/common; what used to be copies is derived from it or checked against it."""

from __future__ import annotations

import re

from netsonde.common import flowschema as fs
from netsonde.common import graphschema
from netsonde.common.bus.flows import FlowMetric, IPMetric
from netsonde.flow_enricher import ctables
from netsonde.graph_builder import schema as gb_schema
from netsonde.gremlin import history


def test_graph_revisions_ddl_has_one_definition() -> None:
    assert history.HISTORY_DDL == graphschema.CREATE_TABLE
    assert gb_schema.MIGRATIONS[0].statements == [graphschema.CREATE_TABLE]
    assert gb_schema.COLUMNS is graphschema.COLUMNS and gb_schema.TABLE == graphschema.TABLE == "graph_revisions"
    # every column of the definition is in the DDL, in order
    cols = re.search(r"\((.*)\) ENGINE", graphschema.CREATE_TABLE)
    assert cols is not None
    assert [c.split(" ", 1)[0] for c in re.split(r", (?=[a-z_]+ )", cols.group(1))] == [
        "kind", "id", "revision", "host", "origin", "created_at", "updated_at", "deleted_at", "parent", "child",
        "metadata"]


def test_flow_metric_columns_come_from_the_bus_schema() -> None:
    assert [c.name for c in fs.METRIC_COLUMNS][3:-1] == list(FlowMetric.__struct_fields__)
    assert [c.name for c in fs.FLOW_COLUMNS if c.name.startswith("Metric")] == [
        f"Metric{f}" for f in FlowMetric.__struct_fields__]
    assert {k for k in fs.FIELD_TO_COLUMN if k.startswith("IPMetric.")} == {
        f"IPMetric.{f}" for f in IPMetric.__struct_fields__}


def test_c_column_tables_match_flowschema() -> None:
    source = ctables.C_SOURCE.read_text()
    tables = ctables.c_tables(source)
    assert set(tables) == {"FLOWCOLS", "METCOLS", "RAWCOLS"}
    assert len(tables["FLOWCOLS"]) == len(fs.FLOW_COLUMNS) == 55
    assert tables["FLOWCOLS"][1] == ("NodeTID", "String")  # LowCardinality goes as String on the wire
    assert ctables.mismatches(source) == []


def test_the_check_names_what_differs() -> None:
    source = ctables.C_SOURCE.read_text()
    moved = source.replace('{"LinkA", "String", S}, {"LinkB", "String", S}', '{"LinkB", "String", S}, {"LinkA", "String", S}')
    assert ctables.mismatches(moved) == [
        "FLOWCOLS[11]: C has ('LinkB', 'String'), flowschema has ('LinkA', 'String')",
        "FLOWCOLS[12]: C has ('LinkA', 'String'), flowschema has ('LinkB', 'String')"]
    shorter = source.replace(', {"Host", "String", S},', ",").replace("#define NFLOWCOLS 55", "#define NFLOWCOLS 54")
    problems = ctables.mismatches(shorter)
    assert problems[0] == "FLOWCOLS[53]: C has ('BatchID', 'String'), flowschema has ('Host', 'String')"
    assert problems[-1] == "NFLOWCOLS: C defines 54, flowschema has 55"
    assert ctables.mismatches(source.replace('"BADrops"};', '"BaDrops"};'))[0].startswith("METRIC_KEYS: C has")
