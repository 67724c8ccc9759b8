"""The one way a service decodes what it receives from the bus.

A message that does not decode (not msgpack, wrong shape, unknown schema version) is counted in the service's
`<service>_bad_messages_total{subject_kind, reason}`, logged once per kind and reason, and dropped: bad input
never crashes a subscriber and never floods the logs.
"""

from __future__ import annotations

import logging
from typing import Any, TypeVar

from ..logs import OnceLogger
from .codec import BusDecodeError, decode

T = TypeVar("T")


class InboundDecoder:
    """`decoder(data, Cls, kind)` -> the message, or None when it was bad (counted, logged once, dropped).

    `counter` is a Prometheus counter labelled (subject_kind, reason), usually `ServiceMetrics.bad_messages`;
    `dropped` counts the bad messages too, for services and tests without a registry."""

    def __init__(self, counter: Any | None, logger: logging.Logger) -> None:
        self.counter = counter
        self.once = OnceLogger(logger)
        self.dropped = 0

    def __call__(self, data: bytes, cls: type[T], kind: str, source: str = "") -> T | None:
        try:
            return decode(data, cls)
        except BusDecodeError as exc:
            self.reject(
                kind, exc.reason, f"dropped a bad {kind} message{f' on {source}' if source else ''}: {exc}"
            )
            return None

    def reject(self, kind: str, reason: str, message: str) -> None:
        """Count and log (once per kind and reason) a message dropped for a reason found elsewhere."""
        self.dropped += 1
        if self.counter is not None:
            self.counter.labels(kind, reason).inc()
        self.once.warning(f"{kind}-{reason}", message)
