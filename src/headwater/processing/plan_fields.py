"""The short path of tracking plans: deciding that a message passes from the fields its rules
name, without decoding the rest of it.

Most messages pass their plan untouched. When every rule of a plan only names top-level fields
(root keywords `type: object`, `properties`, `required`), whether a message passes depends on
those fields alone: they are decoded into a small struct (msgspec skips the rest), and each is
checked by the compiled validator of its own sub-schema. Anything else (a rule with
`additionalProperties` or `allOf` at its root, a `$ref`) leaves the plan without a short path,
and a message that fails the short path is looked at whole, which also says why it failed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import msgspec
from msgspec import UNSET

from headwater.config import compile_schema

# Root keywords under which a schema's verdict depends only on the fields it names.
_NAMED_ONLY = {"type", "properties", "required", "title", "description", "$schema", "$comment"}
# Fields the plan step reads to choose a rule and to find unplanned properties.
ROUTING = ("type", "event", "properties", "traits")

# position in the decoded tuple, validator (None: any), required, and for a schema that only
# names types: the Python types it accepts and whether `bool` is one of them (checked inline)
Check = tuple[int, Any, bool, tuple[type, ...] | None, bool]
_JSON_TYPES: dict[str, tuple[type, ...]] = {
    "string": (str,),
    "null": (type(None),),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list, tuple),
    "number": (int, float),  # as JSON Schema has it: not booleans (see `passes`)
}


@dataclass(frozen=True)
class FieldChecks:
    """A plan's rules as checks of named fields."""

    decoder: msgspec.json.Decoder[Any]
    position: dict[str, int]  # field name -> index in `read`'s tuple
    common: tuple[Check, ...]
    rules: dict[str, tuple[Check, ...]]

    def read(self, message: bytes) -> tuple[Any, ...] | None:
        """The named fields of `message` (`UNSET` where absent); None if it is not an object."""
        try:
            return msgspec.structs.astuple(self.decoder.decode(message))
        except msgspec.DecodeError:
            return None

    def field(self, read: tuple[Any, ...], name: str) -> Any:
        value = read[self.position[name]]
        return None if value is UNSET else value

    def passes(self, read: tuple[Any, ...], rule_key: str | None) -> bool:
        """Whether the common rule and the rule `rule_key` (None: no rule) both pass."""
        checks = self.common if rule_key is None else self.common + self.rules[rule_key]
        for index, validate, required, types, bools in checks:
            value = read[index]
            if value is UNSET:
                if required:
                    return False
                continue
            if types is not None:  # {"type": ...} alone: no validator call
                if not isinstance(value, types) or (type(value) is bool and not bools):
                    return False
            elif validate is not None:
                try:
                    validate(value)
                except Exception:  # any failure: the whole message is looked at
                    return False
        return True


def field_checks(common: dict[str, Any] | None, rules: dict[str, Any]) -> FieldChecks | None:
    """Checks for `common` and `rules` (by rule key), or None if one may read any field."""
    schemas = {**rules, **({"": common} if common is not None else {})}
    if not all(_named_only(s) for s in schemas.values()):
        return None
    names = set(ROUTING)
    for schema in schemas.values():
        names |= set(schema.get("properties", {})) | set(schema.get("required", []))
    order = sorted(names)
    position = {name: i for i, name in enumerate(order)}
    spec = [(f"f{i}", Any, UNSET) for i in range(len(order))]
    rename = {f"f{i}": name for i, name in enumerate(order)}
    struct = msgspec.defstruct("PlanFields", spec, rename=rename)
    try:
        compiled = {key: _checks(schema, position) for key, schema in schemas.items()}
    except ValueError:
        return None
    return FieldChecks(
        msgspec.json.Decoder(struct),
        position,
        compiled.pop("", ()),
        compiled,
    )


def _named_only(schema: Any) -> bool:
    if not isinstance(schema, dict) or set(schema) - _NAMED_ONLY:
        return False
    props, required = schema.get("properties", {}), schema.get("required", [])
    if schema.get("type", "object") != "object" or not isinstance(props, dict):
        return False
    if "$ref" in msgspec.json.encode(props).decode():
        return False  # a reference may point anywhere in the whole schema
    return isinstance(required, list) and all(isinstance(n, str) for n in required)


def _checks(schema: dict[str, Any], position: dict[str, int]) -> tuple[Check, ...]:
    props: dict[str, Any] = schema.get("properties", {})
    required = set(schema.get("required", []))
    checks: list[Check] = []
    for name in sorted(set(props) | required):
        sub = props.get(name, {})
        types = _types_only(sub)
        validate = None if types is not None or sub == {} else compile_schema(sub)
        checks.append(
            (position[name], validate, name in required, types, types is not None and bool in types)
        )
    return tuple(checks)


def _types_only(schema: Any) -> tuple[type, ...] | None:
    """The Python types a schema that only says `type` accepts (None: it says more, or names
    `integer`, whose floats need a closer look)."""
    if not isinstance(schema, dict) or set(schema) - {"type", "title", "description"}:
        return None
    named = schema.get("type")
    names = [named] if isinstance(named, str) else named
    if not isinstance(names, list) or not names or not all(n in _JSON_TYPES for n in names):
        return None
    return tuple(t for n in names for t in _JSON_TYPES[n])
