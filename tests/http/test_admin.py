"""The admin REST API (`/admin/v1`, Bearer admin token): workspaces, sources, and write keys whose
changes (rotate, disable, enable, revoke) the gateways apply within about a second."""

from __future__ import annotations

import time
import uuid
from typing import Any

import httpx
import pytest

from tests.http._helpers import (
    ADMIN_HEADERS,
    assert_error,
    assert_not_stored,
    new_id,
    stored_one,
    track,
)
from tests.support.server import ADMIN_TOKEN, HeadwaterServer, basic

KEY_CHANGE_SECONDS = 2.5  # gateways reload keys every second


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def admin(server: HeadwaterServer, method: str, path: str, **kw: Any) -> httpx.Response:
    with server.client() as http:
        return http.request(method, f"/admin/v1{path}", headers=ADMIN_HEADERS, **kw)


def new_source(server: HeadwaterServer, **body: Any) -> dict[str, Any]:
    ws = unique("ws")
    assert admin(server, "POST", "/workspaces", json={"name": ws}).status_code == 201
    r = admin(server, "POST", "/sources", json={"workspace": ws, "name": "web", **body})
    assert r.status_code == 201, r.text
    return dict(r.json())


def send(server: HeadwaterServer, key: str, mid: str | None = None) -> int:
    """One event on a new connection (so that any gateway worker may answer)."""
    r = httpx.post(
        f"{server.url}/v1/track",
        json=track(mid or new_id()),
        headers={"Authorization": basic(key)},
        timeout=10.0,
    )
    return r.status_code


def wait_for_status(server: HeadwaterServer, key: str, status: int) -> None:
    deadline = time.monotonic() + KEY_CHANGE_SECONDS
    while send(server, key) != status:
        assert time.monotonic() < deadline, f"key did not turn {status} in {KEY_CHANGE_SECONDS}s"
        time.sleep(0.05)


@pytest.mark.parametrize("auth", [None, "Bearer wrong-token", f"Basic {ADMIN_TOKEN}", ADMIN_TOKEN])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/workspaces"),
        ("POST", "/workspaces"),
        ("GET", "/sources"),
        ("POST", "/sources/x/rotate"),
        ("DELETE", "/sources/x/write-keys/y"),
    ],
)
def test_admin_requests_without_the_token_are_401(
    server: HeadwaterServer, auth: str | None, method: str, path: str
) -> None:
    headers = {} if auth is None else {"Authorization": auth}
    with server.client() as http:
        r = http.request(method, f"/admin/v1{path}", headers=headers, json={"name": unique("x")})
    assert_error(r, 401, "unauthorized")


def test_a_rejected_admin_request_changes_nothing(server: HeadwaterServer) -> None:
    name = unique("ws")
    with server.client() as http:
        r = http.post(
            "/admin/v1/workspaces", json={"name": name}, headers={"Authorization": "Bearer wrong"}
        )
    assert_error(r, 401)
    listed = admin(server, "GET", "/workspaces").json()["workspaces"]
    assert name not in {w["name"] for w in listed}


def test_create_and_list_workspaces(server: HeadwaterServer) -> None:
    name = unique("ws")
    r = admin(server, "POST", "/workspaces", json={"name": name})
    assert r.status_code == 201
    created = r.json()
    assert created["name"] == name
    assert created["id"]
    listed = admin(server, "GET", "/workspaces").json()["workspaces"]
    assert created in listed
    assert "test" in {w["name"] for w in listed}  # the one from the config file
    assert_error(admin(server, "POST", "/workspaces", json={"name": name}), 409, "conflict")


@pytest.mark.parametrize(
    "body",
    [
        {"name": "a/b"},
        {"name": ""},
        {"name": " padded"},
        {},
        {"name": "x", "extra": 1},
        {"name": 5},
    ],
)
def test_invalid_workspace_requests_are_400(server: HeadwaterServer, body: Any) -> None:
    assert_error(admin(server, "POST", "/workspaces", json=body), 400)


def test_malformed_admin_json_is_400(server: HeadwaterServer) -> None:
    r = admin(server, "POST", "/workspaces", content=b"{nope")
    assert_error(r, 400)


def test_a_new_source_key_works_at_once_and_stores_under_that_source(
    server: HeadwaterServer,
) -> None:
    source = new_source(server)
    assert source["enabled"] is True
    (key,) = [k["key"] for k in source["write_keys"]]
    mid = new_id()
    assert send(server, key, mid) == 200
    assert stored_one(server, mid)["__source_id"] == source["id"]
    with server.client() as http:
        r = http.get(f"/v1/projects/{key}/settings")
    assert r.status_code == 200
    assert r.json()["integrations"]["Segment.io"]["apiKey"] == key


def test_a_source_with_given_write_keys(server: HeadwaterServer) -> None:
    keys = [unique("wk_given"), unique("wk_given")]
    source = new_source(server, write_keys=keys)
    assert sorted(k["key"] for k in source["write_keys"]) == sorted(keys)
    assert all(send(server, key) == 200 for key in keys)


def test_a_write_key_already_in_use_is_409_and_creates_nothing(server: HeadwaterServer) -> None:
    taken = new_source(server)
    key = taken["write_keys"][0]["key"]
    name = unique("src")
    r = admin(
        server,
        "POST",
        "/sources",
        json={"workspace": taken["workspace"], "name": name, "write_keys": [key]},
    )
    assert_error(r, 409, "conflict")
    listed = admin(server, "GET", "/sources", params={"workspace": taken["workspace"]})
    assert name not in {s["name"] for s in listed.json()["sources"]}


def test_source_errors(server: HeadwaterServer) -> None:
    source = new_source(server)
    dup = {"workspace": source["workspace"], "name": "web"}
    assert_error(admin(server, "POST", "/sources", json=dup), 409, "conflict")
    missing_ws = {"workspace": unique("nope"), "name": "web"}
    assert_error(admin(server, "POST", "/sources", json=missing_ws), 404, "not_found")
    bad_key = {"workspace": source["workspace"], "name": "other", "write_keys": ["has space"]}
    assert_error(admin(server, "POST", "/sources", json=bad_key), 400)
    assert_error(admin(server, "GET", "/sources/src_does_not_exist"), 404, "not_found")
    assert_error(admin(server, "GET", "/sources", params={"workspace": unique("no")}), 404)
    assert_error(admin(server, "GET", "/nothing-here"), 404)


def test_list_and_get_sources(server: HeadwaterServer) -> None:
    source = new_source(server)
    listed = admin(server, "GET", "/sources", params={"workspace": source["workspace"]}).json()
    assert listed["sources"] == [source]
    everything = admin(server, "GET", "/sources").json()["sources"]
    assert source in everything
    assert {"web", "app"} <= {s["name"] for s in everything if s["workspace"] == "test"}
    assert admin(server, "GET", f"/sources/{source['id']}").json() == source


def test_a_source_can_be_addressed_as_workspace_slash_name(server: HeadwaterServer) -> None:
    r = admin(server, "GET", "/sources/test%2Fweb")
    assert r.status_code == 200, r.text
    assert r.json()["name"] == "web"
    assert r.json()["workspace"] == "test"


def test_rotate_without_grace(server: HeadwaterServer) -> None:
    source = new_source(server)
    old = source["write_keys"][0]["key"]
    r = admin(server, "POST", f"/sources/{source['id']}/rotate", json={"grace_seconds": 0})
    assert r.status_code == 200
    new = r.json()["write_key"]
    assert new != old
    keys = {k["key"]: k for k in r.json()["source"]["write_keys"]}
    assert set(keys) == {old, new}
    assert keys[old]["expires_ms"] is not None
    assert keys[new]["expires_ms"] is None
    mid = new_id()
    assert send(server, new, mid) == 200  # at once
    assert stored_one(server, mid)["__source_id"] == source["id"]
    wait_for_status(server, old, 401)
    stale = new_id()
    assert send(server, old, stale) == 401
    assert_not_stored(server, stale)


def test_rotate_with_the_default_grace_keeps_the_old_key_working(server: HeadwaterServer) -> None:
    source = new_source(server)
    old = source["write_keys"][0]["key"]
    before_ms = time.time() * 1000
    r = admin(server, "POST", f"/sources/{source['id']}/rotate")
    assert r.status_code == 200
    new = r.json()["write_key"]
    expires = {k["key"]: k["expires_ms"] for k in r.json()["source"]["write_keys"]}
    assert abs(expires[old] - (before_ms + 86_400_000)) < 60_000
    assert send(server, new) == 200
    assert send(server, old) == 200


def test_rotate_errors(server: HeadwaterServer) -> None:
    source = new_source(server)
    assert_error(admin(server, "POST", "/sources/src_nope/rotate", json={}), 404)
    r = admin(server, "POST", f"/sources/{source['id']}/rotate", json={"grace_seconds": "soon"})
    assert_error(r, 400)


def test_disable_and_enable_a_source(server: HeadwaterServer) -> None:
    source = new_source(server)
    key = source["write_keys"][0]["key"]
    r = admin(server, "POST", f"/sources/{source['id']}/disable")
    assert r.status_code == 200
    assert r.json()["enabled"] is False
    wait_for_status(server, key, 401)
    mid = new_id()
    assert send(server, key, mid) == 401
    with server.client() as http:
        assert_error(http.get(f"/v1/projects/{key}/settings"), 404)
    assert_not_stored(server, mid)

    r = admin(server, "POST", f"/sources/{source['id']}/enable")
    assert r.status_code == 200
    assert r.json()["enabled"] is True
    wait_for_status(server, key, 200)
    mid = new_id()
    assert send(server, key, mid) == 200
    stored_one(server, mid)


def test_revoke_one_write_key(server: HeadwaterServer) -> None:
    keys = [unique("wk_rev"), unique("wk_rev")]
    source = new_source(server, write_keys=keys)
    r = admin(server, "DELETE", f"/sources/{source['id']}/write-keys/{keys[0]}")
    assert r.status_code == 200
    states = {k["key"]: k["disabled"] for k in r.json()["write_keys"]}
    assert states == {keys[0]: True, keys[1]: False}
    wait_for_status(server, keys[0], 401)
    assert send(server, keys[1]) == 200
    with server.client() as http:
        assert_error(http.get(f"/v1/projects/{keys[0]}/settings"), 404)


def test_revoking_a_key_of_another_source_is_404(server: HeadwaterServer) -> None:
    mine, other = new_source(server), new_source(server)
    other_key = other["write_keys"][0]["key"]
    r = admin(server, "DELETE", f"/sources/{mine['id']}/write-keys/{other_key}")
    assert_error(r, 404, "not_found")
    assert send(server, other_key) == 200
    assert_error(admin(server, "DELETE", f"/sources/{mine['id']}/write-keys/wk_nope"), 404)


def test_key_changes_reach_every_gateway_worker(alt_server: HeadwaterServer) -> None:
    """Two workers: after about a second, every worker refuses a rotated-out or disabled key."""
    rotated, disabled = new_source(alt_server), new_source(alt_server)
    old = rotated["write_keys"][0]["key"]
    r = admin(alt_server, "POST", f"/sources/{rotated['id']}/rotate", json={"grace_seconds": 0})
    new = r.json()["write_key"]
    key = disabled["write_keys"][0]["key"]
    assert admin(alt_server, "POST", f"/sources/{disabled['id']}/disable").status_code == 200
    time.sleep(KEY_CHANGE_SECONDS)
    assert [send(alt_server, old) for _ in range(10)] == [401] * 10
    assert [send(alt_server, key) for _ in range(10)] == [401] * 10
    assert [send(alt_server, new) for _ in range(10)] == [200] * 10


def test_a_new_key_works_at_once_on_every_worker(alt_server: HeadwaterServer) -> None:
    statuses = []
    for _ in range(3):
        source = new_source(alt_server)
        r = admin(alt_server, "POST", f"/sources/{source['id']}/rotate", json={"grace_seconds": 0})
        new = r.json()["write_key"]
        statuses += [send(alt_server, new) for _ in range(8)]
    assert statuses == [200] * len(statuses)


def test_an_absurd_grace_period_is_a_client_error(server: HeadwaterServer) -> None:
    source = new_source(server)
    r = admin(server, "POST", f"/sources/{source['id']}/rotate", json={"grace_seconds": 1e20})
    assert_error(r, 400)
    key = source["write_keys"][0]["key"]
    assert send(server, key) == 200  # nothing changed


def test_a_write_key_that_could_not_be_addressed_is_refused(server: HeadwaterServer) -> None:
    """Keys travel in URL paths (settings, revocation): a '/' in one is refused up front."""
    ws = unique("ws")
    assert admin(server, "POST", "/workspaces", json={"name": ws}).status_code == 201
    body = {"workspace": ws, "name": "web", "write_keys": [unique("wk_with/slash")]}
    assert_error(admin(server, "POST", "/sources", json=body), 400)


def test_every_write_key_the_api_accepts_can_be_revoked(server: HeadwaterServer) -> None:
    key = unique("wk_revocable")
    source = new_source(server, write_keys=[key])
    assert send(server, key) == 200
    r = admin(server, "DELETE", f"/sources/{source['id']}/write-keys/{key}")
    assert r.status_code == 200, r.text
    wait_for_status(server, key, 401)
