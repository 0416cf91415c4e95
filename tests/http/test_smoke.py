"""The simplest end-to-end path: one event in, one stamped message stored."""

from __future__ import annotations

import uuid

from headwater.log.records import partition_for
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


def test_a_batch_is_partitioned_by_message_id(server: HeadwaterServer) -> None:
    ids = [f"part-{uuid.uuid4()}" for _ in range(50)]
    batch = [{"type": "track", "userId": "u", "event": "E", "messageId": m} for m in ids]
    with server.client() as http:
        r = http.post(
            "/v1/batch", json={"batch": batch}, headers={"Authorization": basic(WRITE_KEY)}
        )
    assert r.status_code == 200
    stored = {m["messageId"]: m["__partition"] for m in server.messages() if m["messageId"] in ids}
    assert stored == {m: partition_for(m, 8) for m in ids}
    assert len(set(stored.values())) > 4  # spread over the partitions
