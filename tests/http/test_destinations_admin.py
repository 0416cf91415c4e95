"""Destinations through the admin REST API of a running `headwater up`: made, read, changed and
deleted (`/workspaces/<ws>/destinations`, `/destinations/<ref>`), their secrets masked in every
answer, and the ones `headwater.yaml` declares shown as such and kept as declared."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from headwater.control.destinations import DestinationCatalog
from headwater.control.store import ControlStore
from headwater.delivery.routes import destination_id
from tests.http._helpers import ADMIN_HEADERS, assert_error
from tests.support.server import CONFIG, WRITE_KEY, HeadwaterServer, basic

URL = "http://127.0.0.1:9/in"  # the discard port: nothing is sent in these tests anyway
DECLARED = "Declared Hook"
DECLARED_CONFIG = (
    CONFIG
    + f"""  - name: declared
    sources:
      - name: web
    destinations:
      - name: {DECLARED}
        type: webhook
        sources: [web]
        settings:
          url: "{URL}"
          secret: file-secret
          headers: {{X-Api-Key: k-123, X-Team: data}}
        filters: {{types: [track]}}
        retry_period: 30m
"""
)
FIELDS = (
    "id",
    "workspace",
    "name",
    "type",
    "sources",
    "settings",
    "filters",
    "enabled",
    "retry_period",
    "ordered",
    "managed_by",
    "updated_at",
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HeadwaterServer]:
    """A server of this module's own, whose file declares a destination (and so runs a router)."""
    srv = HeadwaterServer(tmp_path_factory.mktemp("hw-dst"), config=DECLARED_CONFIG)
    srv.start()
    yield srv
    srv.stop()


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, f"{r.status_code}: {r.text}"
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


def admin(server: HeadwaterServer, method: str, path: str, **kw: Any) -> httpx.Response:
    with server.client() as http:
        return http.request(method, f"/admin/v1{path}", headers=ADMIN_HEADERS, **kw)


def new_workspace(server: HeadwaterServer) -> str:
    """A workspace of its own with sources web and app."""
    ws = unique("dst")
    ok(admin(server, "POST", "/workspaces", json={"name": ws}), 201)
    for name in ("web", "app"):
        ok(admin(server, "POST", "/sources", json={"workspace": ws, "name": name}), 201)
    return ws


def post(server: HeadwaterServer, ws: str, body: dict[str, Any]) -> httpx.Response:
    return admin(server, "POST", f"/workspaces/{ws}/destinations", json=body)


def hook(name: str = "hook", **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": "webhook", "settings": {"url": URL}, **fields}


def stored_settings(server: HeadwaterServer, ref: str) -> dict[str, Any]:
    """The settings as the control plane keeps them (unmasked)."""
    store = ControlStore(server.data / "control.db")
    try:
        return dict(DestinationCatalog(store).get(ref).config.settings)
    finally:
        store.close()


def ref_path(ws: str, name: str) -> str:
    return f"/destinations/{quote(f'{ws}/{name}', safe='')}"


# -- authorization -------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", [None, "Bearer wrong-token", basic(WRITE_KEY)])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/destinations"),
        ("POST", "/workspaces/test/destinations"),
        ("GET", "/destinations/test%2Fhook"),
        ("PATCH", "/destinations/test%2Fhook"),
        ("DELETE", f"/destinations/{destination_id('declared', DECLARED)}"),
    ],
)
def test_destination_routes_need_the_admin_token(
    server: HeadwaterServer, auth: str | None, method: str, path: str
) -> None:
    headers = {} if auth is None else {"Authorization": auth}
    with server.client() as http:
        r = http.request(method, f"/admin/v1{path}", headers=headers, json=hook())
    assert_error(r, 401, "unauthorized")
    assert admin(server, "GET", "/destinations/test%2Fhook").status_code == 404


# -- lifecycle -----------------------------------------------------------------------------------


def test_destination_lifecycle(server: HeadwaterServer) -> None:
    ws = new_workspace(server)
    assert ok(admin(server, "GET", "/destinations", params={"workspace": ws})) == {
        "destinations": []
    }
    body = hook(
        "My Hook",
        sources=["web"],
        filters={"types": ["track"], "where": "properties.total > 100"},
        retry_period="1h",
    )
    made = ok(post(server, ws, body), 201)
    assert tuple(made) == FIELDS
    assert made["id"] == destination_id(ws, "My Hook")
    assert (made["workspace"], made["name"], made["type"]) == (ws, "My Hook", "webhook")
    assert (made["sources"], made["settings"], made["retry_period"]) == (
        ["web"],
        {"url": URL},
        "1h",
    )
    assert made["filters"] == {
        "types": ["track"],
        "events": None,
        "where": "properties.total > 100",
    }
    assert (made["enabled"], made["ordered"], made["managed_by"]) == (True, None, "api")
    assert made["updated_at"].endswith("Z")

    for path in (f"/destinations/{made['id']}", ref_path(ws, "My Hook")):
        assert ok(admin(server, "GET", path)) == made
    other = ok(post(server, ws, hook("another")), 201)
    assert other["sources"] == [] and other["retry_period"] == "4h"
    listed = ok(admin(server, "GET", "/destinations", params={"workspace": ws}))["destinations"]
    assert listed == [made, other]  # by name, as SQLite orders text ("M" < "a")
    everything = ok(admin(server, "GET", "/destinations"))["destinations"]
    assert made in everything and other in everything
    assert any(d["workspace"] == "declared" for d in everything)

    patched = ok(admin(server, "PATCH", ref_path(ws, "My Hook"), json={"enabled": False}))
    assert patched == {**made, "enabled": False, "updated_at": patched["updated_at"]}
    patched = ok(
        admin(server, "PATCH", f"/destinations/{made['id']}", json={"sources": [], "ordered": True})
    )
    assert (patched["sources"], patched["ordered"], patched["enabled"]) == ([], True, False)
    assert ok(admin(server, "GET", f"/destinations/{made['id']}")) == patched

    assert ok(admin(server, "DELETE", ref_path(ws, "My Hook"))) == {"deleted": made["id"]}
    assert_error(admin(server, "GET", f"/destinations/{made['id']}"), 404, "not_found")
    assert_error(admin(server, "DELETE", f"/destinations/{made['id']}"), 404, "not_found")
    listed = ok(admin(server, "GET", "/destinations", params={"workspace": ws}))["destinations"]
    assert listed == [other]


def test_secrets_are_masked_and_kept_when_sent_back_masked(server: HeadwaterServer) -> None:
    ws = new_workspace(server)
    settings = {
        "url": URL,
        "secret": "shh",
        "headers": {"Authorization": "Bearer abc", "X-Api-Key": "k-1", "X-Team": "data"},
    }
    made = ok(post(server, ws, hook(settings=settings)), 201)
    masked = {
        "url": URL,
        "secret": "***",
        "headers": {"Authorization": "***", "X-Api-Key": "***", "X-Team": "data"},
    }
    assert made["settings"] == masked
    assert ok(admin(server, "GET", f"/destinations/{made['id']}"))["settings"] == masked
    listed = ok(admin(server, "GET", "/destinations", params={"workspace": ws}))["destinations"]
    assert listed[0]["settings"] == masked
    assert "shh" not in admin(server, "GET", "/destinations").text

    sent_back = {**masked, "headers": {**masked["headers"], "X-Team": "growth"}}
    patched = ok(
        admin(server, "PATCH", f"/destinations/{made['id']}", json={"settings": sent_back})
    )
    assert patched["settings"] == sent_back
    assert stored_settings(server, made["id"]) == {
        **settings,
        "headers": {"Authorization": "Bearer abc", "X-Api-Key": "k-1", "X-Team": "growth"},
    }
    ok(admin(server, "PATCH", f"/destinations/{made['id']}", json={"settings": {"url": URL}}))
    assert stored_settings(server, made["id"]) == {"url": URL}  # settings are replaced whole

    segment = {"name": "fwd", "type": "segment", "settings": {"write_key": "wk_upstream"}}
    forwarded = ok(post(server, ws, segment), 201)
    assert forwarded["settings"] == {"write_key": "***"}
    assert stored_settings(server, f"{ws}/fwd") == {"write_key": "wk_upstream"}


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (hook(sources=["mobile"]), "mobile"),
        (hook(type="carrier-pigeon"), "carrier-pigeon"),
        (hook(settings={}), "url"),
        (hook(settings={"url": URL, "batch_size": 0}), "batch_size"),
        (hook(filters={"types": ["purchase"]}), "purchase"),
        (hook(filters={"where": "total >>> 1"}), "filters"),
        (hook(retry_period=0), "retry_period"),
        (hook(retry_period="soon"), "retry_period"),
        (hook("a/b"), "name"),
        (hook(colour="red"), "colour"),
        (hook(enabled="yes"), "enabled"),
        ({"type": "webhook", "settings": {"url": URL}}, "name"),
        ([hook()], "object"),
    ],
)
def test_invalid_destinations_are_400(server: HeadwaterServer, body: Any, field: str) -> None:
    ws = new_workspace(server)
    error = assert_error(post(server, ws, body), 400, "validation_error")
    assert field in error["message"]
    assert ok(admin(server, "GET", "/destinations", params={"workspace": ws}))["destinations"] == []


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"name": "renamed"}, "name"),
        ({"sources": ["mobile"]}, "mobile"),
        ({"type": "segment"}, "write_key"),
        ({"retry_period": -5}, "retry_period"),
        ({"filters": {"where": "("}}, "filters"),
        ({"colour": "red"}, "colour"),
        ([], "object"),
    ],
)
def test_invalid_patches_are_400_and_change_nothing(
    server: HeadwaterServer, changes: Any, field: str
) -> None:
    ws = new_workspace(server)
    made = ok(post(server, ws, hook()), 201)
    r = admin(server, "PATCH", f"/destinations/{made['id']}", json=changes)
    assert field in assert_error(r, 400, "validation_error")["message"]
    assert ok(admin(server, "GET", f"/destinations/{made['id']}")) == made


def test_a_body_that_is_not_json_is_400(server: HeadwaterServer) -> None:
    ws = new_workspace(server)
    made = ok(post(server, ws, hook()), 201)
    r = admin(server, "POST", f"/workspaces/{ws}/destinations", content=b"{nope")
    assert_error(r, 400, "invalid_json")
    r = admin(server, "PATCH", f"/destinations/{made['id']}", content=b"{nope")
    assert_error(r, 400, "invalid_json")


def test_a_taken_name_is_409(server: HeadwaterServer) -> None:
    ws = new_workspace(server)
    made = ok(post(server, ws, hook()), 201)
    body = hook(settings={"url": "http://127.0.0.1:9/other"})
    assert_error(post(server, ws, body), 409, "conflict")
    assert ok(admin(server, "GET", f"/destinations/{made['id']}")) == made
    assert ok(post(server, new_workspace(server), hook()), 201)["name"] == "hook"  # elsewhere


@pytest.mark.parametrize("ref", ["dst_does_not_exist", "test%2Fno-such-hook", "nowhere%2Fhook"])
@pytest.mark.parametrize("method", ["GET", "PATCH", "DELETE"])
def test_an_unknown_destination_is_404(server: HeadwaterServer, method: str, ref: str) -> None:
    r = admin(server, method, f"/destinations/{ref}", json={"enabled": False})
    assert_error(r, 404, "not_found")


def test_an_unknown_workspace_is_404(server: HeadwaterServer) -> None:
    nowhere = unique("nowhere")
    assert_error(post(server, nowhere, hook()), 404, "not_found")
    r = admin(server, "GET", "/destinations", params={"workspace": nowhere})
    assert_error(r, 404, "not_found")


# -- declared in headwater.yaml ------------------------------------------------------------------


def test_a_destination_declared_in_the_file_is_managed_by_config(server: HeadwaterServer) -> None:
    listed = ok(admin(server, "GET", "/destinations", params={"workspace": "declared"}))
    (found,) = listed["destinations"]
    assert found == {
        "id": destination_id("declared", DECLARED),
        "workspace": "declared",
        "name": DECLARED,
        "type": "webhook",
        "sources": ["web"],
        "settings": {
            "url": URL,
            "secret": "***",
            "headers": {"X-Api-Key": "***", "X-Team": "data"},
        },
        "filters": {"types": ["track"], "events": None, "where": None},
        "enabled": True,
        "retry_period": "30m",
        "ordered": None,
        "managed_by": "config",
        "updated_at": found["updated_at"],
    }
    path = ref_path("declared", DECLARED)
    assert ok(admin(server, "GET", path)) == found
    r = admin(server, "PATCH", path, json={"enabled": False})
    assert "configuration file" in assert_error(r, 409, "managed_by_config")["message"]
    assert_error(admin(server, "DELETE", f"/destinations/{found['id']}"), 409, "managed_by_config")
    assert_error(post(server, "declared", hook(DECLARED)), 409, "conflict")
    assert ok(admin(server, "GET", path)) == found
    assert stored_settings(server, found["id"])["secret"] == "file-secret"
