"""Reading a key of a graph element: `@ID`-style element fields and dotted metadata paths.

A dotted path walks nested maps (`Neutron.PortID`); a map key may itself contain dots
(`Docker.Labels.io.kubernetes.pod.namespace`), so at each level the longest matching key wins. A list met
on the way fans out: `Captures.ID` yields the ID of every capture, and a filter matches when any of the
values matches (Skydive's array-membership semantics).
"""

from __future__ import annotations

from typing import Any

from netsonde.common.bus.graph import GraphElement

ELEMENT_KEYS: dict[str, str] = {
    "@ID": "ID", "@HOST": "Host", "@ORIGIN": "Origin", "@CREATEDAT": "CreatedAt", "@UPDATEDAT": "UpdatedAt",
    "@DELETEDAT": "DeletedAt", "@REVISION": "Revision", "@PARENT": "Parent", "@CHILD": "Child",
}
"""`@` keys (case-insensitive) -> GraphElement attribute."""

NODE_AT_KEYS = ("@CreatedAt", "@DeletedAt", "@Host", "@ID", "@Origin", "@Revision", "@UpdatedAt")
EDGE_AT_KEYS = NODE_AT_KEYS + ("@Child", "@Parent")

_MISSING = object()


def path_values(obj: Any, key: str) -> tuple[bool, list[Any]]:
    """(present, leaf values) of dotted `key` in a JSON-like map; lists are flattened one level at each step."""
    if "." not in key:
        if not isinstance(obj, dict):
            return False, []
        v = obj.get(key, _MISSING)
        if v is _MISSING:
            return False, []
        if isinstance(v, list):
            return True, v
        return True, [v]
    out: list[Any] = []
    present = _walk(obj, key.split("."), out)
    return present, out


def _walk(obj: Any, parts: list[str], out: list[Any]) -> bool:
    if isinstance(obj, list):
        found = False
        for item in obj:
            found = _walk(item, parts, out) or found
        return found
    if not parts:
        out.append(obj)
        return True
    if not isinstance(obj, dict):
        return False
    for cut in range(len(parts), 0, -1):
        k = parts[0] if cut == 1 else ".".join(parts[:cut])
        v = obj.get(k, _MISSING)
        if v is _MISSING:
            continue
        rest = parts[cut:]
        if not rest:
            if isinstance(v, list):
                out.extend(v)
            else:
                out.append(v)
            return True
        if _walk(v, rest, out):
            return True
    return False


def element_values(el: GraphElement, key: str) -> tuple[bool, list[Any]]:
    """(present, values) of `key` on a node or edge: an `@` key or a metadata path."""
    if key[:1] == "@":
        attr = ELEMENT_KEYS.get(key.upper())
        if attr is None:
            return False, []
        v = getattr(el, attr)
        if v is None or (attr in ("Parent", "Child") and v == ""):
            return False, []
        return True, [v]
    return path_values(el.Metadata, key)


def element_value(el: GraphElement, key: str) -> Any:
    """One value for sorting / Values(): the element field for `@X` and bare element field names
    (`CreatedAt`, ...) that are not metadata keys, else the metadata value at the path (a list stays a list)."""
    if key[:1] == "@":
        attr = ELEMENT_KEYS.get(key.upper())
        return getattr(el, attr) if attr else None
    v = metadata_value(el.Metadata, key)
    if v is _MISSING and ("@" + key).upper() in ELEMENT_KEYS:
        return getattr(el, ELEMENT_KEYS[("@" + key).upper()])
    return None if v is _MISSING else v


def metadata_value(md: Any, key: str) -> Any:
    """The raw value at a dotted path (no list fan-out at the leaf); `_MISSING` when absent."""
    if "." not in key:
        return md.get(key, _MISSING) if isinstance(md, dict) else _MISSING
    present, values = path_values(md, key)
    if not present:
        return _MISSING
    return values[0] if len(values) == 1 else values


def missing(v: Any) -> bool:
    return v is _MISSING


def flatten_keys(md: dict[str, Any], prefix: str = "") -> list[str]:
    """Every key of a metadata map, nested keys as dotted paths (both `A` and `A.B`)."""
    out: list[str] = []
    for k, v in md.items():
        full = prefix + k
        out.append(full)
        if isinstance(v, dict):
            out.extend(flatten_keys(v, full + "."))
    return out
