"""Segment's rules for a message: which messages the gateway accepts, and the reason codes of
those it drops (`headwater.events.validate`, fed by the decoders of `headwater.events.schema`)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st
from msgspec import UNSET

from headwater.events import reasons
from headwater.events.schema import Check, decode_checks, decode_for_check
from headwater.events.validate import Dropped, check, coerce
from tests.unit._helpers import verdict

TRACK = {"type": "track", "userId": "u1", "event": "Signed Up"}
IDENTIFY = {"type": "identify", "userId": "u1"}


def test_minimal_messages_of_every_type_are_accepted() -> None:
    assert verdict(TRACK) == "ok"
    assert verdict(IDENTIFY) == "ok"
    assert verdict({"type": "page", "anonymousId": "a1"}) == "ok"
    assert verdict({"type": "screen", "anonymousId": "a1", "name": "Home"}) == "ok"
    assert verdict({"type": "group", "userId": "u1", "groupId": "g1"}) == "ok"
    assert verdict({"type": "alias", "userId": "u1", "previousId": "p1"}) == "ok"


# -- userId / anonymousId ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "ids",
    [
        {},
        {"userId": None},
        {"userId": ""},
        {"anonymousId": None},
        {"anonymousId": ""},
        {"userId": "", "anonymousId": None},
        {"userId": None, "anonymousId": ""},
    ],
)
def test_a_message_without_any_user_id_is_dropped(ids: dict[str, object]) -> None:
    message = {"type": "identify", **ids}
    assert verdict(message) == reasons.NO_USER_ANON_ID


@pytest.mark.parametrize(
    "ids", [{"userId": "u"}, {"anonymousId": "a"}, {"userId": "", "anonymousId": "a"}]
)
def test_either_id_is_enough(ids: dict[str, object]) -> None:
    assert verdict({"type": "identify", **ids}) == "ok"


@pytest.mark.parametrize("field", ["userId", "anonymousId"])
@pytest.mark.parametrize("value", [42, 0, -7, 1.5])
def test_numeric_user_ids_are_accepted(field: str, value: float) -> None:
    assert verdict({"type": "identify", field: value}) == "ok"


@pytest.mark.parametrize("field", ["userId", "anonymousId", "groupId", "previousId"])
@pytest.mark.parametrize("value", [True, False, [], ["u"], {}, {"id": "u"}])
def test_ids_that_are_neither_strings_nor_numbers_are_dropped(field: str, value: object) -> None:
    message = {"type": "group", "userId": "u", "groupId": "g", "previousId": "p", field: value}
    assert verdict(message) == reasons.ID_NOT_STRING


def test_coerce_turns_numeric_ids_into_strings() -> None:
    raw = json.dumps(
        {"type": "alias", "userId": 42, "anonymousId": 1.5, "previousId": 7, "groupId": 0}
    ).encode()
    msg, lenient = decode_for_check(raw)
    assert lenient
    coerce(msg, None)
    assert (msg.userId, msg.anonymousId, msg.previousId, msg.groupId) == ("42", "1.5", "7", "0")


# -- per-type rules ------------------------------------------------------------------------------


@pytest.mark.parametrize("event", [None, ""])
def test_track_without_an_event_name_is_dropped(event: object) -> None:
    assert verdict({**TRACK, "event": event}) == reasons.EVENT_NOT_DEFINED
    message = dict(TRACK)
    del message["event"]
    assert verdict(message) == reasons.EVENT_NOT_DEFINED


@pytest.mark.parametrize("event", [5, 1.5, True, ["x"], {"name": "x"}])
def test_track_with_a_non_string_event_is_dropped(event: object) -> None:
    assert verdict({**TRACK, "event": event}) == reasons.EVENT_NOT_STRING


@pytest.mark.parametrize("mtype", ["track", "page", "screen"])
@pytest.mark.parametrize("value", ["x", 5, [1, 2], True])
def test_properties_must_be_an_object(mtype: str, value: object) -> None:
    message = {"type": mtype, "userId": "u", "event": "E", "properties": value}
    assert verdict(message) == reasons.PROPERTIES_NOT_OBJECT


@pytest.mark.parametrize("mtype", ["identify", "group"])
@pytest.mark.parametrize("value", ["x", 5, [1, 2], False])
def test_traits_must_be_an_object(mtype: str, value: object) -> None:
    message = {"type": mtype, "userId": "u", "groupId": "g", "traits": value}
    assert verdict(message) == reasons.TRAITS_NOT_OBJECT


@pytest.mark.parametrize("mtype", ["track", "identify", "page"])
def test_null_or_object_properties_and_traits_are_fine(mtype: str) -> None:
    for value in (None, {}, {"a": {"b": [1]}}):
        message = {"type": mtype, "userId": "u", "event": "E", "properties": value}
        assert verdict({**message, "traits": value}) == "ok"


@pytest.mark.parametrize("mtype", ["page", "screen"])
def test_page_and_screen_name_and_category_must_be_strings(mtype: str) -> None:
    base = {"type": mtype, "userId": "u"}
    assert verdict({**base, "name": "Home", "category": "Docs"}) == "ok"
    assert verdict({**base, "name": None, "category": None}) == "ok"
    assert verdict({**base, "name": 5}) == reasons.NAME_NOT_STRING
    assert verdict({**base, "name": ["Home"]}) == reasons.NAME_NOT_STRING
    assert verdict({**base, "category": 5}) == reasons.CATEGORY_NOT_STRING
    assert verdict({**base, "category": {"a": 1}}) == reasons.CATEGORY_NOT_STRING


@pytest.mark.parametrize("group_id", [None, ""])
def test_group_needs_a_group_id(group_id: object) -> None:
    assert verdict({"type": "group", "userId": "u"}) == reasons.ID_REQUIRED
    assert verdict({"type": "group", "userId": "u", "groupId": group_id}) == reasons.ID_REQUIRED


@pytest.mark.parametrize("previous_id", [None, ""])
def test_alias_needs_a_previous_id(previous_id: object) -> None:
    assert verdict({"type": "alias", "userId": "u"}) == reasons.ID_REQUIRED
    message = {"type": "alias", "userId": "u", "previousId": previous_id}
    assert verdict(message) == reasons.ID_REQUIRED


def test_numeric_group_and_previous_ids_are_accepted() -> None:
    assert verdict({"type": "group", "userId": "u", "groupId": 12}) == "ok"
    assert verdict({"type": "alias", "userId": "u", "previousId": 3.0}) == "ok"


# -- type, messageId, writeKey, context ----------------------------------------------------------


@pytest.mark.parametrize("mtype", [None, "", "Track", "event", 5])
def test_an_unknown_or_missing_type_is_a_bad_request(mtype: object) -> None:
    message: dict[str, object] = {"userId": "u", "event": "E"}
    if mtype is not None:
        message["type"] = mtype
    assert verdict(message) == reasons.BAD_REQUEST


@pytest.mark.parametrize("mtype", [[], ["track"], {}, {"a": 1}])
def test_a_list_or_object_type_is_a_bad_request(mtype: object) -> None:
    assert verdict({"type": mtype, "userId": "u", "event": "E"}) == reasons.BAD_REQUEST


def test_a_single_message_path_decides_the_type() -> None:
    no_type = {"userId": "u", "event": "E"}
    assert verdict(no_type, path_type="track") == "ok"
    assert verdict({**no_type, "type": "nonsense"}, path_type="track") == "ok"
    # the path's rules apply, whatever type the message claims
    assert verdict({"type": "identify", "userId": "u"}, path_type="track") == (
        reasons.EVENT_NOT_DEFINED
    )
    assert verdict({"userId": "u"}, path_type="group") == reasons.ID_REQUIRED


def test_message_id_of_up_to_100_characters() -> None:
    assert verdict({**TRACK, "messageId": "m" * 100}) == "ok"
    assert verdict({**TRACK, "messageId": "é" * 100}) == "ok"  # characters, not bytes
    assert verdict({**TRACK, "messageId": "m" * 101}) == reasons.BAD_REQUEST
    # the lenient path (an unknown field forces it) applies the same limit
    assert verdict({**TRACK, "x": 1, "messageId": "m" * 100}) == "ok"
    assert verdict({**TRACK, "userId": 5, "messageId": "m" * 101}) == reasons.BAD_REQUEST


def test_numeric_message_id_becomes_a_string_and_others_are_bad() -> None:
    msg, lenient = decode_for_check(json.dumps({**TRACK, "messageId": 123}).encode())
    assert lenient
    coerce(msg, None)
    assert check(msg, None, None) == "123"
    assert verdict({**TRACK, "messageId": 1.5}) == reasons.BAD_REQUEST
    assert verdict({**TRACK, "messageId": True}) == reasons.BAD_REQUEST
    assert verdict({**TRACK, "messageId": ["m"]}) == reasons.BAD_REQUEST


def test_check_returns_the_message_id_or_something_falsy() -> None:
    msg, _ = decode_for_check(json.dumps({**TRACK, "messageId": "m-1"}).encode())
    assert check(msg, None, None) == "m-1"
    msg, _ = decode_for_check(json.dumps(TRACK).encode())
    assert not check(msg, None, None)


def test_a_message_with_another_write_key_than_the_request_is_dropped() -> None:
    assert verdict({**TRACK, "writeKey": "other"}, write_key="mine") == reasons.MULTI_USER_ERROR
    assert verdict({**TRACK, "writeKey": "mine"}, write_key="mine") == "ok"
    assert verdict(TRACK, write_key="mine") == "ok"
    assert verdict({**TRACK, "writeKey": ""}, write_key="mine") == "ok"
    # readers of the log pass no request key: the message's own key is not compared
    assert verdict({**TRACK, "writeKey": "other"}) == "ok"


def test_a_non_string_write_key_is_ignored() -> None:
    assert verdict({**TRACK, "writeKey": 5}, write_key="mine") == "ok"


def test_multi_user_error_is_reported_before_missing_ids() -> None:
    message = {"type": "identify", "writeKey": "other"}
    assert verdict(message, write_key="mine") == reasons.MULTI_USER_ERROR


@pytest.mark.parametrize("context", ["x", 5, [1], True])
def test_context_must_be_an_object(context: object) -> None:
    assert verdict({**TRACK, "context": context}) == reasons.BAD_REQUEST


def test_unknown_fields_do_not_affect_validation() -> None:
    message = {**TRACK, "custom": {"deep": [1, 2]}, "another": None}
    assert verdict(message) == "ok"
    assert verdict({"type": "identify", "custom": 1}) == reasons.NO_USER_ANON_ID


def test_a_non_object_message_is_not_a_message() -> None:
    for raw in (b"[]", b"5", b'"track"', b"null"):
        assert decode_for_check(raw) == (None, True)
        assert verdict(raw) == reasons.BAD_REQUEST


def test_dropped_carries_code_and_detail() -> None:
    with pytest.raises(Dropped) as info:
        check(Check(type="track", userId="u"), None, None)
    assert info.value.code == reasons.EVENT_NOT_DEFINED
    assert info.value.detail == str(info.value)
    assert info.value.detail


def test_every_reason_code_has_a_description() -> None:
    codes = [v for k, v in vars(reasons).items() if k.isupper() and isinstance(v, str)]
    assert codes
    assert set(codes) == set(reasons.DESCRIPTIONS)


# -- the batch fast path agrees with the per-message path ----------------------------------------


def test_batch_fast_path_gives_the_same_verdicts() -> None:
    batch = [
        TRACK,
        {"type": "track", "userId": "u"},
        {"type": "identify"},
        {"type": "group", "userId": "u", "groupId": ""},
        {"type": "alias", "anonymousId": "a", "previousId": "p", "messageId": "m"},
    ]
    checks = decode_checks(json.dumps({"batch": batch}).encode())
    assert checks is not None
    fast = []
    for msg in checks:
        try:
            check(msg, None, None)
            fast.append("ok")
        except Dropped as exc:
            fast.append(exc.code)
    assert fast == [verdict(m) for m in batch]
    assert fast == ["ok", "event_not_defined", "no_user_anon_id", "id_required", "ok"]


def test_batch_fast_path_gives_up_on_any_ill_typed_message() -> None:
    body = json.dumps({"batch": [TRACK, {**TRACK, "userId": 5}]}).encode()
    assert decode_checks(body) is None
    assert decode_checks(json.dumps({"batch": [TRACK, 5]}).encode()) is None
    assert decode_checks(b'{"batch":[]}') == []


_json_scalars = st.one_of(
    st.none(), st.booleans(), st.integers(-(10**6), 10**6), st.text(max_size=8)
)
_json_values = st.one_of(
    _json_scalars,
    st.lists(_json_scalars, max_size=3),
    st.dictionaries(st.text(max_size=4), _json_scalars, max_size=3),
)
_fields = st.sampled_from(
    [
        "type",
        "event",
        "name",
        "category",
        "userId",
        "anonymousId",
        "groupId",
        "previousId",
        "properties",
        "traits",
        "context",
        "messageId",
        "writeKey",
        "custom",
    ]
)
_types = st.sampled_from(["identify", "track", "page", "screen", "group", "alias"])


@given(
    st.dictionaries(_fields, _json_values, max_size=8),
    _types,
    st.none() | _types,
)
def test_validation_only_ever_drops_with_a_known_reason(
    message: dict[str, object], mtype: str, path_type: str | None
) -> None:
    message.setdefault("type", mtype)
    result = verdict(message, path_type=path_type)
    assert result == "ok" or result in reasons.DESCRIPTIONS


def test_coerce_leaves_well_typed_fields_alone() -> None:
    msg, lenient = decode_for_check(json.dumps({**TRACK, "extra": 1}).encode())
    assert not lenient  # unknown fields alone do not need the lenient path
    raw = json.dumps({**TRACK, "userId": 1, "writeKey": ["k"]}).encode()
    msg, lenient = decode_for_check(raw)
    assert lenient
    coerce(msg, None)
    assert msg.event == "Signed Up"
    assert msg.writeKey is UNSET
