"""The short path of tracking plans: deciding that a message passes from the fields its rules
name, while msgspec decodes it.

Most messages pass their plan untouched. When every rule of a plan only names top-level fields
(root keywords `type: object`, `properties`, `required`), whether a message passes depends on
those fields alone. For each rule (with the common rule) a struct of just those fields is made:
a field whose schema translates to a msgspec type (`plan_types`) is checked by msgspec while it
decodes, in C; any other is decoded as it is and checked by its sub-schema's compiled
validator. Anything else (a rule with `additionalProperties` or `allOf` at its root, a `$ref`)
leaves the plan without a short path, and a message that fails the short path is looked at
whole, which also says why it failed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import msgspec
from msgspec import UNSET

from headwater.config import compile_schema
from headwater.processing.plan_types import Field, make_struct, msgspec_type

# Root keywords under which a schema's verdict depends only on the fields it names.
_NAMED_ONLY = {"type", "properties", "required", "title", "description", "$schema", "$comment"}


@dataclass(frozen=True)
class RuleCheck:
    """One rule (with the common rule) as a decoder, plus validators msgspec cannot replace."""

    decoder: msgspec.json.Decoder[Any]
    validators: tuple[tuple[str, Any], ...]  # (struct attribute, compiled validator)

    def passes(self, message: bytes) -> bool:
        """Whether `message` passes this rule (False also when unsure)."""
        try:
            decoded = self.decoder.decode(message)
        except msgspec.DecodeError:
            return False
        for attr, validate in self.validators:
            value = getattr(decoded, attr)
            if value is UNSET:
                continue
            try:
                validate(value)
            except Exception:  # any failure: the whole message is looked at
                return False
        return True


@dataclass
class FieldChecks:
    """A plan's rules as checks of the fields they name."""

    common: dict[str, Any] | None
    rules: dict[str, dict[str, Any]]
    _made: dict[tuple[str | None, str | None], RuleCheck | None] = field(default_factory=dict)

    def passes(self, message: bytes, rule_key: str | None, closed: str | None) -> bool:
        """Whether the common rule and the rule `rule_key` (None: no rule) both pass; with
        `closed`, also whether that field's object holds only the properties its rule names."""
        check = self.check(rule_key, closed)
        return check is not None and check.passes(message)

    def check(self, rule_key: str | None, closed: str | None) -> RuleCheck | None:
        """The check `passes` makes (None: not expressible as a short path)."""
        key = (rule_key, closed)
        return self._made[key] if key in self._made else self._make(key)

    def _make(self, key: tuple[str | None, str | None]) -> RuleCheck | None:
        rule_key, closed = key
        schemas = [s for s in (self.common, self.rules.get(rule_key or "")) if s is not None]
        names: dict[str, list[Any]] = {}
        required: set[str] = set()
        for schema in schemas:
            for name, sub in schema.get("properties", {}).items():
                names.setdefault(name, []).append(sub)
            required |= set(schema.get("required", []))
        fields: list[Field] = []
        validators: list[tuple[str, Any]] = []
        for i, name in enumerate(sorted(set(names) | required)):
            subs = names.get(name, [])
            kind = msgspec_type(subs[0], closed=name == closed) if len(subs) == 1 else None
            if kind is None:
                if name == closed:
                    self._made[key] = None
                    return None
                kind = Any
                validators += [(f"f{i}", compile_schema(s)) for s in subs if s != {}]
            fields.append((name, kind, name in required))
        struct = make_struct(fields, forbid=False)
        made = None
        if struct is not None:
            made = RuleCheck(msgspec.json.Decoder(struct), tuple(validators))
        self._made[key] = made
        return made


def field_checks(common: dict[str, Any] | None, rules: dict[str, Any]) -> FieldChecks | None:
    """Checks for `common` and `rules` (by rule key), or None if one may read any field."""
    schemas = [*rules.values(), *([common] if common is not None else [])]
    if not all(_named_only(s) for s in schemas):
        return None
    return FieldChecks(common, rules)


def _named_only(schema: Any) -> bool:
    if not isinstance(schema, dict) or set(schema) - _NAMED_ONLY:
        return False
    props, required = schema.get("properties", {}), schema.get("required", [])
    if schema.get("type", "object") != "object" or not isinstance(props, dict):
        return False
    if "$ref" in msgspec.json.encode(props).decode():
        return False  # a reference may point anywhere in the whole schema
    return isinstance(required, list) and all(isinstance(n, str) for n in required)
