"""HTTP content encodings as ClickHouse's HTTP interface speaks them: gzip, deflate, zstd, lz4 (frame), br.

Request bodies may be several concatenated frames (clickhouse-connect compresses each Native block as its own
lz4 or zstd frame), so the decoders keep going until the input is exhausted.
"""

from __future__ import annotations

import zlib
from typing import Any

import lz4.frame
import zstandard

from .errors import StoreError

brotli: Any
try:  # optional, like on a server built without it
    import brotli  # type: ignore[import-not-found,no-redef]
except ImportError:  # pragma: no cover - depends on the environment
    brotli = None

# ClickHouse's preference when a client accepts several encodings (HTTPHandler: br, gzip, deflate, xz, zstd, lz4).
RESPONSE_PREFERENCE = ("br", "gzip", "deflate", "zstd", "lz4")


def supported(encoding: str) -> bool:
    return encoding in ("gzip", "x-gzip", "deflate", "zstd", "lz4", "identity", "") or (
        encoding == "br" and brotli is not None)


def decompress(data: bytes, encoding: str) -> bytes:
    """Decode a whole request body; raises the ClickHouse error for an unknown or corrupt encoding."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity") or not data:
        return data
    if not supported(encoding):
        raise StoreError("UNKNOWN_COMPRESSION_METHOD", f"Unknown Content-Encoding of HTTP request: {encoding}")
    try:
        if encoding in ("gzip", "x-gzip"):
            return _frames(data, lambda: zlib.decompressobj(16 + zlib.MAX_WBITS), flush=True)
        if encoding == "deflate":
            return _frames(data, lambda: zlib.decompressobj(zlib.MAX_WBITS), flush=True)
        if encoding == "zstd":
            dctx = zstandard.ZstdDecompressor()
            return _frames(data, dctx.decompressobj)
        if encoding == "lz4":
            return _frames(data, lz4.frame.LZ4FrameDecompressor)
        return bytes(brotli.decompress(data))  # br
    except StoreError:
        raise
    except Exception as exc:  # every codec has its own error class
        raise StoreError("CANNOT_DECOMPRESS", f"Cannot decompress {encoding} request body: {exc}") from None


def _frames(data: bytes, make: Any, flush: bool = False) -> bytes:
    """Decode concatenated frames/members until the input is used up; a truncated last one is an error."""
    out = []
    rest = data
    while rest:
        d = make()
        out.append(d.decompress(rest))
        if flush:
            out.append(d.flush())
        if not d.eof:
            raise StoreError("CANNOT_DECOMPRESS", "Unexpected end of compressed request body")
        rest = d.unused_data
    return b"".join(out)


def choose_response_encoding(accept_encoding: str) -> str | None:
    """The encoding ClickHouse picks from an Accept-Encoding list, or None."""
    offered = {part.split(";")[0].strip().lower() for part in accept_encoding.split(",") if part.strip()}
    for enc in RESPONSE_PREFERENCE:
        if enc in offered and (enc != "br" or brotli is not None):
            return enc
    return None


def compress(data: bytes, encoding: str, level: int = 3) -> bytes:
    if encoding == "gzip":
        c = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        return c.compress(data) + c.flush()
    if encoding == "deflate":
        return zlib.compress(data, level)
    if encoding == "zstd":
        return zstandard.ZstdCompressor(level=level).compress(data)
    if encoding == "lz4":
        return bytes(lz4.frame.compress(data))
    if encoding == "br":
        return bytes(brotli.compress(data))
    return data
