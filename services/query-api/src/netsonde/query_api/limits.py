"""Request body limits: a body above its route's limit is refused with 413 before it is read whole.

A declared `Content-Length` above the limit is refused at once, nothing read. A chunked body (no length) is
read through aiohttp's own limit (`client_max_size`), which stops with 413 as soon as the bytes received pass
it: at most the limit is ever held in memory. The connection is closed after a 413, so the rest of the body is
never read either. `/api/pcap` takes files (`max_pcap_bytes`), every other route JSON (`max_body_bytes`).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import Counter

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LARGE_BODY_PATHS = ("/api/pcap",)
"""Routes that take files, not JSON: they get `max_pcap_bytes`."""


def body_limit_middleware(max_body: int, max_file: int,
                          refused: Counter) -> Callable[..., Awaitable[web.StreamResponse]]:
    """The aiohttp middleware; `refused` counts 413s by route (its path template)."""

    def too_large(request: web.Request, limit: int, size: str) -> web.Response:
        resource = request.match_info.route.resource
        refused.labels(resource.canonical if resource is not None else "unmatched").inc()
        resp = web.Response(status=413, content_type="text/plain",
                            text=f"request body {size}is larger than this route's limit of {limit} bytes "
                                 f"(query-api setting {'max_pcap_bytes' if limit == max_file else 'max_body_bytes'})")
        resp.force_close()  # do not read the rest of the body
        return resp

    @web.middleware
    async def limit_body(request: web.Request, handler: Handler) -> web.StreamResponse:
        limit = max_file if request.path in LARGE_BODY_PATHS else max_body
        length = request.content_length
        if length is not None and length > limit:
            return too_large(request, limit, f"of {length} bytes ")
        try:
            return await handler(request.clone(client_max_size=limit))
        except web.HTTPRequestEntityTooLarge:
            return too_large(request, limit, "")

    return limit_body
