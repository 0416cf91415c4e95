"""Requests exactly as the official client libraries sent them (tests/fixtures/clients), replayed
against a server that knows their write key: every message is stored once, as sent, stamped."""

from __future__ import annotations

import gzip
import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.http._helpers import ADMIN_HEADERS, assert_ok, parse_ts
from tests.support.server import HeadwaterServer

FIXTURES = Path(__file__).parent.parent / "fixtures" / "clients"
SINGLE_TYPES = {
    "/v1/i": "identify",
    "/v1/t": "track",
    "/v1/p": "page",
    "/v1/s": "screen",
    "/v1/g": "group",
    "/v1/a": "alias",
}
SERVER_FIELDS = {"writeKey", "sentAt", "timestamp", "context", "receivedAt", "version"}


def load(name: str) -> dict[str, Any]:
    return dict(json.loads((FIXTURES / name).read_text()))


def replay(http: Any, request: dict[str, Any]) -> Any:
    headers = dict(request["headers"])
    data = json.dumps(request["body"]).encode()
    if headers.get("Content-Encoding") == "gzip":
        data = gzip.compress(data)
    return http.request(request["method"], request["path"], content=data, headers=headers)


def examples_source_id(server: HeadwaterServer) -> str:
    with server.client() as http:
        r = http.get("/admin/v1/sources", params={"workspace": "examples"}, headers=ADMIN_HEADERS)
    assert r.status_code == 200
    (source,) = r.json()["sources"]
    return str(source["id"])


@pytest.mark.parametrize("fixture", sorted(p.name for p in FIXTURES.glob("*.json")))
def test_recorded_client_requests_are_stored_as_sent(
    alt_server: HeadwaterServer, fixture: str
) -> None:
    recorded = load(fixture)
    sent: list[tuple[dict[str, Any], str, Any]] = []  # (message, type, sentAt)
    with alt_server.client() as http:
        for request in recorded["requests"]:
            r = replay(http, request)
            assert_ok(r)
            origin = request["headers"].get("Origin")
            if origin:
                assert r.headers["access-control-allow-origin"] in (origin, "*")
            body = request["body"]
            if "batch" in body:
                sent.extend(
                    (m, m["type"], m.get("sentAt", body.get("sentAt"))) for m in body["batch"]
                )
            else:
                sent.append(
                    (body, SINGLE_TYPES.get(request["path"], body.get("type")), body.get("sentAt"))
                )
    assert sent, f"{fixture} holds no messages"

    source_id = examples_source_id(alt_server)
    by_id: dict[str, list[dict[str, Any]]] = {}
    for msg in alt_server.messages():
        by_id.setdefault(msg["messageId"], []).append(msg)
    for original, mtype, sent_at in sent:
        found = by_id.get(original["messageId"], [])
        assert len(found) == 1, f"{original['messageId']}: stored {len(found)} times"
        msg = found[0]
        assert msg["__source_id"] == source_id
        assert msg["type"] == mtype
        for key, value in original.items():
            if key not in SERVER_FIELDS:
                assert msg[key] == value, f"{original['messageId']}: {key}"
        assert "writeKey" not in msg
        assert msg["version"] == 2
        assert msg["context"] == {**original["context"], "ip": "127.0.0.1"}
        assert msg["originalTimestamp"] == original["timestamp"]
        assert msg["sentAt"] == sent_at
        skew = parse_ts(sent_at) - parse_ts(original["timestamp"])
        expected = parse_ts(msg["receivedAt"]) - skew
        assert abs(parse_ts(msg["timestamp"]) - expected) <= timedelta(milliseconds=1)
