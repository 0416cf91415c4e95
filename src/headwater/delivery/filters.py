"""Destination filters: which events a destination gets.

A destination's `filters` (`FilterConfig`) are compiled once, when the config loads, by
`compile_filter`; `DestinationFilter.check(message)` then returns None when the destination gets
the message, else the reason it is filtered, checked in this order:

1. `integrations_disabled`: the message's `integrations` object turns the destination off
   (Segment semantics, names case-sensitive). If it has the destination's name as a key, `false`
   disables and `true` or an object enables; any other value (null, number, string) is ignored.
   Otherwise `"All": false` disables. No `integrations` object: enabled.
2. `filtered_type`: `types` is set and the message's `type` (lower-cased) is not in it.
3. `filtered_event`: `events` is set and a `track` message's `event` is not in it (exact names;
   messages of other types pass).
4. `filtered_condition`: the `where` condition is not true for the message.

`unreadable_message`: the bytes are not a JSON object. (A destination without filters does not
decode a message that has no `integrations`, so it does not notice either.)

The `where` condition language: `conditions.py`.
"""

from __future__ import annotations

from typing import Any, Final

import msgspec

from headwater.config import FilterConfig
from headwater.delivery.conditions import ConditionError, Predicate, compile_condition

__all__ = ["ConditionError", "DestinationFilter", "compile_filter"]

INTEGRATIONS_DISABLED: Final = "integrations_disabled"
FILTERED_TYPE: Final = "filtered_type"
FILTERED_EVENT: Final = "filtered_event"
FILTERED_CONDITION: Final = "filtered_condition"
UNREADABLE: Final = "unreadable_message"

CALL_TYPES: Final = frozenset({"track", "identify", "page", "screen", "group", "alias"})


class DestinationFilter:
    """A destination's compiled filters (see `compile_filter`)."""

    __slots__ = ("_events", "_head", "_types", "_where", "config", "name")

    def __init__(self, name: str, config: FilterConfig) -> None:
        """Compile `config` (see `compile_filter`)."""
        self.name = name
        self.config = config
        for t in config.types or ():
            if t.lower() not in CALL_TYPES:
                raise ValueError(
                    f"destination {name!r}: unknown call type {t!r} in filters.types "
                    f"(known: {', '.join(sorted(CALL_TYPES))})"
                )
        self._types = None if config.types is None else frozenset(t.lower() for t in config.types)
        self._events = None if config.events is None else frozenset(config.events)
        self._where = None if config.where is None else _condition(name, config.where)
        self._head = config.types is not None or config.events is not None  # needs type, event

    def __repr__(self) -> str:
        return f"DestinationFilter({self.name!r}, {self.config!r})"

    def check(self, message: bytes) -> str | None:
        """None when the destination gets `message` (a JSON object), else the reason code."""
        where = self._where
        try:
            if where is not None:
                msg = _JSON.decode(message)
                if type(msg) is not dict:
                    return UNREADABLE
                field = msg.get
                reason = self._check_head(field("integrations"), field("type"), field("event"))
                # in the `try`: comparing two fields deeply nested may recurse too deep
                return FILTERED_CONDITION if reason is None and not where(msg) else reason
            if self._head:
                head = _HEAD.decode(message)
                return self._check_head(head.integrations, head.type, head.event)
            if b'"integrations"' not in message:
                return None  # the fast path: nothing to decode
            integrations = _HEAD.decode(message).integrations
            return None if _enabled(integrations, self.name) else INTEGRATIONS_DISABLED
        except _UNREADABLE:
            return UNREADABLE

    def _check_head(self, integrations: Any, type_: Any, event: Any) -> str | None:
        if integrations is not None and not _enabled(integrations, self.name):
            return INTEGRATIONS_DISABLED
        if not self._head:
            return None
        kind = type_.lower() if type(type_) is str else None
        if self._types is not None and kind not in self._types:
            return FILTERED_TYPE
        if (
            self._events is not None
            and kind == "track"
            and not (type(event) is str and event in self._events)
        ):
            return FILTERED_EVENT
        return None


def compile_filter(name: str, config: FilterConfig) -> DestinationFilter:
    """The filter of destination `name` (its key in `integrations` objects). Raises ValueError
    (`ConditionError` for the condition, with its position) when `config` is invalid."""
    return DestinationFilter(name, config)


def _condition(name: str, where: str) -> Predicate:
    try:
        return compile_condition(where)
    except ConditionError as exc:
        prefix = f"destination {name!r}: invalid filter condition {where!r}: "
        raise ConditionError(exc.reason, exc.position, prefix) from None


class _Head(msgspec.Struct):
    """What filters without a condition read of a message (the rest is skipped)."""

    type: Any = None
    event: Any = None
    integrations: Any = None


_HEAD: Final = msgspec.json.Decoder(_Head)
_JSON: Final = msgspec.json.Decoder()
_UNREADABLE: Final = (ValueError, RecursionError)  # DecodeError, invalid UTF-8, too deep


def _enabled(integrations: Any, name: str) -> bool:
    if type(integrations) is not dict:
        return True
    value = integrations.get(name)
    if value is True or value is False or type(value) is dict:
        return value is not False
    return integrations.get("All") is not False
