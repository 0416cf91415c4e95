"""Every Tracking API path clients use: single-message paths (long and short), batch paths,
browser metrics, and what other methods and paths get."""

from __future__ import annotations

import json

import pytest

from tests.http._helpers import (
    AUTH,
    MESSAGE_TYPES,
    assert_error,
    assert_ok,
    message,
    new_id,
    stored,
    stored_one,
)
from tests.support.server import HeadwaterServer

SINGLE_PATHS = [
    ("/v1/track", "track"),
    ("/v1/identify", "identify"),
    ("/v1/page", "page"),
    ("/v1/screen", "screen"),
    ("/v1/group", "group"),
    ("/v1/alias", "alias"),
    ("/v1/t", "track"),
    ("/v1/i", "identify"),
    ("/v1/p", "page"),
    ("/v1/s", "screen"),
    ("/v1/g", "group"),
    ("/v1/a", "alias"),
]


@pytest.mark.parametrize(("path", "mtype"), SINGLE_PATHS)
def test_single_message_path_stores_the_message_with_its_type(
    server: HeadwaterServer, path: str, mtype: str
) -> None:
    mid = new_id(mtype)
    body = message(mtype, mid)
    del body["type"]  # the path says what it is
    with server.client() as http:
        # analytics.js posts its short paths as text/plain
        r = http.post(
            path, content=json.dumps(body), headers={**AUTH, "Content-Type": "text/plain"}
        )
    assert_ok(r)
    msg = stored_one(server, mid)
    assert msg["type"] == mtype
    assert msg["userId"] == "u-1"
    for key, value in body.items():
        assert msg[key] == value


def test_the_path_type_wins_over_the_body_type(server: HeadwaterServer) -> None:
    mid = new_id()
    body = {"type": "identify", "userId": "u-1", "event": "Clicked", "messageId": mid}
    with server.client() as http:
        assert_ok(http.post("/v1/track", json=body, headers=AUTH))
    assert stored_one(server, mid)["type"] == "track"


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/b", "/v1/import"])
def test_batch_paths_store_every_message_of_every_type(server: HeadwaterServer, path: str) -> None:
    ids = {mtype: new_id(mtype) for mtype in MESSAGE_TYPES}
    body = {"batch": [message(mtype, mid) for mtype, mid in ids.items()]}
    with server.client() as http:
        assert_ok(http.post(path, json=body, headers=AUTH))
    found = stored(server, *ids.values())
    for mtype, mid in ids.items():
        assert len(found[mid]) == 1, mtype
        assert found[mid][0]["type"] == mtype


def test_browser_metrics_are_accepted(server: HeadwaterServer) -> None:
    # what analytics.js posts to /v1/m (text/plain)
    body = {
        "series": [
            {
                "type": "Counter",
                "metric": "analytics_js.invoke",
                "value": 1,
                "tags": {"method": "track", "library": "analytics.js", "library_version": "npm"},
            }
        ]
    }
    with server.client() as http:
        r = http.post("/v1/m", content=json.dumps(body), headers={"Content-Type": "text/plain"})
    assert_ok(r)


@pytest.mark.parametrize("path", ["/v1/track", "/v1/t", "/v1/batch", "/v1/import"])
def test_get_on_a_tracking_path_is_405(server: HeadwaterServer, path: str) -> None:
    with server.client() as http:
        assert_error(http.get(path, headers=AUTH), 405)


def test_put_on_a_batch_path_is_405_and_stores_nothing(server: HeadwaterServer) -> None:
    mid = new_id()
    with server.client() as http:
        r = http.put("/v1/batch", json={"batch": [message("track", mid)]}, headers=AUTH)
    assert_error(r, 405)
    assert stored(server, mid)[mid] == []


@pytest.mark.parametrize("path", ["/v1/nope", "/v2/track", "/v1/batch/extra", "/"])
def test_unknown_paths_are_404_json(server: HeadwaterServer, path: str) -> None:
    with server.client() as http:
        assert_error(http.post(path, json={"batch": []}, headers=AUTH), 404)
