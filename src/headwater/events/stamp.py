"""The fields the server adds to every message, from what it knew when the request arrived.

A `Stamp` is what one request's messages share: the server clock, the client's IP, the batch's
`sentAt`, `context` and `integrations`, and the type a single-message path implies. The gateway
stores it next to the messages exactly as the client sent them; `Stamper.apply` turns a message
plus its stamp into the stored message: `receivedAt`, `originalTimestamp`, `timestamp` corrected
for clock skew (`receivedAt - (sentAt - timestamp)`), `sentAt`, `context.ip` (never over the
client's), the batch-level `context` / `integrations` (the message's own keys win), `version`.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec
from msgspec import UNSET, Raw

from headwater.events import reasons
from headwater.events.schema import decode_object
from headwater.events.validate import Dropped

API_VERSION = 2

_encoder = msgspec.json.Encoder()
_N = 0x6E


class Stamp(msgspec.Struct, array_like=True, frozen=True, gc=False):
    """What the server knew about one request."""

    received_at: datetime
    sent_at: Any = None
    ip: str | None = None
    context: bytes | None = None
    integrations: bytes | None = None
    path_type: str | None = None


_stamp_encoder = msgspec.msgpack.Encoder()
_stamp_decoder = msgspec.msgpack.Decoder(Stamp)


def encode_stamp(stamp: Stamp) -> bytes:
    return _stamp_encoder.encode(stamp)


def decode_stamp(data: bytes) -> Stamp:
    return _stamp_decoder.decode(data)


def parse_timestamp(value: Any) -> datetime | None:
    """An ISO 8601 timestamp as an aware datetime (naive means UTC), or None if unusable."""
    if type(value) is not str or not value:
        return None
    try:
        dt = datetime.fromisoformat(value)
    except ValueError:
        return None
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


class Stamper:
    """Applies one request's stamp to its messages (request-level parsing done once)."""

    __slots__ = (
        "_context",
        "_corrected",
        "_integrations",
        "_ip_comma",
        "_ip_prefix",
        "_received",
        "_received_raw",
        "_sent_at",
        "_skew",
        "path_type",
    )

    def __init__(self, stamp: Stamp) -> None:
        self._received = stamp.received_at
        self._received_raw = Raw(_encoder.encode(stamp.received_at))
        self._sent_at = stamp.sent_at
        sent = parse_timestamp(stamp.sent_at)
        self._skew = None if sent is None else stamp.received_at - sent
        self._ip_prefix = None if stamp.ip is None else b'{"ip":' + _encoder.encode(stamp.ip)
        self._ip_comma = b"" if self._ip_prefix is None else self._ip_prefix + b","
        self._context = decode_object(stamp.context) if stamp.context is not None else None
        self._integrations = (
            decode_object(stamp.integrations) if stamp.integrations is not None else None
        )
        self._corrected: dict[str, Any] = {}
        self.path_type = stamp.path_type

    def apply(self, msg: Any) -> None:
        """Add the server's fields to a validated message, in place."""
        if self.path_type is not None:
            msg.type = self.path_type
        msg.writeKey = UNSET
        received_raw = self._received_raw
        msg.receivedAt = received_raw
        client_ts = msg.timestamp
        if client_ts is UNSET or client_ts is None:
            client_ts = msg.originalTimestamp
        own_sent = msg.sentAt
        if own_sent is UNSET or own_sent is None:
            if self._sent_at is not None:
                msg.sentAt = self._sent_at
            if client_ts is UNSET or client_ts is None:
                msg.timestamp = received_raw
            else:
                msg.originalTimestamp = client_ts
                corrected = self._corrected.get(client_ts) if type(client_ts) is str else None
                msg.timestamp = corrected if corrected is not None else self._correct(client_ts)
        elif client_ts is UNSET or client_ts is None:
            msg.timestamp = received_raw
        else:
            msg.originalTimestamp = client_ts
            msg.timestamp = self._skewed(client_ts, own_sent)
        if self._context is not None:
            msg.context = _merge(msg.context, self._context)
        ip_prefix = self._ip_prefix
        if ip_prefix is not None:
            context = msg.context
            if context is UNSET:
                msg.context = Raw(ip_prefix + b"}")
            else:
                raw = bytes(context)
                if raw.startswith(b'{"') and raw.find(b'"ip"') < 0 and raw.find(b"\\u") < 0:
                    # certainly no ip key (not even spelled with escapes): splice one in
                    msg.context = Raw(self._ip_comma + raw[1:])
                else:
                    _add_ip_slowly(msg, raw, ip_prefix)
        if self._integrations is not None:
            msg.integrations = _merge(msg.integrations, self._integrations)
        msg.version = API_VERSION

    def _correct(self, client_ts: Any) -> Any:
        ts = parse_timestamp(client_ts)
        if ts is None:
            result: Any = self._received_raw
        elif self._skew is None:
            result = client_ts
        else:
            try:
                corrected = ts + self._skew
                if corrected.tzinfo is not UTC:
                    corrected = corrected.astimezone(UTC)
                result = Raw(_encoder.encode(corrected))
            except OverflowError:  # the correction leaves the calendar: the clock is nonsense
                result = self._received_raw
        if type(client_ts) is str:
            self._corrected[client_ts] = result
        return result

    def _skewed(self, client_ts: Any, sent_at: Any) -> Any:
        ts = parse_timestamp(client_ts)
        if ts is None:
            return self._received_raw
        sent = parse_timestamp(sent_at)
        if sent is None:
            return client_ts
        try:
            return self._received - (sent - ts)
        except OverflowError:  # the correction leaves the calendar: the clock is nonsense
            return self._received_raw


def _add_ip_slowly(msg: Any, raw: bytes, ip_prefix: bytes) -> None:
    if raw[:1] == b"n":
        msg.context = Raw(ip_prefix + b"}")
        return
    fields = decode_object(Raw(raw))
    if fields is None:  # validation rejects this before a message is stored
        raise Dropped(reasons.BAD_REQUEST, "context must be an object")
    ip = fields.get("ip")
    if ip is None or bytes(ip) == b"null":  # absent or null: the client sent no address
        fields["ip"] = Raw(ip_prefix[6:])
        msg.context = Raw(_encoder.encode(fields))


def _merge(own: Any, shared: dict[str, Raw]) -> Raw:
    """The message's object with the batch's keys added where the message has none."""
    if own is UNSET or memoryview(own)[0] == _N:
        return Raw(_encoder.encode(shared))
    fields = decode_object(own)
    if fields is None:  # not an object: the batch's keys replace it
        return Raw(_encoder.encode(shared))
    merged = dict(shared)
    merged.update(fields)
    return Raw(_encoder.encode(merged))
