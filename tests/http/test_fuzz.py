"""Property tests against a server of their own: whatever the body, the gateway never answers
5xx, every error is JSON with `code` and `message`, every message it accepts is stored exactly
once and comes back stamped. Values include integers beyond 64 bits and timestamps at both
ends of the calendar.
"""

from __future__ import annotations

import gzip
import json
import zlib
from datetime import UTC
from typing import Any

import httpx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.http._helpers import AUTH, MESSAGE_TYPES, assert_error, message, new_id, track
from tests.support.server import OTHER_KEY, WRITE_KEY, HeadwaterServer, basic

FUZZ = settings(
    max_examples=300,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TRACKING_PATHS = ["/v1/batch", "/v1/import", "/v1/track", "/v1/t", "/v1/identify", "/v1/g"]
BATCH_PATHS = {"/v1/batch", "/v1/b", "/v1/import"}

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.integers()
SCALARS = (
    st.none()
    | st.booleans()
    | INT64
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=10,
)
TIMESTAMPS = st.datetimes(timezones=st.none() | st.just(UTC)).map(lambda dt: dt.isoformat())
IDS = st.text(max_size=12) | INT64 | st.floats(allow_nan=False, allow_infinity=False) | VALUES
KEYS = st.sampled_from([WRITE_KEY, OTHER_KEY, "wk_unknown", ""])
FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "type": st.sampled_from([*MESSAGE_TYPES, "bogus", "Track", ""]) | VALUES,
    "userId": IDS,
    "anonymousId": IDS,
    "event": st.text(max_size=12) | VALUES,
    "name": st.text(max_size=12) | VALUES,
    "category": st.text(max_size=12) | VALUES,
    "groupId": IDS,
    "previousId": IDS,
    "messageId": st.uuids().map(str) | st.text(max_size=110) | VALUES,
    "properties": st.dictionaries(st.text(max_size=8), VALUES, max_size=4) | VALUES,
    "traits": st.dictionaries(st.text(max_size=8), VALUES, max_size=4) | VALUES,
    "context": st.dictionaries(st.text(max_size=8), VALUES, max_size=4) | VALUES,
    "integrations": VALUES,
    "timestamp": TIMESTAMPS | VALUES,
    "originalTimestamp": TIMESTAMPS | VALUES,
    "sentAt": TIMESTAMPS | VALUES,
    "writeKey": KEYS | VALUES,
    "receivedAt": TIMESTAMPS | VALUES,
    "version": VALUES,
    "_metadata": VALUES,
    "channel": VALUES,
    "custom": VALUES,
}
MESSAGES = st.fixed_dictionaries({}, optional=FIELDS)
# a valid message with one or two fields replaced by anything: most get through validation
NEARLY_VALID = st.builds(
    lambda mtype, mid, overrides: {**message(mtype, mid), **overrides},
    st.sampled_from(MESSAGE_TYPES),
    st.uuids().map(str),
    st.dictionaries(st.sampled_from(sorted(FIELDS)), TIMESTAMPS | VALUES, max_size=2),
)
BATCHES = st.fixed_dictionaries(
    {"batch": st.lists(NEARLY_VALID | MESSAGES | VALUES, max_size=6)},
    optional={
        "sentAt": TIMESTAMPS | VALUES,
        "context": VALUES,
        "integrations": VALUES,
        "writeKey": KEYS | VALUES,
    },
)
AUTHS = st.sampled_from(
    [
        AUTH,
        {},
        {"Authorization": basic(OTHER_KEY)},
        {"Authorization": basic("wk_unknown")},
        {"Authorization": "Bearer token"},
        {"Authorization": "Basic !!!"},
    ]
)


class Tally:
    """How many messages the server said it accepted, to compare with what it stored."""

    def __init__(self, server: HeadwaterServer) -> None:
        self.server = server
        self.before = len(server.messages())
        self.accepted = 0

    def check(self, r: httpx.Response, sent: int) -> None:
        assert r.status_code < 500, f"{r.status_code}: {r.text}"
        if r.status_code != 200:
            assert r.status_code in (400, 401, 415), r.text
            assert_error(r, r.status_code)
            return
        body = r.json()
        assert body["success"] is True
        indexes = [d["index"] for d in body.get("dropped", [])]
        assert len(indexes) == len(set(indexes))
        assert all(0 <= i < sent for i in indexes)
        assert all(d["code"] and d["message"] for d in body.get("dropped", []))
        self.accepted += sent - len(indexes)

    def assert_stored_and_stamped(self) -> None:
        messages = self.server.messages()  # every stored message must still be readable
        assert len(messages) - self.before == self.accepted
        for msg in messages:
            assert msg["type"] in MESSAGE_TYPES, msg
            assert isinstance(msg["messageId"], str) and msg["messageId"], msg
            assert msg.get("userId") or msg.get("anonymousId"), msg
            assert msg["version"] == 2, msg
            assert isinstance(msg["receivedAt"], str), msg
            assert "timestamp" in msg, msg
            assert "writeKey" not in msg, msg
            assert isinstance(msg["context"], dict) and "ip" in msg["context"], msg


def encode(body: Any, ascii_only: bool) -> bytes:
    return json.dumps(body, ensure_ascii=ascii_only).encode()


def test_random_batches_and_messages(fuzz_server: HeadwaterServer) -> None:
    tally = Tally(fuzz_server)
    with fuzz_server.client() as http:

        @FUZZ
        @given(
            path=st.sampled_from(TRACKING_PATHS),
            batch=BATCHES,
            single=NEARLY_VALID | MESSAGES,
            auth=st.just(AUTH) | AUTHS,
            ascii_only=st.booleans(),
            gzipped=st.booleans(),
        )
        def run(
            path: str,
            batch: Any,
            single: Any,
            auth: dict[str, str],
            ascii_only: bool,
            gzipped: bool,
        ) -> None:
            is_batch = path in BATCH_PATHS
            data = encode(batch if is_batch else single, ascii_only)
            headers = dict(auth)
            if gzipped:
                data = gzip.compress(data)
                headers["Content-Encoding"] = "gzip"
            r = http.post(path, content=data, headers=headers)
            tally.check(r, len(batch["batch"]) if is_batch else 1)

        run()
    tally.assert_stored_and_stamped()


def test_random_json_values_as_the_body(fuzz_server: HeadwaterServer) -> None:
    tally = Tally(fuzz_server)
    with fuzz_server.client() as http:

        @FUZZ
        @given(path=st.sampled_from(TRACKING_PATHS), body=VALUES, auth=AUTHS)
        def run(path: str, body: Any, auth: dict[str, str]) -> None:
            r = http.post(path, content=json.dumps(body).encode(), headers=auth)
            sent = len(body.get("batch") or []) if isinstance(body, dict) else 0
            tally.check(r, sent if path in BATCH_PATHS else 1)

        run()
    tally.assert_stored_and_stamped()


def test_random_bytes_as_the_body(fuzz_server: HeadwaterServer) -> None:
    with fuzz_server.client() as http:

        @FUZZ
        @given(
            path=st.sampled_from(TRACKING_PATHS),
            data=st.binary(max_size=3000),
            encoding=st.sampled_from([None, "gzip", "deflate"]),
            wrap=st.booleans(),
        )
        def run(path: str, data: bytes, encoding: str | None, wrap: bool) -> None:
            headers = dict(AUTH)
            if encoding:
                headers["Content-Encoding"] = encoding
                if wrap:  # valid compression around garbage
                    data = gzip.compress(data) if encoding == "gzip" else zlib.compress(data)
            r = http.post(path, content=data, headers=headers)
            assert r.status_code < 500, r.text
            if r.status_code == 200:  # the bytes happened to be a JSON object, e.g. b"{}"
                assert r.json()["success"] is True
                return
            assert_error(r, r.status_code)
            assert r.status_code == 400

        run()


def test_truncated_bodies_are_400_and_store_nothing(fuzz_server: HeadwaterServer) -> None:
    ids = [new_id("trunc") for _ in range(4)]
    messages = [track(m, context={"library": {"name": "x"}}) for m in ids]
    batch = json.dumps({"batch": messages, "sentAt": "2024-01-01T00:00:00Z"}).encode()
    single = json.dumps(track(ids[0], properties={"a": [1, 2, {"b": "c"}]})).encode()
    with fuzz_server.client() as http:

        @FUZZ
        @given(path=st.sampled_from(TRACKING_PATHS), cut=st.floats(0, 1), gzipped=st.booleans())
        def run(path: str, cut: float, gzipped: bool) -> None:
            full = batch if path in BATCH_PATHS else single
            headers = dict(AUTH)
            if gzipped:
                full = gzip.compress(full)
                headers["Content-Encoding"] = "gzip"
            data = full[: min(int(len(full) * cut), len(full) - 1)]
            r = http.post(path, content=data, headers=headers)
            assert_error(r, 400, "invalid_encoding" if gzipped else "invalid_json")

        run()
    stored_ids = {m["messageId"] for m in fuzz_server.messages()}
    assert stored_ids.isdisjoint(ids)
