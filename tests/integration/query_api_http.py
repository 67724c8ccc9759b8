"""The query-api as the integration tests talk to it over plain HTTP (urllib, no client library): one call,
a Gremlin query, a GET, and the wait that polls them while the services come up."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Any

from netsonde.common.testing import wait_until as _wait_until


class ApiError(OSError):
    """A non-2xx answer, with its status and body. An OSError like urllib's HTTPError, so a `wait_until`
    retries it as it retries a refused connection while a service starts."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status = status
        self.body = body


def api_call(port: int, path: str, body: Any = None, method: str = "GET") -> tuple[int, Any]:
    """(status, answer): the answer decoded from JSON when it says it is JSON, else as text."""
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method)
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return r.status, (json.loads(raw) if raw and r.headers.get_content_type() == "application/json"
                              else raw.decode())
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def gremlin(port: int, q: str) -> Any:
    """The answer of POST /api/topology for Gremlin query `q`; any other status than 200 raises ApiError."""
    status, out = api_call(port, "/api/topology", {"GremlinQuery": q}, "POST")
    if status != 200:
        raise ApiError(status, out)
    return out


def api_get(port: int, path: str, **params: str) -> Any:
    """GET `path` (with `params` as its query string), decoded from JSON; a non-2xx status raises HTTPError."""
    url = f"http://127.0.0.1:{port}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    with urllib.request.urlopen(url, timeout=30) as r:
        return json.loads(r.read())


def wait_until(fn: Callable[[], Any], timeout: float, what: str, interval: float = 0.2) -> Any:
    """netsonde.common.testing's wait_until that also counts a failed assertion inside `fn` as "not yet"."""
    return _wait_until(fn, timeout, what, interval=interval, retry_on=(OSError, AssertionError))
