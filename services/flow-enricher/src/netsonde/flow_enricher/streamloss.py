"""Flow updates the stream discarded before the enrichers read them (retention limits reached while the
enrichers or the store were down): counted, so `/api/status` shows them.

The stream drops its oldest messages when `max_bytes` or `max_age` is reached (`discard: old`). A message
whose sequence is below the stream's first sequence but above what the shared durable consumer has delivered
was never read by any enricher: it is lost. Checked at start (before the first fetch) and periodically.
"""

from __future__ import annotations

from typing import Any


class StreamLossWatch:
    """Counts stream sequences discarded before the durable consumer delivered them."""

    def __init__(self, js: Any, stream: str, consumer: str) -> None:
        self.js = js
        self.stream = stream
        self.consumer = consumer
        self.counted_upto = 0
        """Highest stream sequence already accounted for as lost."""

    async def check(self) -> int:
        """Messages newly found discarded unread since the last check."""
        stream = await self.js.stream_info(self.stream)
        consumer = await self.js.consumer_info(self.stream, self.consumer)
        gone_upto = int(stream.state.first_seq or 1) - 1
        delivered = int(consumer.delivered.stream_seq or 0)
        lost = gone_upto - max(delivered, self.counted_upto)
        self.counted_upto = max(self.counted_upto, gone_upto)
        return max(0, lost)
