"""The durable JetStream consumer the enrichers share (the stream itself: `netsonde.common.bus.streams`)."""

from __future__ import annotations

import logging

from nats.js import api


log = logging.getLogger(__name__)


def consumer_config(name: str, ack_wait_s: float, max_ack_pending: int) -> api.ConsumerConfig:
    """The durable pull consumer: explicit acks, redelivery after ack_wait, unlimited redeliveries."""
    return api.ConsumerConfig(
        durable_name=name, ack_policy=api.AckPolicy.EXPLICIT, deliver_policy=api.DeliverPolicy.ALL,
        ack_wait=ack_wait_s, max_ack_pending=max_ack_pending, max_deliver=-1, max_waiting=512)
