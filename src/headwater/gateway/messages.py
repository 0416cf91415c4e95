"""Decoding Tracking API bodies with msgspec, keeping everything we do not route on as bytes.

Only the fields the gateway validates or stamps are decoded; `properties`, `traits`, `context`
and friends stay `msgspec.Raw` (the original bytes) and are written back out untouched.

Two shapes of the same message: `Message` declares the types Segment requires, so msgspec checks
them in C and the common case needs no per-field checks in Python; unknown fields are forbidden
there. A body that fails that strict decode is decoded again message by message: a message that
is fine decodes strictly, anything else decodes as `LenientMessage` (every field `Any`, unknown
fields carried separately) and is checked field by field, with Segment's reason codes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import UNSET, Meta, Raw, UnsetType

MESSAGE_TYPES = frozenset({"identify", "track", "page", "screen", "group", "alias"})
MAX_MESSAGE_ID_LENGTH = 100

MessageType = Literal["identify", "track", "page", "screen", "group", "alias"]
OptionalStr = str | None | UnsetType
MessageId = Annotated[str, Meta(max_length=MAX_MESSAGE_ID_LENGTH)] | None | UnsetType


class Message(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True, gc=False):
    """A Segment message; the field order here is the order fields are stored in."""

    type: MessageType | UnsetType = UNSET
    event: OptionalStr = UNSET
    name: OptionalStr = UNSET
    category: OptionalStr = UNSET
    groupId: OptionalStr = UNSET
    previousId: OptionalStr = UNSET
    userId: OptionalStr = UNSET
    anonymousId: OptionalStr = UNSET
    properties: Raw | UnsetType = UNSET
    traits: Raw | UnsetType = UNSET
    context: Raw | UnsetType = UNSET
    integrations: Raw | UnsetType = UNSET
    messageId: MessageId = UNSET
    timestamp: Any = UNSET
    originalTimestamp: Any = UNSET
    sentAt: Any = UNSET
    receivedAt: Any = UNSET
    version: Any = UNSET
    channel: Raw | UnsetType = UNSET
    writeKey: Any = UNSET
    metadata: Raw | UnsetType = msgspec.field(default=UNSET, name="_metadata")


def _lenient_field(f: msgspec.structs.FieldInfo) -> tuple[str, Any, Any]:
    keep_raw = f.type == Raw | UnsetType
    default = UNSET if f.name == f.encode_name else msgspec.field(default=UNSET,
                                                                  name=f.encode_name)
    return f.name, (Raw | UnsetType) if keep_raw else Any, default


LenientMessage = msgspec.defstruct(
    "LenientMessage",
    [_lenient_field(f) for f in msgspec.structs.fields(Message)],
    omit_defaults=True,
    gc=False,
    module=__name__,
)
"""The same fields with no type constraints (unknown fields are ignored, collected apart)."""

KNOWN_FIELDS = frozenset(f.encode_name for f in msgspec.structs.fields(Message))


class Batch(msgspec.Struct, gc=False):
    """A `/v1/batch` body on the fast path: every message decodes strictly."""

    batch: list[Message] | UnsetType = UNSET
    sentAt: Any = None
    writeKey: Any = None
    context: Raw | UnsetType = UNSET
    integrations: Raw | UnsetType = UNSET


class LooseBatch(msgspec.Struct, gc=False):
    """A `/v1/batch` body whose messages are decoded one by one."""

    batch: list[Raw] | None | UnsetType = UNSET
    sentAt: Any = None
    writeKey: Any = None
    context: Raw | UnsetType = UNSET
    integrations: Raw | UnsetType = UNSET


class Item(msgspec.Struct, gc=False):
    """One message of a request: a strictly decoded `Message`, or a `LenientMessage` with its
    unknown fields as an encoded JSON object, or None with the problem that stopped it."""

    message: Any
    extras: bytes | None = None
    problem: str | None = None
    lenient: bool = False


_batch_decoder = msgspec.json.Decoder(Batch)
_loose_batch_decoder = msgspec.json.Decoder(LooseBatch)
_message_decoder = msgspec.json.Decoder(Message)
_lenient_decoder = msgspec.json.Decoder(LenientMessage)
_fields_decoder = msgspec.json.Decoder(dict[str, Raw])
_encoder = msgspec.json.Encoder()


class BodyError(Exception):
    """The body cannot be read as a Tracking API request at all (HTTP 400)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def decode_batch(body: bytes) -> tuple[list[Item], Any, Any, Raw | None, Raw | None]:
    """Decode a batch body into (items, sentAt, writeKey, context, integrations)."""
    try:
        b = _batch_decoder.decode(body)
    except msgspec.ValidationError:
        return _decode_batch_slowly(body)
    except msgspec.DecodeError as exc:
        raise BodyError("invalid_json", f"the body is not valid JSON: {exc}") from None
    if b.batch is UNSET:
        raise BodyError("empty_batch", "the body has no `batch` array")
    items = [Item(m) for m in b.batch]
    return items, b.sentAt, b.writeKey, _raw(b.context), _raw(b.integrations)


def _decode_batch_slowly(body: bytes) -> tuple[list[Item], Any, Any, Raw | None, Raw | None]:
    try:
        b = _loose_batch_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise BodyError("bad_request", f"the body is not a batch: {exc}") from None
    except msgspec.DecodeError as exc:  # pragma: no cover - the fast path caught syntax errors
        raise BodyError("invalid_json", f"the body is not valid JSON: {exc}") from None
    if b.batch is UNSET or b.batch is None:
        raise BodyError("empty_batch", "the body has no `batch` array")
    items = [decode_item(raw) for raw in b.batch]
    return items, b.sentAt, b.writeKey, _raw(b.context), _raw(b.integrations)


def decode_single(body: bytes) -> Item:
    """Decode the body of a single-message path (`/v1/track`, `/v1/t`, ...)."""
    try:
        return Item(_message_decoder.decode(body))
    except msgspec.ValidationError:
        pass
    except msgspec.DecodeError as exc:
        raise BodyError("invalid_json", f"the body is not valid JSON: {exc}") from None
    item = decode_item(Raw(body))
    if item.message is None:
        raise BodyError("bad_request", item.problem or "the body is not a JSON object")
    return item


def decode_item(raw: Raw) -> Item:
    """Decode one message, keeping unknown fields; a non-object becomes a problem."""
    try:
        return Item(_message_decoder.decode(raw))
    except msgspec.ValidationError:
        pass
    try:
        fields = _fields_decoder.decode(raw)
        message = _lenient_decoder.decode(raw)
    except msgspec.ValidationError:
        return Item(None, None, "a message must be a JSON object")
    extras = {k: v for k, v in fields.items() if k not in KNOWN_FIELDS}
    return Item(message, _encoder.encode(extras) if extras else None, None, True)


def decode_object(raw: Raw) -> dict[str, Raw] | None:
    """The top-level fields of a JSON object held as Raw, or None if it is not an object."""
    try:
        return _fields_decoder.decode(raw)
    except msgspec.ValidationError:
        return None


def encode_message(message: Message, extras: bytes | None) -> bytes:
    """The stored JSON of a message: its known fields, then the unknown ones it came with."""
    out = _encoder.encode(message)
    if extras is None:
        return out
    if len(out) == 2:  # "{}"
        return extras
    return out[:-1] + b"," + extras[1:]


def _raw(value: Raw | UnsetType) -> Raw | None:
    return None if value is UNSET else value
