"""JetStream resources of the bus contract: the flow stream (raw flow updates from every producer) and the
key-value buckets.

Replicas: every stream and bucket is created with `replicas` copies (1 on a single nats-server; 3 on a
3-node cluster, so losing one node loses nothing acked). The count comes from the `stream_replicas` setting
(NETSONDE_STREAM_REPLICAS), which `Service.__init__` hands to `set_default_replicas`; whoever creates a
resource first sets its replicas, and the flow stream is updated to the configured count when it differs.
"""

from __future__ import annotations

import logging

from nats.js import JetStreamContext, api
from nats.js.errors import BucketNotFoundError, NotFoundError
from nats.js.kv import KeyValue

from .subjects import Subjects

log = logging.getLogger(__name__)

_replicas = 1


def set_default_replicas(replicas: int) -> None:
    """The number of copies of every stream and bucket this process creates (`stream_replicas` setting)."""
    global _replicas
    if not 1 <= replicas <= 5:
        raise ValueError(f"stream replicas must be 1..5, not {replicas}")
    _replicas = replicas


def default_replicas() -> int:
    return _replicas


async def ensure_flow_stream(
    js: JetStreamContext,
    subjects: Subjects,
    max_age_s: float = 86_400.0,
    max_bytes: int = 2 * 1024**3,
    duplicate_window_s: float = 120.0,
    replicas: int | None = None,
) -> api.StreamInfo:
    """Create the flow stream (file storage, limits by age and size, oldest dropped first) unless it exists.

    Producers (probe-flow, the sFlow collector, pcap import) and flow-enricher all call it: whoever comes
    first creates it, the others find it. `duplicate_window_s` lets JetStream drop a re-published batch that
    carries the same `Nats-Msg-Id` (the batch_id). An existing stream with another replica count is updated
    to `replicas` (default: `default_replicas()`). Returns the StreamInfo."""
    name = subjects.flow_stream
    replicas = replicas or _replicas
    try:
        info = await js.stream_info(name)
        if info.config.num_replicas != replicas:
            info.config.num_replicas = replicas
            log.warning("flow stream replicas changed", extra={"stream": name, "replicas": replicas})
            return await js.update_stream(info.config)
        return info
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
        num_replicas=replicas,
    )
    try:
        info = await js.add_stream(config)
        log.info(
            "created flow stream", extra={"stream": name, "max_age_s": max_age_s, "max_bytes": max_bytes}
        )
        return info
    except Exception as exc:
        try:  # another process created it between our check and our add
            return await js.stream_info(name)
        except NotFoundError:
            raise RuntimeError(f"cannot create the flow stream {name}: {exc}") from exc


async def open_bucket(js: JetStreamContext, name: str) -> KeyValue:
    """A key-value bucket of the bus contract, created on first use (file storage, one revision kept per key,
    `default_replicas()` copies); whoever comes first creates it, the others find it."""
    try:
        return await js.key_value(name)
    except (BucketNotFoundError, NotFoundError):
        try:
            return await js.create_key_value(
                api.KeyValueConfig(bucket=name, storage=api.StorageType.FILE, history=1, replicas=_replicas)
            )
        except Exception:
            return await js.key_value(name)  # another process created it first


async def open_capture_bucket(js: JetStreamContext, subjects: Subjects) -> KeyValue:
    """The capture definitions' key-value bucket: query-api writes it (`/api/capture`); probe-flow and the
    sFlow collector watch it."""
    return await open_bucket(js, subjects.capture_bucket)
