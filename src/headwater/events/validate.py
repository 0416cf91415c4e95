"""Segment's rules for a message, with the reason code of every way to break them.

`check` runs on every message the gateway receives, before anything is acknowledged, so it
favours flat code over small helpers; it only checks presence, because the types were checked by
msgspec (`schema.Check`). Messages that did not decode as `Check` go through `coerce` first,
which checks types and shapes field by field. Readers of the log run the same functions again
when they build the stamped message, so the two can never disagree.
"""

from __future__ import annotations

from typing import Any

from msgspec import UNSET

from headwater.events import reasons
from headwater.events.schema import MAX_MESSAGE_ID_LENGTH, MESSAGE_TYPES

_LBRACE = 0x7B
_N = 0x6E  # first byte of null


class Dropped(Exception):
    """A message that cannot be stored: `code` is its reason, `detail` says why."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def check(msg: Any, path_type: str | None, write_key: str | None) -> Any:
    """Raise `Dropped` unless `msg` has what its type requires; returns its messageId (falsy
    if it has none).

    `msg` is a `schema.Check`, or any message that went through `coerce`. `path_type` is the
    type a single-message path implies (`/v1/track`: "track"); `write_key` is the request's,
    which a message's own `writeKey` must not contradict.
    """
    mtype = path_type or msg.type
    if not mtype:
        raise Dropped(reasons.BAD_REQUEST, "type is required")
    own_key = msg.writeKey
    if own_key and write_key is not None and own_key != write_key:
        raise Dropped(reasons.MULTI_USER_ERROR, "the message's writeKey is not the request's")
    if not msg.userId and not msg.anonymousId:
        raise Dropped(reasons.NO_USER_ANON_ID, "userId or anonymousId is required")
    if mtype == "track":
        if not msg.event:
            raise Dropped(reasons.EVENT_NOT_DEFINED, "track needs an event name")
    elif mtype == "group":
        if not msg.groupId:
            raise Dropped(reasons.ID_REQUIRED, "groupId is required")
    elif mtype == "alias" and not msg.previousId:
        raise Dropped(reasons.ID_REQUIRED, "previousId is required")
    return msg.messageId


def coerce(msg: Any, path_type: str | None) -> None:
    """Check the types of a leniently decoded message, as msgspec does for strict ones.

    Numbers used as ids become strings (as RudderStack does) instead of dropping the message.
    """
    if path_type is None and (type(msg.type) is not str or msg.type not in MESSAGE_TYPES):
        raise Dropped(reasons.BAD_REQUEST, f"type must be one of {sorted(MESSAGE_TYPES)}")
    msg.userId = _as_id(msg.userId, "userId")
    msg.anonymousId = _as_id(msg.anonymousId, "anonymousId")
    msg.groupId = _as_id(msg.groupId, "groupId")
    msg.previousId = _as_id(msg.previousId, "previousId")
    for name, code in (
        ("event", reasons.EVENT_NOT_STRING),
        ("name", reasons.NAME_NOT_STRING),
        ("category", reasons.CATEGORY_NOT_STRING),
    ):
        value = getattr(msg, name)
        if value is not UNSET and value is not None and type(value) is not str:
            raise Dropped(code, f"{name} must be a string")
    message_id = msg.messageId
    if type(message_id) is int:
        message_id = msg.messageId = str(message_id)
    elif message_id is not UNSET and message_id is not None and type(message_id) is not str:
        raise Dropped(reasons.BAD_REQUEST, "messageId must be a string")
    if type(message_id) is str and len(message_id) > MAX_MESSAGE_ID_LENGTH:
        raise Dropped(
            reasons.BAD_REQUEST, f"messageId is longer than {MAX_MESSAGE_ID_LENGTH} characters"
        )
    if type(msg.writeKey) is not str:
        msg.writeKey = UNSET
    mtype = path_type or msg.type
    if mtype in ("track", "page", "screen"):
        _check_shape(msg.properties, reasons.PROPERTIES_NOT_OBJECT, "properties")
    elif mtype in ("identify", "group"):
        _check_shape(msg.traits, reasons.TRAITS_NOT_OBJECT, "traits")
    _check_shape(msg.context, reasons.BAD_REQUEST, "context")


def _check_shape(value: Any, code: str, name: str) -> None:
    if value is not UNSET and memoryview(value)[0] not in (_LBRACE, _N):
        raise Dropped(code, f"{name} must be an object")


def _as_id(value: Any, name: str) -> Any:
    kind = type(value)
    if value is UNSET or value is None or kind is str:
        return value
    if kind is int or kind is float:
        return str(value)
    raise Dropped(reasons.ID_NOT_STRING, f"{name} must be a string")
