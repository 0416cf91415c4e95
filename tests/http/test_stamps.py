"""What the server adds to every stored message: receivedAt, originalTimestamp, skew-corrected
timestamp, sentAt, messageId, context.ip, version; batch context/integrations merged; every
other field kept as sent, writeKey removed."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tests.http._helpers import (
    AUTH,
    assert_error,
    assert_ok,
    iso,
    new_id,
    parse_ts,
    stored,
    stored_one,
    track,
)
from tests.support.server import WRITE_KEY, HeadwaterServer

T = "2020-03-01T10:00:00.000Z"
T_PLUS_5 = "2020-03-01T10:00:05.000Z"
MS = timedelta(milliseconds=1)


def post(server: HeadwaterServer, path: str, body: Any) -> None:
    with server.client() as http:
        assert_ok(http.post(path, json=body, headers=AUTH))


def test_received_at_is_the_server_clock(server: HeadwaterServer) -> None:
    mid = new_id()
    before = datetime.now(UTC)
    post(server, "/v1/track", track(mid, receivedAt="1999-01-01T00:00:00Z"))
    after = datetime.now(UTC)
    received = parse_ts(stored_one(server, mid)["receivedAt"])
    assert before - timedelta(seconds=1) <= received <= after + timedelta(seconds=1)


def test_single_message_timestamp_is_corrected_with_its_own_sent_at(
    server: HeadwaterServer,
) -> None:
    mid = new_id()
    post(server, "/v1/t", track(mid, timestamp=T, sentAt=T_PLUS_5))
    msg = stored_one(server, mid)
    assert msg["originalTimestamp"] == T
    assert msg["sentAt"] == T_PLUS_5
    expected = parse_ts(msg["receivedAt"]) - timedelta(seconds=5)
    assert abs(parse_ts(msg["timestamp"]) - expected) <= MS


def test_batch_timestamps_are_corrected_with_the_batch_sent_at(server: HeadwaterServer) -> None:
    a, b = new_id(), new_id()
    body = {"batch": [track(a, timestamp=T), track(b, timestamp="2020-03-01T10:00:04Z")]}
    post(server, "/v1/batch", {**body, "sentAt": T_PLUS_5})
    found = stored(server, a, b)
    ma, mb = found[a][0], found[b][0]
    received = parse_ts(ma["receivedAt"])
    assert abs(parse_ts(ma["timestamp"]) - (received - timedelta(seconds=5))) <= MS
    assert abs(parse_ts(mb["timestamp"]) - (received - timedelta(seconds=1))) <= MS
    assert ma["sentAt"] == T_PLUS_5
    assert ma["originalTimestamp"] == T


def test_a_message_sent_at_wins_over_the_batch_sent_at(server: HeadwaterServer) -> None:
    mid = new_id()
    msg = track(mid, timestamp=T, sentAt="2020-03-01T10:00:02Z")
    post(server, "/v1/batch", {"batch": [msg], "sentAt": "2020-03-01T10:01:00Z"})
    stored_msg = stored_one(server, mid)
    assert stored_msg["sentAt"] == "2020-03-01T10:00:02Z"
    expected = parse_ts(stored_msg["receivedAt"]) - timedelta(seconds=2)
    assert abs(parse_ts(stored_msg["timestamp"]) - expected) <= MS


def test_time_zone_offsets_are_understood(server: HeadwaterServer) -> None:
    mid = new_id()
    msg = track(mid, timestamp="2020-03-01T12:00:00+02:00")  # 10:00Z
    post(server, "/v1/batch", {"batch": [msg], "sentAt": T_PLUS_5})
    stored_msg = stored_one(server, mid)
    expected = parse_ts(stored_msg["receivedAt"]) - timedelta(seconds=5)
    assert abs(parse_ts(stored_msg["timestamp"]) - expected) <= MS


def test_without_sent_at_the_client_timestamp_is_kept(server: HeadwaterServer) -> None:
    mid = new_id()
    post(server, "/v1/batch", {"batch": [track(mid, timestamp=T)]})
    msg = stored_one(server, mid)
    assert parse_ts(msg["timestamp"]) == parse_ts(T)
    assert msg["originalTimestamp"] == T


def test_without_a_timestamp_the_timestamp_is_received_at(server: HeadwaterServer) -> None:
    mid = new_id()
    post(server, "/v1/batch", {"batch": [track(mid)], "sentAt": iso(datetime.now(UTC))})
    msg = stored_one(server, mid)
    assert msg["timestamp"] == msg["receivedAt"]


def test_an_original_timestamp_alone_is_used_as_the_client_time(server: HeadwaterServer) -> None:
    """RudderStack SDKs send originalTimestamp instead of timestamp."""
    mid = new_id()
    post(server, "/v1/batch", {"batch": [track(mid, originalTimestamp=T)], "sentAt": T_PLUS_5})
    msg = stored_one(server, mid)
    assert msg["originalTimestamp"] == T
    expected = parse_ts(msg["receivedAt"]) - timedelta(seconds=5)
    assert abs(parse_ts(msg["timestamp"]) - expected) <= MS


def test_a_missing_message_id_is_generated_once_per_message(server: HeadwaterServer) -> None:
    run = new_id("gen")
    batch = [track("x", properties={"run": run, "i": i}) for i in range(4)]
    del batch[0]["messageId"]
    del batch[1]["messageId"]
    batch[2]["messageId"] = ""
    batch[3]["messageId"] = None
    post(server, "/v1/batch", {"batch": batch})
    post(server, "/v1/track", {"userId": "u", "event": "e", "properties": {"run": run, "i": 4}})
    mine = [m for m in server.messages() if (m.get("properties") or {}).get("run") == run]
    assert sorted(m["properties"]["i"] for m in mine) == [0, 1, 2, 3, 4]
    ids = [m["messageId"] for m in mine]
    assert all(isinstance(i, str) and i.startswith("hw-") for i in ids), ids
    assert len(set(ids)) == 5


@pytest.mark.parametrize(
    ("context", "expected"),
    [
        (None, {"ip": "127.0.0.1"}),
        ({}, {"ip": "127.0.0.1"}),
        ({"locale": "fr-FR"}, {"locale": "fr-FR", "ip": "127.0.0.1"}),
        ({"ip": "203.0.113.9"}, {"ip": "203.0.113.9"}),
        ({"device": {"ip": "x"}}, {"device": {"ip": "x"}, "ip": "127.0.0.1"}),
        ({"note": "ip"}, {"note": "ip", "ip": "127.0.0.1"}),
        ({"ip": None}, {"ip": "127.0.0.1"}),
    ],
    ids=["null", "empty", "other-keys", "client-ip", "nested-ip", "ip-as-value", "null-ip"],
)
def test_context_ip_is_the_connection_address_unless_the_client_sent_one(
    server: HeadwaterServer, context: Any, expected: dict[str, Any]
) -> None:
    mid = new_id()
    msg = track(mid) if context is None else track(mid, context=context)
    post(server, "/v1/batch", {"batch": [msg]})
    assert stored_one(server, mid)["context"] == expected


def test_an_ip_key_spelled_with_escapes_is_the_client_ip(server: HeadwaterServer) -> None:
    mid = new_id()
    body = json.dumps({"batch": [track(mid, context={"PLACEHOLDER": "192.0.2.1"})]})
    body = body.replace("PLACEHOLDER", "\\u0069p")  # "\u0069p" is "ip"
    with server.client() as http:
        assert_ok(http.post("/v1/batch", content=body.encode(), headers=AUTH))
    assert stored_one(server, mid)["context"] == {"ip": "192.0.2.1"}


def test_x_forwarded_for_is_ignored_without_trusted_proxies(server: HeadwaterServer) -> None:
    mid = new_id()
    with server.client() as http:
        r = http.post("/v1/track", json=track(mid), headers={**AUTH, "X-Forwarded-For": "1.2.3.4"})
    assert_ok(r)
    assert stored_one(server, mid)["context"]["ip"] == "127.0.0.1"


def test_version_is_2_and_write_key_is_removed(server: HeadwaterServer) -> None:
    mid = new_id()
    post(server, "/v1/batch", {"batch": [track(mid, version=1, writeKey=WRITE_KEY)]})
    msg = stored_one(server, mid)
    assert msg["version"] == 2
    assert "writeKey" not in msg


def test_unknown_fields_are_kept_as_sent(server: HeadwaterServer) -> None:
    mid = new_id()
    extra = {
        "custom": {"nested": [1, 2.5, None, True, {"deep": "x"}]},
        "_metadata": {"bundled": ["Segment.io"], "unbundled": []},
        "channel": "server",
        "properties": {"price": 9.99, "tags": ["a", "b"], "empty": {}},
        "context": {"library": {"name": "analytics-python", "version": "2.4.0"}, "ip": "10.0.0.1"},
        "integrations": {"All": False, "Mixpanel": True},
    }
    post(server, "/v1/batch", {"batch": [track(mid, **extra)]})
    msg = stored_one(server, mid)
    for key, value in extra.items():
        assert msg[key] == value, key


def test_batch_context_and_integrations_are_merged_with_item_keys_winning(
    server: HeadwaterServer,
) -> None:
    a, b = new_id(), new_id()
    body = {
        "batch": [
            track(a, context={"locale": "fr-FR"}, integrations={"Amplitude": False}),
            track(b),
        ],
        "context": {"locale": "en-US", "library": {"name": "batch-lib"}},
        "integrations": {"Amplitude": True, "All": True},
    }
    post(server, "/v1/batch", body)
    found = stored(server, a, b)
    ma, mb = found[a][0], found[b][0]
    assert ma["context"] == {"locale": "fr-FR", "library": {"name": "batch-lib"}, "ip": "127.0.0.1"}
    assert ma["integrations"] == {"Amplitude": False, "All": True}
    assert mb["context"] == {"locale": "en-US", "library": {"name": "batch-lib"}, "ip": "127.0.0.1"}
    assert mb["integrations"] == {"Amplitude": True, "All": True}


def test_a_huge_integer_sent_at_is_not_a_server_error(server: HeadwaterServer) -> None:
    mid = new_id()
    body = '{"sentAt": 123456789012345678901234567890, "batch": [%s]}' % (
        '{"type":"track","userId":"u","event":"e","messageId":"' + mid + '"}'
    )
    with server.client() as http:
        r = http.post("/v1/batch", content=body.encode(), headers=AUTH)
    assert r.status_code < 500, r.text
    if r.status_code != 200:
        assert_error(r, r.status_code)


def test_calendar_edge_timestamps_do_not_poison_the_log(fresh_server: HeadwaterServer) -> None:
    fresh_server.start()
    ahead = iso(datetime.now(UTC) + timedelta(seconds=30))  # client clock 30 s ahead
    behind = iso(datetime.now(UTC) - timedelta(seconds=30))
    odd = [
        ({"timestamp": "0001-01-01T00:00:00"}, ahead),
        ({"timestamp": "9999-12-31T23:59:59Z"}, behind),
        ({"timestamp": "0001-01-01T00:00:00Z", "sentAt": "9999-12-31T00:00:00Z"}, None),
    ]
    with fresh_server.client() as http:
        for fields, sent_at in odd:
            body: dict[str, Any] = {"batch": [track(new_id(), **fields)]}
            if sent_at is not None:
                body["sentAt"] = sent_at
            r = http.post("/v1/batch", json=body, headers=AUTH)
            assert r.status_code == 200, r.text
        later = new_id()
        assert_ok(http.post("/v1/track", json=track(later), headers=AUTH))
    messages = fresh_server.messages()  # must not raise
    assert [m["messageId"] for m in messages].count(later) == 1
    for msg in messages:
        assert isinstance(msg["timestamp"], str)
