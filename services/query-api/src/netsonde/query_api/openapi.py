"""The OpenAPI 3.1 description of query-api's HTTP API, served at `GET /api/openapi.json`.

One table (`OPERATIONS`) describes every route query-api can serve, in Skydive's shapes; the body schemas of
captures, rules and packet injection come from the bus structs that define them (`netsonde.common.bus`), so
they are written once. What is served lists only the operations this process's router really has (an optional
route such as `/login` appears once it is registered), and a test checks that every registered route is in
the table (`tests/unit/test_fuzz_openapi.py`).
"""

from __future__ import annotations

import copy
from typing import Any

import msgspec
from aiohttp import web

from netsonde.common.bus.captures import Capture
from netsonde.common.bus.injection import PacketInjectRequest
from netsonde.common.bus.static import EdgeRule, NodeRule

OPENAPI_PATH = "/api/openapi.json"
REF = "#/components/schemas/{name}"


def _ref(name: str) -> dict[str, Any]:
    return {"$ref": REF.format(name=name)}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _text(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"text/plain": {"schema": {"type": "string"}}}}


def _map_of(name: str) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": _ref(name)}


ID_PARAM = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
BAD = {"400": _text("the request names what is wrong")}
NOT_FOUND = {"404": _text("no such object")}
NO_WRITER = {"503": _text("graph-builder did not answer: nothing was changed")}
AT_PARAM = [{"name": "at", "in": "query", "schema": {"type": "string"},
             "description": "a past instant (as Context(): epoch ms, ISO 8601, -1h ...)"}]


def _element_schema() -> dict[str, Any]:
    """A node or edge in Skydive's JSON (`netsonde.common.graph.element_to_json`)."""
    return {
        "type": "object",
        "required": ["ID", "Metadata"],
        "properties": {
            "ID": {"type": "string"},
            "Metadata": {"type": "object"},
            "Host": {"type": "string"},
            "Origin": {"type": "string"},
            "CreatedAt": {"type": "integer", "description": "Unix ms"},
            "UpdatedAt": {"type": "integer"},
            "DeletedAt": {"type": "integer"},
            "Revision": {"type": "integer"},
            "Parent": {"type": "string", "description": "edges only"},
            "Child": {"type": "string", "description": "edges only"},
        },
    }


def _components() -> dict[str, Any]:
    structs = [Capture, PacketInjectRequest, NodeRule, EdgeRule]
    _, schemas = msgspec.json.schema_components(structs, ref_template=REF)
    for schema in schemas.values():
        schema.get("properties", {}).pop("v", None)  # the bus schema version is not part of the JSON API
    capture_in = copy.deepcopy(schemas["Capture"])
    capture_in["title"] = "CaptureRequest"
    capture_in["required"] = ["GremlinQuery"]
    capture_in["properties"]["ExtraLayers"] = {
        "description": "bitmask (VRRP=1, DNS=2, DHCPv4=4), or Skydive's list of layer names",
        "anyOf": [{"type": "integer"}, {"type": "array", "items": {"type": "string"}}, {"type": "string"}],
    }
    injection = schemas["PacketInjectRequest"]
    injection["properties"]["Dst"] = {"type": "string", "description": "Gremlin query selecting the target"}
    rules_in = {}
    for name in ("NodeRule", "EdgeRule"):
        rule = copy.deepcopy(schemas[name])
        rule["title"] = f"{name}Request"
        rule["required"] = [f for f in rule.get("required", []) if f != "UUID"]
        rules_in[f"{name}Request"] = rule
    element = _element_schema()
    return {
        **schemas,
        **rules_in,
        "CaptureRequest": capture_in,
        "Element": element,
        "NodeRequest": {
            "type": "object",
            "required": ["ID", "Metadata"],
            "properties": {**element["properties"], "Metadata": {
                "type": "object", "required": ["Name", "Type"],
                "properties": {"Name": {"type": "string"}, "Type": {"type": "string"}}}},
        },
        "EdgeRequest": {
            "type": "object",
            "required": ["ID", "Parent", "Child", "Metadata"],
            "properties": {**element["properties"], "Metadata": {
                "type": "object", "required": ["RelationType"],
                "properties": {"RelationType": {"type": "string"}}}},
        },
        "JSONPatch": {
            "type": "array",
            "description": "RFC 6902",
            "items": {
                "type": "object",
                "required": ["op", "path"],
                "properties": {
                    "op": {"enum": ["add", "remove", "replace", "move", "copy", "test"]},
                    "path": {"type": "string"},
                    "from": {"type": "string"},
                    "value": {},
                },
            },
        },
        "AlertRequest": {
            "type": "object", "required": ["Expression"],
            "properties": {"UUID": {"type": "string"}, "Expression": {"type": "string"}, "Name": {"type": "string"},
                           "Description": {"type": "string"}, "Action": {"type": "string"},
                           "Trigger": {"type": "string", "description": "graph, periodic:<duration> or "
                                                                        "duration:<duration>"}},
        },
        "Alert": {"type": "object", "required": ["UUID", "Expression"],
                  "properties": {"UUID": {"type": "string"}, "Expression": {"type": "string"},
                                 "Name": {"type": "string"}, "Description": {"type": "string"},
                                 "Action": {"type": "string"}, "Trigger": {"type": "string"},
                                 "CreateTime": {"type": "string"}, "State": {"type": "string"}}},
        "Graph": {"type": "object", "properties": {"Nodes": {"type": "array", "items": _ref("Element")},
                                                    "Edges": {"type": "array", "items": _ref("Element")}}},
        "GremlinRequest": {"type": "object", "properties": {"GremlinQuery": {"type": "string"}},
                           "example": {"GremlinQuery": "G.V().Has('Type','veth').Count()"}},
        "Status": {
            "type": "object",
            "properties": {
                "Service": {"type": "string"}, "Version": {"type": "string"}, "Host": {"type": "string"},
                "Uptime": {"type": "number"}, "Probes": {"type": "array", "items": {"type": "string"}},
                "Graph": {"type": "object"}, "Subscribers": {"type": "integer"},
                "ContainerEngines": {"type": "object", "description": "host -> its container connector's "
                                     "Endpoint, State (connected/disconnected), Error, Engine"},
                "Drops": {"type": "object", "description": "losses counted by the pipeline (docs/reliability.md): "
                          "Hosts (host -> stage -> kind -> count), Stages (stage -> kind -> count), Total, "
                          "Reporters"},
            },
        },
    }


def _static_ops(kind: str, title: str) -> dict[tuple[str, str], dict[str, Any]]:
    """POST, PATCH, DELETE of static nodes/edges (GET comes from the live graph)."""
    return {
        ("POST", f"/api/{kind}"): {
            "summary": f"create a static {kind}",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(f"{title}Request")}}},
            "responses": {"201": _json(_ref("Element"), f"the {kind}"), **BAD, "409": _text("the ID exists"),
                          **NO_WRITER},
        },
        ("PATCH", f"/api/{kind}/{{id}}"): {
            "summary": f"change a static {kind}'s Metadata with a JSON Patch",
            "parameters": ID_PARAM,
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("JSONPatch")}}},
            "responses": {"200": _json(_ref("Element"), f"the {kind}, Revision + 1"),
                          "304": {"description": "nothing changed"}, **BAD, **NOT_FOUND,
                          "409": _text("owned by a probe or a rule"), **NO_WRITER},
        },
        ("DELETE", f"/api/{kind}/{{id}}"): {
            "summary": f"delete a static {kind}", "parameters": ID_PARAM,
            "responses": {"200": {"description": "deleted"}, **NOT_FOUND, "409": _text("owned by a probe or a rule"),
                          **NO_WRITER},
        },
    }


def _rule_ops(kind: str, title: str) -> dict[tuple[str, str], dict[str, Any]]:
    return {
        ("GET", f"/api/{kind}"): {"summary": f"every {title} by UUID",
                                  "responses": {"200": _json(_map_of(title), "map UUID -> rule")}},
        ("POST", f"/api/{kind}"): {
            "summary": f"create a {title}",
            "requestBody": {"required": True, "content": {"application/json": {"schema": _ref(f"{title}Request")}}},
            "responses": {"201": _json(_ref(title), "the rule"), **BAD, "408": _text("the rule's query timed out"),
                          "413": _text("the rule's query result is too large"), **NO_WRITER},
        },
        ("GET", f"/api/{kind}/{{id}}"): {"summary": f"one {title}", "parameters": ID_PARAM,
                                         "responses": {"200": _json(_ref(title), "the rule"), **NOT_FOUND}},
        ("DELETE", f"/api/{kind}/{{id}}"): {"summary": f"delete a {title}", "parameters": ID_PARAM,
                                            "responses": {"200": {"description": "deleted"}, **NOT_FOUND,
                                                          **NO_WRITER}},
    }


ANY_JSON: dict[str, Any] = {}

OPERATIONS: dict[tuple[str, str], dict[str, Any]] = {
    ("GET", "/api/status"): {"summary": "service, version, graph size, probes seen, subscribers",
                             "responses": {"200": _json(_ref("Status"), "status")}},
    ("GET", "/api/topology"): {"summary": "the whole live graph",
                               "responses": {"200": _json(_ref("Graph"), "nodes and edges")}},
    ("POST", "/api/topology"): {
        "summary": "run a Gremlin query (docs/gremlin.md)",
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("GremlinRequest")}}},
        "responses": {
            "200": {"description": "the result: elements, values, flows, a count ...",
                    "content": {"application/json": {"schema": ANY_JSON},
                                "application/vnd.tcpdump.pcap": {"schema": {"type": "string", "format": "binary"}}}},
            "204": {"description": "empty query"}, **BAD, "404": _text("G.V('id') of an unknown ID"),
            "408": _text("over the time limit"), "413": _text("over the result-size limit"),
        },
    },
    ("GET", "/api/node"): {"summary": "every node by ID", "responses": {"200": _json(_map_of("Element"), "nodes")}},
    ("GET", "/api/node/{id}"): {"summary": "one node", "parameters": ID_PARAM,
                                "responses": {"200": _json(_ref("Element"), "the node"), **NOT_FOUND}},
    ("GET", "/api/edge"): {"summary": "every edge by ID", "responses": {"200": _json(_map_of("Element"), "edges")}},
    ("GET", "/api/edge/{id}"): {"summary": "one edge", "parameters": ID_PARAM,
                                "responses": {"200": _json(_ref("Element"), "the edge"), **NOT_FOUND}},
    **_static_ops("node", "Node"),
    **_static_ops("edge", "Edge"),
    **_rule_ops("noderule", "NodeRule"),
    **_rule_ops("edgerule", "EdgeRule"),
    ("GET", "/api/capture"): {"summary": "every capture by UUID",
                              "responses": {"200": _json(_map_of("Capture"), "map UUID -> capture")}},
    ("POST", "/api/capture"): {
        "summary": "create a standing capture",
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("CaptureRequest")}}},
        "responses": {"200": _json({"allOf": [_ref("Capture")], "properties": {"Warning": {"type": "string"}}},
                                   "the capture (Warning when it selects no node yet)"), **BAD},
    },
    ("GET", "/api/capture/{id}"): {"summary": "one capture", "parameters": ID_PARAM,
                                   "responses": {"200": _json(_ref("Capture"), "the capture"), **NOT_FOUND}},
    ("DELETE", "/api/capture/{id}"): {"summary": "stop and remove a capture", "parameters": ID_PARAM,
                                      "responses": {"200": {"description": "removed"}, **NOT_FOUND}},
    ("GET", "/api/alert"): {"summary": "every alert by UUID, with its state",
                            "responses": {"200": _json(_map_of("Alert"), "map UUID -> alert")}},
    ("POST", "/api/alert"): {
        "summary": "create an alert (Skydive's Alert: Gremlin Expression, Trigger, Action webhook)",
        "requestBody": {"required": True, "content": {"application/json": {"schema": _ref("AlertRequest")}}},
        "responses": {"200": _json(_ref("Alert"), "the alert"), "201": _json(_ref("Alert"), "the alert"), **BAD}},
    ("GET", "/api/alert/{id}"): {"summary": "one alert", "parameters": ID_PARAM,
                                 "responses": {"200": _json(_ref("Alert"), "the alert"), **NOT_FOUND}},
    ("DELETE", "/api/alert/{id}"): {"summary": "delete an alert", "parameters": ID_PARAM,
                                    "responses": {"200": {"description": "deleted"}, **NOT_FOUND}},
    ("POST", "/api/pcap"): {
        "summary": "turn a pcap/pcapng file into flows (published on the flow stream)",
        "parameters": [
            {"name": "NodeTID", "in": "query", "schema": {"type": "string"}},
            {"name": "KeepTime", "in": "query", "schema": {"type": "string", "enum": ["0", "1", "true", "false"]}},
            {"name": "ExtraLayers", "in": "query", "schema": {"type": "string"}},
            {"name": "IPDefrag", "in": "query", "schema": {"type": "string"}},
            {"name": "ReassembleTCP", "in": "query", "schema": {"type": "string"}},
        ],
        "requestBody": {"required": True, "content": {
            "application/vnd.tcpdump.pcap": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}},
        "responses": {"200": _json({"type": "object", "properties": {"Flows": {"type": "integer"}}},
                                   "number of flows"), **BAD},
    },
    ("POST", "/api/injectpacket"): {
        "summary": "Skydive's PacketInjection: the probe-flow of the Src node's host sends the packets",
        "requestBody": {"required": True,
                        "content": {"application/json": {"schema": _ref("PacketInjectRequest")}}},
        "responses": {"200": _json({"type": "object", "properties": {
            "Sent": {"type": "integer"}, "Host": {"type": "string"}, "Node": {"type": "string"}}}, "packets sent"),
            **BAD, "502": _text("unreadable answer from the probe"), "503": _text("no probe-flow answered")},
    },
    ("GET", "/ws/subscriber"): {"summary": "WebSocket: graph events in Skydive's envelope (docs/api.md)",
                                "responses": {"101": {"description": "upgraded"},
                                              "400": _text("not a WebSocket request, or a bad filter")}},
    ("GET", "/ws/subscriber/flow"): {"summary": "WebSocket: enriched flow updates",
                                     "responses": {"101": {"description": "upgraded"},
                                                   "400": _text("not a WebSocket request")}},
    ("GET", "/api/topology/summary"): {
        "summary": "per host and per namespace counts, for the web UI's collapsed groups",
        "parameters": AT_PARAM,
        "responses": {"200": _json({"type": "object"}, "groups and their counts"), **BAD}},
    ("GET", "/api/topology/group/{id}"): {
        "summary": "one group's (host or netns node) members and the edges touching them",
        "parameters": ID_PARAM + AT_PARAM,
        "responses": {"200": _json({"type": "object", "properties": {
            "Group": {"type": "string"}, "Nodes": {"type": "array", "items": _ref("Element")},
            "Edges": {"type": "array", "items": _ref("Element")}, "Total": {"type": "integer"},
            "Truncated": {"type": "boolean"}, "Groups": {"type": "object"}}}, "the group"), **BAD, **NOT_FOUND}},
    ("GET", "/api/diff"): {
        "summary": "graph changes (nodes/edges added, removed, metadata keys old -> new) and flow changes between "
                   "two instants, optionally under a Gremlin scope (docs/gremlin.md, Diff)",
        "parameters": [{"name": n, "in": "query", "schema": {"type": "string"}} for n in
                       ("from", "to", "scope", "flows", "factor", "idle", "rate_window", "metrics", "ignore")],
        "responses": {"200": _json({"type": "object"}, "{From, To, Nodes, Edges, Flows}"), **BAD,
                      "408": _text("over the time limit"), "413": _text("too many changes"),
                      "501": _text("no history store"), "503": _text("store unavailable")}},
    ("GET", "/api/flowpath/{trackingid}"): {
        "summary": "the capture points of one TrackingID in path order, counts per direction, loss between hops",
        "parameters": [{"name": "trackingid", "in": "path", "required": True, "schema": {"type": "string"}}]
        + [{"name": n, "in": "query", "schema": {"type": "string"}} for n in ("from", "to", "settle")],
        "responses": {"200": _json({"type": "object"}, "{TrackingID, Order, Hops, Links}"), **BAD,
                      "404": _text("no flow with that TrackingID"), "501": _text("no flow store"),
                      "503": _text("store unavailable")}},
    ("GET", "/api/loss"): {
        "summary": "where traffic is lost: links between capture points ranked by packets lost, with the flows",
        "parameters": [{"name": n, "in": "query", "schema": {"type": "string"}} for n in ("window", "top", "settle")],
        "responses": {"200": _json({"type": "object"}, "{From, To, Streams, Links}"), **BAD,
                      "413": _text("too many streams"), "501": _text("no flow store"),
                      "503": _text("store unavailable")}},
    ("GET", "/"): {"summary": "the web UI",
                   "responses": {"200": {"description": "HTML page", "content": {"text/html": {}}},
                                 "304": {"description": "not modified (ETag)"},
                                 "503": {"description": "the UI bundle is not built (make ui)",
                                         "content": {"text/html": {}}}}},
    ("GET", "/ui/{name}"): {"summary": "the web UI's hashed assets",
                            "parameters": [{"name": "name", "in": "path", "required": True,
                                            "schema": {"type": "string"}}],
                            "responses": {"200": {"description": "the asset"}, **NOT_FOUND}},
    ("GET", OPENAPI_PATH): {"summary": "this description", "responses": {"200": _json(ANY_JSON, "OpenAPI 3.1")}},
    ("POST", "/login"): {
        "summary": "Skydive's login: username and password for a token (when authentication is on)",
        "requestBody": {"required": True, "content": {"application/x-www-form-urlencoded": {"schema": {
            "type": "object", "properties": {"username": {"type": "string"}, "password": {"type": "string"}}}}}},
        "responses": {"200": {"description": "authenticated"}, **BAD, "401": _text("bad credentials")},
    },
    ("GET", "/healthz"): {"summary": "health: 503 until ready",
                          "responses": {"200": _json({"type": "object"}, "healthy"),
                                        "503": _json({"type": "object"}, "not ready")}},
    ("GET", "/metrics"): {"summary": "Prometheus metrics",
                          "responses": {"200": {"description": "text exposition format",
                                                "content": {"text/plain": {"schema": {"type": "string"}}}}}},
}
"""(method, aiohttp path) -> OpenAPI operation, for every route query-api may register."""


def served_routes(app: web.Application) -> set[tuple[str, str]]:
    """(method, path) of every route the app's router serves (HEAD, added by aiohttp to each GET, left out)."""
    routes = set()
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter")
        if route.method != "HEAD" and isinstance(path, str):
            routes.add((route.method, path))
    return routes


def document(served: set[tuple[str, str]], version: str) -> dict[str, Any]:
    """The OpenAPI document of the operations in `served` (those of OPERATIONS: see the module doc)."""
    paths: dict[str, dict[str, Any]] = {}
    for (method, path), op in OPERATIONS.items():
        if (method, path) in served:
            paths.setdefault(path, {})[method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {"title": "Netsonde query-api", "version": version,
                 "description": "Skydive's REST API (topology, Gremlin, captures, static objects, rules)"},
        "paths": dict(sorted(paths.items())),
        "components": {"schemas": _components()},
    }


def register(app: web.Application, version: str) -> None:
    """Serve the description at OPENAPI_PATH (built once, on the first request, from the final router)."""
    cached: dict[str, Any] = {}

    async def handler(request: web.Request) -> web.Response:
        if not cached:
            cached.update(document(served_routes(request.app), version))
        return web.json_response(cached)

    app.router.add_get(OPENAPI_PATH, handler)
