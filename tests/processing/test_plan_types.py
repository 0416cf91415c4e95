"""JSON Schemas translated to msgspec types are never looser than the schema: whatever the
type accepts, the compiled fastjsonschema validator accepts too (and the common shapes do
translate, so the short path is taken)."""

from __future__ import annotations

from typing import Any

import fastjsonschema
import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.processing.plan_types import make_struct, msgspec_type

SCHEMAS: list[dict[str, Any]] = [
    {"type": "number", "minimum": 0},
    {"type": "number", "exclusiveMaximum": 10},
    {"type": "integer", "maximum": 3},
    {"type": "string", "minLength": 2, "maxLength": 4},
    {"type": "string", "pattern": "^a"},
    {"type": ["string", "null"]},
    {"type": "boolean"},
    {"enum": ["EUR", "USD"]},
    {"type": "array", "items": {"type": "string"}, "maxItems": 2},
    {
        "type": "object",
        "properties": {"revenue": {"type": "number"}, "currency": {"enum": ["EUR"]}},
        "required": ["revenue"],
    },
    {"type": "object", "properties": {"a": {"type": "integer"}}, "additionalProperties": False},
    {"type": "object"},
]
JSON = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-20, 20)
    | st.floats(-20, 20, allow_nan=False)
    | st.sampled_from(["", "a", "ab", "abcde", "EUR", "USD", "b"]),
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "revenue", "currency", "x"]), inner, max_size=3)
    ),
    max_leaves=6,
)


@pytest.mark.parametrize("schema", SCHEMAS, ids=lambda s: msgspec.json.encode(s).decode())
def test_common_shapes_translate(schema: dict[str, Any]) -> None:
    assert msgspec_type(schema) is not None


@pytest.mark.parametrize(
    "schema",
    [{"type": "string", "format": "email"}, {"oneOf": [{"type": "string"}]}, {"multipleOf": 2}],
)
def test_what_is_not_translated_says_so(schema: dict[str, Any]) -> None:
    assert msgspec_type(schema) is None


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(SCHEMAS), JSON)
def test_a_translated_type_accepts_nothing_the_schema_refuses(
    schema: dict[str, Any], value: Any
) -> None:
    kind = msgspec_type(schema)
    struct = make_struct([("v", kind, True)], forbid=False)
    assert struct is not None
    try:
        msgspec.json.decode(msgspec.json.encode({"v": value}), type=struct)
    except msgspec.ValidationError:
        return  # refused: the full check decides, nothing to hold against the type
    fastjsonschema.compile(schema)(value)  # accepted by the type: the schema must agree
