"""Segment's message rules: a bad message is dropped with its reason code (listed in the
answer) and the others of the request are stored; lenient cases are stored as Segment does."""

from __future__ import annotations

import random
from typing import Any

import pytest

from tests.http._helpers import (
    AUTH,
    assert_not_stored,
    dropped,
    message,
    new_id,
    stored,
    stored_one,
)
from tests.support.server import HeadwaterServer


def without(msg: dict[str, Any], *keys: str) -> dict[str, Any]:
    return {k: v for k, v in msg.items() if k not in keys}


# (case id, message builder from a messageId, reason code)
DROPS = [
    ("no-user", lambda m: without(message("track", m), "userId"), "no_user_anon_id"),
    (
        "null-and-empty-ids",
        lambda m: message("track", m, userId=None, anonymousId=""),
        "no_user_anon_id",
    ),
    ("empty-user", lambda m: message("identify", m, userId=""), "no_user_anon_id"),
    ("track-no-event", lambda m: without(message("track", m), "event"), "event_not_defined"),
    ("track-empty-event", lambda m: message("track", m, event=""), "event_not_defined"),
    ("track-null-event", lambda m: message("track", m, event=None), "event_not_defined"),
    ("event-number", lambda m: message("track", m, event=5), "event_not_string"),
    ("event-object", lambda m: message("track", m, event={"a": 1}), "event_not_string"),
    (
        "track-properties-string",
        lambda m: message("track", m, properties="x"),
        "properties_not_object",
    ),
    (
        "page-properties-array",
        lambda m: message("page", m, properties=[1]),
        "properties_not_object",
    ),
    (
        "screen-properties-number",
        lambda m: message("screen", m, properties=5),
        "properties_not_object",
    ),
    ("identify-traits-array", lambda m: message("identify", m, traits=[1]), "traits_not_object"),
    ("group-traits-string", lambda m: message("group", m, traits="x"), "traits_not_object"),
    ("page-name-number", lambda m: message("page", m, name=5), "name_not_string"),
    ("page-category-array", lambda m: message("page", m, category=["x"]), "category_not_string"),
    ("group-no-group-id", lambda m: without(message("group", m), "groupId"), "id_required"),
    ("group-empty-group-id", lambda m: message("group", m, groupId=""), "id_required"),
    ("alias-no-previous-id", lambda m: without(message("alias", m), "previousId"), "id_required"),
    ("user-id-object", lambda m: message("track", m, userId={"a": 1}), "id_not_string"),
    ("anonymous-id-array", lambda m: message("track", m, anonymousId=[1]), "id_not_string"),
    ("user-id-bool", lambda m: message("track", m, userId=True), "id_not_string"),
    ("group-id-object", lambda m: message("group", m, groupId={}), "id_not_string"),
    ("unknown-type", lambda m: message("track", m, type="purchase"), "bad_request"),
    ("capitalised-type", lambda m: message("track", m, type="Track"), "bad_request"),
    ("no-type", lambda m: without(message("track", m), "type"), "bad_request"),
    ("message-id-float", lambda m: message("track", m, messageId=1.5), "bad_request"),
    ("message-id-object", lambda m: message("track", m, messageId={"id": m}), "bad_request"),
    ("context-string", lambda m: message("track", m, context="x"), "bad_request"),
    ("context-array", lambda m: message("identify", m, context=[1]), "bad_request"),
    ("not-an-object-string", lambda m: m, "bad_request"),
    ("not-an-object-array", lambda m: [message("track", m)], "bad_request"),
    ("not-an-object-null", lambda m: None, "bad_request"),
]


@pytest.mark.parametrize(("builder", "code"), [d[1:] for d in DROPS], ids=[d[0] for d in DROPS])
def test_a_bad_message_is_dropped_with_its_reason_and_the_rest_stored(
    server: HeadwaterServer, builder: Any, code: str
) -> None:
    first, bad, last = new_id(), new_id(), new_id()
    batch = [message("track", first), builder(bad), message("page", last)]
    with server.client() as http:
        r = http.post("/v1/batch", json={"batch": batch}, headers=AUTH)
    assert dropped(r) == {1: code}
    found = stored(server, first, bad, last)
    assert len(found[first]) == 1
    assert len(found[last]) == 1
    assert found[bad] == []


def test_every_bad_message_of_a_batch_is_listed(server: HeadwaterServer) -> None:
    ids = [new_id() for _ in range(len(DROPS))]
    good = new_id()
    batch = [builder(mid) for (_, builder, _), mid in zip(DROPS, ids, strict=True)]
    batch.insert(3, message("identify", good))
    with server.client() as http:
        r = http.post("/v1/batch", json={"batch": batch}, headers=AUTH)
    expected = {i if i < 3 else i + 1: code for i, (_, _, code) in enumerate(DROPS)}
    assert dropped(r) == expected
    stored_one(server, good)
    assert_not_stored(server, *ids)


@pytest.mark.parametrize(
    ("path", "body", "code"),
    [
        ("/v1/track", {"userId": "u-1"}, "event_not_defined"),
        ("/v1/t", {"event": "Clicked"}, "no_user_anon_id"),
        ("/v1/group", {"userId": "u-1"}, "id_required"),
        ("/v1/alias", {"userId": "u-1"}, "id_required"),
        ("/v1/identify", {"userId": "u-1", "traits": "x"}, "traits_not_object"),
    ],
)
def test_a_bad_single_message_is_reported_and_not_stored(
    server: HeadwaterServer, path: str, body: dict[str, Any], code: str
) -> None:
    mid = new_id()
    with server.client() as http:
        r = http.post(path, json={**body, "messageId": mid}, headers=AUTH)
    assert dropped(r) == {0: code}
    assert_not_stored(server, mid)


def test_anonymous_id_alone_is_enough(server: HeadwaterServer) -> None:
    mid = new_id()
    msg = without(message("track", mid), "userId")
    msg["anonymousId"] = "anon-1"
    with server.client() as http:
        assert dropped(http.post("/v1/batch", json={"batch": [msg]}, headers=AUTH)) == {}
    assert stored_one(server, mid)["anonymousId"] == "anon-1"


def test_numeric_ids_are_stored_as_strings(server: HeadwaterServer) -> None:
    mid = new_id()
    msg = message("group", mid, userId=123, anonymousId=1.5, groupId=77)
    with server.client() as http:
        assert dropped(http.post("/v1/batch", json={"batch": [msg]}, headers=AUTH)) == {}
    stored_msg = stored_one(server, mid)
    assert stored_msg["userId"] == "123"
    assert stored_msg["anonymousId"] == "1.5"
    assert stored_msg["groupId"] == "77"


def test_an_integer_message_id_is_stored_as_a_string(server: HeadwaterServer) -> None:
    number = random.randrange(10**12, 10**15)
    with server.client() as http:
        r = http.post("/v1/track", json=message("track", "x", messageId=number), headers=AUTH)
    assert dropped(r) == {}
    assert stored_one(server, str(number))["event"] == "Order Completed"


@pytest.mark.parametrize(
    ("mtype", "extra"),
    [
        ("track", {"properties": None}),
        ("identify", {"traits": None}),
        ("identify", {"properties": "not checked for identify"}),
        ("track", {"traits": "not checked for track"}),
        ("page", {"name": None, "category": None}),
        ("track", {"anonymousId": None}),  # RudderStack sends null ids
    ],
)
def test_lenient_shapes_are_stored(
    server: HeadwaterServer, mtype: str, extra: dict[str, Any]
) -> None:
    mid = new_id()
    with server.client() as http:
        r = http.post("/v1/batch", json={"batch": [message(mtype, mid, **extra)]}, headers=AUTH)
    assert dropped(r) == {}
    msg = stored_one(server, mid)
    for key, value in extra.items():
        assert msg[key] == value
