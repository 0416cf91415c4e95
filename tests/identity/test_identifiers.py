"""Identifiers of realistic Segment messages (`headwater.identity.identifiers`)."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from headwater.identity.identifiers import (
    Ident,
    IdentityFields,
    decode_identity,
    group_of,
    identifiers,
    traits_of,
)


def fields_of(message: Any) -> IdentityFields:
    fields = decode_identity(json.dumps(message).encode())
    assert fields is not None
    return fields


def idents(message: Any) -> list[Ident]:
    return identifiers(fields_of(message))


IDENTIFY = {
    "type": "identify",
    "messageId": "ajs-next-1714564800000-3c1c2d0e",
    "userId": "97980cfea0067",
    "anonymousId": "507f191e810c19729de860ea",
    "traits": {"name": "Peter Gibbons", "email": "peter@example.com", "plan": "premium"},
    "context": {
        "ip": "8.8.8.8",
        "library": {"name": "analytics.js", "version": "2.11.1"},
        "traits": {"email": "peter@example.com"},
    },
    "timestamp": "2024-05-01T12:00:00.000Z",
    "sentAt": "2024-05-01T12:00:00.100Z",
}


def test_identify_from_analytics_js() -> None:
    assert idents(IDENTIFY) == [
        Ident("user_id", "97980cfea0067"),
        Ident("anonymous_id", "507f191e810c19729de860ea"),
        Ident("email", "peter@example.com"),  # in traits and context.traits: once
    ]


def test_user_id_as_a_number_is_written_as_json_writes_it() -> None:
    assert idents({"type": "track", "event": "x", "userId": 42}) == [Ident("user_id", "42")]
    assert idents({"userId": 4.5, "anonymousId": -7}) == [
        Ident("user_id", "4.5"),
        Ident("anonymous_id", "-7"),
    ]


def test_emails_of_traits_and_context_traits() -> None:
    both = {"traits": {"email": "a@x.io"}, "context": {"traits": {"email": "b@x.io"}}}
    assert idents(both) == [Ident("email", "a@x.io"), Ident("email", "b@x.io")]
    only_context = {"type": "track", "context": {"traits": {"email": "b@x.io"}}}
    assert idents(only_context) == [Ident("email", "b@x.io")]


@pytest.mark.parametrize(
    ("platform", "kinds"),
    [
        ("ios", ("ios.id", "ios.idfa", "ios.push_token")),
        ("iOS", ("ios.id", "ios.idfa", "ios.push_token")),
        ("android", ("android.id", "android.idfa", "android.push_token")),
        ("Android", ("android.id", "android.idfa", "android.push_token")),
        ("tvos", ("device_id", "advertising_id", "push_token")),
        (None, ("device_id", "advertising_id", "push_token")),
    ],
)
def test_device_identifiers_by_platform(platform: str | None, kinds: tuple[str, ...]) -> None:
    device = {"id": "B5372DB0", "advertisingId": "7A3CBEA0", "token": "ff15bc0c", "model": "x"}
    if platform is not None:
        device["type"] = platform
    message = {"type": "screen", "anonymousId": "a1", "context": {"device": device}}
    assert idents(message) == [
        Ident("anonymous_id", "a1"),
        Ident(kinds[0], "B5372DB0"),
        Ident(kinds[1], "7A3CBEA0"),
        Ident(kinds[2], "ff15bc0c"),
    ]


def test_device_without_ids_gives_nothing() -> None:
    assert idents({"context": {"device": {"type": "ios", "manufacturer": "Apple"}}}) == []


def test_external_ids_of_users_only() -> None:
    message = {
        "type": "identify",
        "userId": "u1",
        "context": {
            "externalIds": [
                {"id": "cus_123", "type": "Stripe_Customer_ID", "collection": "users"},
                {"id": "acc_9", "type": "salesforce_account", "collection": "accounts"},
                {"id": "z-77", "type": "zendesk_id"},  # collection: users by default
                {"id": "n-1", "type": "null_collection", "collection": None},
                {"id": "no-type"},
                {"type": "no_id"},
                {"id": "  ", "type": "blank_id"},
            ]
        },
    }
    assert idents(message) == [
        Ident("user_id", "u1"),
        Ident("stripe_customer_id", "cus_123"),
        Ident("zendesk_id", "z-77"),
        Ident("null_collection", "n-1"),
    ]


def test_an_identifier_twice_is_listed_once() -> None:
    message = {
        "traits": {"email": "a@x.io"},
        "context": {"externalIds": [{"id": "a@x.io", "type": " Email ", "collection": "users"}]},
    }
    assert idents(message) == [Ident("email", "a@x.io")]


def test_previous_id_is_left_to_the_caller() -> None:
    fields = fields_of({"type": "alias", "userId": "u1", "previousId": "a1"})
    assert identifiers(fields) == [Ident("user_id", "u1")]
    assert fields.previousId == "a1"


def test_group_calls_link_a_group_but_never_identify() -> None:
    group = fields_of({"type": "group", "userId": "u1", "groupId": "acme", "traits": {}})
    assert group_of(group) == "acme"
    assert identifiers(group) == [Ident("user_id", "u1")]
    assert group_of(fields_of({"type": "group", "userId": "u1", "groupId": 7})) == "7"
    assert group_of(fields_of({"type": "track", "userId": "u1", "groupId": "acme"})) is None
    assert group_of(fields_of({"type": "group", "userId": "u1", "groupId": " "})) is None
    assert group_of(fields_of({"type": "group", "userId": "u1"})) is None


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b'[{"userId": "u1"}]',
        b'"u1"',
        b"42",
        b"null",
        b"true",
        b"",
        b"not json",
        b'{"userId": "u1"',
        b"\xff\xfe",
        b'{"context": "web"}',
        b'{"context": {"externalIds": {"id": "x"}}}',
    ],
)
def test_not_a_json_object_of_the_expected_shape(raw: bytes) -> None:
    assert decode_identity(raw) is None


def test_traits_that_are_not_an_object_are_ignored_not_the_message() -> None:
    fields = decode_identity(b'{"userId": "u1", "traits": ["a@x.io"]}')
    assert fields is not None
    assert identifiers(fields) == [Ident("user_id", "u1")]
    assert traits_of(fields) == {}


def test_traits_of_identify_and_context() -> None:
    raw = (
        b'{"type": "identify", "userId": "u1", "traits": {"plan": "pro", "name": null},'
        b' "context": {"traits": {"plan": "free", "city": "Oslo"}}}'
    )
    fields = decode_identity(raw)
    assert fields is not None
    assert traits_of(fields) == {"plan": "pro", "name": None, "city": "Oslo"}
    track = decode_identity(
        b'{"type": "track", "traits": {"x": 1}, "context": {"traits": {"y": 2}}}'
    )
    assert track is not None and traits_of(track) == {"y": 2}


@pytest.mark.parametrize("blank", ["", " ", "\t", "\n  "])
def test_empty_and_whitespace_values_are_ignored(blank: str) -> None:
    message = {
        "userId": blank,
        "anonymousId": blank,
        "traits": {"email": blank},
        "context": {
            "device": {"id": blank, "advertisingId": blank, "token": blank},
            "externalIds": [{"id": blank, "type": "crm_id"}, {"id": "c1", "type": blank}],
        },
    }
    assert idents(message) == []


@pytest.mark.parametrize("flag", [True, False])
def test_booleans_and_other_shapes_are_ignored(flag: bool) -> None:
    message = {
        "userId": flag,
        "anonymousId": {"id": "a1"},
        "traits": {"email": flag},
        "context": {"device": {"id": flag, "token": ["t"]}, "externalIds": [{"id": flag}]},
    }
    assert idents(message) == []
    assert group_of(fields_of({"type": "group", "groupId": flag})) is None


def test_values_are_kept_as_sent() -> None:
    """No trimming or case folding: an identifier is exactly the value the client sent."""
    assert idents({"userId": " U1 ", "traits": {"email": "Peter@Example.com"}}) == [
        Ident("user_id", " U1 "),
        Ident("email", "Peter@Example.com"),
    ]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=64))
def test_decoding_never_raises(raw: bytes) -> None:
    fields = decode_identity(raw)
    if fields is not None:
        assert all(isinstance(i.value, str) and i.value.strip() for i in identifiers(fields))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=8,
)


@settings(max_examples=200, deadline=None)
@given(st.dictionaries(st.sampled_from(["userId", "anonymousId", "groupId", "x"]), json_values))
def test_any_value_of_a_top_level_id_is_usable_or_ignored(message: dict[str, Any]) -> None:
    found = idents(message)
    assert len(found) == len(set(found))
    assert all(i.kind in ("user_id", "anonymous_id") and i.value.strip() for i in found)
