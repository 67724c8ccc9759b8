"""docs/api.md names every route query-api serves (the method and the path, on one line of the page).

The routes are read from the real application: query-api's `add_routes` on a fresh aiohttp app (the service
is built, not started: nothing is contacted). Placeholder names do not matter (`{id}` in the code, `{uuid}` in
the page).
"""

from __future__ import annotations

import re
from pathlib import Path

from aiohttp import web

from netsonde.query_api.config import QueryApiConfig
from netsonde.query_api.service import QueryApiService

API_DOC = Path(__file__).resolve().parents[2] / "docs" / "api.md"


def served_routes() -> set[tuple[str, str]]:
    app = web.Application()
    QueryApiService(QueryApiConfig.load(env={})).add_routes(app)
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if route.method != "HEAD" and isinstance(path, str):
            routes.add((route.method, path))
    return routes


def _placeholders(text: str) -> str:
    return re.sub(r"\{[^}/]*\}", "{}", text)


def documented(method: str, path: str, lines: list[str]) -> bool:
    """Some line has the method as a word and the path as a whole path (not the prefix of a longer one)."""
    path_re = re.compile(r"(?<![\w/{}.])" + re.escape(_placeholders(path)) + r"(?![\w/{}])")
    method_re = re.compile(rf"\b{method}\b")
    return any(path_re.search(line) and method_re.search(line) for line in lines)


def test_every_served_route_is_in_api_md() -> None:
    routes = served_routes()
    # the extraction sees the API (Skydive's topology and capture routes, and the two that were missing once)
    assert {("POST", "/api/topology"), ("POST", "/api/pcap"), ("POST", "/api/injectpacket")} <= routes
    lines = [_placeholders(line) for line in API_DOC.read_text().splitlines()]
    missing = sorted(f"{m} {p}" for m, p in routes if not documented(m, p, lines))
    assert not missing, f"served by query-api but not in docs/api.md: {missing}"


def test_the_matching_is_strict() -> None:
    lines = ["| `POST /api/noderule` | x |", "| `GET`/`DELETE /api/noderule/{uuid}` | y |"]
    lines = [_placeholders(line) for line in lines]
    assert documented("POST", "/api/noderule", lines)
    assert documented("DELETE", "/api/noderule/{id}", lines)
    assert not documented("GET", "/api/noderule", lines)  # GET is only on the /{uuid} line
    assert not documented("POST", "/api/node", lines)  # a prefix of /api/noderule is not /api/node
    assert not documented("PATCH", "/api/noderule/{id}", lines)
