"""The one error type of the Gremlin engine, carrying an HTTP status and the position in the query."""

from __future__ import annotations

__all__ = ["GremlinError"]


class GremlinError(Exception):
    """A query that cannot be run.

    `status` is the HTTP status query-api answers with: 400 for syntax errors, unknown steps and wrong
    arguments, 404 for `V('id')` on an unknown ID, 408 when the time limit is hit, 413 when a result grows
    beyond the size limit, 501 for a step that needs a backend this engine was built without (history, flows).
    `position` is the 0-based offset in the query string of the faulty token, when known.
    """

    def __init__(self, message: str, status: int = 400, position: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.position = position

    def __str__(self) -> str:
        if self.position is None:
            return self.message
        return f"{self.message} (at position {self.position})"
