"""The OpenAPI description covers every route query-api registers and is a valid OpenAPI 3.1 document.

Routes are read from the real application (query-api's `add_routes` on a fresh aiohttp app, as
test_docs_api_routes does; nothing is contacted). The running service's full router, with `/healthz` and
`/metrics`, is checked the same way in tests/integration/test_openapi_schemathesis.py.
"""

from __future__ import annotations

import schemathesis
from aiohttp import web

from netsonde.query_api import openapi
from netsonde.query_api.config import QueryApiConfig
from netsonde.query_api.service import QueryApiService


def app_routes() -> set[tuple[str, str]]:
    app = web.Application()
    QueryApiService(QueryApiConfig.load(env={})).add_routes(app)
    return openapi.served_routes(app)


def test_every_registered_route_is_described() -> None:
    routes = app_routes()
    assert {("POST", "/api/topology"), ("PATCH", "/api/node/{id}"), ("GET", openapi.OPENAPI_PATH)} <= routes
    missing = sorted(routes - set(openapi.OPERATIONS))
    assert not missing, f"routes without an OpenAPI description (add them to openapi.OPERATIONS): {missing}"


def test_document_lists_only_served_operations_and_loads_in_schemathesis() -> None:
    served = app_routes() | {("GET", "/healthz"), ("GET", "/metrics")}
    doc = openapi.document(served, "t")
    described = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    assert described == served
    assert ("POST", "/login") in described  # Skydive's login (auth.py): served whether authentication is on or off
    schema = schemathesis.openapi.from_dict(doc)
    operations = [r.ok() for r in schema.get_all_operations()]
    assert len(operations) == len(served)
    capture = doc["components"]["schemas"]["CaptureRequest"]
    assert capture["required"] == ["GremlinQuery"] and "v" not in capture["properties"]
    assert "BPFFilter" in capture["properties"]  # from the bus struct Capture
