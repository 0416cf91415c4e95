"""Write-key authentication, every way clients send it, and what a missing or wrong key gets."""

from __future__ import annotations

import base64
from typing import Any

import pytest

from tests.http._helpers import (
    AUTH,
    assert_error,
    assert_not_stored,
    assert_ok,
    dropped,
    new_id,
    stored,
    stored_one,
    track,
)
from tests.support.server import OTHER_KEY, WRITE_KEY, HeadwaterServer, basic


def b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def source_of(server: HeadwaterServer, key: str) -> str:
    """The source id messages sent with `key` are stored under."""
    mid = new_id("source-of")
    with server.client() as http:
        assert_ok(http.post("/v1/track", json=track(mid), headers={"Authorization": basic(key)}))
    return str(stored_one(server, mid)["__source_id"])


@pytest.mark.parametrize(
    "header",
    [
        basic(WRITE_KEY),  # base64("key:"), as every library sends it
        "Basic " + b64(WRITE_KEY),  # no colon
        "basic " + b64(f"{WRITE_KEY}:"),  # scheme in lower case
        "Basic " + b64(f":{WRITE_KEY}"),  # the key as the password
    ],
    ids=["key-colon", "no-colon", "lowercase-scheme", "password"],
)
def test_basic_auth_header_forms_are_accepted(server: HeadwaterServer, header: str) -> None:
    mid = new_id()
    with server.client() as http:
        assert_ok(http.post("/v1/track", json=track(mid), headers={"Authorization": header}))
    assert stored_one(server, mid)["event"] == "Order Completed"


def test_write_key_in_a_single_message_body(server: HeadwaterServer) -> None:
    mid = new_id()
    with server.client() as http:
        assert_ok(http.post("/v1/track", json=track(mid, writeKey=WRITE_KEY)))
    msg = stored_one(server, mid)
    assert "writeKey" not in msg  # the key never reaches the stored message


def test_write_key_at_batch_level(server: HeadwaterServer) -> None:
    ids = [new_id(), new_id()]
    with server.client() as http:
        r = http.post("/v1/batch", json={"batch": [track(m) for m in ids], "writeKey": WRITE_KEY})
    assert_ok(r)
    assert all(len(v) == 1 for v in stored(server, *ids).values())


def test_write_key_inside_the_batch_messages(server: HeadwaterServer) -> None:
    ids = [new_id(), new_id()]
    batch = [track(ids[0]), track(ids[1], writeKey=WRITE_KEY)]
    with server.client() as http:
        assert_ok(http.post("/v1/batch", json={"batch": batch}))
    assert all(len(v) == 1 for v in stored(server, *ids).values())


@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
def test_bearer_token_with_the_key_in_the_body(server: HeadwaterServer, path: str) -> None:
    mid = new_id()
    body: dict[str, Any] = track(mid, writeKey=WRITE_KEY)
    if path == "/v1/batch":
        body = {"batch": [track(mid)], "writeKey": WRITE_KEY}
    with server.client() as http:
        r = http.post(path, json=body, headers={"Authorization": "Bearer some-app-token"})
    assert_ok(r)
    stored_one(server, mid)


def test_each_key_stores_under_its_own_source(server: HeadwaterServer) -> None:
    assert source_of(server, WRITE_KEY) != source_of(server, OTHER_KEY)


AUTH_FAILURES = {
    "no-key": ({}, {}),
    "unknown-basic": ({"Authorization": basic("wk_does_not_exist")}, {}),
    "unknown-body": ({}, {"writeKey": "wk_does_not_exist"}),
    "empty-basic": ({"Authorization": "Basic " + b64(":")}, {}),
    "bearer-without-body-key": ({"Authorization": "Bearer some-app-token"}, {}),
    "non-string-body-key": ({}, {"writeKey": 12345}),
}


@pytest.mark.parametrize("case", sorted(AUTH_FAILURES))
@pytest.mark.parametrize("path", ["/v1/track", "/v1/t", "/v1/batch", "/v1/import"])
def test_missing_or_unknown_key_is_401_and_nothing_is_stored(
    server: HeadwaterServer, path: str, case: str
) -> None:
    headers, extra = AUTH_FAILURES[case]
    mid = new_id()
    body: dict[str, Any] = {**track(mid), **extra}
    if path in ("/v1/batch", "/v1/import"):
        body = {"batch": [track(mid)], **extra}
    with server.client() as http:
        r = http.post(path, json=body, headers=headers)
    assert_error(r, 401, "unknown_source")
    assert_not_stored(server, mid)


def test_unknown_key_in_the_header_is_not_rescued_by_a_body_key(server: HeadwaterServer) -> None:
    """The header is the request's key: a wrong one fails the request, whatever the body says."""
    mid = new_id()
    with server.client() as http:
        r = http.post(
            "/v1/batch",
            json={"batch": [track(mid)], "writeKey": WRITE_KEY},
            headers={"Authorization": basic("wk_does_not_exist")},
        )
    assert_error(r, 401, "unknown_source")
    assert_not_stored(server, mid)


def test_a_message_with_another_write_key_is_dropped_the_rest_stored(
    server: HeadwaterServer,
) -> None:
    ok, other = new_id(), new_id()
    batch = [track(ok), track(other, writeKey=OTHER_KEY)]
    with server.client() as http:
        r = http.post("/v1/batch", json={"batch": batch}, headers=AUTH)
    assert dropped(r) == {1: "multi_user_error"}
    assert stored_one(server, ok)["event"] == "Order Completed"
    assert_not_stored(server, other)


def test_messages_follow_the_first_message_key_when_the_batch_has_none(
    server: HeadwaterServer,
) -> None:
    first, second = new_id(), new_id()
    batch = [track(first, writeKey=WRITE_KEY), track(second, writeKey=OTHER_KEY)]
    with server.client() as http:
        r = http.post("/v1/batch", json={"batch": batch})
    assert dropped(r) == {1: "multi_user_error"}
    stored_one(server, first)
    assert_not_stored(server, second)
