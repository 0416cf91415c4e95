"""The official Python client libraries, unmodified, pointed at a running Headwater.

Each test sends every call type through the real library (batching, gzip, its own retries),
flushes, and checks that every event arrived exactly once with the fields the library sent and
the fields the server adds.
"""

from __future__ import annotations

import uuid
from collections import Counter
from datetime import UTC, datetime
from typing import Any

import pytest
from rudderstack.analytics.client import Client as RudderClient
from segment.analytics.client import Client as SegmentClient

from tests.support.server import WRITE_KEY, HeadwaterServer


def _send_all(client: Any, run: str, users: int) -> dict[str, dict[str, Any]]:
    """Every call type, `users` times; returns what was sent, by messageId."""
    sent: dict[str, dict[str, Any]] = {}
    for i in range(users):
        user = f"{run}-user-{i}"
        mid = f"{run}-t-{i}"
        client.track(
            user_id=user,
            event="Order Completed",
            properties={"revenue": 10 + i, "currency": "USD", "i": i},
            message_id=mid,
        )
        sent[mid] = {"type": "track", "userId": user, "event": "Order Completed"}
        mid = f"{run}-i-{i}"
        client.identify(
            user_id=user, traits={"email": f"{user}@example.com", "plan": "pro"}, message_id=mid
        )
        sent[mid] = {"type": "identify", "userId": user}
        mid = f"{run}-p-{i}"
        client.page(
            user_id=user,
            category="Docs",
            name="Getting Started",
            properties={"url": "https://example.com/docs"},
            message_id=mid,
        )
        sent[mid] = {"type": "page", "userId": user, "name": "Getting Started"}
        mid = f"{run}-s-{i}"
        client.screen(user_id=user, category="App", name="Home", message_id=mid)
        sent[mid] = {"type": "screen", "userId": user, "name": "Home"}
        mid = f"{run}-g-{i}"
        client.group(user_id=user, group_id=f"{run}-org", traits={"name": "Acme"}, message_id=mid)
        sent[mid] = {"type": "group", "userId": user, "groupId": f"{run}-org"}
        mid = f"{run}-a-{i}"
        client.alias(previous_id=f"{run}-anon-{i}", user_id=user, message_id=mid)
        sent[mid] = {"type": "alias", "userId": user, "previousId": f"{run}-anon-{i}"}
    client.flush()
    client.join()
    return sent


def _check_arrived_once(
    server: HeadwaterServer, sent: dict[str, dict[str, Any]], started: datetime
) -> list[dict[str, Any]]:
    stored = [m for m in server.messages() if m.get("messageId") in sent]
    counts = Counter(m["messageId"] for m in stored)
    assert set(counts) == set(sent), f"missing: {sorted(set(sent) - set(counts))[:5]}"
    assert all(n == 1 for n in counts.values()), [k for k, n in counts.items() if n > 1]
    for msg in stored:
        for field, value in sent[msg["messageId"]].items():
            assert msg[field] == value, (msg["messageId"], field)
        received = datetime.fromisoformat(msg["receivedAt"])
        assert received >= started
        assert msg["version"] == 2
        assert msg["context"]["ip"] == "127.0.0.1"
        assert "timestamp" in msg and "originalTimestamp" in msg and "sentAt" in msg
        assert "writeKey" not in msg
    return stored


def _through(client_class: Any, server: HeadwaterServer, gzip: bool) -> list[dict[str, Any]]:
    """Every call type through a real client; returns what was stored, checked."""
    run = f"{client_class.__module__.split('.')[0]}-{uuid.uuid4().hex[:8]}"
    errors: list[Any] = []
    client = client_class(
        WRITE_KEY,
        host=server.url,
        gzip=gzip,
        max_retries=3,
        on_error=lambda e, batch: errors.append(e),
        upload_size=50,
    )
    started = datetime.now(UTC).replace(microsecond=0)
    sent = _send_all(client, run, users=40)
    assert errors == []
    return _check_arrived_once(server, sent, started)


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_segment_analytics_python(server: HeadwaterServer, gzip: bool) -> None:
    stored = _through(SegmentClient, server, gzip)
    library = {m["context"]["library"]["name"] for m in stored}
    assert library == {"analytics-python"}
    track = next(m for m in stored if m["type"] == "track")
    assert track["properties"]["currency"] == "USD"


@pytest.mark.parametrize("gzip", [False, True], ids=["plain", "gzip"])
def test_rudder_sdk_python(server: HeadwaterServer, gzip: bool) -> None:
    stored = _through(RudderClient, server, gzip)
    # RudderStack's SDK sends "anonymousId": null; it must not count as an id, and stays null
    assert all(m.get("anonymousId") is None for m in stored)
    assert {m["channel"] for m in stored} == {"server"}


def test_segment_client_gets_a_clear_error_for_an_unknown_key(server: HeadwaterServer) -> None:
    errors: list[Any] = []
    client = SegmentClient(
        "wk_not_a_key", host=server.url, max_retries=0, on_error=lambda e, batch: errors.append(e)
    )
    mid = f"unknown-key-{uuid.uuid4()}"
    client.track(user_id="u", event="E", message_id=mid)
    client.flush()
    client.join()
    assert len(errors) == 1
    assert getattr(errors[0], "status", None) == 401
    assert getattr(errors[0], "code", None) == "unknown_source"
    assert not [m for m in server.messages() if m.get("messageId") == mid]
