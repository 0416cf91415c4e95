"""Helpers shared by the HTTP contract tests: ids, request bodies, stored-message lookups and
error-shape assertions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.support.server import ADMIN_TOKEN, WRITE_KEY, HeadwaterServer, basic

AUTH = {"Authorization": basic(WRITE_KEY)}
ADMIN_HEADERS = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
MESSAGE_TYPES = ("track", "identify", "page", "screen", "group", "alias")


def new_id(prefix: str = "http") -> str:
    """A messageId no other test (or run) uses."""
    return f"{prefix}-{uuid.uuid4()}"


def message(mtype: str, mid: str, **extra: Any) -> dict[str, Any]:
    """A valid message of `mtype` with messageId `mid` (extra fields added or overriding)."""
    required: dict[str, dict[str, Any]] = {
        "track": {"event": "Order Completed", "properties": {"revenue": 10}},
        "identify": {"traits": {"plan": "pro"}},
        "page": {"name": "Home", "properties": {"url": "https://example.com/"}},
        "screen": {"name": "Main"},
        "group": {"groupId": "g-1", "traits": {"size": 3}},
        "alias": {"previousId": "old-id-1"},
    }
    return {"type": mtype, "userId": "u-1", "messageId": mid, **required[mtype], **extra}


def track(mid: str, **extra: Any) -> dict[str, Any]:
    return message("track", mid, **extra)


def stored(server: HeadwaterServer, *ids: str) -> dict[str, list[dict[str, Any]]]:
    """The stored (stamped) messages with each of `ids`, by messageId."""
    wanted = set(ids)
    out: dict[str, list[dict[str, Any]]] = {mid: [] for mid in ids}
    for msg in server.messages():
        mid = msg.get("messageId")
        if isinstance(mid, str) and mid in wanted:
            out[mid].append(msg)
    return out


def stored_one(server: HeadwaterServer, mid: str) -> dict[str, Any]:
    """The one stored message with messageId `mid` (fails if missing or duplicated)."""
    found = stored(server, mid)[mid]
    assert len(found) == 1, f"expected exactly one stored message {mid}, found {len(found)}"
    return found[0]


def assert_not_stored(server: HeadwaterServer, *ids: str) -> None:
    found = {mid: msgs for mid, msgs in stored(server, *ids).items() if msgs}
    assert found == {}, f"messages that must not be stored were stored: {sorted(found)}"


def assert_ok(r: httpx.Response) -> None:
    """Exactly the success answer clients expect."""
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("application/json")
    assert r.json() == {"success": True}


def assert_error(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """An error answer: `status`, JSON with a non-empty `code` and `message`."""
    assert r.status_code == status, f"{r.status_code}: {r.text}"
    assert r.headers["content-type"].startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict), body
    assert isinstance(body.get("code"), str) and body["code"], body
    assert isinstance(body.get("message"), str) and body["message"], body
    if code is not None:
        assert body["code"] == code, body
    return body


def dropped(r: httpx.Response) -> dict[int, str]:
    """index -> reason code of the messages a 200 answer reports as dropped."""
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["success"] is True
    out: dict[int, str] = {}
    for item in body.get("dropped", []):
        assert isinstance(item["message"], str) and item["message"]
        out[item["index"]] = item["code"]
    return out


def parse_ts(value: str) -> datetime:
    dt = datetime.fromisoformat(value)
    return dt if dt.tzinfo is not None else dt.replace(tzinfo=UTC)


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def metric(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels` (0 if none)."""
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def scrape(http: httpx.Client) -> str:
    r = http.get("/metrics")
    assert r.status_code == 200
    return r.text
