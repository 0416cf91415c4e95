"""JSON Schemas as msgspec types, for the short path of tracking plans.

msgspec validates while it decodes, in C: a rule such as "`revenue` is a number >= 0 and is
required, `currency` is one of EUR, USD, GBP" becomes a struct with `Annotated[float,
Meta(ge=0)]` and `Literal[...]` fields, and a message that decodes into it passes. Only the
keywords below are translated, and only to types at least as strict as the schema: anything
else (`format`, `multipleOf`, `oneOf`, ...) yields None and the field is checked by its compiled
fastjsonschema validator instead. Stricter is safe: a message the short path refuses is looked
at by the full check, which has the last word.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

import msgspec
from msgspec import UNSET, Meta, UnsetType

_NOTES = {"title", "description", "$comment"}
_NUMBER = {"minimum": "ge", "maximum": "le", "exclusiveMinimum": "gt", "exclusiveMaximum": "lt"}
_STRING = {"minLength": "min_length", "maxLength": "max_length", "pattern": "pattern"}
_ARRAY = {"minItems": "min_length", "maxItems": "max_length"}
_SCALARS: dict[str, Any] = {"string": str, "number": float, "integer": int, "boolean": bool}

_count = 0


def msgspec_type(schema: Any, *, closed: bool = False) -> Any | None:
    """A type that accepts only what `schema` accepts (None: no such translation here). With
    `closed`, an object schema with `properties` also refuses properties it does not name."""
    if schema is True or schema == {}:
        return Any
    if not isinstance(schema, dict):
        return None
    keys = set(schema) - _NOTES
    named = schema.get("type")
    if "enum" in schema:
        return _enum(schema, keys)
    if named == "object" or (named is None and keys & {"properties", "required"}):
        return _object(schema, keys, closed)
    names = [named] if isinstance(named, str) else named
    if not isinstance(names, list) or not names:
        return None
    if len(names) > 1:  # a union: only plain types, no constraints
        if keys != {"type"} or not all(n in _SCALARS or n in ("null", "array") for n in names):
            return None
        return Union[tuple(_plain(n) for n in names)]  # noqa: UP007 - built at run time
    name = names[0]
    if name == "null":
        return None if keys != {"type"} else type(None)
    if name == "array":
        return _array(schema, keys)
    if name not in _SCALARS:
        return None
    allowed = _STRING if name == "string" else _NUMBER if name in ("number", "integer") else {}
    if keys - {"type"} - set(allowed):
        return None
    meta = {allowed[k]: schema[k] for k in keys - {"type"}}
    if any(isinstance(v, bool) for v in meta.values()):
        return None  # draft 4's boolean exclusiveMinimum
    return Annotated[_SCALARS[name], Meta(**meta)] if meta else _SCALARS[name]


def _plain(name: str) -> Any:
    return {"null": type(None), "array": list}.get(name) or _SCALARS[name]


def _enum(schema: dict[str, Any], keys: set[str]) -> Any | None:
    values = schema["enum"]
    if keys - {"enum", "type"} or not isinstance(values, list) or not values:
        return None
    if all(isinstance(v, str) for v in values) and schema.get("type", "string") == "string":
        return Literal[tuple(values)]
    return None


def _array(schema: dict[str, Any], keys: set[str]) -> Any | None:
    if keys - {"type", "items"} - set(_ARRAY):
        return None
    item = msgspec_type(schema.get("items", {}))
    if item is None:
        return None
    meta = {_ARRAY[k]: schema[k] for k in keys & set(_ARRAY)}
    return Annotated[list[item], Meta(**meta)] if meta else list[item]  # type: ignore[valid-type]


def _object(schema: dict[str, Any], keys: set[str], closed: bool) -> Any | None:
    if keys - {"type", "properties", "required", "additionalProperties"}:
        return None
    props, required = schema.get("properties", {}), schema.get("required", [])
    extra = schema.get("additionalProperties", True)
    if not isinstance(props, dict) or not isinstance(required, list) or extra not in (True, False):
        return None
    if not props and not required and extra is True:
        return dict
    if not all(isinstance(n, str) for n in required):
        return None
    fields = []
    for name in sorted(set(props) | set(required)):
        kind = msgspec_type(props.get(name, {}))
        if kind is None:
            return None
        fields.append((name, kind, name in required))
    return make_struct(fields, forbid=extra is False or (closed and bool(props)))


Field = tuple[str, Any, bool]  # JSON name, type, required


def make_struct(fields: list[Field], forbid: bool) -> Any | None:
    """A struct type of these JSON fields (any names; a missing optional one is `UNSET`), or
    None if msgspec refuses the types (say, a union it cannot tell apart)."""
    global _count
    _count += 1
    spec: list[Any] = [(f"f{i}", kind) for i, (_n, kind, req) in enumerate(fields) if req]
    spec += [
        (f"f{i}", Union[kind, UnsetType], UNSET)  # noqa: UP007 - built at run time
        for i, (_n, kind, req) in enumerate(fields)
        if not req
    ]
    rename = {f"f{i}": name for i, (name, _k, _r) in enumerate(fields)}
    try:
        struct = msgspec.defstruct(
            f"Rule{_count}", spec, rename=rename, forbid_unknown_fields=forbid, gc=False
        )
        msgspec.json.Decoder(struct)
    except TypeError:
        return None
    return struct
