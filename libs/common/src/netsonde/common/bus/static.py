"""Static topology: nodes and edges created through the API, node rules and edge rules.

query-api validates a request and sends a `StaticRequest` to graph-builder (request/reply on
`<prefix>.static.request`); graph-builder, the single writer of the graph, persists the object in the
JetStream key-value bucket `<prefix>_static`, applies it to the graph and answers a `StaticReply`. At start
graph-builder reads the whole bucket back, so static objects and rules survive any restart.

Bucket keys: `node.<id>`, `edge.<id>`, `noderule.<uuid>`, `edgerule.<uuid>` (an ID with characters a KV key
cannot hold is written `=` + its unpadded base64url form). Values: a `StaticNode`/`StaticEdge` (a
GraphElement), a `NodeRule` or an `EdgeRule`, msgpack like every bus message.
"""

from __future__ import annotations

import base64
import re
import uuid
from typing import Any, ClassVar

import msgspec

from .graph import GraphElement
from .subjects import Subjects

KINDS = ("node", "edge", "noderule", "edgerule")
_KEY_SAFE = re.compile(r"[A-Za-z0-9_-]+")


class NodeRule(msgspec.Struct, omit_defaults=True):
    """Skydive's NodeRule. `Action` `create`: one node with `Metadata` (Name and Type required; ID = UUIDv5 of
    "Type/Name", as Skydive). `Action` `update`: `Metadata` merged into every node `Query` selects, now and
    later; removed again when the rule is deleted."""

    VERSION: ClassVar[int] = 1
    UUID: str
    Action: str
    Metadata: dict[str, Any] = {}
    Query: str = ""
    Name: str = ""
    Description: str = ""
    v: int = 1


class EdgeRule(msgspec.Struct, omit_defaults=True):
    """Skydive's EdgeRule: an edge with `Metadata` (RelationType required) from every node `Src` selects to
    every node `Dst` selects, kept up to date as the queries' results change. Edge ID = UUIDv5(parent ID +
    child ID + RelationType), as Skydive."""

    VERSION: ClassVar[int] = 1
    UUID: str
    Src: str
    Dst: str
    Metadata: dict[str, Any] = {}
    Name: str = ""
    Description: str = ""
    v: int = 1


class StaticObject(msgspec.Struct):
    """A bucket value for `node.*` / `edge.*`: the element as last applied (Revision, UpdatedAt included)."""

    VERSION: ClassVar[int] = 1
    element: GraphElement
    v: int = 1


class StaticRequest(msgspec.Struct, omit_defaults=True):
    """query-api -> graph-builder. `op`: create, patch, delete. `kind`: node, edge, noderule, edgerule.
    create carries `element` (node/edge), `noderule` or `edgerule`; patch carries `id` and `patch` (RFC 6902
    operations on the element's JSON; only Metadata changes are kept, as Skydive); delete carries `id`."""

    VERSION: ClassVar[int] = 1
    op: str
    kind: str
    id: str = ""
    element: GraphElement | None = None
    noderule: NodeRule | None = None
    edgerule: EdgeRule | None = None
    patch: list[dict[str, Any]] = []
    v: int = 1


class StaticReply(msgspec.Struct, omit_defaults=True):
    """graph-builder -> query-api. `status` is the HTTP status to answer (201, 200, 304, 400, 404, 409 ...);
    `error` the message when status >= 400. `seq` is the graph event sequence once the change was published,
    so query-api can wait until its replica has it (`epoch` tells which graph-builder run)."""

    VERSION: ClassVar[int] = 1
    status: int
    error: str = ""
    element: GraphElement | None = None
    noderule: NodeRule | None = None
    edgerule: EdgeRule | None = None
    epoch: str = ""
    seq: int = 0
    v: int = 1


class StaticError(ValueError):
    """An object or request that cannot be accepted; `status` is the HTTP status (400 by default)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def static_key(kind: str, ident: str) -> str:
    """The bucket key of an object."""
    if _KEY_SAFE.fullmatch(ident):
        return f"{kind}.{ident}"
    return f"{kind}.=" + base64.urlsafe_b64encode(ident.encode()).decode().rstrip("=")


def rule_node_id(metadata: dict[str, Any]) -> str:
    """ID of the node a `create` node rule makes (Skydive: graph.GenID(Type, Name))."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, f"{metadata['Type']}/{metadata['Name']}"))


def rule_edge_id(parent: str, child: str, relation_type: str) -> str:
    """ID of an edge an edge rule makes (Skydive: UUIDv5 over parent ID + child ID + RelationType)."""
    return str(uuid.uuid5(uuid.NAMESPACE_OID, parent + child + relation_type))


async def open_static_bucket(js: Any, subjects: Subjects) -> Any:
    """The static objects' key-value bucket (created on first use, file storage, one revision per key)."""
    from .streams import open_bucket

    return await open_bucket(js, subjects.static_bucket)


# --- validation of what users send (HTTP JSON) --------------------------------------------------------------
def _require_str(obj: dict[str, Any], path: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise StaticError(f"{path} is required (a non-empty string)")
    return value


def _metadata(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("Metadata")
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise StaticError("Metadata must be a JSON object")
    return meta


def _int_field(obj: dict[str, Any], name: str) -> int:
    value = obj.get(name) or 0
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise StaticError(f"{name} must be a non-negative integer (Unix milliseconds)")
    return value


def node_from_json(obj: Any) -> GraphElement:
    """A node as Skydive's POST /api/node takes it: ID, Metadata.Name and Metadata.Type required; Host,
    Origin, CreatedAt, UpdatedAt optional (graph-builder fills what is missing)."""
    return _element_from_json(obj, "a node", ("Name", "Type"), ())


def edge_from_json(obj: Any) -> GraphElement:
    """An edge as Skydive's POST /api/edge takes it: ID, Parent, Child and Metadata.RelationType required."""
    return _element_from_json(obj, "an edge", ("RelationType",), ("Parent", "Child"))


def _element_from_json(
    obj: Any, what: str, meta_keys: tuple[str, ...], ends: tuple[str, ...]
) -> GraphElement:
    """A node or an edge: ID, the `meta_keys` of Metadata and the `ends` (Parent, Child) required, in that
    order (the first one missing is the error); Host, Origin, CreatedAt, UpdatedAt optional."""
    if not isinstance(obj, dict):
        raise StaticError(f"{what} must be a JSON object")
    ident = _require_str(obj, "ID", obj.get("ID"))
    meta = _metadata(obj)
    for key in meta_keys:
        _require_str(obj, f"Metadata.{key}", meta.get(key))
    link = {name: _require_str(obj, name, obj.get(name)) for name in ends}
    return GraphElement(
        ID=ident,
        Metadata=meta,
        Host=_opt_str(obj, "Host"),
        Origin=_opt_str(obj, "Origin"),
        CreatedAt=_int_field(obj, "CreatedAt"),
        UpdatedAt=_int_field(obj, "UpdatedAt"),
        Revision=0,
        Parent=link.get("Parent", ""),
        Child=link.get("Child", ""),
    )


def _opt_str(obj: dict[str, Any], name: str) -> str:
    value = obj.get(name) or ""
    if not isinstance(value, str):
        raise StaticError(f"{name} must be a string")
    return value


def noderule_from_json(obj: Any) -> NodeRule:
    """Skydive's NodeRule checks: Action create (Metadata.Name/Type required) or update (Query required, Name
    and Type cannot be changed)."""
    if not isinstance(obj, dict):
        raise StaticError("a node rule must be a JSON object")
    action = obj.get("Action")
    if action not in ("create", "update"):
        raise StaticError("Action must be 'create' or 'update'")
    meta = _metadata(obj)
    query = _opt_str(obj, "Query")
    if action == "create":
        _require_str(obj, "Metadata.Name", meta.get("Name"))
        _require_str(obj, "Metadata.Type", meta.get("Type"))
        if query:
            raise StaticError("Query is only used by Action 'update' (a 'create' rule makes one node)")
    else:
        _require_str(obj, "Query", query)
        for key in ("Name", "Type"):
            if key in meta:
                raise StaticError(
                    f"Metadata.{key}: Name and Type fields can not be changed by an update rule"
                )
        if not meta:
            raise StaticError("Metadata is required: the keys to merge into the selected nodes")
    return NodeRule(
        UUID=_opt_str(obj, "UUID") or str(uuid.uuid4()),
        Action=action,
        Metadata=meta,
        Query=query,
        Name=_opt_str(obj, "Name"),
        Description=_opt_str(obj, "Description"),
    )


def edgerule_from_json(obj: Any) -> EdgeRule:
    if not isinstance(obj, dict):
        raise StaticError("an edge rule must be a JSON object")
    src = _require_str(obj, "Src", obj.get("Src"))
    dst = _require_str(obj, "Dst", obj.get("Dst"))
    meta = _metadata(obj)
    _require_str(obj, "Metadata.RelationType", meta.get("RelationType"))
    return EdgeRule(
        UUID=_opt_str(obj, "UUID") or str(uuid.uuid4()),
        Src=src,
        Dst=dst,
        Metadata=meta,
        Name=_opt_str(obj, "Name"),
        Description=_opt_str(obj, "Description"),
    )


def rule_to_json(rule: NodeRule | EdgeRule) -> dict[str, Any]:
    """Skydive's JSON of a rule (every field present, as the Go server marshals it)."""
    out: dict[str, Any] = msgspec.to_builtins(rule)
    out.pop("v", None)
    out.setdefault("Metadata", {})
    out.setdefault("Name", "")
    out.setdefault("Description", "")
    if isinstance(rule, NodeRule):
        out.setdefault("Query", "")
    return out
