"""The JetStream stream holding raw flow updates, and the durable consumer the enrichers share."""

from __future__ import annotations

import logging
from typing import Any

from nats.js import api
from nats.js.errors import NotFoundError

from netsonde.common.bus import Subjects

log = logging.getLogger(__name__)


async def ensure_flow_stream(js: Any, subjects: Subjects, max_age_s: float = 86_400.0,
                             max_bytes: int = 2 * 1024**3, duplicate_window_s: float = 120.0) -> Any:
    """Create the flow stream (file storage, limits by age and size, oldest dropped first) unless it exists.

    An existing stream is left as it is (whoever created it first, a producer or an enricher, set its
    limits); returns its StreamInfo."""
    name = subjects.flow_stream
    try:
        return await js.stream_info(name)
    except NotFoundError:
        pass
    config = api.StreamConfig(
        name=name, subjects=[subjects.flows_all], storage=api.StorageType.FILE,
        retention=api.RetentionPolicy.LIMITS, discard=api.DiscardPolicy.OLD,
        max_age=max_age_s, max_bytes=max_bytes, duplicate_window=duplicate_window_s)
    try:
        info = await js.add_stream(config)
        log.info("created flow stream", extra={"stream": name, "max_age_s": max_age_s, "max_bytes": max_bytes})
        return info
    except Exception:
        # another process created it between our check and our add
        return await js.stream_info(name)


def consumer_config(name: str, ack_wait_s: float, max_ack_pending: int) -> api.ConsumerConfig:
    """The durable pull consumer: explicit acks, redelivery after ack_wait, unlimited redeliveries."""
    return api.ConsumerConfig(
        durable_name=name, ack_policy=api.AckPolicy.EXPLICIT, deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=ack_wait_s, max_ack_pending=max_ack_pending, max_deliver=-1, max_waiting=512)
