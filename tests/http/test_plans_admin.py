"""Tracking plans through the admin REST API of a running `headwater up`: plans of a workspace
(`/workspaces/<ws>/tracking-plans`), the plan a source enforces (`/sources/<ref>/tracking-plan`),
and what the accounting says about a source (`/sources/<ref>/overview`, `/violations`)."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from tests.http._helpers import ADMIN_HEADERS, assert_error, new_id, track
from tests.support.server import WRITE_KEY, HeadwaterServer, basic

POLL_SECONDS = 15.0  # the processor reloads plans every 2 s and counts after each unit

SHOP: dict[str, Any] = {
    "track": {
        "Order Completed": {
            "properties": {
                "properties": {
                    "type": "object",
                    "properties": {"revenue": {"type": "number"}},
                    "required": ["revenue"],
                }
            }
        }
    }
}


def unique(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def admin(server: HeadwaterServer, method: str, path: str, **kw: Any) -> httpx.Response:
    with server.client() as http:
        return http.request(method, f"/admin/v1{path}", headers=ADMIN_HEADERS, **kw)


def ok(r: httpx.Response, status: int = 200) -> Any:
    assert r.status_code == status, f"{r.status_code}: {r.text}"
    assert r.headers["content-type"].startswith("application/json")
    return r.json()


def new_workspace(server: HeadwaterServer, *sources: str) -> tuple[str, dict[str, Any]]:
    """A workspace of its own with `sources` (name -> the source as the API shows it)."""
    ws = unique("plans")
    ok(admin(server, "POST", "/workspaces", json={"name": ws}), 201)
    made = {}
    for name in sources:
        made[name] = ok(
            admin(server, "POST", "/sources", json={"workspace": ws, "name": name}), 201
        )
    return ws, made


def post_plan(server: HeadwaterServer, ws: str, name: str, rules: Any = SHOP) -> Any:
    r = admin(
        server, "POST", f"/workspaces/{ws}/tracking-plans", json={"name": name, "rules": rules}
    )
    return ok(r, 201)


def connect(server: HeadwaterServer, ref: str, plan: str, **enforcement: Any) -> Any:
    body = {"tracking_plan": plan, "enforcement": enforcement}
    return ok(admin(server, "PUT", f"/sources/{ref}/tracking-plan", json=body))


def eventually(check: Callable[[], Any], what: str, timeout: float = POLL_SECONDS) -> Any:
    """`check()` once it is truthy; fails after `timeout` seconds with its last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result:
            return result
        assert time.monotonic() < deadline, f"{what}: not within {timeout}s (last: {result!r})"
        time.sleep(0.2)


# -- authorization -------------------------------------------------------------------------------


@pytest.mark.parametrize("auth", [None, "Bearer wrong-token", basic(WRITE_KEY)])
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/workspaces/test/tracking-plans"),
        ("POST", "/workspaces/test/tracking-plans"),
        ("GET", "/workspaces/test/tracking-plans/shop"),
        ("PUT", "/workspaces/test/tracking-plans/shop"),
        ("DELETE", "/workspaces/test/tracking-plans/shop"),
        ("GET", "/sources/test%2Fweb/tracking-plan"),
        ("PUT", "/sources/test%2Fweb/tracking-plan"),
        ("DELETE", "/sources/test%2Fweb/tracking-plan"),
        ("GET", "/sources/test%2Fweb/violations"),
        ("GET", "/sources/test%2Fweb/overview"),
    ],
)
def test_plan_routes_need_the_admin_token(
    server: HeadwaterServer, auth: str | None, method: str, path: str
) -> None:
    headers = {} if auth is None else {"Authorization": auth}
    body = {"name": unique("sneaky"), "rules": {}, "tracking_plan": "shop"}
    with server.client() as http:
        r = http.request(method, f"/admin/v1{path}", headers=headers, json=body)
    assert_error(r, 401, "unauthorized")


def test_a_refused_plan_request_changes_nothing(server: HeadwaterServer) -> None:
    ws, _ = new_workspace(server, "web")
    name = unique("shop")
    with server.client() as http:
        r = http.post(
            f"/admin/v1/workspaces/{ws}/tracking-plans",
            json={"name": name, "rules": SHOP},
            headers={"Authorization": "Bearer wrong"},
        )
    assert_error(r, 401)
    assert ok(admin(server, "GET", f"/workspaces/{ws}/tracking-plans")) == {"tracking_plans": []}


# -- plans ---------------------------------------------------------------------------------------


def test_plan_lifecycle(server: HeadwaterServer) -> None:
    ws, _ = new_workspace(server)
    base = f"/workspaces/{ws}/tracking-plans"
    assert ok(admin(server, "GET", base)) == {"tracking_plans": []}

    created = post_plan(server, ws, "shop")
    assert (created["workspace"], created["name"], created["managed_by"]) == (ws, "shop", "api")
    assert created["rules"]["track"] == SHOP["track"]
    assert created["rules"]["identify"] is None
    assert isinstance(created["updated_ms"], int)

    again = admin(server, "POST", base, json={"name": "shop", "rules": {}})
    assert_error(again, 409, "conflict")
    assert ok(admin(server, "GET", f"{base}/shop")) == created  # unchanged by the refused POST

    post_plan(server, ws, "another", {})
    listed = ok(admin(server, "GET", base))["tracking_plans"]
    assert [p["name"] for p in listed] == ["another", "shop"]
    assert created in listed

    replaced = ok(admin(server, "PUT", f"{base}/shop", json={"rules": {"page": {}}}))
    assert replaced["rules"]["track"] == {}
    assert replaced["rules"]["page"] == {}
    assert replaced["updated_ms"] >= created["updated_ms"]
    assert ok(admin(server, "GET", f"{base}/shop")) == replaced

    made_by_put = ok(admin(server, "PUT", f"{base}/third", json={"rules": SHOP}))
    assert made_by_put["name"] == "third"

    assert ok(admin(server, "DELETE", f"{base}/shop")) == {"deleted": "shop"}
    assert_error(admin(server, "GET", f"{base}/shop"), 404, "not_found")
    assert_error(admin(server, "DELETE", f"{base}/shop"), 404, "not_found")
    assert [p["name"] for p in ok(admin(server, "GET", base))["tracking_plans"]] == [
        "another",
        "third",
    ]


def test_a_plan_name_with_a_space_is_addressable(server: HeadwaterServer) -> None:
    ws, _ = new_workspace(server)
    post_plan(server, ws, "Checkout Plan")
    got = ok(admin(server, "GET", f"/workspaces/{ws}/tracking-plans/Checkout%20Plan"))
    assert got["name"] == "Checkout Plan"


def test_plans_are_per_workspace(server: HeadwaterServer) -> None:
    ws_a, _ = new_workspace(server)
    ws_b, _ = new_workspace(server)
    post_plan(server, ws_a, "shop")
    post_plan(server, ws_b, "shop", {})  # the same name elsewhere: no conflict
    assert_error(admin(server, "GET", f"/workspaces/{ws_b}/tracking-plans/nope"), 404)
    a = ok(admin(server, "GET", f"/workspaces/{ws_a}/tracking-plans/shop"))
    b = ok(admin(server, "GET", f"/workspaces/{ws_b}/tracking-plans/shop"))
    assert a["rules"]["track"] == SHOP["track"]
    assert b["rules"]["track"] == {}


@pytest.mark.parametrize(
    "rules",
    [
        {"track": {"Order Completed": {"type": 5}}},
        {"common": {"required": "userId"}},
        {"identify": {"$ref": "#/definitions/nowhere"}},
        {"tracks": {}},
        {"track": {"Order Completed": "not a schema"}},
    ],
    ids=["bad-type", "bad-required", "bad-ref", "unknown-key", "rule-not-object"],
)
def test_invalid_rules_are_400_validation_error(server: HeadwaterServer, rules: Any) -> None:
    ws, _ = new_workspace(server)
    base = f"/workspaces/{ws}/tracking-plans"
    body = assert_error(admin(server, "POST", base, json={"name": "bad", "rules": rules}), 400)
    assert body["code"] == "validation_error"
    post_plan(server, ws, "shop")
    r = admin(server, "PUT", f"{base}/shop", json={"rules": rules})
    assert_error(r, 400, "validation_error")
    listed = ok(admin(server, "GET", base))["tracking_plans"]
    assert [(p["name"], p["rules"]["track"]) for p in listed] == [("shop", SHOP["track"])]


def test_a_schema_with_a_bad_regex_is_400(server: HeadwaterServer) -> None:
    ws, _ = new_workspace(server)
    rules = {"track": {"Order Completed": {"properties": {"sku": {"pattern": "("}}}}}
    r = admin(
        server, "POST", f"/workspaces/{ws}/tracking-plans", json={"name": "x", "rules": rules}
    )
    assert_error(r, 400, "validation_error")


def test_invalid_plan_requests(server: HeadwaterServer) -> None:
    ws, _ = new_workspace(server)
    base = f"/workspaces/{ws}/tracking-plans"
    assert_error(admin(server, "POST", base, json={"name": "a/b", "rules": {}}), 400)
    assert_error(admin(server, "POST", base, json={"name": "", "rules": {}}), 400)
    assert_error(admin(server, "POST", base, json={"rules": {}}), 400, "bad_request")
    assert_error(admin(server, "POST", base, json={"name": "x", "rulez": {}}), 400, "bad_request")
    assert_error(admin(server, "POST", base, json={"name": "x", "rules": []}), 400, "bad_request")
    assert_error(admin(server, "POST", base, content=b"{nope"), 400, "invalid_json")
    assert_error(admin(server, "PUT", f"{base}/x", json={"rulez": {}}), 400, "bad_request")
    assert ok(admin(server, "GET", base)) == {"tracking_plans": []}


def test_plans_of_an_unknown_workspace_are_404(server: HeadwaterServer) -> None:
    base = f"/workspaces/{unique('nope')}/tracking-plans"
    assert_error(admin(server, "GET", base), 404, "not_found")
    assert_error(admin(server, "POST", base, json={"name": "shop", "rules": {}}), 404)
    assert_error(admin(server, "GET", f"{base}/shop"), 404, "not_found")
    assert_error(admin(server, "PUT", f"{base}/shop", json={"rules": {}}), 404, "not_found")
    assert_error(admin(server, "DELETE", f"{base}/shop"), 404, "not_found")


# -- connections ---------------------------------------------------------------------------------


def test_connection_lifecycle(server: HeadwaterServer) -> None:
    ws, sources = new_workspace(server, "web", "quarantine")
    web = sources["web"]
    post_plan(server, ws, "shop")
    nothing = {"tracking_plan": None, "enforcement": None}
    assert ok(admin(server, "GET", f"/sources/{web['id']}/tracking-plan")) == nothing

    enforcement = {
        "unplanned_events": "block",
        "unplanned_properties": "omit",
        "violations": "block",
        "forward_blocked_to": "quarantine",
        "forward_violations_to": None,
    }
    made = connect(server, f"{ws}%2Fweb", "shop", **enforcement)
    assert made == {
        "source": web["id"],
        "tracking_plan": "shop",
        "enforcement": enforcement,
        "managed_by": "api",
    }
    for ref in (web["id"], f"{ws}%2Fweb"):
        assert ok(admin(server, "GET", f"/sources/{ref}/tracking-plan")) == made
    assert ok(admin(server, "GET", f"/workspaces/{ws}/sources/web/tracking-plan")) == made

    # the defaults: allow everything
    loose = connect(server, web["id"], "shop")
    assert loose["enforcement"] == {
        "unplanned_events": "allow",
        "unplanned_properties": "allow",
        "violations": "allow",
        "forward_blocked_to": None,
        "forward_violations_to": None,
    }

    r = admin(server, "DELETE", f"/workspaces/{ws}/tracking-plans/shop")
    body = assert_error(r, 409, "conflict")
    assert "web" in body["message"]
    assert ok(admin(server, "GET", f"/workspaces/{ws}/tracking-plans/shop"))["name"] == "shop"

    assert ok(admin(server, "DELETE", f"/sources/{web['id']}/tracking-plan")) == nothing
    assert ok(admin(server, "GET", f"/sources/{web['id']}/tracking-plan")) == nothing
    assert ok(admin(server, "DELETE", f"/sources/{web['id']}/tracking-plan")) == nothing  # again
    r = admin(server, "DELETE", f"/workspaces/{ws}/tracking-plans/shop")
    assert ok(r) == {"deleted": "shop"}
    assert ok(admin(server, "GET", f"/workspaces/{ws}/tracking-plans")) == {"tracking_plans": []}


def test_connection_errors(server: HeadwaterServer) -> None:
    ws, sources = new_workspace(server, "web")
    other_ws, _ = new_workspace(server, "elsewhere")
    post_plan(server, other_ws, "theirs")
    post_plan(server, ws, "shop")
    path = f"/sources/{sources['web']['id']}/tracking-plan"

    def put(body: Any) -> httpx.Response:
        return admin(server, "PUT", path, json=body)

    assert_error(put({"tracking_plan": "missing"}), 404, "not_found")
    assert_error(put({"tracking_plan": "theirs"}), 404, "not_found")  # of another workspace
    for field in ("forward_blocked_to", "forward_violations_to"):
        for target in ("nowhere", "elsewhere"):
            body = {"tracking_plan": "shop", "enforcement": {field: target}}
            assert_error(put(body), 400, "validation_error")
    assert_error(put({"tracking_plan": "shop", "enforcement": {"violations": "drop"}}), 400)
    assert_error(put({"tracking_plan": "shop", "enforcement": {"extra": 1}}), 400)
    assert_error(put({"enforcement": {}}), 400, "bad_request")
    assert_error(admin(server, "PUT", path, content=b"{nope"), 400, "invalid_json")
    nothing = {"tracking_plan": None, "enforcement": None}
    assert ok(admin(server, "GET", path)) == nothing


@pytest.mark.parametrize(
    ("method", "suffix"),
    [
        ("GET", "tracking-plan"),
        ("PUT", "tracking-plan"),
        ("DELETE", "tracking-plan"),
        ("GET", "violations"),
        ("GET", "overview"),
    ],
)
@pytest.mark.parametrize("ref", ["src_does_not_exist", "test%2Fno-such-source", "nows%2Fweb"])
def test_an_unknown_source_is_404(
    server: HeadwaterServer, method: str, suffix: str, ref: str
) -> None:
    r = admin(server, method, f"/sources/{ref}/{suffix}", json={"tracking_plan": "shop"})
    assert_error(r, 404, "not_found")


# -- overview and violations ---------------------------------------------------------------------


def test_a_new_source_has_an_empty_overview_and_no_violations(server: HeadwaterServer) -> None:
    ws, sources = new_workspace(server, "web")
    web = sources["web"]
    found = ok(admin(server, "GET", f"/sources/{web['id']}/overview"))
    assert found["source"] == {"id": web["id"], "workspace": ws, "name": "web"}
    assert found["granularity"] == "minute"
    assert found["summary"] == {
        "successfully_received": 0,
        "failed_on_ingest": 0,
        "filtered_at_source": 0,
        "failed_processing": 0,
        "stored": 0,
        "filtered_at_destination": 0,
        "pending_retry": 0,
        "failed_delivery": 0,
        "delivered": 0,
    }
    assert (found["totals"], found["series"]) == ([], [])
    for granularity in ("minute", "hour", "day"):
        r = admin(
            server, "GET", f"/sources/{ws}%2Fweb/overview", params={"granularity": granularity}
        )
        assert ok(r)["granularity"] == granularity
    r = admin(
        server,
        "GET",
        f"/sources/{web['id']}/overview",
        params={"from": "2024-05-01T00:00:00Z", "to": "1714525200", "granularity": "hour"},
    )
    assert (ok(r)["from"], ok(r)["to"]) == ("2024-05-01T00:00:00Z", "2024-05-01T01:00:00Z")

    violations = ok(admin(server, "GET", f"/sources/{web['id']}/violations"))
    assert violations["window"] == "24h"
    assert (violations["total"], violations["violations"]) == (0, [])
    assert violations["source"] == found["source"]


@pytest.mark.parametrize("window", ["2h", "1d", "24H", "forever", ""])
def test_violations_with_a_bad_window_are_400(server: HeadwaterServer, window: str) -> None:
    r = admin(server, "GET", "/sources/test%2Fweb/violations", params={"window": window})
    body = assert_error(r, 400, "validation_error")
    assert "window" in body["message"]


@pytest.mark.parametrize(
    "params",
    [
        {"granularity": "week"},
        {"granularity": "HOUR"},
        {"from": "yesterday"},
        {"to": "soon"},
        {"from": "2024-05-02T00:00:00Z", "to": "2024-05-01T00:00:00Z"},
        {"from": "0", "granularity": "minute"},  # far too many points
        {"granularity": ""},  # given empty is not the default
        {"from": ""},
    ],
)
def test_overview_with_a_bad_query_is_400(server: HeadwaterServer, params: dict[str, str]) -> None:
    r = admin(server, "GET", "/sources/test%2Fweb/overview", params=params)
    assert_error(r, 400, "validation_error")


# -- end to end ----------------------------------------------------------------------------------


def send(server: HeadwaterServer, key: str, event: str, **extra: Any) -> str:
    mid = new_id("plans")
    r = httpx.post(
        f"{server.url}/v1/track",
        json=track(mid, event=event, **extra),
        headers={"Authorization": basic(key)},
        timeout=10.0,
    )
    assert r.status_code == 200, r.text
    return mid


def summary(server: HeadwaterServer, source_id: str) -> dict[str, int]:
    found = ok(admin(server, "GET", f"/sources/{source_id}/overview"))
    return dict(found["summary"])


def test_a_plan_connected_through_the_api_blocks_unplanned_events(server: HeadwaterServer) -> None:
    """web and canary enforce the same plan (web connected first); once an unplanned event of
    canary's is blocked, the processor has reloaded both connections, and exactly what is sent
    to web from then on is counted."""
    ws, sources = new_workspace(server, "web", "canary")
    web, canary = sources["web"], sources["canary"]
    post_plan(server, ws, "shop")
    connect(server, web["id"], "shop", unplanned_events="block")
    connect(server, canary["id"], "shop", unplanned_events="block")

    canary_key = canary["write_keys"][0]["key"]

    def canary_blocked() -> bool:
        send(server, canary_key, "Canary Ping")
        return summary(server, canary["id"])["filtered_at_source"] > 0

    eventually(canary_blocked, "the processor enforcing the plan connected through the API")

    key = web["write_keys"][0]["key"]
    unplanned = send(server, key, "Unplanned Thing", properties={"x": 1})
    send(server, key, "Order Completed", properties={"revenue": 12.5})

    def counted() -> dict[str, int] | None:
        s = summary(server, web["id"])
        return s if s["filtered_at_source"] + s["stored"] >= 2 else None

    found = eventually(counted, "the overview counting both events")
    assert found == {
        "successfully_received": 2,
        "failed_on_ingest": 0,
        "filtered_at_source": 1,
        "failed_processing": 0,
        "stored": 1,
        "filtered_at_destination": 0,  # no destination
        "pending_retry": 0,
        "failed_delivery": 0,
        "delivered": 0,
    }
    overview = ok(admin(server, "GET", f"/sources/{ws}%2Fweb/overview"))
    totals = {(t["stage"], t["outcome"], t["reason"]): t["count"] for t in overview["totals"]}
    assert totals == {
        ("ingest", "received", ""): 2,
        ("processor", "blocked", "unplanned_event"): 1,
        ("processor", "processed", ""): 1,
    }
    assert sum(p["count"] for p in overview["series"]) == 4

    def reported() -> Any:
        v = ok(admin(server, "GET", f"/sources/{web['id']}/violations", params={"window": "1h"}))
        return v if v["total"] else None

    violations = eventually(reported, "the violation of the unplanned event")
    assert violations["window"] == "1h"
    assert violations["total"] == 1
    (row,) = violations["violations"]
    assert (row["event"], row["type"], row["field"], row["count"]) == (
        "Unplanned Thing",
        "unplanned_event",
        "event",
        1,
    )
    (sample,) = row["samples"]
    assert sample["message"]["messageId"] == unplanned
    assert sample["message"]["event"] == "Unplanned Thing"
    assert sample["message"]["properties"] == {"x": 1}
    assert sample["received_at"].endswith("Z")
