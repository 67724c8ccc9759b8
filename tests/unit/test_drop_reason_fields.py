"""The drop fields of the flow schema (capture option DropReasons): open `DropReasons.<NAME>` keys are map
lookups only for names shaped like the kernel's, so nothing else reaches the SQL text."""

from __future__ import annotations

from netsonde.common import flowschema as fs
from netsonde.common.bus.flows import Flow, FlowMetric


def test_reason_keys_map_to_lookups_and_nothing_else_does() -> None:
    assert fs.drop_reason_column("DropReasons.NO_SOCKET") == "DropReasons['NO_SOCKET']"
    assert fs.column_type("DropReasons['NO_SOCKET']") == "Int64"
    for bad in (
        "DropReasons.no_socket",
        "DropReasons.X'] OR 1=1 --",
        "DropReasons.",
        "DropReasons",
        "Metric.NO_SOCKET",
        "DropReasons.A.B",
    ):
        assert fs.drop_reason_column(bad) is None, bad
    assert fs.FIELD_TO_COLUMN["Metric.ABDrops"] == ("MetricABDrops",)
    assert fs.FIELD_TO_COLUMN["LastUpdateMetric.BADrops"] == ("LastUpdateMetricBADrops",)


def test_drop_columns_written_and_read_back_absent_when_zero() -> None:
    m = FlowMetric(ABPackets=3, ABDrops=3)
    f = Flow(
        UUID="u",
        LayersPath="Ethernet/IPv4/UDP",
        Application="UDP",
        TrackingID="t",
        L3TrackingID="l",
        NodeTID="n",
        Start=1,
        Last=2,
        Metric=m,
        DropReasons={"NO_SOCKET": 3},
    )
    plain = Flow(
        UUID="v",
        LayersPath="Ethernet/IPv4/UDP",
        Application="UDP",
        TrackingID="t",
        L3TrackingID="l",
        NodeTID="n",
        Start=1,
        Last=2,
        Metric=FlowMetric(ABPackets=1),
    )
    cols = fs.flows_to_columns([f, plain])
    assert cols["MetricABDrops"] == [3, 0] and cols["DropReasons"] == [{"NO_SOCKET": 3}, {}]
    rows = [{k: v[i] for k, v in cols.items()} for i in range(2)]
    back = [fs.row_to_flow(r) for r in rows]
    assert back[0]["Metric"]["ABDrops"] == 3 and back[0]["DropReasons"] == {"NO_SOCKET": 3}
    assert "ABDrops" not in back[1]["Metric"] and "DropReasons" not in back[1]
    assert fs.metrics_to_columns([f])["ABDrops"] == [3]
