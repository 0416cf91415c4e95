"""Decoding Segment messages with msgspec, keeping everything we do not route on as bytes.

Only the fields that are validated or stamped are decoded; `properties`, `traits`, `context` and
friends stay `msgspec.Raw` (the original bytes) and are written back out untouched.

Two shapes of the same message: `Message` declares the types Segment requires, so msgspec checks
them in C and the common case needs no per-field checks in Python; unknown fields are forbidden
there. A message that fails that strict decode is decoded again as `LenientMessage` (every field
`Any`, unknown fields carried separately) and checked field by field (`validate.coerce`).
"""

from __future__ import annotations

import json
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
    default = UNSET if f.name == f.encode_name else msgspec.field(default=UNSET, name=f.encode_name)
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


class AnyObject(msgspec.Struct, gc=False):
    """Any JSON object: msgspec checks the shape and skips the content."""


OptionalObject = AnyObject | None | UnsetType


class Check(msgspec.Struct, gc=False):
    """The fields Segment's rules look at, typed so that msgspec checks them in C.

    Decoding a message as `Check` is the gateway's fast path: it skips everything else, and a
    message that decodes is well-typed; only presence rules remain (`validate.check`).
    """

    type: MessageType | UnsetType = UNSET
    event: OptionalStr = UNSET
    name: OptionalStr = UNSET
    category: OptionalStr = UNSET
    groupId: OptionalStr = UNSET
    previousId: OptionalStr = UNSET
    userId: OptionalStr = UNSET
    anonymousId: OptionalStr = UNSET
    messageId: MessageId = UNSET
    writeKey: OptionalStr = UNSET
    properties: OptionalObject = UNSET
    traits: OptionalObject = UNSET
    context: OptionalObject = UNSET


class CheckedBatch(msgspec.Struct, gc=False):
    """A batch body decoded for checking only."""

    batch: list[Check] = []


class Envelope(msgspec.Struct, gc=False):
    """A batch body: its messages stay raw bytes until each is decoded on its own."""

    batch: list[Raw] | UnsetType | None = UNSET
    sentAt: Any = None
    writeKey: Any = None
    context: Raw | UnsetType = UNSET
    integrations: Raw | UnsetType = UNSET


class Item(msgspec.Struct, gc=False):
    """One decoded message: a strict `Message`, or a `LenientMessage` whose unknown fields are
    kept as an encoded JSON object in `extras`, or None with the `problem` that stopped it."""

    message: Any
    extras: bytes | None = None
    problem: str | None = None
    lenient: bool = False


_envelope_decoder = msgspec.json.Decoder(Envelope)
_checked_batch_decoder = msgspec.json.Decoder(CheckedBatch)
_check_decoder = msgspec.json.Decoder(Check)
_message_decoder = msgspec.json.Decoder(Message)
_lenient_decoder = msgspec.json.Decoder(LenientMessage)
_fields_decoder = msgspec.json.Decoder(dict[str, Raw])
_raw_list_decoder = msgspec.json.Decoder(list[Raw])
_message_list_decoder = msgspec.json.Decoder(list[Message])
_encoder = msgspec.json.Encoder()


class BodyError(Exception):
    """The body cannot be read as a Tracking API request at all (HTTP 400)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


TOO_DEEP = "the body is nested too deeply"


def repair_surrogates(body: bytes) -> bytes | None:
    """The body with lone UTF-16 surrogate escapes replaced by U+FFFD, or None if that is not
    what is wrong with it.

    `"\\ud83d"` alone is valid JSON but not valid Unicode; it is what JavaScript's
    `JSON.stringify` emits for a string cut inside an emoji. Rather than lose a whole batch for
    one such string, the body is parsed leniently and re-encoded with the replacement character.
    """
    if b"\\ud" not in body and b"\\uD" not in body:
        return None
    try:
        value = json.loads(body)
        return _encoder.encode(_scrub(value))
    except (ValueError, RecursionError, TypeError, OverflowError):
        return None


def _scrub(value: Any) -> Any:
    if isinstance(value, str):
        return value.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    if isinstance(value, dict):
        return {_scrub(k): _scrub(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v) for v in value]
    return value


def decode_envelope(body: bytes) -> tuple[Envelope, bytes]:
    """Decode a batch body, its messages left as raw bytes; returns the envelope and the body
    they point into (repaired if it had lone surrogates, see `repair_surrogates`)."""
    try:
        return _decode_envelope(body), body
    except BodyError as exc:
        repaired = repair_surrogates(body) if exc.code == "invalid_json" else None
        if repaired is None:
            raise
    return _decode_envelope(repaired), repaired


def _decode_envelope(body: bytes) -> Envelope:
    try:
        envelope = _envelope_decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise BodyError("bad_request", f"the body is not a batch: {exc}") from None
    except msgspec.DecodeError as exc:
        raise BodyError("invalid_json", f"the body is not valid JSON: {exc}") from None
    except RecursionError:
        raise BodyError("bad_request", TOO_DEEP) from None
    if envelope.batch is UNSET or envelope.batch is None:
        raise BodyError("empty_batch", "the body has no `batch` array")
    return envelope


def decode_checks(body: bytes) -> list[Check] | None:
    """Every message of a (valid JSON) batch body decoded as `Check`, or None if any message
    is not well-typed (then each must be looked at on its own, see `decode_for_check`)."""
    try:
        return _checked_batch_decoder.decode(body).batch
    except (msgspec.ValidationError, RecursionError):
        return None


def decode_for_check(raw: Raw | bytes) -> tuple[Any, bool]:
    """One message for checking: (`Check`, False) when well-typed, else (`LenientMessage`,
    True) to go through `validate.coerce`, or (None, True) when it is not an object.

    Raises `msgspec.DecodeError` when `raw` is not JSON at all (or nested too deeply).
    """
    try:
        return _check_decoder.decode(raw), False
    except msgspec.ValidationError:
        pass
    except RecursionError:
        raise msgspec.DecodeError(TOO_DEEP) from None
    try:
        return _lenient_decoder.decode(raw), True
    except msgspec.ValidationError:
        return None, True
    except RecursionError:
        raise msgspec.DecodeError(TOO_DEEP) from None


def decode_single(body: bytes) -> tuple[Any, bool, bytes]:
    """The body of a single-message path for checking, as `decode_for_check`, plus the body
    the message was read from (repaired if it had lone surrogates, see `repair_surrogates`).

    Raises `msgspec.DecodeError` when the body is not JSON.
    """
    try:
        message, lenient = decode_for_check(body)
    except msgspec.DecodeError:
        repaired = repair_surrogates(body)
        if repaired is None:
            raise
        message, lenient = decode_for_check(repaired)
        return message, lenient, repaired
    return message, lenient, body


def decode_message(raw: Raw | bytes) -> Item:
    """Decode one message: strictly when it can be, else leniently with its unknown fields."""
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


def decode_object(raw: Raw | bytes) -> dict[str, Raw] | None:
    """The top-level fields of a JSON object, or None if it is not an object."""
    try:
        return _fields_decoder.decode(raw)
    except msgspec.ValidationError:
        return None


def decode_messages(data: bytes | memoryview) -> list[Message] | None:
    """Every message of a JSON array in one strict decode, or None if any of them needs the
    lenient path (then decode them one by one with `decode_message`)."""
    try:
        return _message_list_decoder.decode(data)
    except msgspec.ValidationError:
        return None


def split_array(data: bytes | memoryview) -> list[Raw]:
    """The elements of a JSON array, each as raw bytes."""
    return _raw_list_decoder.decode(data)


def encode_message(message: Any, extras: bytes | None) -> bytes:
    """The stored JSON of a message: its known fields, then the unknown ones it came with."""
    out = _encoder.encode(message)
    if extras is None:
        return out
    if len(out) == 2:  # "{}"
        return extras
    return out[:-1] + b"," + extras[1:]
