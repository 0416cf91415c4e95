"""The fields the server adds to a message (`headwater.events.stamp`), as a reader of the log
sees them: the stamp is stored with the raw messages and applied when a run is decoded."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.events.stamp import API_VERSION, Stamp, decode_stamp, encode_stamp, parse_timestamp
from tests.unit._helpers import RECEIVED, RECEIVED_JSON, stored, stored_bytes, stored_one

TRACK = {"type": "track", "userId": "u1", "event": "Clicked"}


def ts(value: str) -> datetime:
    parsed = parse_timestamp(value)
    assert parsed is not None
    return parsed


# -- receivedAt, version, writeKey ---------------------------------------------------------------


def test_server_fields_are_added() -> None:
    out = stored_one(TRACK)
    assert out["receivedAt"] == RECEIVED_JSON
    assert out["version"] == API_VERSION == 2
    assert out["type"] == "track"
    assert out["userId"] == "u1"
    assert out["event"] == "Clicked"


def test_client_values_of_server_fields_are_replaced() -> None:
    out = stored_one({**TRACK, "receivedAt": "1999-01-01T00:00:00Z", "version": 1})
    assert out["receivedAt"] == RECEIVED_JSON
    assert out["version"] == 2


@pytest.mark.parametrize("extra", [{}, {"unknown": 1}, {"userId": 42}])
def test_write_key_is_never_stored(extra: dict[str, object]) -> None:
    out = stored_one({**TRACK, "writeKey": "wk_secret", **extra})
    assert "writeKey" not in out
    assert b"wk_secret" not in stored_bytes([{**TRACK, "writeKey": "wk_secret", **extra}])[0]


def test_a_path_type_overrides_the_message_type() -> None:
    out = stored_one({"userId": "u", "event": "E", "type": "nonsense"}, path_type="track")
    assert out["type"] == "track"
    assert stored_one({"userId": "u", "event": "E"}, path_type="track")["type"] == "track"


def test_numeric_ids_are_stored_as_strings() -> None:
    out = stored_one({"type": "group", "userId": 42, "anonymousId": 1.5, "groupId": 7})
    assert (out["userId"], out["anonymousId"], out["groupId"]) == ("42", "1.5", "7")


# -- timestamps ----------------------------------------------------------------------------------


def test_timestamp_is_corrected_for_clock_skew_with_the_batch_sent_at() -> None:
    # the client's clock is 30s behind when it sends: sentAt 11:59:30, server 12:00:00
    out = stored_one({**TRACK, "timestamp": "2024-05-01T11:59:00Z"}, sent_at="2024-05-01T11:59:30Z")
    assert out["originalTimestamp"] == "2024-05-01T11:59:00Z"
    assert out["sentAt"] == "2024-05-01T11:59:30Z"
    assert ts(out["timestamp"]) == datetime(2024, 5, 1, 11, 59, 30, tzinfo=UTC)


def test_timestamp_is_corrected_with_the_message_own_sent_at() -> None:
    message = {**TRACK, "timestamp": "2024-05-01T12:10:00Z", "sentAt": "2024-05-01T12:10:05Z"}
    out = stored_one(message, sent_at="2024-05-01T00:00:00Z")  # the message's own wins
    assert out["sentAt"] == "2024-05-01T12:10:05Z"
    assert out["originalTimestamp"] == "2024-05-01T12:10:00Z"
    assert ts(out["timestamp"]) == RECEIVED - timedelta(seconds=5)


def test_both_sent_at_sources_give_the_same_instant_with_time_zones() -> None:
    client_ts = "2024-05-01T13:59:00+02:00"
    sent = "2024-05-01T11:59:30Z"
    batch = stored_one({**TRACK, "timestamp": client_ts}, sent_at=sent)
    own = stored_one({**TRACK, "timestamp": client_ts, "sentAt": sent})
    expected = datetime(2024, 5, 1, 11, 59, 30, tzinfo=UTC)
    assert ts(batch["timestamp"]) == ts(own["timestamp"]) == expected
    assert batch["originalTimestamp"] == own["originalTimestamp"] == client_ts


def test_without_sent_at_the_client_timestamp_is_kept() -> None:
    out = stored_one({**TRACK, "timestamp": "2023-01-01T00:00:00.123Z"})
    assert out["timestamp"] == "2023-01-01T00:00:00.123Z"
    assert out["originalTimestamp"] == "2023-01-01T00:00:00.123Z"
    assert "sentAt" not in out


@pytest.mark.parametrize("sent_at", [5, "not a date", ""])
def test_an_unusable_sent_at_keeps_the_client_timestamp(sent_at: object) -> None:
    out = stored_one({**TRACK, "timestamp": "2023-01-01T00:00:00Z"}, sent_at=sent_at)
    assert out["timestamp"] == "2023-01-01T00:00:00Z"
    own = stored_one({**TRACK, "timestamp": "2023-01-01T00:00:00Z", "sentAt": "garbage"})
    assert own["timestamp"] == "2023-01-01T00:00:00Z"


@pytest.mark.parametrize("sent_at", [None, "2024-05-01T11:00:00Z"])
@pytest.mark.parametrize("timestamp", [None, "absent"])
def test_without_a_timestamp_the_received_time_is_used(
    sent_at: str | None, timestamp: str | None
) -> None:
    message = dict(TRACK)
    if timestamp is None:
        message["timestamp"] = None
    out = stored_one(message, sent_at=sent_at)
    assert out["timestamp"] == RECEIVED_JSON
    assert "originalTimestamp" not in out
    own = stored_one({**message, "sentAt": "2024-05-01T11:00:00Z"})
    assert own["timestamp"] == RECEIVED_JSON


def test_an_unparseable_timestamp_is_replaced_but_kept_as_original() -> None:
    out = stored_one({**TRACK, "timestamp": "yesterday"}, sent_at="2024-05-01T11:59:30Z")
    assert out["timestamp"] == RECEIVED_JSON
    assert out["originalTimestamp"] == "yesterday"
    own = stored_one({**TRACK, "timestamp": 1714564800, "sentAt": "2024-05-01T11:59:30Z"})
    assert own["timestamp"] == RECEIVED_JSON
    assert own["originalTimestamp"] == 1714564800


def test_original_timestamp_is_used_when_there_is_no_timestamp() -> None:
    message = {**TRACK, "originalTimestamp": "2024-05-01T11:59:00Z"}
    out = stored_one(message, sent_at="2024-05-01T11:59:30Z")
    assert out["originalTimestamp"] == "2024-05-01T11:59:00Z"
    assert ts(out["timestamp"]) == datetime(2024, 5, 1, 11, 59, 30, tzinfo=UTC)


def test_naive_timestamps_are_read_as_utc() -> None:
    out = stored_one({**TRACK, "timestamp": "2024-05-01T11:59:00"}, sent_at="2024-05-01T11:59:30")
    assert ts(out["timestamp"]) == datetime(2024, 5, 1, 11, 59, 30, tzinfo=UTC)


def test_each_message_of_a_batch_gets_its_own_correction() -> None:
    messages = [
        {**TRACK, "timestamp": "2024-05-01T11:00:00Z"},
        {**TRACK, "timestamp": "2024-05-01T11:30:00Z"},
        {**TRACK, "timestamp": "2024-05-01T11:00:00Z"},
        {**TRACK, "timestamp": "2024-05-01T11:00:00Z", "sentAt": "2024-05-01T11:00:00Z"},
        TRACK,
    ]
    outs = stored(messages, sent_at="2024-05-01T11:59:00Z")  # client 1 minute behind
    got = [ts(o["timestamp"]) for o in outs]
    assert got == [
        datetime(2024, 5, 1, 11, 1, tzinfo=UTC),
        datetime(2024, 5, 1, 11, 31, tzinfo=UTC),
        datetime(2024, 5, 1, 11, 1, tzinfo=UTC),
        RECEIVED,
        RECEIVED,
    ]


_instants = st.datetimes(
    min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1), timezones=st.just(UTC)
)
_zones = st.integers(-23 * 60, 23 * 60).map(lambda m: timezone(timedelta(minutes=m)))


@given(_instants, _instants, _instants, _zones, st.booleans())
def test_skew_correction_arithmetic(
    received: datetime, sent: datetime, client: datetime, zone: timezone, own_sent_at: bool
) -> None:
    client_ts = client.astimezone(zone).isoformat()
    sent_at = sent.isoformat()
    if own_sent_at:
        out = stored_one({**TRACK, "timestamp": client_ts, "sentAt": sent_at}, received_at=received)
    else:
        out = stored_one({**TRACK, "timestamp": client_ts}, received_at=received, sent_at=sent_at)
    assert ts(out["timestamp"]) == received - (sent - client)
    assert out["originalTimestamp"] == client_ts
    assert out["sentAt"] == sent_at


# -- context.ip, batch context and integrations --------------------------------------------------


def test_the_client_ip_is_added_to_context() -> None:
    assert stored_one(TRACK, ip="203.0.113.9")["context"] == {"ip": "203.0.113.9"}
    out = stored_one({**TRACK, "context": {"locale": "fr"}}, ip="2001:db8::1")
    assert out["context"] == {"locale": "fr", "ip": "2001:db8::1"}
    assert stored_one({**TRACK, "context": None}, ip="1.2.3.4")["context"] == {"ip": "1.2.3.4"}
    assert stored_one({**TRACK, "context": {}}, ip="1.2.3.4")["context"] == {"ip": "1.2.3.4"}


def test_no_ip_no_context() -> None:
    assert "context" not in stored_one(TRACK)


def test_the_client_ip_never_overwrites_the_message_ip() -> None:
    out = stored_one({**TRACK, "context": {"ip": "10.1.1.1", "a": 1}}, ip="1.2.3.4")
    assert out["context"] == {"ip": "10.1.1.1", "a": 1}
    spaced = b'{"type":"track","userId":"u","event":"E","context": { "a" : 1, "ip" : "10.1.1.1" }}'
    assert stored_one(spaced, ip="1.2.3.4")["context"] == {"a": 1, "ip": "10.1.1.1"}


def test_an_ip_nested_deeper_in_context_is_not_the_client_ip() -> None:
    out = stored_one({**TRACK, "context": {"device": {"ip": "x"}, "note": '"ip"'}}, ip="1.2.3.4")
    assert out["context"]["ip"] == "1.2.3.4"
    assert out["context"]["device"] == {"ip": "x"}


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [k for k, _ in pairs]
    assert len(keys) == len(set(keys)), f"duplicate keys {keys}"
    return dict(pairs)


def test_an_escaped_ip_key_is_recognised_as_the_client_ip() -> None:
    raw = b'{"type":"track","userId":"u","event":"E","context":{"i\\u0070":"10.1.1.1"}}'
    out = json.loads(stored_bytes([raw], ip="1.2.3.4")[0], object_pairs_hook=_no_duplicate_keys)
    assert out["context"] == {"ip": "10.1.1.1"}


def test_batch_context_is_merged_and_message_keys_win() -> None:
    batch_context = b'{"library":{"name":"analytics.js"},"locale":"en","ip":"9.9.9.9"}'
    out = stored_one({**TRACK, "context": {"locale": "fr"}}, context=batch_context, ip="1.2.3.4")
    assert out["context"] == {"library": {"name": "analytics.js"}, "locale": "fr", "ip": "9.9.9.9"}
    assert stored_one(TRACK, context=b'{"a":1}')["context"] == {"a": 1}
    assert stored_one({**TRACK, "context": None}, context=b'{"a":1}')["context"] == {"a": 1}


def test_batch_context_and_ip_together() -> None:
    out = stored_one({**TRACK, "context": {"b": 2}}, context=b'{"a":1}', ip="1.2.3.4")
    assert out["context"] == {"a": 1, "b": 2, "ip": "1.2.3.4"}


@pytest.mark.parametrize("shared", [b"null", b'"x"', b"[1]", b"5"])
def test_a_batch_context_that_is_not_an_object_is_ignored(shared: bytes) -> None:
    out = stored_one({**TRACK, "context": {"a": 1}}, context=shared, integrations=shared)
    assert out["context"] == {"a": 1}
    assert "integrations" not in out


def test_batch_integrations_are_merged_and_message_keys_win() -> None:
    shared = b'{"All":false,"Mixpanel":true}'
    out = stored_one({**TRACK, "integrations": {"Mixpanel": False}}, integrations=shared)
    assert out["integrations"] == {"All": False, "Mixpanel": False}
    assert stored_one(TRACK, integrations=shared)["integrations"] == {
        "All": False,
        "Mixpanel": True,
    }


# -- unknown fields and untouched bytes ----------------------------------------------------------


def test_unknown_fields_pass_through_untouched() -> None:
    raw = (
        b'{"type":"track","userId":"u","event":"E","custom":{"price":1.10,"tags":["a"]},'
        b'"_metadata":{"bundled":["x"]},"channel":"server","zz":null}'
    )
    out_bytes = stored_bytes([raw])[0]
    assert b'"custom":{"price":1.10,"tags":["a"]}' in out_bytes
    out = json.loads(out_bytes)
    assert out["_metadata"] == {"bundled": ["x"]}
    assert out["channel"] == "server"
    assert out["zz"] is None


@pytest.mark.parametrize("extra", [b"", b',"unknown":true', b',"userId":7'])
def test_property_bytes_are_kept_exactly(extra: bytes) -> None:
    properties = b'{"price":1.10,"name":"caf\\u00e9","big":12345678901234567890123}'
    raw = b'{"type":"track","anonymousId":"a","event":"E","properties":' + properties + extra + b"}"
    out = stored_bytes([raw])[0]
    assert b'"properties":' + properties in out
    assert json.loads(out)["properties"]["name"] == "café"


# -- Stamp encoding and parse_timestamp ----------------------------------------------------------


_stamps = st.builds(
    Stamp,
    received_at=_instants,
    sent_at=st.none() | st.text(max_size=30) | st.integers(-(2**53), 2**53),
    ip=st.none() | st.ip_addresses().map(str),
    context=st.none() | st.binary(max_size=40),
    integrations=st.none() | st.binary(max_size=40),
    path_type=st.none() | st.sampled_from(["track", "identify", "alias"]),
)


@given(_stamps)
def test_stamps_round_trip(stamp: Stamp) -> None:
    assert decode_stamp(encode_stamp(stamp)) == stamp


def test_parse_timestamp() -> None:
    assert parse_timestamp("2024-05-01T12:00:00Z") == RECEIVED
    assert parse_timestamp("2024-05-01T14:00:00+02:00") == RECEIVED
    assert parse_timestamp("2024-05-01T12:00:00") == RECEIVED
    assert parse_timestamp("2024-05-01T12:00:00.5Z") == RECEIVED + timedelta(milliseconds=500)
    assert parse_timestamp("2024-05-01T12:00:00").tzinfo is not None  # type: ignore[union-attr]
    for bad in ("", "nope", "2024-13-01T00:00:00Z", None, 1714564800, 1.5, ["x"], {}):
        assert parse_timestamp(bad) is None
