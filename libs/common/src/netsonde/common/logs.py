"""Structured logging: one JSON object per line on stderr, with the service name in every record."""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Any

_RESERVED = set(vars(logging.makeLogRecord({})))


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and not key.startswith("_"):
                out[key] = value
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def setup_logging(service: str, level: str = "info", fmt: str = "json") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter(service))
    else:
        handler.setFormatter(logging.Formatter(f"%(asctime)s {service} %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for noisy in ("aiohttp.access", "urllib3", "pyroute2"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


class OnceLogger:
    """Logs a given kind of problem once, then only counts it (bad input must not flood the logs)."""

    def __init__(self, logger: logging.Logger) -> None:
        self.logger = logger
        self.seen: set[str] = set()

    def warning(self, kind: str, msg: str, **extra: Any) -> None:
        if kind in self.seen:
            return
        self.seen.add(kind)
        self.logger.warning("%s (further %s problems are only counted)", msg, kind, extra=extra)
