"""The simplest end-to-end path: one event in, one stamped message stored."""

from __future__ import annotations

import uuid

from tests.support.server import WRITE_KEY, HeadwaterServer, basic


def test_track_is_acknowledged_and_stored(server: HeadwaterServer) -> None:
    mid = f"smoke-{uuid.uuid4()}"
    with server.client() as http:
        r = http.post(
            "/v1/track",
            json={"userId": "u1", "event": "Signed Up", "messageId": mid},
            headers={"Authorization": basic(WRITE_KEY)},
        )
    assert r.status_code == 200
    assert r.json() == {"success": True}
    stored = [m for m in server.messages() if m["messageId"] == mid]
    assert len(stored) == 1
    assert stored[0]["type"] == "track"
    assert stored[0]["event"] == "Signed Up"
    assert stored[0]["context"]["ip"] == "127.0.0.1"
    assert "receivedAt" in stored[0]
