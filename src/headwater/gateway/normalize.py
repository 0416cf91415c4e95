"""Validation and stamping of one message: pure functions, no I/O.

`normalize` checks a decoded message against Segment's rules (returning a reason code when it
must be dropped) and adds what the server adds: `receivedAt`, `originalTimestamp`, a `timestamp`
corrected for the client's clock skew, `sentAt`, a `messageId` when missing, `context.ip`,
`version`, and the batch-level `context` / `integrations` (the message's own keys win).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import msgspec
from msgspec import UNSET, Raw

from headwater.gateway import reasons
from headwater.gateway.messages import MESSAGE_TYPES, Message, decode_object

API_VERSION = 2
MAX_MESSAGE_ID_LENGTH = 100

_encoder = msgspec.json.Encoder()


@dataclass(slots=True)
class RequestStamp:
    """What every message of one request shares."""

    received_at: datetime
    sent_at: Any = None
    sent_at_parsed: datetime | None = None
    ip: str | None = None
    context: dict[str, Raw] | None = None
    integrations: dict[str, Raw] | None = None
    path_type: str | None = None
    write_key: str | None = None

    @classmethod
    def build(
        cls,
        received_at: datetime,
        *,
        sent_at: Any = None,
        ip: str | None = None,
        context: Raw | None = None,
        integrations: Raw | None = None,
        path_type: str | None = None,
        write_key: str | None = None,
    ) -> RequestStamp:
        """Parse the request-level fields once for all messages."""
        return cls(
            received_at,
            sent_at,
            parse_timestamp(sent_at),
            ip,
            decode_object(context) if context is not None else None,
            decode_object(integrations) if integrations is not None else None,
            path_type,
            write_key,
        )


class Dropped(Exception):
    """A message that cannot be stored: `code` is its reason, `detail` says why."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO 8601 timestamp as an aware datetime (naive means UTC), or None if unusable."""
    if type(value) is not str or not value:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def normalize(msg: Message, stamp: RequestStamp) -> str:
    """Validate and stamp `msg` in place; returns its messageId or raises `Dropped`."""
    mtype = msg.type
    if stamp.path_type is not None:
        mtype = msg.type = stamp.path_type
    elif mtype not in MESSAGE_TYPES:
        raise Dropped(reasons.BAD_REQUEST, f"type must be one of {sorted(MESSAGE_TYPES)}")

    if msg.writeKey is not UNSET:
        if (
            stamp.write_key is not None
            and msg.writeKey is not None
            and msg.writeKey != stamp.write_key
        ):
            raise Dropped(reasons.MULTI_USER_ERROR, "the message's writeKey is not the request's")
        msg.writeKey = UNSET

    user_id = _id(msg.userId, "userId")
    if user_id is not None and type(msg.userId) is not str:
        msg.userId = user_id
    anonymous_id = _id(msg.anonymousId, "anonymousId")
    if anonymous_id is not None and type(msg.anonymousId) is not str:
        msg.anonymousId = anonymous_id
    if user_id is None and anonymous_id is None:
        raise Dropped(reasons.NO_USER_ANON_ID, "userId or anonymousId is required")

    if mtype == "track":
        event = msg.event
        if event is UNSET or event is None or event == "":
            raise Dropped(reasons.EVENT_NOT_DEFINED, "track needs an event name")
        if type(event) is not str:
            raise Dropped(reasons.EVENT_NOT_STRING, "event must be a string")
        _check_object(msg.properties, reasons.PROPERTIES_NOT_OBJECT, "properties")
    elif mtype == "identify":
        _check_object(msg.traits, reasons.TRAITS_NOT_OBJECT, "traits")
    elif mtype == "page" or mtype == "screen":
        _check_object(msg.properties, reasons.PROPERTIES_NOT_OBJECT, "properties")
        _check_string(msg.name, reasons.NAME_NOT_STRING, "name")
        _check_string(msg.category, reasons.CATEGORY_NOT_STRING, "category")
    elif mtype == "group":
        msg.groupId = _required_id(msg.groupId, "groupId")
        _check_object(msg.traits, reasons.TRAITS_NOT_OBJECT, "traits")
    else:  # alias
        msg.previousId = _required_id(msg.previousId, "previousId")

    message_id = msg.messageId
    if message_id is UNSET or message_id is None or message_id == "":
        message_id = msg.messageId = f"hw-{uuid.uuid4()}"
    elif type(message_id) is not str:
        if type(message_id) is not int:
            raise Dropped(reasons.BAD_REQUEST, "messageId must be a string")
        message_id = msg.messageId = str(message_id)
    if len(message_id) > MAX_MESSAGE_ID_LENGTH:
        raise Dropped(reasons.BAD_REQUEST, "messageId is longer than 100 characters")

    _stamp_times(msg, stamp)
    _stamp_context(msg, stamp)
    if stamp.integrations:
        msg.integrations = _merge(msg.integrations, stamp.integrations, "integrations")
    msg.version = API_VERSION
    return message_id


def _id(value: Any, field: str) -> str | None:
    if value is UNSET or value is None or value == "":
        return None
    kind = type(value)
    if kind is str:
        return value  # type: ignore[no-any-return]
    if kind is int or kind is float:
        return str(value)
    raise Dropped(reasons.ID_NOT_STRING, f"{field} must be a string")


def _required_id(value: Any, field: str) -> str:
    result = _id(value, field)
    if result is None:
        raise Dropped(reasons.ID_REQUIRED, f"{field} is required")
    return result


def _check_object(value: Raw | Any, code: str, field: str) -> None:
    if value is UNSET:
        return
    first = memoryview(value)[0]
    if first != 0x7B and first != 0x6E:  # '{' or 'n' (null)
        raise Dropped(code, f"{field} must be an object")


def _check_string(value: Any, code: str, field: str) -> None:
    if value is not UNSET and value is not None and type(value) is not str:
        raise Dropped(code, f"{field} must be a string")


def _stamp_times(msg: Message, stamp: RequestStamp) -> None:
    received_at = stamp.received_at
    client_ts = msg.timestamp
    if client_ts is UNSET or client_ts is None:
        client_ts = msg.originalTimestamp
        if client_ts is None:
            client_ts = UNSET
    sent_at = msg.sentAt
    if sent_at is UNSET or sent_at is None:
        sent_at = stamp.sent_at
        sent_parsed = stamp.sent_at_parsed
        msg.sentAt = UNSET if sent_at is None else sent_at
    else:
        sent_parsed = parse_timestamp(sent_at)
    msg.receivedAt = received_at
    if client_ts is UNSET:
        msg.timestamp = received_at
        return
    msg.originalTimestamp = client_ts
    ts = parse_timestamp(client_ts)
    if ts is None:
        msg.timestamp = received_at
    elif sent_parsed is not None:
        msg.timestamp = received_at - (sent_parsed - ts)
    else:
        msg.timestamp = client_ts


def _stamp_context(msg: Message, stamp: RequestStamp) -> None:
    context = msg.context
    ip = stamp.ip
    if stamp.context:
        context = msg.context = _merge(context, stamp.context, "context")
    if ip is None:
        if context is not UNSET:
            _check_context(context)
        return
    if context is UNSET or memoryview(context)[0] == 0x6E:  # absent or null
        msg.context = Raw(b'{"ip":' + _encoder.encode(ip) + b"}")
        return
    raw = bytes(context)
    if raw[:1] != b"{":
        raise Dropped(reasons.BAD_REQUEST, "context must be an object")
    if b'"ip"' not in raw:  # certainly no ip key: splice it in without decoding
        body = raw[1:].lstrip()
        sep = b"" if body[:1] == b"}" else b","
        msg.context = Raw(b'{"ip":' + _encoder.encode(ip) + sep + body)
        return
    fields = decode_object(context)
    if fields is None:  # pragma: no cover - checked above
        raise Dropped(reasons.BAD_REQUEST, "context must be an object")
    if "ip" not in fields:
        fields["ip"] = Raw(_encoder.encode(ip))
        msg.context = Raw(_encoder.encode(fields))


def _check_context(context: Raw) -> None:
    first = memoryview(context)[0]
    if first != 0x7B and first != 0x6E:
        raise Dropped(reasons.BAD_REQUEST, "context must be an object")


def _merge(own: Raw | Any, shared: dict[str, Raw], field: str) -> Raw:
    """The message's object with the batch's keys added where the message has none."""
    if own is UNSET or memoryview(own)[0] == 0x6E:
        return Raw(_encoder.encode(shared))
    fields = decode_object(own)
    if fields is None:
        raise Dropped(reasons.BAD_REQUEST, f"{field} must be an object")
    merged = dict(shared)
    merged.update(fields)
    return Raw(_encoder.encode(merged))
