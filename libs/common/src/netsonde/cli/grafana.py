"""Grafana dashboards of Netsonde, generated from code with grafana-foundation-sdk (Grafana's own builders).

`python -m netsonde.cli.grafana deploy/grafana` writes the provisioned dashboard JSON; the test suite checks the
committed files equal what this module generates, and runs every ClickHouse panel's SQL on the embedded store
(tests/integration/test_grafana_panels.py). Panels read the tables Netsonde writes (flowschema, graphschema)
through the official ClickHouse data source (`grafana-clickhouse-datasource`); "drops per stage" reads the
services' Prometheus counters, as drops are counters, not stored rows.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from grafana_foundation_sdk.builders import common as common_builders
from grafana_foundation_sdk.builders import dashboard, prometheus, table, timeseries
from grafana_foundation_sdk.cog import variants as cogvariants
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import common
from grafana_foundation_sdk.models.dashboard import DataSourceRef, GridPos

CLICKHOUSE = DataSourceRef(type_val="grafana-clickhouse-datasource", uid="netsonde-clickhouse")
PROMETHEUS = DataSourceRef(type_val="prometheus", uid="netsonde-prometheus")
DASHBOARD_UID = "netsonde-overview"

FORMAT_TIME_SERIES = 0
FORMAT_TABLE = 1
"""The ClickHouse data source's query formats (its `Format` enum)."""

_IN_RANGE_MS = (
    "Last >= toUnixTimestamp64Milli($__fromTime_ms) AND Last <= toUnixTimestamp64Milli($__toTime_ms)"
)
"""Flow rows whose last update falls in the dashboard range (`Last` is Unix milliseconds)."""
_LATEST_FLOWS = f"SELECT * FROM flows FINAL WHERE {_IN_RANGE_MS} ORDER BY Last DESC LIMIT 1 BY UUID"
"""Each flow once, at its latest update in the range (its Metric is then the flow's total)."""
_INTERFACE_NAMES = (
    "SELECT JSONExtractString(metadata, 'TID') AS tid, "
    "argMax(JSONExtractString(metadata, 'Name'), (updated_at, revision)) AS name "
    "FROM graph_revisions WHERE kind = 'node' AND tid != '' GROUP BY tid"
)
"""NodeTID -> the interface's latest name, from the graph history."""


@dataclass
class ClickHouseQuery(cogvariants.Dataquery):
    """One target of the ClickHouse data source in its SQL editor mode."""

    ref_id: str
    raw_sql: str
    format: int

    def to_json(self) -> dict[str, Any]:
        return {
            "refId": self.ref_id,
            "datasource": CLICKHOUSE.to_json(),
            "editorType": "sql",
            "queryType": "timeseries" if self.format == FORMAT_TIME_SERIES else "table",
            "format": self.format,
            "rawSql": self.raw_sql,
        }


@dataclass
class ClickHouseQueryBuilder:
    """The SDK's builder protocol for a target type it has no builder for."""

    query: ClickHouseQuery

    def build(self) -> ClickHouseQuery:
        return self.query


@dataclass(frozen=True)
class SqlPanel:
    """A panel answered by one ClickHouse query: what the suite runs on the embedded store."""

    title: str
    description: str
    sql: str
    format: int
    unit: str = "short"


SQL_PANELS: tuple[SqlPanel, ...] = (
    SqlPanel(
        "Top talkers",
        "Addresses that sent the most bytes in flows updated in the range (both directions of "
        "each flow: A sends AB, B sends BA)",
        "SELECT talker.1 AS address, sum(talker.2) AS bytes_sent, sum(talker.3) AS packets_sent, count() AS flows\n"
        "FROM (SELECT arrayJoin([(NetworkA, MetricABBytes, MetricABPackets),\n"
        "                        (NetworkB, MetricBABytes, MetricBAPackets)]) AS talker\n"
        f"      FROM ({_LATEST_FLOWS}) WHERE NetworkA != '')\n"
        "GROUP BY address ORDER BY bytes_sent DESC, address LIMIT 10",
        FORMAT_TABLE,
        "bytes",
    ),
    SqlPanel(
        "Bytes per interface",
        "Bytes of the flow updates captured on each interface (named from the graph)",
        "SELECT $__timeInterval(intDiv(m.Last, 1000)) AS time, if(i.name = '', m.NodeTID, i.name) AS interface,\n"
        "       sum(m.ABBytes + m.BABytes) AS bytes\n"
        f"FROM (SELECT * FROM flow_metrics FINAL WHERE {_IN_RANGE_MS}) AS m\n"
        f"LEFT JOIN ({_INTERFACE_NAMES}) AS i ON i.tid = m.NodeTID\n"
        "GROUP BY time, interface ORDER BY time, interface",
        FORMAT_TIME_SERIES,
        "bytes",
    ),
    SqlPanel(
        "Packets per interface",
        "Packets of the flow updates captured on each interface",
        "SELECT $__timeInterval(intDiv(m.Last, 1000)) AS time, if(i.name = '', m.NodeTID, i.name) AS interface,\n"
        "       sum(m.ABPackets + m.BAPackets) AS packets\n"
        f"FROM (SELECT * FROM flow_metrics FINAL WHERE {_IN_RANGE_MS}) AS m\n"
        f"LEFT JOIN ({_INTERFACE_NAMES}) AS i ON i.tid = m.NodeTID\n"
        "GROUP BY time, interface ORDER BY time, interface",
        FORMAT_TIME_SERIES,
        "short",
    ),
    SqlPanel(
        "Flows per protocol",
        "Flows updated in the range by their top protocol (transport, else network, else link)",
        "SELECT multiIf(TransportProtocol != '', TransportProtocol, NetworkProtocol != '', NetworkProtocol,\n"
        "               LinkProtocol) AS protocol, count() AS flows\n"
        f"FROM ({_LATEST_FLOWS})\n"
        "GROUP BY protocol ORDER BY flows DESC, protocol",
        FORMAT_TABLE,
    ),
    SqlPanel(
        "Flows per application",
        "Flows updated in the range by Application (nDPI names when captured with --ndpi)",
        "SELECT Application AS application, count() AS flows, sum(MetricABBytes + MetricBABytes) AS bytes\n"
        f"FROM ({_LATEST_FLOWS})\n"
        "GROUP BY application ORDER BY flows DESC, application",
        FORMAT_TABLE,
    ),
    SqlPanel(
        "Topology changes",
        "Graph revisions in the range: nodes and edges added, updated, deleted",
        "SELECT $__timeInterval(updated_at) AS time,\n"
        "       concat(toString(kind), ' ', multiIf(deleted_at IS NOT NULL, 'deleted',\n"
        "              created_at = updated_at, 'added', 'updated')) AS change, count() AS changes\n"
        "FROM graph_revisions FINAL WHERE $__timeFilter(updated_at)\n"
        "GROUP BY time, change ORDER BY time, change",
        FORMAT_TIME_SERIES,
    ),
)

DROP_STAGES: dict[str, tuple[str, ...]] = {
    "probe-flow": (
        "kernel_drops_total",
        "flows_refused_total",
        "bad_packets_total",
        "flow_updates_dropped_total",
        "bad_messages_total",
    ),
    "sflow-collector": ("datagrams_dropped_total", "datagrams_lost_total", "bad_messages_total"),
    "flow-enricher": ("stream_discarded_total", "insert_errors_total", "bad_messages_total"),
    "graph-builder": ("metrics_unmatched_total", "bad_messages_total"),
}
"""Stage -> its loss counters (as /metrics names them, without `netsonde_<stage>_`): the drops panel's series."""


def drop_queries() -> list[tuple[str, str]]:
    """(stage, PromQL): each stage's losses per second, summed over its counters and replicas."""
    out = []
    for stage, metrics in DROP_STAGES.items():
        prefix = "netsonde_" + stage.replace("-", "_")
        names = "|".join(f"{prefix}_{m}" for m in metrics)
        out.append((stage, f'sum(rate({{__name__=~"{names}"}}[$__rate_interval]))'))
    return out


def _time_series() -> timeseries.Panel:
    """A time-series panel with its options set (legend as a table below, tooltip on every series)."""
    legend = (
        common_builders.VizLegendOptions()
        .show_legend(True)
        .display_mode(common.LegendDisplayMode.TABLE)
        .placement(common.LegendPlacement.BOTTOM)
        .calcs(["sum", "max"])
    )
    tooltip = (
        common_builders.VizTooltipOptions()
        .mode(common.TooltipDisplayMode.MULTI)
        .sort(common.SortOrder.DESCENDING)
    )
    return timeseries.Panel().legend(legend).tooltip(tooltip)


def build_dashboard() -> dict[str, Any]:
    """The overview dashboard as Grafana's JSON model."""
    board = (
        dashboard.Dashboard("Netsonde overview")
        .uid(DASHBOARD_UID)
        .tags(["netsonde"])
        .time("now-6h", "now")
        .refresh("30s")
        .timezone("utc")
    )
    for index, p in enumerate(SQL_PANELS):
        pos = GridPos(h=8, w=12, x=12 * (index % 2), y=8 * (index // 2))
        builder: Any = table.Panel().show_header(True) if p.format == FORMAT_TABLE else _time_series()
        builder = (
            builder.title(p.title)
            .description(p.description)
            .datasource(CLICKHOUSE)
            .unit(p.unit)
            .grid_pos(pos)
            .with_target(ClickHouseQueryBuilder(ClickHouseQuery("A", p.sql, p.format)))
        )
        board = board.with_panel(builder)
    drops = (
        _time_series()
        .title("Drops per stage")
        .datasource(PROMETHEUS)
        .unit("ops")
        .description("Losses per second at each stage of the pipeline (Prometheus counters)")
        .grid_pos(GridPos(h=8, w=24, x=0, y=8 * ((len(SQL_PANELS) + 1) // 2)))
    )
    for ref, (stage, expr) in zip("ABCDEFGH", drop_queries(), strict=False):
        drops = drops.with_target(prometheus.Dataquery().expr(expr).legend_format(stage).ref_id(ref))
    board = board.with_panel(drops)
    model: dict[str, Any] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return model


def dashboard_files() -> dict[str, str]:
    """File name under deploy/grafana/dashboards/ -> content."""
    return {"netsonde-overview.json": json.dumps(build_dashboard(), indent=2, sort_keys=True) + "\n"}


def write(directory: Path) -> list[Path]:
    """Write the dashboards into `directory`/dashboards (the provisioning provider reads them there)."""
    out = directory / "dashboards"
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in dashboard_files().items():
        (out / name).write_text(text)
        written.append(out / name)
    return written


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python -m netsonde.cli.grafana deploy/grafana")
    for path in write(Path(sys.argv[1])):
        print(path)
