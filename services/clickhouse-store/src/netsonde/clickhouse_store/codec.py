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
except ImportError:  # optional dependency
    brotli = None

# ClickHouse's own preference among accepted encodings (chooseHTTPCompressionMethod), best first.
RESPONSE_PREFERENCE = ("zstd", "br", "lz4", "gzip", "deflate")


_DECODE_ERROR = {
    "gzip": "ZLIB_INFLATE_FAILED",
    "x-gzip": "ZLIB_INFLATE_FAILED",
    "deflate": "ZLIB_INFLATE_FAILED",
    "zstd": "ZSTD_DECODER_FAILED",
    "lz4": "LZ4_DECODER_FAILED",
    "br": "BROTLI_READ_FAILED",
}


def decode_error(encoding: str, detail: str) -> StoreError:
    """The error ClickHouse reports for a body that is not valid `encoding` data."""
    return StoreError(
        _DECODE_ERROR.get(encoding, "CANNOT_DECOMPRESS"),
        f"Cannot decode the {encoding} request body: {detail}",
    )


def supported(encoding: str) -> bool:
    return encoding in ("gzip", "x-gzip", "deflate", "zstd", "lz4", "identity", "") or (
        encoding == "br" and brotli is not None
    )


def decompress(data: bytes, encoding: str) -> bytes:
    """Decode a whole request body; raises the ClickHouse error for an unknown or corrupt encoding."""
    encoding = encoding.strip().lower()
    if encoding in ("", "identity") or not data:
        return data
    if not supported(encoding):
        raise StoreError(
            "UNKNOWN_COMPRESSION_METHOD", f"Unknown Content-Encoding of HTTP request: {encoding}"
        )
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
        raise decode_error(encoding, str(exc)) from None


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
    offered = set()
    for part in accept_encoding.split(","):
        token, _, params = part.partition(";")
        q = params.strip().lower()
        if q.startswith("q="):
            try:
                if float(q[2:]) == 0:
                    continue  # q=0 rejects the encoding
            except ValueError:
                pass
        if token.strip():
            offered.add(token.strip().lower())
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


class StreamDecoder:
    """Incremental request-body decoder: `feed` compressed chunks, get plain bytes; `finish` checks."""

    def __init__(self, encoding: str) -> None:
        encoding = encoding.strip().lower()
        if not supported(encoding):
            raise StoreError(
                "UNKNOWN_COMPRESSION_METHOD", f"Unknown Content-Encoding of HTTP request: {encoding}"
            )
        self.encoding = encoding
        self._make: Any = None
        if encoding in ("gzip", "x-gzip"):
            self._make = lambda: zlib.decompressobj(16 + zlib.MAX_WBITS)
        elif encoding == "deflate":
            self._make = lambda: zlib.decompressobj(zlib.MAX_WBITS)
        elif encoding == "zstd":
            self._make = zstandard.ZstdDecompressor().decompressobj
        elif encoding == "lz4":
            self._make = lz4.frame.LZ4FrameDecompressor
        elif encoding == "br":
            self._make = brotli.Decompressor
        self._current: Any = None

    def feed(self, data: bytes) -> bytes:
        if self._make is None:
            return data
        out = []
        try:
            while data:
                if self._current is None:
                    self._current = self._make()
                d = self._current
                if self.encoding == "br":
                    out.append(d.process(data))
                    if d.is_finished():
                        self._current = None
                    break
                out.append(d.decompress(data))
                if d.eof:
                    data = d.unused_data
                    self._current = None
                else:
                    data = b""
        except StoreError:
            raise
        except Exception as exc:
            raise decode_error(self.encoding, str(exc)) from None
        return b"".join(out)

    def finish(self) -> None:
        if self._current is not None:
            raise decode_error(self.encoding, "unexpected end of data")


class StreamEncoder:
    """Incremental response encoder: one frame/stream for the whole response, flushed at every chunk so
    the client can decode what it has received."""

    def __init__(self, encoding: str | None, level: int = 3) -> None:
        self.encoding = encoding or ""
        self._c: Any = None
        self._started = False
        if self.encoding == "zstd":
            self._c = zstandard.ZstdCompressor(level=level).compressobj()
        elif self.encoding == "lz4":
            self._c = lz4.frame.LZ4FrameCompressor(auto_flush=True)
        elif self.encoding == "gzip":
            self._c = zlib.compressobj(level, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        elif self.encoding == "deflate":
            self._c = zlib.compressobj(level, zlib.DEFLATED, zlib.MAX_WBITS)
        elif self.encoding == "br":
            self._c = brotli.Compressor()

    def feed(self, data: bytes) -> bytes:
        if self._c is None or not data:
            return data
        if self.encoding == "zstd":
            return bytes(self._c.compress(data) + self._c.flush(zstandard.COMPRESSOBJ_FLUSH_BLOCK))
        if self.encoding == "lz4":
            out = b"" if self._started else self._c.begin()
            self._started = True
            return bytes(out + self._c.compress(data))
        if self.encoding == "br":
            return bytes(self._c.process(data) + self._c.flush())
        return bytes(self._c.compress(data) + self._c.flush(zlib.Z_SYNC_FLUSH))

    def finish(self) -> bytes:
        if self._c is None:
            return b""
        if self.encoding == "zstd":
            return bytes(self._c.flush())
        if self.encoding == "lz4":
            out = b"" if self._started else self._c.begin()
            return bytes(out + self._c.flush())
        if self.encoding == "br":
            return bytes(self._c.finish())
        return bytes(self._c.flush())
