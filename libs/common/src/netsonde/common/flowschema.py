"""The flow storage schema: one definition that drives the tables, the inserts and the flow queries.

Like akvorado's `common/schema`, everything downstream derives from the column lists below:
the migrations (`MIGRATIONS`, `migrations(ttl_days)`), the columnar insert builders (`flows_to_columns`,
`metrics_to_columns`, `raw_packets_to_columns`, `batches_to_columns`), the Gremlin flow-query compiler
(`FIELD_TO_COLUMN`, `column_type`) and the way back to Skydive's flow JSON (`row_to_flow`).

Tables (in the database named by `clickhouse_database`):

- `flows`: one row per flow update (the flow's full state at that update). Latest state per UUID:
  `SELECT ... FROM flows FINAL WHERE ... ORDER BY Last DESC LIMIT 1 BY UUID` (`LATEST_BY_UUID`).
- `flow_metrics`: one row per update with the update's `LastUpdateMetric` (falls back to `Metric` when an
  update carries none), ordered by UUID and time: what `Metrics()` / `Aggregates()` read.
- `flow_raw_packets`: `LastRawPackets` of each update, for `RawPackets()`.

Column naming rule: the Skydive dotted path with the dots removed (`Network.A` -> `NetworkA`,
`Metric.ABBytes` -> `MetricABBytes`, `LastUpdateMetric.Start` -> `LastUpdateMetricStart`); top-level fields
keep their name (`UUID`, `NodeTID`, `Start`, `Last`). Times are Int64 Unix milliseconds, as in Skydive.
An absent layer is stored as empty strings and zeros (`NetworkProtocol = ''` means "no Network layer").

Idempotency: every table is a ReplacingMergeTree whose sorting key identifies one flow update
(`flows`: NodeTID, hour, UUID, Last; `flow_metrics`: UUID, Start, Last; raw packets: UUID, Timestamp,
Index). A redelivered batch writes rows with the same keys, which replace the first copies at merge
time; queries read through `FINAL` (or `LIMIT 1 BY`/argMax) so they never see a duplicate, even before
the merge. This holds however the enricher groups messages into inserts, which a per-insert
deduplication token would not.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Iterable, Sequence

import msgspec

from .bus.flows import Flow, FlowMetric, FlowUpdateBatch, IPMetric, TCPMetric
from .clickhouse import Migration

COMPONENT = "flows"
"""Component name under which the flow migrations are recorded in `schema_migrations`."""

FLOWS_TABLE = "flows"
METRICS_TABLE = "flow_metrics"
RAW_PACKETS_TABLE = "flow_raw_packets"

DEFAULT_TTL_DAYS = 30

STORED_AT = "StoredAt"
"""DateTime column filled by the server at insert (DEFAULT now()) in every flow table; the retention TTL
counts from it. Not part of the insert columns."""


@dataclass(frozen=True)
class Column:
    """One stored column: its name, ClickHouse type and the Skydive field path it holds ('' if none)."""

    name: str
    type: str
    path: str = ""


_METRIC_FIELDS: tuple[str, ...] = FlowMetric.__struct_fields__
"""FlowMetric's fields (the bus schema), in order: the Metric*/LastUpdateMetric* columns and flow_metrics."""
_METRIC_TYPES = {"ABPackets": "UInt64", "ABBytes": "UInt64", "BAPackets": "UInt64", "BABytes": "UInt64",
                 "Start": "Int64", "Last": "Int64", "RTT": "Int64", "ABDrops": "UInt64", "BADrops": "UInt64"}
_DROP_FIELDS = ("ABDrops", "BADrops")
"""FlowMetric's kernel drop counters (capture option DropReasons): left out of the flow JSON when zero, like
every other optional field, so flows of captures without the option look exactly as before."""

FLOW_COLUMNS: tuple[Column, ...] = (
    Column("UUID", "String", "UUID"),
    Column("NodeTID", "LowCardinality(String)", "NodeTID"),
    Column("Start", "Int64", "Start"),
    Column("Last", "Int64", "Last"),
    Column("TrackingID", "String", "TrackingID"),
    Column("L3TrackingID", "String", "L3TrackingID"),
    Column("ParentUUID", "String", "ParentUUID"),
    Column("CaptureID", "LowCardinality(String)", "CaptureID"),
    Column("LayersPath", "LowCardinality(String)", "LayersPath"),
    Column("Application", "LowCardinality(String)", "Application"),
    Column("LinkProtocol", "LowCardinality(String)", "Link.Protocol"),
    Column("LinkA", "String", "Link.A"),
    Column("LinkB", "String", "Link.B"),
    Column("LinkID", "Int64", "Link.ID"),
    Column("NetworkProtocol", "LowCardinality(String)", "Network.Protocol"),
    Column("NetworkA", "String", "Network.A"),
    Column("NetworkB", "String", "Network.B"),
    Column("NetworkID", "Int64", "Network.ID"),
    Column("TransportProtocol", "LowCardinality(String)", "Transport.Protocol"),
    Column("TransportA", "Int64", "Transport.A"),
    Column("TransportB", "Int64", "Transport.B"),
    Column("TransportID", "Int64", "Transport.ID"),
    Column("ICMPType", "LowCardinality(String)", "ICMP.Type"),
    Column("ICMPCode", "Int64", "ICMP.Code"),
    Column("ICMPID", "Int64", "ICMP.ID"),
    *(Column(f"Metric{m}", _METRIC_TYPES[m], f"Metric.{m}") for m in _METRIC_FIELDS),
    *(Column(f"LastUpdateMetric{m}", _METRIC_TYPES[m], f"LastUpdateMetric.{m}") for m in _METRIC_FIELDS),
    Column("TCPMetric", "Map(LowCardinality(String), Int64)", "TCPMetric"),
    Column("IPMetric", "Map(LowCardinality(String), Int64)", "IPMetric"),
    Column("DropReasons", "Map(LowCardinality(String), Int64)", "DropReasons"),
    Column("Extra", "String", "Extra"),
    Column("FinishType", "LowCardinality(String)", "FinishType"),
    Column("SamplingRate", "UInt32", "SamplingRate"),
    Column("RawPacketsCaptured", "UInt64", "RawPacketsCaptured"),
    Column("NodeID", "LowCardinality(String)", "NodeID"),
    Column("ANodeID", "LowCardinality(String)", "ANodeID"),
    Column("BNodeID", "LowCardinality(String)", "BNodeID"),
    Column("Host", "LowCardinality(String)", "Host"),
    Column("BatchID", "String", ""),
)
"""Columns of `flows`, in insert order. `Extra` is JSON text; TCPMetric/IPMetric/DropReasons are maps of
counters."""

METRIC_COLUMNS: tuple[Column, ...] = (
    Column("UUID", "String", "UUID"),
    Column("NodeTID", "LowCardinality(String)", "NodeTID"),
    Column("TrackingID", "String", "TrackingID"),
    *(Column(m, _METRIC_TYPES[m], m) for m in _METRIC_FIELDS),
    Column("BatchID", "String", ""),
)
"""Columns of `flow_metrics`: one FlowMetric (the update's delta) per row, named as in Skydive's FlowMetric."""

RAW_PACKET_COLUMNS: tuple[Column, ...] = (
    Column("UUID", "String", "UUID"),
    Column("NodeTID", "LowCardinality(String)", "NodeTID"),
    Column("Timestamp", "Int64", "Timestamp"),
    Column("Index", "UInt64", "Index"),
    Column("Data", "String", "Data"),
    Column("LinkType", "UInt16", "LinkType"),
    Column("BatchID", "String", ""),
)
"""Columns of `flow_raw_packets`: one captured packet per row."""



def native_type(typ: str) -> str:
    """The type a column is sent as in an insert (Python columns and the enricher's C Native blocks alike):
    LowCardinality columns go as plain String (ClickHouse converts on insert; building the dictionary
    client-side costs more than the whole rest of the row)."""
    return typ.replace("LowCardinality(String)", "String")


FLOW_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in FLOW_COLUMNS)
METRIC_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in METRIC_COLUMNS)
RAW_PACKET_COLUMN_NAMES: tuple[str, ...] = tuple(c.name for c in RAW_PACKET_COLUMNS)
FLOW_COLUMN_TYPES: dict[str, str] = {c.name: c.type for c in FLOW_COLUMNS}
METRIC_COLUMN_TYPES: dict[str, str] = {c.name: c.type for c in METRIC_COLUMNS}


def _field_map() -> dict[str, tuple[str, ...]]:
    out: dict[str, tuple[str, ...]] = {c.path: (c.name,) for c in FLOW_COLUMNS if c.path}
    for layer in ("Link", "Network", "Transport"):
        out[layer] = (f"{layer}A", f"{layer}B")
    for key in TCPMetric.__struct_fields__:
        out[f"TCPMetric.{key}"] = (f"TCPMetric['{key}']",)
    for key in IPMetric.__struct_fields__:
        out[f"IPMetric.{key}"] = (f"IPMetric['{key}']",)
    return out


def _extra_fields() -> dict[str, tuple[str, str]]:
    """Skydive's extra-layer fields (capture option ExtraLayers), read from the `Extra` JSON column.

    Gremlin names are Skydive's Go field names (`DNS.ResponseCode`, `VRRPv2.Priority`); the stored JSON keeps
    Skydive's JSON names (`response_code`, `priority`). `DNS.Questions.*` is the first question (a DNS
    message carries one)."""
    layers = {
        "DNS": {"ID": "ID", "QR": "QR?", "OpCode": "op_code$", "AA": "AA?", "TC": "TC?", "RD": "RD?", "RA": "RA?",
                "Z": "z", "ResponseCode": "response_code$", "QDCount": "q_d_count", "ANCount": "a_n_count",
                "NSCount": "n_s_count", "ARCount": "a_r_count", "Questions.Name": "questions,1,name$",
                "Questions.Type": "questions,1,type$", "Questions.Class": "questions,1,class$"},
        "DHCPv4": {"HardwareLen": "hardware_len", "HardwareOpts": "hardware_opts", "Xid": "xid", "Secs": "secs",
                   "Flags": "flags", "ServerName": "server_name$", "File": "file$"},
        "VRRPv2": {"Version": "version", "VirtualRtrID": "virtual_rtrID", "Priority": "priority",
                   "CountIPAddr": "count_ipaddr", "AdverInt": "adver_int"},
    }
    out: dict[str, tuple[str, str]] = {}
    for layer, fields in layers.items():
        out[layer] = (f"JSONExtractRaw(Extra, '{layer}')", "String")
        for name, spec in fields.items():
            path = ", ".join([f"'{layer}'"] + [p if p.isdigit() else f"'{p}'" for p in spec.rstrip("$?").split(",")])
            if spec.endswith("$"):
                out[f"{layer}.{name}"] = (f"JSONExtractString(Extra, {path})", "String")
            elif spec.endswith("?"):
                out[f"{layer}.{name}"] = (f"toInt64(JSONExtractBool(Extra, {path}))", "Int64")
            else:
                out[f"{layer}.{name}"] = (f"JSONExtractInt(Extra, {path})", "Int64")
    return out


EXTRA_FIELDS: dict[str, tuple[str, str]] = _extra_fields()
"""Extra-layer field path -> (SQL expression over `Extra`, ClickHouse type)."""
_EXPR_TYPES: dict[str, str] = dict(EXTRA_FIELDS.values())

FIELD_TO_COLUMN: dict[str, tuple[str, ...]] = {**_field_map(), **{k: (e,) for k, (e, _) in EXTRA_FIELDS.items()}}
"""Skydive flow field path -> SQL column expressions of `flows` (constants, safe to embed in SQL).

One expression for a plain field (`'Network.A'` -> `('NetworkA',)`); two for a layer named alone, which
Skydive reads as "A or B" (`'Network'` -> `('NetworkA', 'NetworkB')`). TCPMetric/IPMetric counters map to
map lookups (`"TCPMetric['ABSynStart']"`). Values must be passed as query parameters of `column_type(expr)`.
`DropReasons.<NAME>` has open keys (the kernel's reason names): `drop_reason_column` resolves it.
"""

METRIC_FIELD_TO_COLUMN: dict[str, str] = {m: m for m in _METRIC_FIELDS}
"""FlowMetric field -> column of `flow_metrics` (identical names)."""

LATEST_BY_UUID = "ORDER BY Last DESC LIMIT 1 BY UUID"
"""Append to a `SELECT ... FROM flows FINAL WHERE ...` to keep only each flow's latest update."""


_DROP_REASON = re.compile(r"DropReasons\.([A-Z][A-Z0-9_]{0,63})")


def drop_reason_column(key: str) -> str | None:
    """`DropReasons.NO_SOCKET` -> `"DropReasons['NO_SOCKET']"` (a map lookup: 0 when the flow has no such drop).
    The reason names are the kernel's, so any upper-case identifier is accepted (and safe to embed: checked
    by the pattern); None for anything else."""
    m = _DROP_REASON.fullmatch(key)
    return f"DropReasons['{m.group(1)}']" if m else None


def column_type(expr: str) -> str:
    """ClickHouse type of a `FIELD_TO_COLUMN` expression (for typed `{name:Type}` query parameters)."""
    if expr.startswith(("TCPMetric[", "IPMetric[", "DropReasons[")):
        return "Int64"
    if expr in _EXPR_TYPES:
        return _EXPR_TYPES[expr]
    typ = FLOW_COLUMN_TYPES[expr]
    if typ.startswith("LowCardinality("):
        return typ[len("LowCardinality("):-1]
    return typ


# --- migrations ------------------------------------------------------------------------------------------

def _columns_ddl(columns: Sequence[Column]) -> str:
    return ", ".join(f"`{c.name}` {c.type}" for c in columns)


def _ttl(expr: str, ttl_days: int) -> str:
    return f"TTL toDateTime(intDiv({expr}, 1000)) + INTERVAL {int(ttl_days)} DAY" if ttl_days > 0 else ""


def _stored_ttl(ttl_days: int) -> str:
    return f"TTL `{STORED_AT}` + INTERVAL {int(ttl_days)} DAY"


def migrations(ttl_days: int = DEFAULT_TTL_DAYS) -> list[Migration]:
    """The versioned flow-table migrations, with rows expiring `ttl_days` after they were stored (0 = never;
    tables created before migration 5 first expired rows by their `Last`).

    `ttl_statements()` changes the TTL on existing tables."""
    flows = (
        f"CREATE TABLE IF NOT EXISTS {{db}}.{FLOWS_TABLE} ({_columns_ddl(FLOW_COLUMNS)}, "
        "INDEX idx_tracking TrackingID TYPE bloom_filter(0.01) GRANULARITY 4, "
        "INDEX idx_uuid UUID TYPE bloom_filter(0.01) GRANULARITY 4, "
        "INDEX idx_net_a NetworkA TYPE bloom_filter(0.01) GRANULARITY 4, "
        "INDEX idx_net_b NetworkB TYPE bloom_filter(0.01) GRANULARITY 4, "
        "INDEX idx_start Start TYPE minmax GRANULARITY 1) "
        "ENGINE = ReplacingMergeTree "
        "PARTITION BY toYYYYMMDD(toDateTime(intDiv(Last, 1000), 'UTC')) "
        "ORDER BY (NodeTID, intDiv(Last, 3600000), UUID, Last) "
        f"{_ttl('Last', ttl_days)}")
    metrics = (
        f"CREATE TABLE IF NOT EXISTS {{db}}.{METRICS_TABLE} ({_columns_ddl(METRIC_COLUMNS)}, "
        "INDEX idx_node NodeTID TYPE set(1000) GRANULARITY 4, "
        "INDEX idx_tracking TrackingID TYPE bloom_filter(0.01) GRANULARITY 4) "
        "ENGINE = ReplacingMergeTree "
        "PARTITION BY toYYYYMMDD(toDateTime(intDiv(Last, 1000), 'UTC')) "
        "ORDER BY (UUID, Start, Last) "
        f"{_ttl('Last', ttl_days)}")
    raw = (
        f"CREATE TABLE IF NOT EXISTS {{db}}.{RAW_PACKETS_TABLE} ({_columns_ddl(RAW_PACKET_COLUMNS)}) "
        "ENGINE = ReplacingMergeTree "
        "PARTITION BY toYYYYMMDD(toDateTime(intDiv(Timestamp, 1000), 'UTC')) "
        "ORDER BY (UUID, Timestamp, Index) "
        f"{_ttl('Timestamp', ttl_days)}")
    return [
        Migration(1, "flows table", [flows]),
        Migration(2, "flow_metrics table", [metrics]),
        Migration(3, "flow_raw_packets table", [raw]),
        Migration(4, "drop the skip indexes that cost inserts more than they save queries", [
            f"ALTER TABLE {{db}}.{FLOWS_TABLE} DROP INDEX IF EXISTS {idx}"
            for idx in ("idx_l3tracking", "idx_parent", "idx_link_a", "idx_link_b")]),
        Migration(5, "retention counted from storage time, so imported old captures are kept", [
            *(f"ALTER TABLE {{db}}.{table} ADD COLUMN IF NOT EXISTS `{STORED_AT}` DateTime DEFAULT now()"
              for table in (FLOWS_TABLE, METRICS_TABLE, RAW_PACKETS_TABLE)),
            *(f"ALTER TABLE {{db}}.{table} MODIFY {_stored_ttl(ttl_days)}"
              for table in (FLOWS_TABLE, METRICS_TABLE, RAW_PACKETS_TABLE) if ttl_days > 0)]),
        Migration(6, "kernel drop reasons (capture option DropReasons)", [
            *(f"ALTER TABLE {{db}}.{FLOWS_TABLE} ADD COLUMN IF NOT EXISTS `{c.name}` {c.type}"
              for c in FLOW_COLUMNS if c.name == "DropReasons" or c.name.endswith(_DROP_FIELDS)),
            *(f"ALTER TABLE {{db}}.{METRICS_TABLE} ADD COLUMN IF NOT EXISTS `{c.name}` {c.type}"
              for c in METRIC_COLUMNS if c.name in _DROP_FIELDS)]),
    ]


MIGRATIONS: list[Migration] = migrations()
"""Flow migrations with the default TTL (`DEFAULT_TTL_DAYS`); run with
`run_migrations(url, db, COMPONENT, MIGRATIONS)`."""


def ttl_statements(database: str, ttl_days: int) -> list[str]:
    """ALTER statements that set (or remove, with 0) the TTL of the existing flow tables.

    Rows expire `ttl_days` after they were stored (`StoredAt`, migration 5), not after the flow's own time:
    a pcap imported with its packets' 2016 timestamps stays as long as live flows do."""
    out = []
    for table in (FLOWS_TABLE, METRICS_TABLE, RAW_PACKETS_TABLE):
        if ttl_days > 0:
            out.append(f"ALTER TABLE `{database}`.{table} MODIFY {_stored_ttl(ttl_days)}")
        else:
            out.append(f"ALTER TABLE `{database}`.{table} REMOVE TTL")
    return out


# --- columnar builders ---------------------------------------------------------------------------------

_json = msgspec.json.Encoder()
_EMPTY: dict[str, int] = {}


def flows_to_columns(flows: Sequence[Flow], batch_id: str | Sequence[str] = "") -> dict[str, list[Any]]:
    """Columns of `flows` (name -> list, in `FLOW_COLUMN_NAMES` order) for a columnar insert.

    `batch_id` is one ID for all flows or one per flow. Built one column at a time with list
    comprehensions: no per-row dict or tuple is created."""
    fs = flows
    n = len(fs)
    link = [f.Link for f in fs]
    net = [f.Network for f in fs]
    tr = [f.Transport for f in fs]
    icmp = [f.ICMP for f in fs]
    met = [f.Metric for f in fs]
    lum = [f.LastUpdateMetric or f.Metric for f in fs]
    cols: dict[str, list[Any]] = {
        "UUID": [f.UUID for f in fs],
        "NodeTID": [f.NodeTID for f in fs],
        "Start": [f.Start for f in fs],
        "Last": [f.Last for f in fs],
        "TrackingID": [f.TrackingID for f in fs],
        "L3TrackingID": [f.L3TrackingID for f in fs],
        "ParentUUID": [f.ParentUUID for f in fs],
        "CaptureID": [f.CaptureID for f in fs],
        "LayersPath": [f.LayersPath for f in fs],
        "Application": [f.Application for f in fs],
    }
    for name, layer, typ in (("Link", link, str), ("Network", net, str), ("Transport", tr, int)):
        empty = typ()
        cols[f"{name}Protocol"] = [x.Protocol if x is not None else "" for x in layer]
        a = [x.A if x is not None else empty for x in layer]
        b = [x.B if x is not None else empty for x in layer]
        # ends are `Any` on the bus: coerce the odd one so a bad value cannot poison an insert
        cols[f"{name}A"] = a if all(type(v) is typ for v in a) else [_coerce(v, typ) for v in a]
        cols[f"{name}B"] = b if all(type(v) is typ for v in b) else [_coerce(v, typ) for v in b]
        cols[f"{name}ID"] = [x.ID if x is not None else 0 for x in layer]
    cols["ICMPType"] = [x.Type if x is not None else "" for x in icmp]
    cols["ICMPCode"] = [x.Code if x is not None else 0 for x in icmp]
    cols["ICMPID"] = [x.ID if x is not None else 0 for x in icmp]
    for prefix, ms in (("Metric", met), ("LastUpdateMetric", lum)):
        cols[f"{prefix}ABPackets"] = [m.ABPackets for m in ms]
        cols[f"{prefix}ABBytes"] = [m.ABBytes for m in ms]
        cols[f"{prefix}BAPackets"] = [m.BAPackets for m in ms]
        cols[f"{prefix}BABytes"] = [m.BABytes for m in ms]
        cols[f"{prefix}Start"] = [m.Start for m in ms]
        cols[f"{prefix}Last"] = [m.Last for m in ms]
        cols[f"{prefix}RTT"] = [m.RTT for m in ms]
        cols[f"{prefix}ABDrops"] = [m.ABDrops for m in ms]
        cols[f"{prefix}BADrops"] = [m.BADrops for m in ms]
    cols["TCPMetric"] = [_struct_map(f.TCPMetric) for f in fs]
    cols["IPMetric"] = [_struct_map(f.IPMetric) for f in fs]
    cols["DropReasons"] = [f.DropReasons or _EMPTY for f in fs]
    cols["Extra"] = [_json.encode(f.Extra).decode() if f.Extra else "" for f in fs]
    cols["FinishType"] = [f.FinishType for f in fs]
    cols["SamplingRate"] = [f.SamplingRate for f in fs]
    cols["RawPacketsCaptured"] = [f.RawPacketsCaptured for f in fs]
    cols["NodeID"] = [f.NodeID for f in fs]
    cols["ANodeID"] = [f.ANodeID for f in fs]
    cols["BNodeID"] = [f.BNodeID for f in fs]
    cols["Host"] = [f.Host for f in fs]
    cols["BatchID"] = [batch_id] * n if isinstance(batch_id, str) else list(batch_id)
    return {name: cols[name] for name in FLOW_COLUMN_NAMES}


def _coerce(v: Any, typ: type) -> Any:
    if type(v) is typ:
        return v
    if typ is str:
        return "" if v is None else str(v)
    try:
        return int(v)
    except (TypeError, ValueError):
        return 0


def _struct_map(s: Any) -> dict[str, int]:
    if s is None:
        return _EMPTY
    return {k: v for k, v in msgspec.structs.asdict(s).items() if v}  # zeros omitted, as on the bus


def metrics_to_columns(flows: Sequence[Flow], batch_id: str | Sequence[str] = "") -> dict[str, list[Any]]:
    """Columns of `flow_metrics`: each update's LastUpdateMetric (or Metric when it has none)."""
    ms = [f.LastUpdateMetric or f.Metric for f in flows]
    return {
        "UUID": [f.UUID for f in flows],
        "NodeTID": [f.NodeTID for f in flows],
        "TrackingID": [f.TrackingID for f in flows],
        "ABPackets": [m.ABPackets for m in ms],
        "ABBytes": [m.ABBytes for m in ms],
        "BAPackets": [m.BAPackets for m in ms],
        "BABytes": [m.BABytes for m in ms],
        "Start": [m.Start for m in ms],
        "Last": [m.Last for m in ms],
        "RTT": [m.RTT for m in ms],
        "ABDrops": [m.ABDrops for m in ms],
        "BADrops": [m.BADrops for m in ms],
        "BatchID": [batch_id] * len(flows) if isinstance(batch_id, str) else list(batch_id),
    }


def raw_packets_to_columns(flows: Sequence[Flow], batch_id: str | Sequence[str] = "") -> dict[str, list[Any]]:
    """Columns of `flow_raw_packets` from the flows' LastRawPackets (usually empty: then all lists are empty)."""
    cols: dict[str, list[Any]] = {name: [] for name in RAW_PACKET_COLUMN_NAMES}
    bids = None if isinstance(batch_id, str) else batch_id
    for i, f in enumerate(flows):
        if not f.LastRawPackets:
            continue
        bid = batch_id if bids is None else bids[i]
        for p in f.LastRawPackets:
            cols["UUID"].append(f.UUID)
            cols["NodeTID"].append(f.NodeTID)
            cols["Timestamp"].append(p.Timestamp)
            cols["Index"].append(p.Index)
            cols["Data"].append(p.Data)
            cols["LinkType"].append(p.LinkType)
            cols["BatchID"].append(bid)
    return cols


@dataclass
class InsertColumns:
    """Columns of the three tables for one insert, built from one or more batches."""

    flows: dict[str, list[Any]]
    metrics: dict[str, list[Any]]
    raw_packets: dict[str, list[Any]]

    @property
    def rows(self) -> int:
        return len(self.flows["UUID"])


def batches_to_columns(batches: Iterable[FlowUpdateBatch]) -> InsertColumns:
    """Columns of all three tables for several batches at once (each row tagged with its batch_id)."""
    flows: list[Flow] = []
    bids: list[str] = []
    for b in batches:
        flows.extend(b.flows)
        bids.extend([b.batch_id] * len(b.flows))
    return InsertColumns(flows_to_columns(flows, bids), metrics_to_columns(flows, bids),
                         raw_packets_to_columns(flows, bids))


# --- rows back to Skydive's JSON -------------------------------------------------------------------------

def _metric(row: dict[str, Any], prefix: str) -> dict[str, Any]:
    return {m: row.get(f"{prefix}{m}", 0) for m in _METRIC_FIELDS
            if m not in _DROP_FIELDS or row.get(f"{prefix}{m}")}


def _layer(row: dict[str, Any], name: str) -> dict[str, Any] | None:
    proto = row.get(f"{name}Protocol")
    if not proto:
        return None
    out = {"Protocol": proto, "A": row.get(f"{name}A"), "B": row.get(f"{name}B")}
    if row.get(f"{name}ID"):
        out["ID"] = row[f"{name}ID"]
    return out


def row_to_flow(row: dict[str, Any]) -> dict[str, Any]:
    """Skydive's flow JSON object from a `flows` row (a dict keyed by column name; missing columns are
    left out, so `SELECT *` or any subset works). Absent layers are omitted, as in Skydive's JSON."""
    flow: dict[str, Any] = {}
    for key in ("UUID", "LayersPath", "Application", "TrackingID", "L3TrackingID", "ParentUUID", "NodeTID",
                "CaptureID"):
        if key in row and (row[key] or key not in ("ParentUUID", "CaptureID")):
            flow[key] = row[key]
    for name in ("Link", "Network", "Transport"):
        layer = _layer(row, name)
        if layer is not None:
            flow[name] = layer
    if row.get("ICMPType"):
        flow["ICMP"] = {"Type": row["ICMPType"], "Code": row.get("ICMPCode", 0), "ID": row.get("ICMPID", 0)}
    if "MetricABPackets" in row:
        flow["Metric"] = _metric(row, "Metric")
    if "LastUpdateMetricABPackets" in row:
        flow["LastUpdateMetric"] = _metric(row, "LastUpdateMetric")
    for key in ("TCPMetric", "IPMetric", "DropReasons"):
        if row.get(key):
            flow[key] = dict(row[key])
    if row.get("Extra"):
        flow.update(msgspec.json.decode(row["Extra"]))
    for key in ("Start", "Last", "FinishType"):
        if key in row:
            flow[key] = row[key]
    for key in ("SamplingRate", "RawPacketsCaptured", "NodeID", "ANodeID", "BNodeID", "Host"):
        if row.get(key):
            flow[key] = row[key]
    return flow


def row_to_metric(row: dict[str, Any]) -> dict[str, Any]:
    """Skydive's FlowMetric JSON from a `flow_metrics` row."""
    return {m: row[m] for m in _METRIC_FIELDS if m in row and (m not in _DROP_FIELDS or row[m])}


__all__ = [
    "COMPONENT", "FLOWS_TABLE", "METRICS_TABLE", "RAW_PACKETS_TABLE", "DEFAULT_TTL_DAYS", "STORED_AT", "Column",
    "FLOW_COLUMNS", "METRIC_COLUMNS", "RAW_PACKET_COLUMNS", "FLOW_COLUMN_NAMES", "METRIC_COLUMN_NAMES",
    "RAW_PACKET_COLUMN_NAMES", "FLOW_COLUMN_TYPES", "METRIC_COLUMN_TYPES", "FIELD_TO_COLUMN", "EXTRA_FIELDS",
    "METRIC_FIELD_TO_COLUMN", "LATEST_BY_UUID", "column_type", "migrations", "MIGRATIONS", "ttl_statements",
    "flows_to_columns", "metrics_to_columns", "raw_packets_to_columns", "InsertColumns", "batches_to_columns",
    "row_to_flow", "row_to_metric", "drop_reason_column",
]
