"""Identity resolution settings per identifier type: limit, period, priority, blocked values.

Defaults follow Segment's: a profile holds at most one `user_id` ever, and at most five values
of any other type within a week; `user_id` has the highest priority (1), then `email`, device
ids, `anonymous_id`, then custom types. Blocked values are never used to match: the usual
placeholders (`null`, `undefined`, `anonymous`, all zeros and dashes, ...) by default, compared
whole and ignoring case, plus regular expressions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field

from headwater.config import IdentityConfig, parse_duration

WEEK_MS = 7 * 86_400_000
EVER: int | None = None

# type -> (limit, period in ms or None for ever, priority)
DEFAULT_TYPES: dict[str, tuple[int, int | None, int]] = {
    "user_id": (1, EVER, 1),
    "email": (5, WEEK_MS, 2),
    **{
        name: (5, WEEK_MS, 3)
        for name in (
            "ios.id",
            "android.id",
            "device_id",
            "ios.idfa",
            "android.idfa",
            "advertising_id",
            "ios.push_token",
            "android.push_token",
            "push_token",
        )
    },
    "anonymous_id": (5, WEEK_MS, 4),
}
CUSTOM_TYPE = (5, WEEK_MS, 5)  # any other type (custom `context.externalIds`)
DEFAULT_BLOCKED = frozenset(
    {
        "null",
        "none",
        "nil",
        "undefined",
        "anonymous",
        "unknown",
        "n/a",
        "[object object]",
        "-1",
    }
)
DEFAULT_PATTERNS = (r"^[0-]*$",)  # "", "0", "00000000-0000-0000-0000-000000000000", ...


@dataclass(frozen=True)
class TypeRules:
    """What one identifier type may do."""

    limit: int
    period_ms: int | None  # None: ever
    priority: int
    blocked: frozenset[str]  # lower-cased
    patterns: tuple[re.Pattern[str], ...]
    _any: re.Pattern[str] | None = field(default=None, compare=False, repr=False)

    def __post_init__(self) -> None:  # one search for all the patterns
        if self.patterns:
            joined = "|".join(f"(?:{p.pattern})" for p in self.patterns)
            object.__setattr__(self, "_any", re.compile(joined))

    def blocks(self, value: str) -> bool:
        if value.strip().lower() in self.blocked:
            return True
        return self._any is not None and self._any.search(value) is not None


@dataclass
class IdentitySettings:
    """The rules of every identifier type of one workspace."""

    types: dict[str, TypeRules] = field(default_factory=dict)
    custom: TypeRules | None = None
    max_merges: int = 100
    max_identifiers: int = 1000

    def blocks_any(self, idents: Iterable[tuple[str, str]]) -> bool:
        """Whether any of `idents` (type, value) is blocked."""
        types = self.types
        for kind, value in idents:
            rules = types.get(kind) or self.custom
            if rules is not None and rules.blocks(value):
                return True
        return False

    def rules(self, kind: str) -> TypeRules:
        found = self.types.get(kind)
        if found is not None:
            return found
        assert self.custom is not None
        return self.custom


def identity_settings(config: IdentityConfig | None = None) -> IdentitySettings:
    """Segment's defaults, with what `config` sets instead."""
    config = config or IdentityConfig()
    patterns = tuple(re.compile(p) for p in DEFAULT_PATTERNS)

    def made(name: str, default: tuple[int, int | None, int]) -> TypeRules:
        limit, period_ms, priority = default
        t = config.types.get(name)
        blocked, own = DEFAULT_BLOCKED, patterns
        if t is not None:
            limit = t.limit if t.limit is not None else limit
            if t.period is not None:
                period_ms = None if t.period == "ever" else int(parse_duration(t.period) * 1000)
            priority = t.priority if t.priority is not None else priority
            if t.blocked is not None:
                blocked = frozenset(v.strip().lower() for v in t.blocked)
            if t.blocked_patterns is not None:
                own = tuple(re.compile(p) for p in t.blocked_patterns)
        return TypeRules(limit, period_ms, priority, blocked, own)

    names = set(DEFAULT_TYPES) | set(config.types)
    return IdentitySettings(
        {name: made(name, DEFAULT_TYPES.get(name, CUSTOM_TYPE)) for name in names},
        made("", CUSTOM_TYPE),
        config.max_merges,
        config.max_identifiers,
    )
