"""What the store's HTTP interface knows of ClickHouse's protocol: its own URL parameters, the response
content type of each output format, the formats that stream, the statements that return a result."""

from __future__ import annotations

# URL parameters the HTTP layer consumes itself (everything else is a setting, `param_*` are parameters).
HTTP_PARAMS = frozenset(
    {
        "query",
        "database",
        "default_format",
        "query_id",
        "session_id",
        "session_timeout",
        "session_check",
        "compress",
        "decompress",
        "user",
        "password",
        "quota_key",
        "buffer_size",
        "wait_end_of_query",
        "client_protocol_version",
        "enable_http_compression",
        "http_zlib_compression_level",
        "send_progress_in_http_headers",
        "http_headers_progress_interval_ms",
        "cancel_http_readonly_queries_on_client_close",
        "add_http_cors_header",
        "role",
        "stacktrace",
        "http_native_compression_disable_checksumming_on_decompress",
        "http_response_buffer_size",
        "http_wait_end_of_query",
        "http_write_exception_in_output_format",
    }
)

CONTENT_TYPES = {
    "tabseparated": "text/tab-separated-values; charset=UTF-8",
    "tsv": "text/tab-separated-values; charset=UTF-8",
    "tabseparatedwithnames": "text/tab-separated-values; charset=UTF-8",
    "tabseparatedwithnamesandtypes": "text/tab-separated-values; charset=UTF-8",
    "csv": "text/csv; charset=UTF-8; header=absent",
    "csvwithnames": "text/csv; charset=UTF-8; header=present",
    "json": "application/json; charset=UTF-8",
    "jsoncompact": "application/json; charset=UTF-8",
    "jsoneachrow": "application/x-ndjson; charset=UTF-8",
    "jsoncompacteachrow": "application/x-ndjson; charset=UTF-8",
    "pretty": "text/plain; charset=UTF-8",
    "prettycompact": "text/plain; charset=UTF-8",
    "values": "text/plain; charset=UTF-8",
    "xml": "application/xml; charset=UTF-8",
}
# Formats whose engine chunks concatenate into one valid result (no per-chunk header or footer).
STREAMABLE_FORMATS = frozenset(
    {
        "native",
        "tabseparated",
        "tsv",
        "tabseparatedraw",
        "tsvraw",
        "csv",
        "jsoneachrow",
        "jsonlines",
        "ndjson",
        "jsoncompacteachrow",
        "jsonstringseachrow",
        "jsoncompactstringseachrow",
        "rowbinary",
        "values",
    }
)
RESULT_KINDS = frozenset({"SELECT", "WITH", "SHOW", "DESCRIBE", "DESC", "EXISTS", "EXPLAIN", "CHECK", "("})
