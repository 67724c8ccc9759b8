"""ClickHouse's HTTP interface, served from the embedded engine.

Covers what clickhouse-connect and curl users rely on: `GET /ping`, `GET|POST /` with the query in the URL
(`query=`), the body, or a multipart form; `FORMAT` (any format the engine knows), inserts with inline data,
`param_<name>` for `{name:Type}` placeholders, `database`, `query_id`, `default_format`, settings as URL
parameters, `session_id` / `session_timeout` / `session_check`, request and response compression
(`Content-Encoding` / `Accept-Encoding` + `enable_http_compression=1`), the `X-ClickHouse-*` response headers,
and errors as a ClickHouse server sends them (status, `Code: N. DB::Exception: ...` body,
`X-ClickHouse-Exception-Code`).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hmac
import json
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator

from aiohttp import web

from netsonde.common.metrics import Metrics

from . import codec, sql
from .body import RequestBody
from .config import StoreConfig
from .conn import Request
from .engine import Engine
from .errors import StoreError
from .protocol import CONTENT_TYPES, HTTP_PARAMS, RESULT_KINDS, STREAMABLE_FORMATS

log = logging.getLogger(__name__)

_COMPRESS_IN_THREAD = 256 * 1024
_MAX_QUERY_TEXT = 256 * 1024 * 1024


class ClickHouseHTTP:
    """The request handlers; `app()` builds the aiohttp application for the ClickHouse port."""

    def __init__(self, engine: Engine, config: StoreConfig, metrics: Metrics) -> None:
        self.engine = engine
        self.config = config
        self.display_name = socket.gethostname()
        self.requests = metrics.counter("http_requests_total", "ClickHouse HTTP requests", ["kind"])
        self.failures = metrics.counter(
            "http_errors_total", "Requests answered with a ClickHouse exception", ["name"]
        )
        self.inserted_rows = metrics.counter("inserted_rows_total", "Rows written by inserts")
        self.latency = metrics.histogram(
            "request_seconds", "Time to answer a ClickHouse HTTP request", ["kind"]
        )
        self._receiving: set[asyncio.Task[object]] = set()

    def abort_receiving(self) -> int:
        """On shutdown, cancel the requests still receiving their body (they have written nothing yet) and
        the results being streamed; statements running to completion in the engine are left to finish."""
        tasks = list(self._receiving)
        for task in tasks:
            task.cancel()
        return len(tasks)

    @contextlib.contextmanager
    def _receiving_body(self) -> Iterator[None]:
        task = asyncio.current_task()
        assert task is not None
        self._receiving.add(task)
        try:
            yield
        finally:
            self._receiving.discard(task)

    def app(self) -> web.Application:
        app = web.Application(client_max_size=self.config.max_body_bytes)
        app.router.add_route("GET", "/ping", self.ping)
        app.router.add_route("HEAD", "/ping", self.ping)
        app.router.add_route("GET", "/replicas_status", self.ping)
        app.router.add_route("*", "/", self.query)
        app.router.add_route("*", "/{tail:.*}", self.not_found)
        return app

    async def ping(self, request: web.Request) -> web.Response:
        self.requests.labels("ping").inc()
        return web.Response(text="Ok.\n", content_type="text/html")

    async def not_found(self, request: web.Request) -> web.Response:
        return web.Response(
            status=404,
            text=(
                "There is no handle " + request.path + "\n\nUse / or /ping for health checks.\n"
                "Or /replicas_status for more sophisticated health checks.\n\n"
                "Send queries from your program with POST method or GET /?query=...\n"
            ),
            content_type="text/plain",
        )

    # --- the query endpoint ------------------------------------------------------------------------
    async def query(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        query_id = (
            request.query.get("query_id") or request.headers.get("X-ClickHouse-Query-Id") or str(uuid.uuid4())
        )
        kind = "query"
        try:
            if request.method not in ("GET", "POST", "HEAD"):
                raise StoreError("BAD_ARGUMENTS", f"HTTP method {request.method} is not supported")
            self._authenticate(request)
            with self._receiving_body():
                params, body = await self._read(request)
            kind, response = await self._dispatch(request, params, body, query_id)
            log.debug(
                "request done", extra={"kind": kind, "seconds": round(time.perf_counter() - started, 4)}
            )
            return response
        except StoreError as exc:
            self.failures.labels(exc.name).inc()
            return self._error(exc, query_id)
        except ConnectionError:  # the client went away (e.g. in the middle of a streamed result)
            raise
        except Exception as exc:  # never let one request take the store down
            log.exception("unexpected error serving a request")
            err = StoreError("LOGICAL_ERROR", f"Unexpected error in the store: {exc!r}")
            self.failures.labels(err.name).inc()
            return self._error(err, query_id)
        finally:
            self.requests.labels(kind).inc()
            self.latency.labels(kind).observe(time.perf_counter() - started)

    def _authenticate(self, request: web.Request) -> None:
        hdr_user = request.headers.get("X-ClickHouse-User", "")
        hdr_key = request.headers.get("X-ClickHouse-Key", "")
        auth = request.headers.get("Authorization", "")
        q = request.query
        if hdr_user or hdr_key:
            if auth or "user" in q or "password" in q:
                raise StoreError(
                    "AUTHENTICATION_FAILED",
                    "Invalid authentication: it is not allowed to use "
                    "X-ClickHouse HTTP headers and other authentication methods simultaneously",
                )
            user, password = hdr_user or "default", hdr_key
        elif auth:
            if "user" in q or "password" in q:
                raise StoreError(
                    "AUTHENTICATION_FAILED",
                    "Invalid authentication: it is not allowed to use "
                    "Authorization HTTP header and authentication via parameters simultaneously",
                )
            scheme, _, info = auth.partition(" ")
            if scheme.lower() != "basic":
                raise StoreError(
                    "AUTHENTICATION_FAILED",
                    f"Invalid authentication: '{scheme}' HTTP Authorization scheme is not supported",
                )
            try:
                user, _, password = base64.b64decode(info.strip()).decode().partition(":")
            except (ValueError, UnicodeDecodeError):
                raise StoreError(
                    "AUTHENTICATION_FAILED", "Invalid authentication: malformed Basic credentials"
                ) from None
        else:
            user, password = q.get("user", "default"), q.get("password", "")
        ok_user = hmac.compare_digest(user.encode(), self.config.user.encode())
        ok_password = hmac.compare_digest(password.encode(), self.config.password.encode())
        if not (ok_user and ok_password):
            raise StoreError(
                "AUTHENTICATION_FAILED",
                f"{user}: Authentication failed: password is incorrect, or there is no user with such name",
            )

    async def _read(self, request: web.Request) -> tuple[dict[str, str], RequestBody]:
        """URL (or multipart form) parameters, and the request body as a decoded stream."""
        params: dict[str, str] = {k: v for k, v in request.query.items()}
        ctype = request.headers.get("Content-Type", "")
        encoding = request.headers.get("Content-Encoding", "")
        if ctype.startswith("multipart/form-data"):
            reader = await request.multipart()
            while True:
                part = await reader.next()
                if part is None:
                    break
                name = getattr(part, "name", None) or ""
                if getattr(part, "filename", None):
                    raise StoreError(
                        "NOT_IMPLEMENTED",
                        "External data (multipart file parts) is not supported by the embedded store",
                    )
                value = (await part.read(decode=True)).decode()  # type: ignore[union-attr]
                if name:
                    params[name] = value
            return params, RequestBody(None, "")
        has_body = request.method == "POST" and request.can_read_body
        return params, RequestBody(request if has_body else None, encoding, self.config.max_body_bytes)

    async def _dispatch(
        self, request: web.Request, params: dict[str, str], body: RequestBody, query_id: str
    ) -> tuple[str, web.StreamResponse]:
        settings: dict[str, str] = {}
        qparams: dict[str, str] = {}
        for key, value in params.items():
            if key.startswith("param_"):
                qparams[key[6:]] = value
            elif key not in HTTP_PARAMS:
                settings[key] = value
        for flag in ("compress", "decompress"):
            if params.get(flag, "0") not in ("0", "", "false"):
                raise StoreError(
                    "NOT_IMPLEMENTED",
                    f"The '{flag}=1' parameter (ClickHouse's internal block "
                    "compression) is not supported by the embedded store; use HTTP compression "
                    "(Content-Encoding / Accept-Encoding with enable_http_compression=1)",
                )
        database = params.get("database") or "default"
        session_id = params.get("session_id") or None
        session_timeout = self._session_timeout(params)
        session_check = params.get("session_check") == "1"
        read_only = request.method in ("GET", "HEAD") or settings.get("readonly", "0") not in ("0", "")
        qtext = params.get("query", "")

        head: sql.InsertHead | None = None
        first: bytes = b""
        if qtext:
            head = sql.parse_insert_head(qtext)
            if head is not None:
                qbytes = qtext.encode()
                first = qbytes[len(qtext[: head.data_offset].encode()) :]
                text = qtext
            else:
                with self._receiving_body():
                    rest = await body.read_all(_MAX_QUERY_TEXT)
                text = qtext + ("\n" + rest.decode("utf-8", "replace") if rest else "")
        else:
            with self._receiving_body():
                prefix = await body.read_prefix(1024 * 1024)
            latin = prefix.decode("latin-1")
            head = sql.parse_insert_head(latin)
            if head is not None:
                first = prefix[head.data_offset :]
                head = sql.InsertHead(
                    head.target.encode("latin-1").decode("utf-8", "replace"),
                    head.settings.encode("latin-1").decode("utf-8", "replace"),
                    head.fmt,
                    head.data_offset,
                )
                text = head.target
            else:
                with self._receiving_body():
                    text = (prefix + await body.read_all(_MAX_QUERY_TEXT)).decode("utf-8", "replace")
        if request.method in ("GET", "HEAD") and not text.strip():
            return "ping", web.Response(text="Ok.\n", content_type="text/html")

        if head is not None:
            if read_only:
                raise self._readonly(request)
            path = self.engine.spool_path()
            try:
                t_spool = time.perf_counter()
                with open(path, "wb") as f, self._receiving_body():
                    size = await body.spool(first, f)
                t_engine = time.perf_counter()
                log.debug(
                    "spooled insert batch", extra={"bytes": size, "seconds": round(t_engine - t_spool, 4)}
                )
                req = Request(sql="", params=qparams, settings=settings, database=database)
                outcome = await self.engine.insert(
                    head.target,
                    head.fmt,
                    path,
                    head.settings,
                    req,
                    session_id,
                    session_timeout,
                    session_check,
                )
            finally:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            log.debug(
                "inserted batch",
                extra={"rows": outcome.written_rows, "seconds": round(time.perf_counter() - t_engine, 4)},
            )
            self.inserted_rows.inc(outcome.written_rows)
            return "insert", await self._respond(
                request, params, outcome.body, None, outcome.summary(), query_id, settings
            )

        stripped = text.strip()
        if not stripped:
            raise StoreError("SYNTAX_ERROR", "Empty query")
        try:
            count = sql.statement_count(stripped)
        except sql.LexError:
            count = 1
        if count > 1:
            raise StoreError(
                "SYNTAX_ERROR", "Syntax error (Multi-statements are not allowed): failed at end of query"
            )
        keyword = sql.first_keyword(stripped)
        if read_only and keyword not in sql.READ_ONLY_KINDS:
            raise self._readonly(request)
        explicit = sql.output_format(stripped)
        fmt = explicit or params.get("default_format") or "TabSeparated"
        result_format = fmt if (explicit or keyword in RESULT_KINDS) else None
        req = Request(
            sql=sql.strip_trailing_semicolons(stripped),
            fmt=fmt,
            params=qparams,
            settings=settings,
            database=database,
        )
        if (
            result_format is not None
            and keyword != "INSERT"
            and fmt.lower() in STREAMABLE_FORMATS
            and params.get("wait_end_of_query", "0") in ("0", "", "false")
        ):
            return "query", await self._stream(
                request,
                params,
                req,
                result_format,
                session_id,
                session_timeout,
                session_check,
                query_id,
                settings,
            )
        outcome = await self.engine.execute(req, session_id, session_timeout, session_check)
        kind = "insert" if keyword == "INSERT" else ("query" if result_format else "command")
        return kind, await self._respond(
            request, params, outcome.body, result_format, outcome.summary(), query_id, settings
        )

    async def _stream(
        self,
        request: web.Request,
        params: dict[str, str],
        req: Request,
        result_format: str,
        session_id: str | None,
        session_timeout: float,
        session_check: bool,
        query_id: str,
        settings: dict[str, str],
    ) -> web.StreamResponse:
        """Send a result as the engine produces it (chunked), as a server does without wait_end_of_query.

        Errors before the first chunk get a normal error response; an error after it is written into the
        stream between `__exception__` markers carrying the X-ClickHouse-Exception-Tag, as ClickHouse does,
        so clients never mistake a cut result for a complete one."""
        stream = await self.engine.open_stream(req, session_id, session_timeout, session_check)
        try:
            chunk = await stream.next()
            headers = self._headers(query_id, settings)
            headers["X-ClickHouse-Format"] = result_format
            headers["Content-Type"] = CONTENT_TYPES.get(result_format.lower(), "application/octet-stream")
            tag = uuid.uuid4().hex[:16]
            headers["X-ClickHouse-Exception-Tag"] = tag
            headers["X-ClickHouse-Summary"] = json.dumps(
                {
                    "read_rows": str(stream.rows),
                    "read_bytes": str(stream.bytes),
                    "written_rows": "0",
                    "written_bytes": "0",
                    "total_rows_to_read": "0",
                    "result_rows": "0",
                    "result_bytes": "0",
                    "elapsed_ns": "0",
                },
                separators=(",", ":"),
            )
            encoding = None
            if params.get("enable_http_compression") in ("1", "true"):
                encoding = codec.choose_response_encoding(request.headers.get("Accept-Encoding", ""))
            if encoding:
                headers["Content-Encoding"] = encoding
            try:
                level = int(params.get("http_zlib_compression_level") or 3)
            except ValueError:
                level = 3
            encoder = codec.StreamEncoder(encoding, level)
            response = web.StreamResponse(headers=headers)
            response.enable_chunked_encoding()
            await response.prepare(request)
            try:
                with self._receiving_body():  # a result being streamed is dropped on shutdown too
                    while chunk is not None:
                        await response.write(encoder.feed(chunk))
                        chunk = await stream.next()
            except StoreError as exc:
                self.failures.labels(exc.name).inc()
                text = exc.body().rstrip("\n")
                block = (f"__exception__\r\n{tag}\r\n{text}\n{len(text)} {tag}\r\n__exception__\r\n").encode()
                await response.write(encoder.feed(block))
            await response.write(encoder.finish())
            await response.write_eof()
            return response
        finally:
            await stream.close()

    def _session_timeout(self, params: dict[str, str]) -> float:
        raw = params.get("session_timeout")
        if raw is None:
            return self.config.default_session_timeout
        try:
            value = float(raw)
            if value < 0:
                raise ValueError
        except ValueError:
            raise StoreError("INVALID_SESSION_TIMEOUT", f"Invalid session timeout: '{raw}'") from None
        if value > self.config.max_session_timeout:
            raise StoreError(
                "INVALID_SESSION_TIMEOUT",
                f"Session timeout '{raw}' is larger than "
                f"max_session_timeout: {self.config.max_session_timeout:g}. Maximum session timeout "
                "could be modified in configuration file.",
            )
        return value

    @staticmethod
    def _readonly(request: web.Request) -> StoreError:
        hint = ""
        if request.method in ("GET", "HEAD"):
            hint = (
                " For queries over HTTP, method GET implies readonly. "
                "You should use method POST for modifying queries"
            )
        return StoreError("READONLY", "Cannot execute query in readonly mode." + hint)

    def _headers(self, query_id: str, settings: dict[str, str]) -> dict[str, str]:
        return {
            "X-ClickHouse-Server-Display-Name": self.display_name,
            "X-ClickHouse-Query-Id": query_id,
            "X-ClickHouse-Timezone": settings.get("session_timezone") or self.engine.timezone,
        }

    async def _respond(
        self,
        request: web.Request,
        params: dict[str, str],
        body: bytes,
        result_format: str | None,
        summary: dict[str, str],
        query_id: str,
        settings: dict[str, str],
    ) -> web.StreamResponse:
        headers = self._headers(query_id, settings)
        headers["X-ClickHouse-Summary"] = json.dumps(summary, separators=(",", ":"))
        if result_format:
            headers["X-ClickHouse-Format"] = result_format
            headers["Content-Type"] = CONTENT_TYPES.get(result_format.lower(), "application/octet-stream")
        else:
            headers["Content-Type"] = "text/plain; charset=UTF-8"
        if params.get("enable_http_compression") in ("1", "true") and body:
            encoding = codec.choose_response_encoding(request.headers.get("Accept-Encoding", ""))
            if encoding:
                try:
                    level = int(params.get("http_zlib_compression_level") or 3)
                except ValueError:
                    level = 3
                if len(body) > _COMPRESS_IN_THREAD:
                    body = await asyncio.to_thread(codec.compress, body, encoding, level)
                else:
                    body = codec.compress(body, encoding, level)
                headers["Content-Encoding"] = encoding
        return web.Response(body=body, headers=headers)

    def _error(self, exc: StoreError, query_id: str) -> web.Response:
        headers = self._headers(query_id, {})
        headers["X-ClickHouse-Exception-Code"] = str(exc.code)
        headers["Content-Type"] = "text/plain; charset=UTF-8"
        if exc.status == 401:
            headers["WWW-Authenticate"] = 'Basic realm="ClickHouse"'
        return web.Response(status=exc.status, body=exc.body().encode(), headers=headers)
