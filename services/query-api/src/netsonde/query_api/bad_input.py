"""Bad input that would otherwise surface as a 500: a JSON body nested thousands deep.

Python's JSON parser (behind `request.json()`) gives up with RecursionError, which is not the ValueError the
handlers turn into their 400; this middleware answers 400 for it whatever the route
(tests/integration/test_openapi_schemathesis.py sends such a body to every JSON operation).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def nesting_guard(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except RecursionError:
        return web.Response(status=400, text="request body nested too deeply", content_type="text/plain")
