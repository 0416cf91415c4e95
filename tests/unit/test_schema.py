"""Decoding request bodies and messages (`headwater.events.schema`)."""

from __future__ import annotations

import json

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from msgspec import UNSET, Raw

from headwater.events.schema import (
    KNOWN_FIELDS,
    BodyError,
    Check,
    LenientMessage,
    Message,
    decode_checks,
    decode_envelope,
    decode_for_check,
    decode_message,
    decode_object,
    encode_message,
    split_array,
)

TRACK = {"type": "track", "userId": "u", "event": "E"}


# -- decode_envelope -----------------------------------------------------------------------------


def test_envelope_keeps_each_message_as_its_own_bytes() -> None:
    body = b'{"batch":[{"type":"track","n":1.10},{"a":[1,2]}],"sentAt":"2024-01-01T00:00:00Z"}'
    env, _ = decode_envelope(body)
    assert [bytes(r) for r in env.batch] == [b'{"type":"track","n":1.10}', b'{"a":[1,2]}']
    assert env.sentAt == "2024-01-01T00:00:00Z"
    assert env.writeKey is None
    assert env.context is UNSET
    assert env.integrations is UNSET


def test_envelope_batch_level_fields() -> None:
    body = b'{"batch":[],"writeKey":"wk","context":{"ip":"1.1.1.1"},"integrations":{"All":true}}'
    env, _ = decode_envelope(body)
    assert env.batch == []
    assert env.writeKey == "wk"
    assert bytes(env.context) == b'{"ip":"1.1.1.1"}'
    assert bytes(env.integrations) == b'{"All":true}'


@pytest.mark.parametrize(
    ("body", "code"),
    [
        (b"", "invalid_json"),
        (b"{", "invalid_json"),
        (b"not json", "invalid_json"),
        (b'{"batch":[]} trailing', "invalid_json"),
        (b"\xff\xfe", "invalid_json"),
        (b"[]", "bad_request"),
        (b"5", "bad_request"),
        (b"null", "bad_request"),
        (b'{"batch":{}}', "bad_request"),
        (b'{"batch":"x"}', "bad_request"),
        (b"{}", "empty_batch"),
        (b'{"batch":null}', "empty_batch"),
        (b'{"writeKey":"k"}', "empty_batch"),
    ],
)
def test_bodies_that_are_not_batches(body: bytes, code: str) -> None:
    with pytest.raises(BodyError) as info:
        decode_envelope(body)
    assert info.value.code == code
    assert str(info.value)


@given(st.binary(max_size=200))
def test_random_bytes_raise_only_body_error(body: bytes) -> None:
    try:
        decode_envelope(body)
    except BodyError as exc:
        assert exc.code in {"invalid_json", "bad_request", "empty_batch"}


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=15,
)


@given(st.dictionaries(st.sampled_from(["batch", "sentAt", "context", "writeKey", "x"]), _json))
def test_random_json_objects_raise_only_body_error(body: dict[str, object]) -> None:
    try:
        env, _ = decode_envelope(json.dumps(body).encode())
    except BodyError as exc:
        assert exc.code in {"bad_request", "empty_batch"}
    else:
        assert isinstance(body["batch"], list)
        assert len(env.batch) == len(body["batch"])


def _deep(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def test_deeply_nested_json_is_a_body_error() -> None:
    with pytest.raises(BodyError):
        decode_envelope(b'{"batch":[{"properties":' + _deep(2000) + b"}]}")


def test_deeply_nested_single_message_is_a_decode_error() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_for_check(b'{"type":"track","properties":' + _deep(2000) + b"}")


def test_moderately_nested_json_is_fine() -> None:
    env, _ = decode_envelope(b'{"batch":[{"properties":{"a":' + _deep(100) + b"}}]}")
    assert len(env.batch) == 1


# -- decode_checks / decode_for_check ------------------------------------------------------------


def test_decode_checks_reads_the_checked_fields() -> None:
    body = json.dumps({"batch": [{**TRACK, "messageId": "m", "writeKey": "k", "x": 1}]})
    (msg,) = decode_checks(body.encode()) or []
    assert isinstance(msg, Check)
    assert (msg.type, msg.userId, msg.event, msg.messageId, msg.writeKey) == (
        "track",
        "u",
        "E",
        "m",
        "k",
    )
    assert msg.anonymousId is UNSET


def test_decode_for_check_strict_lenient_and_not_an_object() -> None:
    msg, lenient = decode_for_check(json.dumps(TRACK).encode())
    assert (type(msg), lenient) == (Check, False)
    msg, lenient = decode_for_check(json.dumps({**TRACK, "userId": 1}).encode())
    assert (type(msg), lenient) == (LenientMessage, True)
    assert msg.userId == 1
    assert decode_for_check(b"[1]") == (None, True)
    with pytest.raises(msgspec.DecodeError):
        decode_for_check(b"{nope")


# -- decode_message / encode_message -------------------------------------------------------------


def test_a_well_typed_message_decodes_strictly() -> None:
    item = decode_message(b'{"type":"track","userId":"u","event":"E","properties":{"a":1}}')
    assert isinstance(item.message, Message)
    assert not item.lenient
    assert item.extras is None
    assert item.problem is None
    assert bytes(item.message.properties) == b'{"a":1}'


def test_unknown_fields_make_a_lenient_message_with_extras() -> None:
    raw = b'{"type":"track","userId":"u","event":"E","custom":{"x":1.10},"metadata":2}'
    item = decode_message(raw)
    assert item.lenient
    assert isinstance(item.message, LenientMessage)
    assert json.loads(item.extras or b"") == {"custom": {"x": 1.1}, "metadata": 2}
    assert b'"custom":{"x":1.10}' in (item.extras or b"")


def test_metadata_is_a_known_field_under_its_wire_name() -> None:
    assert "_metadata" in KNOWN_FIELDS
    assert "metadata" not in KNOWN_FIELDS
    item = decode_message(b'{"type":"identify","userId":"u","_metadata":{"a":1}}')
    assert not item.lenient
    assert bytes(item.message.metadata) == b'{"a":1}'
    assert b'"_metadata":{"a":1}' in encode_message(item.message, item.extras)


@pytest.mark.parametrize("raw", [b"[]", b"1", b'"s"', b"null"])
def test_a_non_object_is_not_a_message(raw: bytes) -> None:
    item = decode_message(raw)
    assert item.message is None
    assert item.problem == "a message must be a JSON object"


def test_encode_message_round_trips_known_and_unknown_fields() -> None:
    original = {
        **TRACK,
        "properties": {"p": [1, {"q": None}]},
        "context": {"ip": "1.1.1.1"},
        "timestamp": "2024-01-01T00:00:00Z",
        "custom": "x",
        "nested": {"a": {"b": 1}},
    }
    item = decode_message(json.dumps(original).encode())
    assert json.loads(encode_message(item.message, item.extras)) == original


def test_encode_message_with_only_unknown_fields() -> None:
    assert encode_message(LenientMessage(), b'{"a":1}') == b'{"a":1}'
    assert encode_message(Message(type="track"), None) == b'{"type":"track"}'
    assert json.loads(encode_message(Message(type="track"), b'{"a":1,"b":2}')) == {
        "type": "track",
        "a": 1,
        "b": 2,
    }


_keys = st.text(min_size=1, max_size=8).filter(lambda k: k not in KNOWN_FIELDS)


@given(
    st.dictionaries(_keys, _json, max_size=5),
    st.sampled_from(["track", "identify", "page"]),
    st.text(max_size=10),
)
def test_decode_then_encode_keeps_every_field(
    extra: dict[str, object], mtype: str, user_id: str
) -> None:
    original = {"type": mtype, "userId": user_id, **extra}
    item = decode_message(json.dumps(original).encode())
    assert json.loads(encode_message(item.message, item.extras)) == original


# -- decode_object / split_array -----------------------------------------------------------------


def test_decode_object() -> None:
    fields = decode_object(b'{"a":1.10,"b":{"c":[1]}}')
    assert fields is not None
    assert {k: bytes(v) for k, v in fields.items()} == {"a": b"1.10", "b": b'{"c":[1]}'}
    assert decode_object(Raw(b"{}")) == {}
    for raw in (b"[]", b"null", b"1", b'"x"'):
        assert decode_object(raw) is None


def test_split_array() -> None:
    data = b'[{"a":1}, {"b":[2,3]} ,4]'
    assert [bytes(r) for r in split_array(data)] == [b'{"a":1}', b'{"b":[2,3]}', b"4"]
    assert [bytes(r) for r in split_array(memoryview(data))] == [
        b'{"a":1}',
        b'{"b":[2,3]}',
        b"4",
    ]
    assert split_array(b"[]") == []
