"""The body of a ClickHouse HTTP request, read once as decompressed chunks (a query prefix, then the
rest: inline insert data spooled to a file, or the whole query text), with the size limits enforced."""

from __future__ import annotations

from typing import IO

from aiohttp import web

from . import codec
from .errors import StoreError


class RequestBody:
    """The request body as a stream of decoded (decompressed) chunks, read once."""

    def __init__(self, request: web.Request | None, encoding: str, limit: int = 0) -> None:
        self._request = request
        self._limit = limit
        self._total = 0
        self._decoder = codec.StreamDecoder(encoding) if request is not None else None
        self._buffer = bytearray()
        self._done = request is None

    async def _next(self) -> bytes | None:
        if self._done:
            return None
        assert self._request is not None and self._decoder is not None
        while True:
            chunk = await self._request.content.readany()
            if not chunk:
                self._done = True
                self._decoder.finish()
                return None
            out = self._decoder.feed(chunk)
            if out:
                self._total += len(out)
                if self._limit and self._total > self._limit:
                    raise StoreError(
                        "QUERY_IS_TOO_LARGE", f"Request body is larger than max_body_bytes ({self._limit})"
                    )
                return out

    async def read_prefix(self, n: int) -> bytes:
        """At least `n` bytes (fewer only at the end); they are consumed."""
        while len(self._buffer) < n:
            chunk = await self._next()
            if chunk is None:
                break
            self._buffer += chunk
        out = bytes(self._buffer)
        self._buffer.clear()
        return out

    async def read_all(self, limit: int) -> bytes:
        while True:
            chunk = await self._next()
            if chunk is None:
                break
            self._buffer += chunk
            if len(self._buffer) > limit:
                raise StoreError(
                    "QUERY_IS_TOO_LARGE", f"Query is too large ({len(self._buffer)} bytes > {limit})"
                )
        out = bytes(self._buffer)
        self._buffer.clear()
        return out

    async def spool(self, first: bytes, f: IO[bytes]) -> int:
        """Write `first` and the rest of the body to `f`; returns the byte count."""
        size = len(first)
        f.write(first)
        if self._buffer:
            f.write(self._buffer)
            size += len(self._buffer)
            self._buffer.clear()
        while True:
            chunk = await self._next()
            if chunk is None:
                return size
            f.write(chunk)
            size += len(chunk)
