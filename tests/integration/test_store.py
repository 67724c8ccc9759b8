"""The ClickHouse contract every service relies on, through clickhouse-connect and plain HTTP.

Runs against the embedded store (`python -m netsonde.clickhouse_store`, started by the `clickhouse_url` fixture) or,
unchanged, against a real ClickHouse server when NETSONDE_CLICKHOUSE_URL is set. Each test works in its
own database. The tests at the end (restart, crash, SIGTERM, auth) start private store processes: they
test the store itself, so they run in both modes.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import gzip
import ipaddress
import json
import threading
import time
import uuid
import zlib
from decimal import Decimal
from pathlib import Path
from typing import Any, Iterator
from urllib.parse import urlparse

import httpx
import lz4.frame
import pandas as pd
import pyarrow as pa
import pytest
import zstandard
from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import DatabaseError

from netsonde.common.clickhouse import connect
from netsonde.common.testing import free_port, start_store

# Every column type Netsonde's tables use.
ALL_TYPES_DDL = """
CREATE TABLE {db}.all_types (
    ts DateTime64(3, 'UTC'),
    day Date,
    id UUID,
    src IPv4,
    dst IPv6,
    app LowCardinality(String),
    proto LowCardinality(Nullable(String)),
    tags Array(String),
    ports Array(UInt16),
    attrs Map(String, String),
    counters Map(LowCardinality(String), UInt64),
    note Nullable(String),
    rtt Nullable(Float64),
    bytes UInt64,
    packets UInt32,
    flags UInt8,
    delta Int64,
    ratio Float32,
    ok Bool,
    price Decimal(18, 4),
    raw FixedString(4)
) ENGINE = MergeTree PARTITION BY toYYYYMM(ts) ORDER BY (app, ts)
"""
ALL_COLUMNS = ["ts", "day", "id", "src", "dst", "app", "proto", "tags", "ports", "attrs", "counters", "note",
               "rtt", "bytes", "packets", "flags", "delta", "ratio", "ok", "price", "raw"]
T0 = dt.datetime(2026, 1, 31, 23, 59, 58, 125000)  # rows span two months: two partitions


def all_types_row(i: int) -> list[Any]:
    return [
        T0 + dt.timedelta(seconds=i),
        dt.date(2026, 1, 1) + dt.timedelta(days=i % 60),
        uuid.UUID(int=i + 1),
        ipaddress.IPv4Address(f"10.{i % 256}.0.{i % 200 + 1}"),
        ipaddress.IPv6Address(f"fd00::{i + 1:x}"),
        ["TCP", "UDP", "ICMP"][i % 3],
        None if i % 4 == 0 else ["ipv4", "ipv6"][i % 2],
        [f"t{j}" for j in range(i % 3)],
        [80 + i % 5, 443],
        {"host": f"h{i}", "if": "eth0"},
        {"rx": i, "tx": 2 * i},
        None if i % 2 else f"note {i} with 'quotes' and \\ and \t tab",
        None if i % 3 == 0 else i / 7,
        10**12 + i,
        i * 3,
        i % 256,
        -i,
        0.5,
        i % 2 == 0,
        Decimal(i) / Decimal(4),
        b"ab\x00" + bytes([i % 256]),
    ]


def http_base(url: str) -> tuple[str, httpx.BasicAuth | None]:
    u = urlparse(url)
    auth = httpx.BasicAuth(u.username or "default", u.password or "") if u.username else None
    return f"{u.scheme}://{u.hostname}:{u.port or 8123}", auth


@pytest.fixture
def db(clickhouse_url: str, unique: str) -> Iterator[str]:
    name = f"store_{unique}"
    admin = connect(clickhouse_url, "default")
    admin.command(f"CREATE DATABASE `{name}`")
    yield name
    admin.command(f"DROP DATABASE IF EXISTS `{name}`")
    admin.close()


@pytest.fixture
def client(clickhouse_url: str, db: str) -> Iterator[Client]:
    c = connect(clickhouse_url, db)  # clickhouse-connect defaults: compression on, Native both ways
    yield c
    c.close()


@pytest.fixture
def http(clickhouse_url: str) -> Iterator[httpx.Client]:
    base, auth = http_base(clickhouse_url)
    with httpx.Client(base_url=base, auth=auth, timeout=60) as h:
        yield h


# --- connection, DDL, every type -----------------------------------------------------------------------

def test_client_connects_and_sees_a_modern_server(client: Client) -> None:
    major = int(client.server_version.split(".")[0])
    assert major >= 23
    assert client.command("SELECT 1") == 1
    assert client.query("SELECT currentDatabase()").result_rows[0][0] == client.database


def test_all_types_round_trip_through_native_inserts_and_queries(client: Client, db: str) -> None:
    client.command(ALL_TYPES_DDL.format(db=f"`{db}`"))
    rows = [all_types_row(i) for i in range(500)]
    summary = client.insert("all_types", rows, column_names=ALL_COLUMNS)
    assert summary.written_rows == 500
    got = client.query("SELECT * FROM all_types ORDER BY ts").result_rows
    assert len(got) == 500
    for i in (0, 1, 2, 3, 77, 499):
        g, want = got[i], all_types_row(i)
        assert g[0] == want[0]  # DateTime64(3) keeps the milliseconds
        assert g[1:5] == tuple(want[1:5])
        assert g[5] == want[5] and g[6] == want[6]
        assert g[7] == want[7] and g[8] == want[8]
        assert g[9] == want[9] and g[10] == want[10]
        assert g[11] == want[11]
        assert (g[12] is None) == (want[12] is None) and (g[12] is None or abs(g[12] - want[12]) < 1e-12)
        assert g[13:18] == tuple(want[13:18])
        assert g[18] == want[18] and g[19] == want[19] and g[20] == want[20]
    parts = client.query("SELECT uniqExact(_partition_id) FROM all_types").result_rows[0][0]
    assert parts == 2
    agg = client.query("SELECT count(), sum(bytes), countIf(note IS NULL), uniqExact(app) FROM all_types")
    assert agg.result_rows[0] == (500, 500 * 10**12 + sum(range(500)), 250, 3)


def test_columnar_insert_and_insert_df(client: Client) -> None:
    client.command("CREATE TABLE c (ts DateTime64(3), a LowCardinality(String), n UInt64, ip IPv4) "
                   "ENGINE = MergeTree ORDER BY ts")
    n = 20_000
    cols = [[T0 + dt.timedelta(milliseconds=i) for i in range(n)], [f"a{i % 10}" for i in range(n)],
            list(range(n)), [ipaddress.IPv4Address(i) for i in range(n)]]
    client.insert("c", cols, column_names=["ts", "a", "n", "ip"], column_oriented=True)
    df = pd.DataFrame({"ts": pd.date_range("2026-01-01", periods=n, freq="ms"), "a": ["x"] * n,
                       "n": range(n, 2 * n), "ip": ["10.0.0.1"] * n})
    client.insert_df("c", df)
    res = client.query("SELECT count(), sum(n), uniqExact(a), countIf(ip = toIPv4('10.0.0.1')) FROM c")
    assert res.result_rows[0] == (2 * n, sum(range(2 * n)), 11, n)


def test_insert_arrow_and_query_arrow_and_df(client: Client) -> None:
    client.command("CREATE TABLE ar (k UInt32, s String, f Float64) ENGINE = MergeTree ORDER BY k")
    tbl = pa.table({"k": pa.array(range(1000), pa.uint32()), "s": [f"s{i}" for i in range(1000)],
                    "f": [i / 2 for i in range(1000)]})
    client.insert_arrow("ar", tbl)
    back = client.query_arrow("SELECT k, s, f FROM ar ORDER BY k")
    assert back.num_rows == 1000
    assert back.column("s")[999].as_py() == "s999"
    df = client.query_df("SELECT k, s, f FROM ar WHERE k < {lim:UInt32} ORDER BY k", parameters={"lim": 10})
    assert list(df["k"]) == list(range(10))
    assert df["f"].sum() == sum(i / 2 for i in range(10))


def test_streaming_queries(client: Client) -> None:
    total = 0
    blocks = 0
    with client.query_row_block_stream("SELECT number, toString(number) FROM numbers(300000)") as stream:
        for block in stream:
            blocks += 1
            total += sum(r[0] for r in block)
    assert total == sum(range(300000))
    assert blocks >= 2
    seen = 0
    with client.query_df_stream("SELECT number AS n FROM numbers(150000)") as frames:
        for frame in frames:
            seen += len(frame)
    assert seen == 150000
    with client.query_arrow_stream("SELECT number AS n FROM numbers(100000)") as batches:
        assert sum(b.num_rows for b in batches) == 100000


def test_stream_cancelled_early_leaves_the_server_usable(client: Client) -> None:
    with client.query_row_block_stream("SELECT number FROM numbers(50000000)") as stream:
        first = next(iter(stream))
        assert first[0][0] == 0
    assert client.command("SELECT 42") == 42


# --- parameters, settings, sessions -----------------------------------------------------------------

def test_server_side_parameters_of_many_types(client: Client) -> None:
    res = client.query(
        "SELECT {s:String}, {n:UInt64}, {ip:IPv4}, {t:DateTime64(3)}, {a:Array(String)}, {u:UUID}",
        parameters={"s": "it's a \\ test\twith tab", "n": 2**63, "ip": "192.168.1.1",
                    "t": T0, "a": ["x", "y'z"], "u": uuid.UUID(int=5)})
    row = res.result_rows[0]
    assert row[0] == "it's a \\ test\twith tab"
    assert row[1] == 2**63
    assert row[2] == ipaddress.IPv4Address("192.168.1.1")
    assert row[3] == T0
    assert row[4] == ["x", "y'z"]
    assert row[5] == uuid.UUID(int=5)
    # client-side binding (%(name)s) too
    assert client.query("SELECT %(v)s", parameters={"v": "o'k"}).result_rows[0][0] == "o'k"


def test_settings_are_per_query(client: Client) -> None:
    assert client.query("SELECT getSetting('max_threads')", settings={"max_threads": 3}).result_rows[0][0] == 3
    default = client.query("SELECT getSetting('max_threads')").result_rows[0][0]
    assert default != 3 or client.query("SELECT changed FROM system.settings WHERE name = 'max_threads'",
                                        ).result_rows[0][0] == 0
    with pytest.raises(DatabaseError) as exc:
        client.query("SELECT number FROM numbers(100)",
                     settings={"max_result_rows": 10, "result_overflow_mode": "throw"})
    assert exc.value.code == 396  # TOO_MANY_ROWS_OR_BYTES
    assert len(client.query("SELECT number FROM numbers(100)").result_rows) == 100


def test_sessions_keep_temporary_tables_and_set(clickhouse_url: str, db: str) -> None:
    u = urlparse(clickhouse_url)
    kw: dict[str, Any] = dict(host=u.hostname, port=u.port or 8123, username=u.username or "default",
                              password=u.password or "", database=db)
    import clickhouse_connect

    a = clickhouse_connect.get_client(session_id=f"a-{uuid.uuid4()}", **kw)
    b = clickhouse_connect.get_client(session_id=f"b-{uuid.uuid4()}", **kw)
    try:
        a.command("CREATE TEMPORARY TABLE tmp (x UInt32)")
        a.insert("tmp", [[1], [2], [3]], column_names=["x"])
        assert a.query("SELECT sum(x) FROM tmp").result_rows[0][0] == 6
        with pytest.raises(DatabaseError) as exc:
            b.query("SELECT * FROM tmp")  # another session does not see it
        assert exc.value.code == 60
        b.command("CREATE TEMPORARY TABLE tmp (x UInt32)")  # same name, other session: no clash
        b.command("INSERT INTO tmp VALUES (10)")
        assert b.query("SELECT sum(x) FROM tmp").result_rows[0][0] == 10
        assert a.query("SELECT sum(x) FROM tmp").result_rows[0][0] == 6
        a.command("SET max_threads = 2")
        assert a.query("SELECT getSetting('max_threads')").result_rows[0][0] == 2
    finally:
        a.close()
        b.close()
    # a client without a session sees neither the temporary table nor the SET
    c = clickhouse_connect.get_client(**kw)
    try:
        with pytest.raises(DatabaseError):
            c.query("SELECT * FROM tmp")
    finally:
        c.close()


def test_session_check_and_concurrent_use(http: httpx.Client) -> None:
    sid = f"s-{uuid.uuid4()}"
    r = http.post("/", params={"session_id": sid, "session_check": "1"}, content="SELECT 1")
    assert r.status_code == 404
    assert r.headers["X-ClickHouse-Exception-Code"] == "372"  # SESSION_NOT_FOUND
    r = http.post("/", params={"session_id": sid}, content="CREATE TEMPORARY TABLE t1 (a UInt8)")
    assert r.status_code == 200, r.text
    r = http.post("/", params={"session_id": sid, "session_check": "1"}, content="SELECT count() FROM t1")
    assert r.status_code == 200 and r.text == "0\n"


def test_use_and_set_without_session_do_not_leak(http: httpx.Client, db: str) -> None:
    for _ in range(6):  # enough to touch every pooled connection of the store
        assert http.post("/", content="SET max_threads = 1").status_code == 200
        assert http.post("/", content=f"USE `{db}`").status_code == 200
    for _ in range(6):
        r = http.post("/", content="SELECT currentDatabase(), getSetting('max_threads') = 1")
        assert r.text.split("\t")[0] == "default"


def test_session_is_locked_while_it_runs_a_query(clickhouse_url: str) -> None:
    base, auth = http_base(clickhouse_url)
    sid = f"l-{uuid.uuid4()}"
    with httpx.Client(base_url=base, auth=auth, timeout=60) as h1, \
            httpx.Client(base_url=base, auth=auth, timeout=60) as h2:
        assert h1.post("/", params={"session_id": sid}, content="SELECT 1").status_code == 200
        started = threading.Event()
        slow: list[httpx.Response] = []

        def run_slow() -> None:
            started.set()
            slow.append(h1.post("/", params={"session_id": sid, "function_sleep_max_microseconds_per_block":
                                             "10000000"},
                                content="SELECT sleepEachRow(0.5) FROM numbers(6) SETTINGS max_block_size = 1"))

        t = threading.Thread(target=run_slow)
        t.start()
        started.wait()
        try:
            # poll while the slow query runs: one of the two overlapping requests must be refused with
            # SESSION_IS_LOCKED (usually the poll; the slow one if a poll held the session when it arrived)
            busy = None
            while t.is_alive():
                r = h2.post("/", params={"session_id": sid}, content="SELECT 2")
                if r.status_code != 200:
                    busy = r
                    break
                assert r.text == "2\n"
        finally:
            t.join()
        refused = [r for r in ([busy] if busy is not None else []) + slow if r.status_code != 200]
        assert refused, "two requests overlapped on one session and neither was refused"
        assert all(r.headers["X-ClickHouse-Exception-Code"] == "373" for r in refused)  # SESSION_IS_LOCKED
        if busy is None:
            return  # the slow query was the one refused
        assert slow and slow[0].status_code == 200 and slow[0].text.count("\n") == 6


# --- errors -----------------------------------------------------------------------------------------

def test_errors_reach_the_client_as_clickhouse_exceptions(client: Client) -> None:
    with pytest.raises(DatabaseError) as exc:
        client.query("SELECT * FROM no_such_table")
    assert exc.value.code == 60
    assert "UNKNOWN_TABLE" in str(exc.value)
    with pytest.raises(DatabaseError) as exc:
        client.command("SELEC 1")
    assert exc.value.code == 62
    with pytest.raises(DatabaseError) as exc:
        client.query("SELECT {x:UInt8}")  # missing parameter
    assert exc.value.code in (456, 457)  # UNKNOWN_QUERY_PARAMETER / BAD_QUERY_PARAMETER
    client.command("CREATE TABLE e (a UInt8) ENGINE = MergeTree ORDER BY a")
    with pytest.raises(Exception):  # refused by the client's serializer or by the server: never half-written
        client.insert("e", [["not a number"]], column_names=["a"])
    assert client.command("SELECT count() FROM e") == 0


def test_exception_in_the_middle_of_a_result(client: Client) -> None:
    sql = "SELECT number, throwIf(number >= 150000, 'boom') FROM numbers(400000) SETTINGS max_block_size = 10000"
    with pytest.raises(DatabaseError) as exc:
        client.query(sql)
    assert exc.value.code == 395  # FUNCTION_THROW_IF_VALUE_IS_NON_ZERO
    with pytest.raises(Exception) as exc2:  # streamed: rows arrive first, then the error, never a silent cut
        with client.query_row_block_stream(sql) as stream:
            for _block in stream:
                pass
    assert "boom" in str(exc2.value) or "395" in str(exc2.value)
    assert client.command("SELECT 1") == 1


def test_error_response_shape(http: httpx.Client) -> None:
    r = http.post("/", content="SELECT * FROM system.no_such_table")
    assert r.status_code == 404
    assert r.headers["X-ClickHouse-Exception-Code"] == "60"
    assert r.text.startswith("Code: 60. DB::Exception: ")
    assert "(UNKNOWN_TABLE)" in r.text
    r = http.post("/", content="SELEC 1")
    assert r.status_code == 400 and r.headers["X-ClickHouse-Exception-Code"] == "62"
    r = http.post("/", content="SELECT 1 FORMAT NoSuchFormat")
    assert r.status_code == 404 and r.headers["X-ClickHouse-Exception-Code"] == "73"
    r = http.post("/", params={"no_such_setting_xyz": "1"}, content="SELECT 1")
    assert r.status_code == 404 and r.headers["X-ClickHouse-Exception-Code"] == "115"
    r = http.post("/", params={"database": "no_such_db_xyz"}, content="SELECT 1")
    assert r.status_code == 404 and r.headers["X-ClickHouse-Exception-Code"] == "81"
    r = http.get("/", params={"query": "CREATE TABLE default.nope (a UInt8) ENGINE = Memory"})
    assert r.status_code != 200 and r.headers["X-ClickHouse-Exception-Code"] == "164"  # READONLY: GET
    assert http.get("/ping").text == "Ok.\n"


def test_bad_bodies_get_errors_and_the_store_keeps_serving(http: httpx.Client, db: str) -> None:
    assert http.post("/", content=f"CREATE TABLE `{db}`.b (a UInt32, s String) ENGINE = MergeTree "
                                  "ORDER BY a").status_code == 200
    ins = {"query": f"INSERT INTO `{db}`.b FORMAT Native"}
    # says lz4, is not lz4
    r = http.post("/", params=ins, content=b"\x00\x01garbage", headers={"Content-Encoding": "lz4"})
    assert r.status_code >= 400 and r.headers.get("X-ClickHouse-Exception-Code")
    # an encoding nobody knows
    r = http.post("/", params=ins, content=b"x", headers={"Content-Encoding": "snappy-ish"})
    assert r.status_code >= 400 and r.headers.get("X-ClickHouse-Exception-Code")
    # Native that is truncated
    good = http.post("/", content="SELECT toUInt32(number) AS a, toString(number) AS s FROM numbers(1000) "
                                  "FORMAT Native").content
    r = http.post("/", params=ins, content=good[: len(good) // 2])
    assert r.status_code >= 400 and r.headers.get("X-ClickHouse-Exception-Code")
    # CSV that does not parse
    r = http.post("/", params={"query": f"INSERT INTO `{db}`.b FORMAT CSV"}, content=b"1,a\nnot-a-number,b\n")
    assert r.status_code >= 400 and r.headers.get("X-ClickHouse-Exception-Code")
    r = http.post("/", params={"query": f"SELECT count() FROM `{db}`.b"})
    assert r.text == "0\n"  # nothing of a rejected batch is visible
    assert http.get("/ping").text == "Ok.\n"
    r = http.post("/", params=ins, content=good)
    assert r.status_code == 200, r.text
    assert http.post("/", content=f"SELECT count(), sum(a) FROM `{db}`.b").text == f"1000\t{sum(range(1000))}\n"


# --- the HTTP interface itself -------------------------------------------------------------------------

def test_ping_and_root(http: httpx.Client) -> None:
    r = http.get("/ping")
    assert r.status_code == 200 and r.text == "Ok.\n"
    assert http.get("/").text == "Ok.\n"


@pytest.mark.parametrize("fmt", ["TabSeparated", "TabSeparatedWithNames", "CSV", "CSVWithNames", "JSON",
                                 "JSONEachRow", "JSONCompact", "Native", "RowBinaryWithNamesAndTypes", "Arrow",
                                 "Parquet", "Values"])
def test_output_formats(http: httpx.Client, fmt: str) -> None:
    q = "SELECT number AS n, toString(number) AS s FROM numbers(3)"
    r = http.post("/", content=f"{q} FORMAT {fmt}")
    assert r.status_code == 200, r.text
    assert r.headers["X-ClickHouse-Format"] == fmt
    body = r.content
    if fmt == "TabSeparated":
        assert body == b"0\t0\n1\t1\n2\t2\n"
    elif fmt == "TabSeparatedWithNames":
        assert body == b"n\ts\n0\t0\n1\t1\n2\t2\n"
    elif fmt == "CSV":
        assert body == b'0,"0"\n1,"1"\n2,"2"\n'
    elif fmt == "CSVWithNames":
        assert body.startswith(b'"n","s"\n0,"0"\n')
    elif fmt == "JSON":
        doc = json.loads(body)
        assert doc["rows"] == 3 and doc["data"][2]["s"] == "2" and int(doc["data"][2]["n"]) == 2
        assert [m["name"] for m in doc["meta"]] == ["n", "s"]
    elif fmt == "JSONEachRow":
        assert [json.loads(line)["s"] for line in body.splitlines()] == ["0", "1", "2"]
    elif fmt == "JSONCompact":
        assert len(json.loads(body)["data"]) == 3
    elif fmt == "Native":
        assert body[:2] == b"\x02\x03"  # 2 columns, 3 rows
    elif fmt == "RowBinaryWithNamesAndTypes":
        assert body[:1] == b"\x02" and b"UInt64" in body and b"String" in body
    elif fmt == "Arrow":
        tbl = pa.ipc.open_file(pa.BufferReader(body)).read_all()
        assert tbl.column("n").to_pylist() == [0, 1, 2]
    elif fmt == "Parquet":
        import pyarrow.parquet as pq
        assert pq.read_table(pa.BufferReader(body)).num_rows == 3
    elif fmt == "Values":
        assert body == b"(0,'0'),(1,'1'),(2,'2')"


def test_default_format_query_id_and_summary_headers(http: httpx.Client) -> None:
    qid = f"q-{uuid.uuid4()}"
    r = http.get("/", params={"query": "SELECT 1 AS x", "default_format": "JSONEachRow", "query_id": qid})
    assert r.status_code == 200
    assert r.headers["X-ClickHouse-Query-Id"] == qid
    assert r.headers["X-ClickHouse-Format"] == "JSONEachRow"
    assert json.loads(r.text) == {"x": 1}
    assert r.headers.get("X-ClickHouse-Timezone")
    assert r.headers.get("X-ClickHouse-Server-Display-Name")
    summary = json.loads(r.headers["X-ClickHouse-Summary"])
    assert "read_rows" in summary and "written_rows" in summary


def test_query_in_url_and_body_concatenate(http: httpx.Client) -> None:
    r = http.post("/", params={"query": "SELECT 1 +"}, content="2")
    assert r.text == "3\n"


def test_row_format_inserts_and_summary(http: httpx.Client, db: str) -> None:
    http.post("/", content=f"CREATE TABLE `{db}`.r (a UInt32, s String, ip IPv4) ENGINE = MergeTree ORDER BY a")
    cases = [
        ("JSONEachRow", b'{"a":1,"s":"x","ip":"1.2.3.4"}\n{"a":2,"s":"y","ip":"1.2.3.5"}\n', 2),
        ("CSV", b'3,"z","1.2.3.6"\n', 1),
        ("TabSeparated", b"4\tw\t1.2.3.7\n", 1),
        ("Values", b"(5,'v','1.2.3.8')", 1),
    ]
    for fmt, data, rows in cases:
        r = http.post("/", params={"query": f"INSERT INTO `{db}`.r FORMAT {fmt}"}, content=data)
        assert r.status_code == 200, (fmt, r.text)
        assert int(json.loads(r.headers["X-ClickHouse-Summary"])["written_rows"]) == rows
    # the whole statement and its data in the body
    r = http.post("/", content=f"INSERT INTO `{db}`.r FORMAT JSONEachRow\n".encode() + b'{"a":6,"s":"u","ip":"1.2.3.9"}')
    assert r.status_code == 200, r.text
    r = http.post("/", content=f"INSERT INTO `{db}`.r VALUES (7, 't', '1.2.3.10')")
    assert r.status_code == 200, r.text
    assert http.post("/", content=f"SELECT count(), sum(a) FROM `{db}`.r").text == "7\t28\n"


@pytest.mark.parametrize("encoding", ["gzip", "deflate", "zstd", "lz4"])
def test_request_and_response_compression(http: httpx.Client, db: str, encoding: str) -> None:
    http.post("/", content=f"CREATE TABLE `{db}`.z (a UInt64) ENGINE = MergeTree ORDER BY a")
    data = b"".join(f"{i}\n".encode() for i in range(10000))
    comp = {"gzip": gzip.compress, "deflate": zlib.compress, "zstd": zstandard.ZstdCompressor().compress,
            "lz4": lz4.frame.compress}[encoding]
    r = http.post("/", params={"query": f"INSERT INTO `{db}`.z FORMAT TabSeparated"}, content=comp(data),
                  headers={"Content-Encoding": encoding})
    assert r.status_code == 200, r.text
    # response compression needs enable_http_compression=1 and an Accept-Encoding
    req = http.build_request("POST", "/", params={"enable_http_compression": "1"},
                             content=f"SELECT a FROM `{db}`.z ORDER BY a FORMAT TabSeparated",
                             headers={"Accept-Encoding": encoding})
    r = http.send(req, stream=True)
    raw = b"".join(r.iter_raw())
    r.close()
    assert r.status_code == 200
    assert r.headers.get("Content-Encoding") == encoding
    plain = {"gzip": gzip.decompress, "deflate": zlib.decompress,
             "zstd": lambda b: zstandard.ZstdDecompressor().decompressobj().decompress(b),
             "lz4": lz4.frame.decompress}[encoding](raw)
    assert plain == data


@pytest.mark.parametrize("compress", [True, False, "gzip", "zstd", "lz4"])
def test_client_compression_choices(clickhouse_url: str, db: str, compress: Any) -> None:
    import clickhouse_connect

    u = urlparse(clickhouse_url)
    c = clickhouse_connect.get_client(host=u.hostname, port=u.port or 8123, username=u.username or "default",
                                      password=u.password or "", database=db, compress=compress)
    try:
        c.command("CREATE TABLE IF NOT EXISTS cc (a UInt64, s LowCardinality(String)) ENGINE = MergeTree ORDER BY a")
        c.insert("cc", [[i, f"s{i % 5}"] for i in range(5000)], column_names=["a", "s"])
        res = c.query("SELECT count(), sum(a), uniqExact(s) FROM cc")
        assert res.result_rows[0] == (5000, sum(range(5000)), 5)
        c.command("DROP TABLE cc")
    finally:
        c.close()


# --- concurrency ------------------------------------------------------------------------------------

def test_long_query_does_not_block_pings_or_inserts(clickhouse_url: str, client: Client, http: httpx.Client) -> None:
    client.command("CREATE TABLE lq (a UInt32) ENGINE = MergeTree ORDER BY a")
    started = threading.Event()
    result: list[Any] = []

    def long_query() -> None:
        c = connect(clickhouse_url, client.database)
        try:
            started.set()
            result.append(c.query("SELECT sleepEachRow(0.5) FROM numbers(8) SETTINGS max_block_size = 1, "
                                  "function_sleep_max_microseconds_per_block = 10000000").row_count)
        finally:
            c.close()

    t = threading.Thread(target=long_query)
    t.start()
    started.wait()
    try:
        assert http.get("/ping").text == "Ok.\n"
        client.insert("lq", [[i] for i in range(100)], column_names=["a"])
        assert client.command("SELECT count() FROM lq") == 100
        assert t.is_alive()  # all of the above finished while the long query was still running
    finally:
        t.join()
    assert result == [8]


def test_many_clients_at_once(clickhouse_url: str, client: Client) -> None:
    client.command("CREATE TABLE mc (w UInt8, i UInt32) ENGINE = MergeTree ORDER BY (w, i)")
    errors: list[BaseException] = []

    def worker(w: int) -> None:
        c = connect(clickhouse_url, client.database)
        try:
            for batch in range(5):
                c.insert("mc", [[w, batch * 100 + i] for i in range(100)], column_names=["w", "i"])
                assert c.query("SELECT count() FROM mc WHERE w = {w:UInt8}", parameters={"w": w}
                               ).result_rows[0][0] == (batch + 1) * 100
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised below
            errors.append(exc)
        finally:
            c.close()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(12)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert client.command("SELECT count() FROM mc") == 12 * 500


# --- the store process itself: durability, atomicity, shutdown, security --------------------------------

def test_data_survives_a_restart_and_sigterm_is_clean(tmp_path: Any) -> None:
    (tmp_path / "s").mkdir()
    proc = start_store(workdir=tmp_path / "s", port=free_port())
    try:
        c = connect(proc.url, "default")
        c.command("CREATE DATABASE d")
        c.command("CREATE TABLE d.t (a UInt32, s String) ENGINE = MergeTree ORDER BY a")
        c.insert("d.t", [[i, str(i)] for i in range(1000)], column_names=["a", "s"])
        c.close()
        proc.keep = True
        proc.popen.terminate()  # SIGTERM
        assert proc.popen.wait(30) == 0
        proc = start_store(workdir=proc.workdir, port=free_port())
        c = connect(proc.url, "default")
        assert c.query("SELECT count(), sum(a) FROM d.t").result_rows[0] == (1000, sum(range(1000)))
        c.close()
    finally:
        proc.keep = False
        proc.stop()


@pytest.mark.slow
def test_killed_mid_insert_leaves_all_or_nothing(tmp_path: Any) -> None:
    (tmp_path / "k").mkdir()
    proc = start_store(workdir=tmp_path / "k", port=free_port())
    n = 1_500_000
    try:
        c = connect(proc.url, "default")
        c.command("CREATE TABLE t (p UInt8, a UInt64, s String) ENGINE = MergeTree PARTITION BY p ORDER BY a")
        c.insert("t", [[0, 0, "seed"]], column_names=["p", "a", "s"])
        cols = [[i % 4 for i in range(n)], list(range(1, n + 1)), [f"row {i}" for i in range(n)]]
        outcome: list[Any] = []

        def big_insert() -> None:
            c2 = connect(proc.url, "default")
            try:
                outcome.append(c2.insert("t", cols, column_names=["p", "a", "s"], column_oriented=True))
            except Exception as exc:  # the kill cuts it off
                outcome.append(exc)

        t = threading.Thread(target=big_insert)
        t.start()
        # kill -9 while the batch is on its way or being written (whenever it lands, the count must be whole)
        import time as _time
        _time.sleep(0.7)
        proc.popen.kill()
        proc.popen.wait(10)
        t.join(60)
        c.close()
        proc.keep = True
        proc = start_store(workdir=proc.workdir, port=free_port())
        c = connect(proc.url, "default")
        count = c.command("SELECT count() FROM t")
        assert count in (1, n + 1), count  # the seed row, plus the whole batch or nothing of it
        c.close()
    finally:
        proc.keep = False
        proc.stop()


def test_user_and_password(tmp_path: Any) -> None:
    import subprocess
    import sys
    import time as _time

    port = free_port()
    workdir = tmp_path / "auth"
    workdir.mkdir()
    log = open(workdir / "store.log", "wb")
    popen = subprocess.Popen([sys.executable, "-m", "netsonde.clickhouse_store", "--data-dir", str(workdir / "data"),
                              "--port", str(port), "--user", "netsonde", "--password", "s3cret"],
                             stdout=log, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = _time.monotonic() + 60
        while _time.monotonic() < deadline:
            try:
                if httpx.get(base + "/ping", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                _time.sleep(0.1)
        r = httpx.post(base + "/", content="SELECT 1")
        assert r.status_code in (401, 403) and r.headers["X-ClickHouse-Exception-Code"] in ("194", "516")
        r = httpx.post(base + "/", content="SELECT 1", auth=("netsonde", "wrong"))
        assert r.status_code == 403 and r.headers["X-ClickHouse-Exception-Code"] == "516"
        assert httpx.post(base + "/", content="SELECT 1", auth=("netsonde", "s3cret")).text == "1\n"
        assert httpx.post(base + "/", content="SELECT 2", headers={"X-ClickHouse-User": "netsonde",
                                                                   "X-ClickHouse-Key": "s3cret"}).text == "2\n"
        assert httpx.post(base + "/", params={"user": "netsonde", "password": "s3cret"},
                          content="SELECT 3").text == "3\n"
        c = connect(f"http://netsonde:s3cret@127.0.0.1:{port}", "default")
        assert c.command("SELECT 4") == 4
        c.close()
        with pytest.raises(DatabaseError) as exc:
            connect(f"http://netsonde:nope@127.0.0.1:{port}", "default")
        assert exc.value.code == 516
    finally:
        popen.terminate()
        popen.wait(30)
        log.close()


def _thread_nice(pid: int) -> dict[str, set[int]]:
    """Thread name -> the nice values its threads have now (field 19 of /proc/<pid>/task/<tid>/stat)."""
    out: dict[str, set[int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            comm = (task / "comm").read_text().strip()
            out.setdefault(comm, set()).add(int((task / "stat").read_text().rsplit(")", 1)[1].split()[16]))
    return out


def test_background_merges_run_behind_inserts(tmp_path: Any) -> None:
    """The engine merges at nice 10 (`SERVER_SETTINGS`): while the parts of 12 inserts are merged in the
    background, the kernel shows the merging threads at nice 10; the store's own threads stay at 0."""
    proc = start_store(workdir=tmp_path, port=free_port())
    try:
        c = connect(proc.url, "default")
        setting = c.command("SELECT value FROM system.server_settings WHERE name = 'os_threads_nice_value_merge_mutate'")
        assert str(setting) == "10"
        c.command("CREATE DATABASE m")
        c.command("CREATE TABLE m.t (a UInt32, s String) ENGINE = MergeTree ORDER BY a")
        for i in range(12):  # 12 parts of 200 000 rows (~20 MB): a merge long enough to be seen running
            c.command(f"INSERT INTO m.t SELECT number * 12 + {i}, randomPrintableASCII(100) FROM numbers(200000)")
        seen: set[int] = set()
        deadline = time.monotonic() + 60
        parts = 12
        while time.monotonic() < deadline and parts >= 12:
            seen |= _thread_nice(proc.popen.pid).get("MergeMutate", set())
            parts = int(c.command("SELECT count() FROM system.parts WHERE database = 'm' AND active"))
            time.sleep(0.005)
        assert parts < 12, "no background merge ran within 60 s"
        assert 10 in seen, seen
        assert c.command("SELECT count(), sum(a) FROM m.t") == ["2400000", str(sum(range(2_400_000)))]
        assert _thread_nice(proc.popen.pid)["python"] == {0}
        c.close()
    finally:
        proc.stop()
