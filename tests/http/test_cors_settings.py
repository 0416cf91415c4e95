"""What browsers need: CORS preflight and headers on every answer, and the settings
analytics.js loads from `/v1/projects/<writeKey>/settings`."""

from __future__ import annotations

import pytest

from tests.http._helpers import AUTH, assert_error, assert_ok, new_id, stored_one, track
from tests.http.conftest import EXAMPLE_KEY, PUBLIC_HOST
from tests.support.server import OTHER_KEY, WRITE_KEY, HeadwaterServer, basic

ORIGIN = "https://shop.example.com"


def header_list(value: str) -> set[str]:
    return {h.strip().lower() for h in value.split(",") if h.strip()}


@pytest.mark.parametrize(
    "path", ["/v1/batch", "/v1/t", "/v1/track", "/v1/m", f"/v1/projects/{WRITE_KEY}/settings"]
)
def test_preflight_allows_what_analytics_js_sends(server: HeadwaterServer, path: str) -> None:
    with server.client() as http:
        r = http.options(
            path,
            headers={
                "Origin": ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type,x-retry-count",
            },
        )
    assert r.status_code == 204
    assert r.headers["access-control-allow-origin"] in (ORIGIN, "*")
    assert "POST" in {m.upper() for m in header_list(r.headers["access-control-allow-methods"])}
    allowed = header_list(r.headers["access-control-allow-headers"])
    assert {"authorization", "content-type", "x-retry-count"} <= allowed


def test_preflight_without_requested_headers_allows_the_usual_ones(
    server: HeadwaterServer,
) -> None:
    with server.client() as http:
        r = http.options(
            "/v1/batch", headers={"Origin": ORIGIN, "Access-Control-Request-Method": "POST"}
        )
    assert r.status_code == 204
    allowed = header_list(r.headers["access-control-allow-headers"])
    assert {"authorization", "content-type", "x-retry-count"} <= allowed
    methods = {m.upper() for m in header_list(r.headers["access-control-allow-methods"])}
    assert {"POST", "GET"} <= methods


@pytest.mark.parametrize("origin", [ORIGIN, None])
def test_tracking_answers_carry_allow_origin(server: HeadwaterServer, origin: str | None) -> None:
    headers = dict(AUTH)
    if origin:
        headers["Origin"] = origin
    with server.client() as http:
        r = http.post(
            "/v1/t", json=track(new_id()), headers={**headers, "Content-Type": "text/plain"}
        )
    assert_ok(r)
    assert r.headers["access-control-allow-origin"] in ((origin or "*"), "*")


@pytest.mark.parametrize(
    ("path", "body", "headers", "status"),
    [
        ("/v1/t", {"userId": "u", "event": "e"}, {}, 401),
        ("/v1/batch", "not json", AUTH, 400),
        ("/v1/nope", {}, AUTH, 404),
    ],
)
def test_error_answers_carry_allow_origin_so_browsers_can_read_them(
    server: HeadwaterServer, path: str, body: object, headers: dict[str, str], status: int
) -> None:
    content = body.encode() if isinstance(body, str) else None
    with server.client() as http:
        r = http.post(
            path,
            content=content,
            json=None if content is not None else body,
            headers={**headers, "Origin": ORIGIN},
        )
    assert_error(r, status)
    assert r.headers["access-control-allow-origin"] in (ORIGIN, "*")


@pytest.mark.parametrize("key", [WRITE_KEY, OTHER_KEY])
def test_settings_point_analytics_js_at_this_server(server: HeadwaterServer, key: str) -> None:
    with server.client() as http:
        r = http.get(f"/v1/projects/{key}/settings", headers={"Origin": ORIGIN})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/json")
    assert r.headers["access-control-allow-origin"] in (ORIGIN, "*")
    settings = r.json()
    segment = settings["integrations"]["Segment.io"]
    assert segment["apiKey"] == key
    assert segment["apiHost"] == f"127.0.0.1:{server.port}/v1"
    assert segment["protocol"] == "http"
    assert settings["metrics"]["sampleRate"] == 0


def test_settings_api_host_follows_the_host_header(server: HeadwaterServer) -> None:
    with server.client() as http:
        r = http.get(
            f"/v1/projects/{WRITE_KEY}/settings", headers={"Host": "cdp.internal.example:8080"}
        )
    assert r.status_code == 200
    assert r.json()["integrations"]["Segment.io"]["apiHost"] == "cdp.internal.example:8080/v1"


def test_settings_use_the_configured_public_url(alt_server: HeadwaterServer) -> None:
    with alt_server.client() as http:
        r = http.get(f"/v1/projects/{EXAMPLE_KEY}/settings")
    assert r.status_code == 200
    segment = r.json()["integrations"]["Segment.io"]
    assert segment["apiHost"] == f"{PUBLIC_HOST}/v1"
    assert segment["protocol"] == "https"
    assert segment["apiKey"] == EXAMPLE_KEY


@pytest.mark.parametrize("key", ["wk_unknown", "", "wk_test_web_1x"])
def test_settings_of_an_unknown_key_are_404(server: HeadwaterServer, key: str) -> None:
    with server.client() as http:
        r = http.get(f"/v1/projects/{key}/settings", headers={"Origin": ORIGIN})
    assert_error(r, 404)
    assert r.headers["access-control-allow-origin"] in (ORIGIN, "*")


def test_settings_only_answer_get(server: HeadwaterServer) -> None:
    with server.client() as http:
        r = http.post(f"/v1/projects/{WRITE_KEY}/settings", headers=AUTH, json={})
    assert_error(r, 405)


def test_analytics_js_flow_settings_then_events(server: HeadwaterServer) -> None:
    """What a page does: load the settings, then send to apiHost with the apiKey it got."""
    mid = new_id()
    with server.client() as http:
        segment = http.get(f"/v1/projects/{WRITE_KEY}/settings").json()["integrations"][
            "Segment.io"
        ]
        url = f"{segment['protocol']}://{segment['apiHost']}/t"
        r = http.post(
            url,
            json=track(mid),
            headers={
                "Authorization": basic(segment["apiKey"]),
                "Content-Type": "text/plain",
                "Origin": ORIGIN,
            },
        )
    assert_ok(r)
    assert stored_one(server, mid)["event"] == "Order Completed"
