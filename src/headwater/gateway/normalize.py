"""Validation and stamping of one message: pure functions, no I/O.

`normalize` checks a decoded message against Segment's rules (raising `Dropped` with a reason
code when it cannot be stored) and adds what the server adds: `receivedAt`, `originalTimestamp`,
a `timestamp` corrected for the client's clock skew, `sentAt`, a `messageId` when missing,
`context.ip`, `version`, and the batch-level `context` / `integrations` (the message's own keys
win). Messages that did not decode strictly go through `coerce` first, which checks the types
that msgspec checked for the others.

This runs once per event on the hot path, so it favours flat code over small helpers.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from msgspec import UNSET, Raw

from headwater.gateway import reasons
from headwater.gateway.messages import MAX_MESSAGE_ID_LENGTH, MESSAGE_TYPES, decode_object

API_VERSION = 2

_encoder = msgspec.json.Encoder()
_LBRACE = 0x7B
_N = 0x6E  # first byte of null


class Dropped(Exception):
    """A message that cannot be stored: `code` is its reason, `detail` says why."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(detail)
        self.code = code
        self.detail = detail


@dataclass(slots=True)
class RequestStamp:
    """What every message of one request shares, parsed once."""

    received_at: datetime
    received_raw: Raw
    sent_at: Any = None
    skew: timedelta | None = None
    ip_prefix: bytes | None = None
    context: dict[str, Raw] | None = None
    integrations: dict[str, Raw] | None = None
    path_type: str | None = None
    write_key: str | None = None
    corrected: dict[str, Any] = field(default_factory=dict)

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
        sent = parse_timestamp(sent_at)
        return cls(
            received_at,
            Raw(_encoder.encode(received_at)),
            sent_at,
            None if sent is None else received_at - sent,
            None if ip is None else b'{"ip":' + _encoder.encode(ip),
            decode_object(context) if context is not None else None,
            decode_object(integrations) if integrations is not None else None,
            path_type,
            write_key,
        )


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO 8601 timestamp as an aware datetime (naive means UTC), or None if unusable."""
    if type(value) is not str or not value:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def normalize(msg: Any, stamp: RequestStamp) -> str:
    """Validate and stamp a message in place; returns its messageId or raises `Dropped`.

    `msg` is a `Message` (types already checked by msgspec) or a `LenientMessage` that has been
    through `coerce`.
    """
    mtype = stamp.path_type
    if mtype is None:
        mtype = msg.type
        if mtype is UNSET:
            raise Dropped(reasons.BAD_REQUEST, "type is required")
    else:
        msg.type = mtype
    write_key = msg.writeKey
    if write_key is not UNSET:
        if write_key and stamp.write_key is not None and write_key != stamp.write_key:
            raise Dropped(reasons.MULTI_USER_ERROR, "the message's writeKey is not the request's")
        msg.writeKey = UNSET
    if not msg.userId and not msg.anonymousId:
        raise Dropped(reasons.NO_USER_ANON_ID, "userId or anonymousId is required")

    if mtype == "track":
        if not msg.event:
            raise Dropped(reasons.EVENT_NOT_DEFINED, "track needs an event name")
        value = msg.properties
        if value is not UNSET and memoryview(value)[0] not in (_LBRACE, _N):
            raise Dropped(reasons.PROPERTIES_NOT_OBJECT, "properties must be an object")
    elif mtype == "identify" or mtype == "group":
        value = msg.traits
        if value is not UNSET and memoryview(value)[0] not in (_LBRACE, _N):
            raise Dropped(reasons.TRAITS_NOT_OBJECT, "traits must be an object")
        if mtype == "group" and not msg.groupId:
            raise Dropped(reasons.ID_REQUIRED, "groupId is required")
    elif mtype == "alias":
        if not msg.previousId:
            raise Dropped(reasons.ID_REQUIRED, "previousId is required")
    else:  # page, screen
        value = msg.properties
        if value is not UNSET and memoryview(value)[0] not in (_LBRACE, _N):
            raise Dropped(reasons.PROPERTIES_NOT_OBJECT, "properties must be an object")

    message_id = msg.messageId
    if not message_id:
        message_id = msg.messageId = f"hw-{uuid.uuid4()}"

    # Times: receivedAt, originalTimestamp, sentAt, and timestamp corrected for skew.
    msg.receivedAt = stamp.received_raw
    client_ts = msg.timestamp
    if client_ts is UNSET or client_ts is None:
        client_ts = msg.originalTimestamp
    own_sent = msg.sentAt
    if own_sent is UNSET or own_sent is None:
        if stamp.sent_at is not None:
            msg.sentAt = stamp.sent_at
        if client_ts is UNSET or client_ts is None:
            msg.timestamp = stamp.received_raw
        else:
            msg.originalTimestamp = client_ts
            corrected = stamp.corrected.get(client_ts) if type(client_ts) is str else None
            if corrected is None:
                corrected = _corrected(client_ts, stamp)
            msg.timestamp = corrected
    elif client_ts is UNSET or client_ts is None:
        msg.timestamp = stamp.received_raw
    else:
        msg.originalTimestamp = client_ts
        msg.timestamp = _skewed(client_ts, own_sent, stamp.received_at)

    # context: batch-level keys, then the client's ip unless the message has one.
    if stamp.context is not None:
        msg.context = _merge(msg.context, stamp.context, "context")
    ip_prefix = stamp.ip_prefix
    context = msg.context
    if context is UNSET:
        if ip_prefix is not None:
            msg.context = Raw(ip_prefix + b"}")
    else:
        raw = bytes(context)
        if raw[:2] == b'{"' and b'"ip"' not in raw:  # no ip key: splice one in
            if ip_prefix is not None:
                msg.context = Raw(ip_prefix + b"," + raw[1:])
        else:
            _context_slowly(msg, raw, ip_prefix)

    if stamp.integrations is not None:
        msg.integrations = _merge(msg.integrations, stamp.integrations, "integrations")
    msg.version = API_VERSION
    return message_id  # type: ignore[no-any-return]


def coerce(msg: Any, path_type: str | None) -> None:
    """Check the types of a leniently decoded message, as msgspec does for strict ones.

    Numbers used as ids become strings (as RudderStack does) instead of dropping the message.
    """
    if path_type is None and msg.type not in MESSAGE_TYPES:
        raise Dropped(reasons.BAD_REQUEST, f"type must be one of {sorted(MESSAGE_TYPES)}")
    msg.userId = _as_id(msg.userId, "userId")
    msg.anonymousId = _as_id(msg.anonymousId, "anonymousId")
    msg.groupId = _as_id(msg.groupId, "groupId")
    msg.previousId = _as_id(msg.previousId, "previousId")
    for name, code in (("event", reasons.EVENT_NOT_STRING), ("name", reasons.NAME_NOT_STRING),
                       ("category", reasons.CATEGORY_NOT_STRING)):
        value = getattr(msg, name)
        if value is not UNSET and value is not None and type(value) is not str:
            raise Dropped(code, f"{name} must be a string")
    message_id = msg.messageId
    if type(message_id) is int:
        message_id = msg.messageId = str(message_id)
    elif message_id is not UNSET and message_id is not None and type(message_id) is not str:
        raise Dropped(reasons.BAD_REQUEST, "messageId must be a string")
    if type(message_id) is str and len(message_id) > MAX_MESSAGE_ID_LENGTH:
        raise Dropped(reasons.BAD_REQUEST,
                      f"messageId is longer than {MAX_MESSAGE_ID_LENGTH} characters")


def _as_id(value: Any, name: str) -> Any:
    kind = type(value)
    if value is UNSET or value is None or kind is str:
        return value
    if kind is int or kind is float:
        return str(value)
    raise Dropped(reasons.ID_NOT_STRING, f"{name} must be a string")


def _corrected(client_ts: Any, stamp: RequestStamp) -> Any:
    """The stored timestamp for a client timestamp under the request's `sentAt`."""
    ts = parse_timestamp(client_ts)
    if ts is None:
        result: Any = stamp.received_raw
    elif stamp.skew is None:
        result = client_ts
    else:
        result = Raw(_encoder.encode(ts + stamp.skew))
    if type(client_ts) is str:
        stamp.corrected[client_ts] = result
    return result


def _skewed(client_ts: Any, sent_at: Any, received_at: datetime) -> Any:
    ts = parse_timestamp(client_ts)
    if ts is None:
        return received_at
    sent = parse_timestamp(sent_at)
    return client_ts if sent is None else received_at - (sent - ts)


def _context_slowly(msg: Any, raw: bytes, ip_prefix: bytes | None) -> None:
    if raw[:1] == b"n":
        if ip_prefix is not None:
            msg.context = Raw(ip_prefix + b"}")
        return
    fields = decode_object(Raw(raw))
    if fields is None:
        raise Dropped(reasons.BAD_REQUEST, "context must be an object")
    if ip_prefix is not None and "ip" not in fields:
        fields["ip"] = Raw(ip_prefix[6:])
        msg.context = Raw(_encoder.encode(fields))


def _merge(own: Any, shared: dict[str, Raw], name: str) -> Raw:
    """The message's object with the batch's keys added where the message has none."""
    if own is UNSET or memoryview(own)[0] == _N:
        return Raw(_encoder.encode(shared))
    fields = decode_object(own)
    if fields is None:
        raise Dropped(reasons.BAD_REQUEST, f"{name} must be an object")
    merged = dict(shared)
    merged.update(fields)
    return Raw(_encoder.encode(merged))
