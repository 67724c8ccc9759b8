"""JetStream resources of the bus contract: the flow stream (raw flow updates from every producer)."""

from __future__ import annotations

import logging

from nats.js import JetStreamContext, api
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from .subjects import Subjects

log = logging.getLogger(__name__)


async def ensure_flow_stream(
    js: JetStreamContext,
    subjects: Subjects,
    max_age_s: float = 86_400.0,
    max_bytes: int = 2 * 1024**3,
    duplicate_window_s: float = 120.0,
) -> api.StreamInfo:
    """Create the flow stream (file storage, limits by age and size, oldest dropped first) unless it exists.

    Producers (probe-flow, the sFlow collector, pcap import) and flow-enricher all call it: whoever comes
    first creates it, the others find it. `duplicate_window_s` lets JetStream drop a re-published batch that
    carries the same `Nats-Msg-Id` (the batch_id). Returns the StreamInfo."""
    name = subjects.flow_stream
    try:
        return await js.stream_info(name)
    except NotFoundError:
        pass
    config = api.StreamConfig(
        name=name,
        subjects=[subjects.flows_all],
        storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS,
        discard=api.DiscardPolicy.OLD,
        max_age=max_age_s,
        max_bytes=max_bytes,
        duplicate_window=duplicate_window_s,
    )
    try:
        info = await js.add_stream(config)
        log.info(
            "created flow stream", extra={"stream": name, "max_age_s": max_age_s, "max_bytes": max_bytes}
        )
        return info
    except Exception:
        return await js.stream_info(name)  # another process created it between our check and our add


async def open_capture_bucket(js: JetStreamContext, subjects: Subjects) -> KeyValue:
    """The capture definitions' key-value bucket (created on first use; one revision kept per key).

    query-api writes it (`/api/capture`); probe-flow and the sFlow collector watch it."""
    try:
        return await js.key_value(subjects.capture_bucket)
    except (BucketNotFoundError, NotFoundError):
        try:
            return await js.create_key_value(
                api.KeyValueConfig(bucket=subjects.capture_bucket, storage=api.StorageType.FILE, history=1)
            )
        except Exception:
            return await js.key_value(subjects.capture_bucket)  # another process created it first
