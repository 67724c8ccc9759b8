"""Time arguments of `Context()` / `At()`: what Skydive accepts, plus ISO 8601 and "1 hour ago" phrases."""

from __future__ import annotations

import re
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

from . import ast
from .errors import GremlinError

MAX_INT32 = 2**31 - 1
_UNITS_MS = {"ns": 1e-6, "us": 1e-3, "µs": 1e-3, "μs": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60_000.0,
             "h": 3_600_000.0, "d": 86_400_000.0, "w": 604_800_000.0}
_GO_DURATION = re.compile(r"^([+-]?)((?:\d+(?:\.\d*)?|\.\d+)(?:ns|us|µs|μs|ms|s|m|h|d|w))+$")
_GO_PART = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h|d|w)")
_PHRASE_UNITS = {"ms": "ms", "millisecond": "ms", "milliseconds": "ms", "s": "s", "sec": "s", "secs": "s",
                 "second": "s", "seconds": "s", "min": "m", "mins": "m", "minute": "m", "minutes": "m",
                 "h": "h", "hr": "h", "hrs": "h", "hour": "h", "hours": "h", "day": "d", "days": "d",
                 "week": "w", "weeks": "w"}
_PHRASE = re.compile(r"^(an?|\d+(?:\.\d+)?)\s*([a-zµ]+)\s+ago$")


def now_ms() -> int:
    return int(time.time() * 1000)


def parse_duration_ms(text: str) -> float | None:
    """A Go duration (`-1h30m`, `5m`, `300ms`; `d`/`w` also accepted) in ms, or None."""
    s = text.strip()
    if not _GO_DURATION.match(s):
        return None
    sign = -1.0 if s.startswith("-") else 1.0
    return sign * sum(float(n) * _UNITS_MS[u] for n, u in _GO_PART.findall(s))


def is_relative(arg: ast.Arg) -> bool:
    """Whether a Context() time argument is relative to now (NOW, '-1h', '1 hour ago', 'now', 'yesterday')."""
    if isinstance(arg, ast.Keyword):
        return arg.name == "NOW"
    if not isinstance(arg, ast.Literal) or not isinstance(arg.value, str):
        return False
    low = arg.value.strip().lower()
    return (low in ("now", "", "yesterday") or parse_duration_ms(low) is not None
            or bool(_PHRASE.match(low)))


def relative_bucket(at: int, now: int, bucket_ms: int) -> int:
    """`at` rounded down to a bucket that grows with its age (about 1/1000 of it, at least `bucket_ms`), so
    that repeated relative queries ('-1h') share a cached past graph without losing meaningful precision."""
    b = max(bucket_ms, 1)
    while b * 1000 < now - at:
        b *= 10
    return at // b * b


def parse_time(arg: ast.Arg, now: int) -> int:
    """First argument of Context(): NOW, Unix seconds (<= 2^31-1) or ms, RFC1123, ISO 8601, a Go duration
    relative to now (`-1h`), or a phrase (`1 hour ago`, `now`, `yesterday`). Returns Unix ms."""
    if isinstance(arg, ast.Keyword):
        if arg.name == "NOW":
            return now
        raise GremlinError(f"{arg.name} is not a time: expected NOW, a timestamp or a string", position=arg.pos)
    if isinstance(arg, ast.Call):
        raise GremlinError(f"{arg.written}() is not a time", position=arg.pos)
    v = arg.value
    if isinstance(v, bool):
        raise GremlinError("a boolean is not a time", position=arg.pos)
    if isinstance(v, int):
        return v * 1000 if abs(v) <= MAX_INT32 else v
    if isinstance(v, float):
        return int(v * 1000) if abs(v) <= MAX_INT32 else int(v)
    s = v.strip()
    low = s.lower()
    if low in ("now", ""):
        return now
    if low == "yesterday":
        return now - 86_400_000
    d = parse_duration_ms(s)
    if d is not None:
        return int(now + d)
    m = _PHRASE.match(low)
    if m and m.group(2) in _PHRASE_UNITS:
        n = 1.0 if m.group(1) in ("a", "an") else float(m.group(1))
        return int(now - n * _UNITS_MS[_PHRASE_UNITS[m.group(2)]])
    if re.fullmatch(r"\d+", s):
        return parse_time(ast.Literal(int(s), arg.pos), now)
    try:
        dt = parsedate_to_datetime(s)
    except (TypeError, ValueError, IndexError):
        dt = None
    if dt is None:
        try:
            dt = datetime.fromisoformat(s.replace("Z", "+00:00"))
        except ValueError:
            raise GremlinError(
                f"cannot read time {s!r}: expected NOW, Unix seconds/ms, RFC1123 "
                f"('Sun, 06 Nov 2016 08:49:37 GMT'), ISO 8601, an offset like '-1h' or a phrase like "
                f"'1 hour ago'", position=arg.pos) from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return int(dt.timestamp() * 1000)


def parse_window_ms(arg: ast.Arg, at: int) -> int:
    """Second argument of Context(): a Go duration string, seconds, or FOREVER (back to the epoch)."""
    if isinstance(arg, ast.Keyword):
        if arg.name == "FOREVER":
            return max(at, 0)
        raise GremlinError(f"{arg.name} is not a duration: expected FOREVER, seconds or '5m'", position=arg.pos)
    if isinstance(arg, ast.Call):
        raise GremlinError(f"{arg.written}() is not a duration", position=arg.pos)
    v = arg.value
    if isinstance(v, bool):
        raise GremlinError("a boolean is not a duration", position=arg.pos)
    if isinstance(v, (int, float)):
        ms = int(v * 1000)
    else:
        d = parse_duration_ms(v)
        if d is None:
            m = _PHRASE.match(v.strip().lower() + " ago")
            if not (m and m.group(2) in _PHRASE_UNITS):
                raise GremlinError(f"cannot read duration {v!r}: expected '5m', '1h30m', seconds or FOREVER",
                                   position=arg.pos)
            n = 1.0 if m.group(1) in ("a", "an") else float(m.group(1))
            d = n * _UNITS_MS[_PHRASE_UNITS[m.group(2)]]
        ms = int(abs(d))
    if ms < 0:
        raise GremlinError("a duration cannot be negative", position=arg.pos)
    return ms
