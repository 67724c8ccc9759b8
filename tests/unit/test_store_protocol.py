"""The store's pure protocol helpers: SQL routing, ClickHouse error text, HTTP content codings."""

from __future__ import annotations

import gzip
import zlib

import lz4.frame
import pytest
import zstandard

from netsonde.clickhouse_store import codec, sql
from netsonde.clickhouse_store.errors import StoreError


def test_insert_head_splits_statement_from_binary_data() -> None:
    data = b"\x02\x03\x01a\x05UInt8\x00\x01\x02"
    text = ("INSERT INTO db.t (`a`, `b c`) FORMAT Native\n".encode() + data).decode("latin-1")
    head = sql.parse_insert_head(text)
    assert head is not None
    assert head.fmt == "Native"
    assert head.target == "INSERT INTO db.t (`a`, `b c`)"
    assert text[head.data_offset:].encode("latin-1") == data


def test_insert_head_keeps_data_that_starts_with_blanks() -> None:
    text = "INSERT INTO t FORMAT TabSeparated\n\t1\n"
    head = sql.parse_insert_head(text)
    assert head is not None and text[head.data_offset:] == "\t1\n"


def test_insert_head_with_settings_and_inline_json() -> None:
    text = 'insert into t settings async_insert=0 format JSONEachRow {"a": "FORMAT x"}'
    head = sql.parse_insert_head(text)
    assert head is not None
    assert head.fmt == "JSONEachRow"
    assert "async_insert" in head.settings
    assert text[head.data_offset:] == '{"a": "FORMAT x"}'


@pytest.mark.parametrize("text", ["INSERT INTO t VALUES (1, 'FORMAT Native')", "INSERT INTO t SELECT 1",
                                  "SELECT 1 FORMAT Native", "INSERT INTO t WITH 1 AS x SELECT x"])
def test_statements_without_inline_data(text: str) -> None:
    assert sql.parse_insert_head(text) is None


@pytest.mark.parametrize("text, fmt", [
    ("SELECT 1 FORMAT JSON", "JSON"),
    ("SELECT 1\n FORMAT Native", "Native"),
    ("SELECT 'FORMAT X' AS f FORMAT CSV SETTINGS max_threads = 1", "CSV"),
    ("SELECT 1 FORMAT TSV;", "TSV"),
    ("SELECT 1 -- FORMAT JSON", None),
    ("SELECT * FROM format(JSONEachRow, '{\"a\": 1}')", None),
    ("SELECT 1", None),
])
def test_output_format(text: str, fmt: str | None) -> None:
    assert sql.output_format(text) == fmt


def test_first_keyword_skips_comments() -> None:
    assert sql.first_keyword("  /* hi */ -- x\n select 1") == "SELECT"
    assert sql.first_keyword("") == ""


def test_engine_error_text_is_normalised() -> None:
    nested = ("Code: 73. DB::Exception: Code: 73. DB::Exception: Unknown format NoSuchFormat. (UNKNOWN_FORMAT) "
              "(version 26.9.2.1). (UNKNOWN_FORMAT) (version 26.9.2.1). (UNKNOWN_FORMAT)")
    err = StoreError.from_engine(nested)
    assert err.code == 73 and err.name == "UNKNOWN_FORMAT" and err.status == 404
    body = err.body()
    assert body.startswith("Code: 73. DB::Exception: Unknown format NoSuchFormat")
    assert body.count("(UNKNOWN_FORMAT)") == 1
    plain = StoreError.from_engine("Code: 62. DB::Exception: Syntax error: failed at position 1. (SYNTAX_ERROR)")
    assert plain.code == 62 and plain.status == 400
    assert StoreError.from_engine("Code: 60. DB::Exception: Unknown table x. (UNKNOWN_TABLE)").status == 404
    assert StoreError.from_engine("Code: 241. DB::Exception: Memory limit exceeded. (MEMORY_LIMIT_EXCEEDED)"
                                  ).status == 500


@pytest.mark.parametrize("encoding, pack", [
    ("lz4", lz4.frame.compress), ("zstd", zstandard.ZstdCompressor().compress),
    ("gzip", gzip.compress), ("deflate", zlib.compress),
])
def test_concatenated_frames_decode_whole(encoding: str, pack) -> None:  # type: ignore[no-untyped-def]
    parts = [b"first block " * 100, b"second block " * 100]
    assert codec.decompress(b"".join(pack(p) for p in parts), encoding) == b"".join(parts)


def test_bad_bodies_and_unknown_codings_are_clickhouse_errors() -> None:
    with pytest.raises(StoreError) as exc:
        codec.decompress(b"not lz4 at all", "lz4")
    # CANNOT_DECOMPRESS, or the decoder's own code as ClickHouse names it (LZ4_DECODER_FAILED)
    assert exc.value.code in (271, 618)
    with pytest.raises(StoreError) as exc:
        codec.decompress(b"x", "snappy-ish")
    assert exc.value.code in (48, 89)  # NOT_IMPLEMENTED / UNKNOWN_COMPRESSION_METHOD


def test_response_coding_is_one_the_client_accepts() -> None:
    assert codec.choose_response_encoding("lz4,zstd,gzip,deflate") in ("lz4", "zstd", "gzip", "deflate")
    assert codec.choose_response_encoding("gzip, deflate") in ("gzip", "deflate")
    assert codec.choose_response_encoding("lz4") == "lz4"
    assert codec.choose_response_encoding("br") is None
    for enc in ("lz4", "zstd", "gzip", "deflate"):
        data = b"abc" * 1000
        assert codec.decompress(codec.compress(data, enc), enc) == data
