"""The `webhook` and `segment` destinations against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import email.utils
import hashlib
import hmac
import json
import re
import time
from datetime import UTC, datetime
from typing import Any

import pytest
import xxhash

from headwater.delivery.destinations.base import (
    DestinationSpec,
    check_destination,
    destination_types,
    make_destination,
)
from headwater.delivery.destinations.segment import MAX_REQUEST_BYTES, Segment
from headwater.delivery.destinations.webhook import Webhook
from headwater.delivery.model import DELIVERED, DISCARDED, RETRY, Event, Result
from tests.delivery.receiver import Receiver, Reply, unused_url


def event(i: int, **fields: Any) -> Event:
    message: dict[str, Any] = {"type": "track", "messageId": f"msg-{i}", "event": "Order"}
    message["properties"] = {"n": i, "text": "é ✓"}
    message.update(fields)
    return Event(f"msg-{i}", "src_1", 1_700_000_000_000 + i, f"p{i}", json.dumps(message).encode())


def spec(type_name: str, **settings: Any) -> DestinationSpec:
    return DestinationSpec("dst_test", "test", type_name, "default", settings)


def webhook(url: str, **settings: Any) -> Webhook:
    return Webhook(spec("webhook", url=url, **settings))


def segment(host: str, **settings: Any) -> Segment:
    return Segment(spec("segment", write_key="wk_1", host=host, **settings))


def deliver(dest: Webhook | Segment, events: list[Event]) -> list[Result]:
    """`dest.deliver(events)` in a loop of its own, then `dest.close()`."""

    async def go() -> list[Result]:
        try:
            return await dest.deliver(events)
        finally:
            await dest.close()

    return asyncio.run(go())


# --- webhook: requests ---------------------------------------------------------------------


def test_single_event_body_and_headers() -> None:
    ev = event(1)
    with Receiver() as rx:
        dest = webhook(rx.url + "/hooks/a?x=1", headers={"Authorization": "Bearer t", "X-A": "b"})
        assert deliver(dest, [ev]) == [Result(DELIVERED)]
        (req,) = rx.requests
    assert (req.method, req.path) == ("POST", "/hooks/a?x=1")
    assert req.body == ev.message  # the message's bytes, untouched
    assert req.header("content-type") == "application/json"
    assert (req.header("user-agent") or "").startswith("headwater")
    assert req.header("idempotency-key") == "msg-1"
    assert req.header("authorization") == "Bearer t"
    assert req.header("x-a") == "b"
    assert req.header("x-signature") is None


def test_custom_headers_replace_ours_whatever_their_case() -> None:
    headers = {"content-type": "application/vnd.x+json", "idempotency-key": "mine"}
    with Receiver() as rx:
        deliver(webhook(rx.url, headers=headers), [event(1)])
        (req,) = rx.requests
    assert req.header("content-type") == "application/vnd.x+json"
    assert req.header("idempotency-key") == "msg-1"  # always ours


def test_batches_are_arrays_in_order() -> None:
    events = [event(i) for i in range(5)]
    with Receiver() as rx:
        results = deliver(webhook(rx.url, batch_size=3, method="put"), events)
        first, second = rx.requests
    assert results == [Result(DELIVERED)] * 5
    assert first.method == second.method == "PUT"
    assert first.body == b"[" + b",".join(e.message for e in events[:3]) + b"]"
    assert [m["messageId"] for m in second.json()] == ["msg-3", "msg-4"]
    key = "batch-" + xxhash.xxh3_128_hexdigest(b"msg-0\nmsg-1\nmsg-2")
    assert first.header("idempotency-key") == key
    assert (second.header("idempotency-key") or "").startswith("batch-")
    assert second.header("idempotency-key") != key


def test_batch_of_one_event_is_still_an_array() -> None:
    with Receiver() as rx:
        deliver(webhook(rx.url, batch_size=10), [event(1)])
        assert rx.requests[0].json() == [json.loads(event(1).message)]
        assert rx.requests[0].header("idempotency-key") == "msg-1"


@pytest.mark.parametrize("header", [None, "X-Hub-Signature-256"])
def test_hmac_signature(header: str | None) -> None:
    settings: dict[str, Any] = {"secret": "s3cret", "batch_size": 2}
    if header:
        settings["signature_header"] = header
    with Receiver() as rx:
        deliver(webhook(rx.url, **settings), [event(1), event(2)])
        (req,) = rx.requests
    expected = hmac.new(b"s3cret", req.body, hashlib.sha256).hexdigest()
    assert req.header(header or "X-Signature") == f"sha256={expected}"


def test_requests_share_a_pool_of_max_in_flight_connections() -> None:
    async def go(rx: Receiver) -> list[list[Result]]:
        dest = webhook(rx.url, max_in_flight=2)
        try:
            return await asyncio.gather(*(dest.deliver([event(i)]) for i in range(5)))
        finally:
            await dest.close()

    with Receiver(Reply(200, delay=0.05)) as rx:
        results = asyncio.run(go(rx))
        assert rx.peak_in_flight == 2
    assert results == [[Result(DELIVERED)]] * 5


# --- webhook: answers ----------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 201, 202, 204])
def test_2xx_is_delivered(status: int) -> None:
    with Receiver(status) as rx:
        assert deliver(webhook(rx.url), [event(1)]) == [Result(DELIVERED)]


@pytest.mark.parametrize("status", [408, 423, 429, 500, 502, 503, 504])
def test_retryable_statuses(status: int) -> None:
    events = [event(1), event(2)]
    with Receiver(Reply(status, b'{"error":"busy"}')) as rx:
        results = deliver(webhook(rx.url, batch_size=2), events)
    body = b"[" + events[0].message + b"," + events[1].message + b"]"
    expected = Result(RETRY, f"http_{status}", status, None, body, b'{"error":"busy"}')
    assert results == [expected, expected]  # a batch's result applies to each of its events


@pytest.mark.parametrize("status", [501, 400, 401, 403, 404, 413, 422, 301])
def test_final_statuses_discard(status: int) -> None:
    ev = event(1)
    reply = Reply(status, b"nope", headers={"Retry-After": "5", "Location": "/x"})
    with Receiver(reply) as rx:
        (result,) = deliver(webhook(rx.url), [ev])
        assert len(rx.requests) == 1  # a redirect is an answer, not followed
    assert result == Result(DISCARDED, f"http_{status}", status, None, ev.message, b"nope")


def test_samples_are_cut() -> None:
    ev = event(1, properties={"blob": "x" * 10_000})
    with Receiver(Reply(500, b"y" * 10_000)) as rx:
        (result,) = deliver(webhook(rx.url), [ev])
    assert result.request == ev.message[:2048]
    assert result.response == b"y" * 2048


def test_retry_after_seconds() -> None:
    with Receiver(Reply(429, headers={"Retry-After": "7"})) as rx:
        (result,) = deliver(webhook(rx.url), [event(1)])
    assert (result.outcome, result.reason, result.retry_after_s) == (RETRY, "http_429", 7.0)


def test_retry_after_http_date() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    with Receiver(Reply(503, headers={"Retry-After": when})) as rx:
        (result,) = deliver(webhook(rx.url), [event(1)])
    assert result.reason == "http_503"
    assert result.retry_after_s is not None and 28 <= result.retry_after_s <= 30


def test_a_sequence_of_answers_on_one_client() -> None:
    async def go(dest: Webhook) -> list[Result]:
        try:
            return [(await dest.deliver([event(i)]))[0] for i in range(3)]
        finally:
            await dest.close()

    with Receiver(500, 429, 200) as rx:
        results = asyncio.run(go(webhook(rx.url)))
    assert [r.reason for r in results] == ["http_500", "http_429", ""]


def test_timeout() -> None:
    ev = event(1)
    with Receiver(Reply(200, delay=5)) as rx:
        start = time.monotonic()
        (result,) = deliver(webhook(rx.url, timeout="200ms"), [ev])
        elapsed = time.monotonic() - start
    assert result == Result(RETRY, "timeout", request=ev.message)
    assert 0.2 <= elapsed < 0.2 + 0.5


def test_client_recovers_after_a_timeout() -> None:
    async def go(dest: Webhook) -> list[Result]:
        try:
            return [(await dest.deliver([event(i)]))[0] for i in range(2)]
        finally:
            await dest.close()

    with Receiver(Reply(200, delay=5), 200) as rx:
        results = asyncio.run(go(webhook(rx.url, timeout="150ms")))
    assert [r.reason for r in results] == ["timeout", ""]


def test_timeout_as_number() -> None:
    with Receiver(Reply(200, delay=5)) as rx:
        start = time.monotonic()
        (result,) = deliver(webhook(rx.url, timeout=0.15), [event(1)])
    assert result.reason == "timeout"
    assert time.monotonic() - start < 0.65


def test_requests_go_through_the_proxy_the_environment_names(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with Receiver() as proxy:
        monkeypatch.setenv("HTTP_PROXY", proxy.url)
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        (result,) = deliver(webhook("http://hooks.example.invalid/in"), [event(1)])
        assert result.outcome == DELIVERED
        (request,) = proxy.requests  # a proxy request names the whole URL
        assert request.path == "http://hooks.example.invalid/in"
        assert request.json()["messageId"] == "msg-1"


def test_hosts_no_proxy_names_are_reached_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTP_PROXY", unused_url())  # would refuse the connection
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    with Receiver() as rx:
        (result,) = deliver(webhook(rx.url), [event(1)])
        assert result.outcome == DELIVERED
        assert rx.requests[0].path == "/"


def test_connection_refused() -> None:
    ev = event(1)
    (result,) = deliver(webhook(unused_url()), [ev])
    assert result == Result(RETRY, "connection_error", request=ev.message)


def test_connection_dropped_without_answer() -> None:
    with Receiver(Reply(close=True)) as rx:
        (result,) = deliver(webhook(rx.url), [event(1)])
        assert len(rx.requests) == 1
    assert (result.outcome, result.reason) == (RETRY, "connection_error")


def test_close_without_use_and_twice() -> None:
    async def go() -> None:
        dest = webhook("http://127.0.0.1:9")
        await dest.close()
        await dest.close()

    asyncio.run(go())


# --- settings ------------------------------------------------------------------------------


def test_registry_and_defaults() -> None:
    assert {"segment", "webhook"} <= set(destination_types())
    dest = make_destination(spec("webhook", url="https://example.com/h"))
    assert (dest.max_batch, dest.max_in_flight, dest.ordered) == (1, 8, False)
    assert isinstance(dest, Webhook) and dest.settings.timeout == 10.0
    dest = make_destination(spec("webhook", url="http://x", timeout="500ms", ordered=True))
    assert isinstance(dest, Webhook) and dest.settings.timeout == 0.5 and dest.ordered
    seg = make_destination(spec("segment", write_key="k"))
    assert (seg.max_batch, seg.max_in_flight, seg.ordered) == (100, 4, False)
    assert isinstance(seg, Segment) and seg.url == "https://api.segment.io/v1/batch"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "url is required"),
        ({"url": "ftp://example.com"}, "http or https"),
        ({"url": "example.com/hook"}, "http or https"),
        ({"url": "http://"}, "http or https"),
        ({"url": "http://example.com:99999"}, "not a valid URL"),
        ({"url": 5}, "http or https"),
        ({"url": "http://x", "uri": "http://y"}, "unknown setting(s) 'uri'"),
        ({"url": "http://x", "method": "GET"}, "POST or PUT"),
        ({"url": "http://x", "headers": ["a"]}, "mapping"),
        ({"url": "http://x", "headers": {"a": 1}}, "one-line string"),
        ({"url": "http://x", "headers": {"a": "b\r\nc: d"}}, "one-line string"),
        ({"url": "http://x", "headers": {"bad name": "v"}}, "header name"),
        ({"url": "http://x", "headers": {"Content-Length": "3"}}, "set by the request"),
        ({"url": "http://x", "batch_size": 0}, "batch_size"),
        ({"url": "http://x", "batch_size": 1001}, "batch_size"),
        ({"url": "http://x", "batch_size": "10"}, "batch_size"),
        ({"url": "http://x", "batch_size": True}, "batch_size"),
        ({"url": "http://x", "timeout": "ten"}, "timeout: not a duration"),
        ({"url": "http://x", "timeout": 0}, "timeout"),
        ({"url": "http://x", "timeout": -1}, "timeout"),
        ({"url": "http://x", "timeout": [1]}, "timeout"),
        ({"url": "http://x", "secret": ""}, "secret"),
        ({"url": "http://x", "signature_header": "a b"}, "header name"),
        ({"url": "http://x", "max_in_flight": 0}, "max_in_flight"),
        ({"url": "http://x", "ordered": "yes"}, "ordered"),
    ],
)
def test_webhook_settings_errors(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        check_destination("webhook", settings)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "write_key"),
        ({"write_key": ""}, "write_key"),
        ({"write_key": "k", "host": "api.segment.io"}, "host must be an http or https URL"),
        ({"write_key": "k", "batch_size": 501}, "batch_size"),
        ({"write_key": "k", "timeout": "1 minute"}, "not a duration"),
        ({"write_key": "k", "url": "http://x"}, "unknown setting(s) 'url'"),
        ({"write_key": "k", "max_in_flight": 1.5}, "max_in_flight"),
    ],
)
def test_segment_settings_errors(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        check_destination("segment", settings)


# --- segment -------------------------------------------------------------------------------


def test_segment_request() -> None:
    events = [event(1), event(2, profileId="prof_1", userId="u2"), event(3)]
    with Receiver() as rx:
        before = datetime.now(UTC)
        results = deliver(segment(rx.url + "/prefix/"), events)
        (req,) = rx.requests
    assert results == [Result(DELIVERED)] * 3
    assert (req.method, req.path) == ("POST", "/prefix/v1/batch")
    assert req.header("authorization") == "Basic " + base64.b64encode(b"wk_1:").decode()
    assert req.header("content-type") == "application/json"
    assert req.header("idempotency-key") == "batch-" + xxhash.xxh3_128_hexdigest(
        b"msg-1\nmsg-2\nmsg-3"
    )
    body = req.json()
    assert set(body) == {"batch", "sentAt"}
    second = json.loads(events[1].message)
    del second["profileId"]
    assert body["batch"] == [json.loads(events[0].message), second, json.loads(events[2].message)]
    assert events[0].message in req.body and events[2].message in req.body  # not re-encoded
    assert b"profileId" not in req.body
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", body["sentAt"])
    sent = datetime.fromisoformat(body["sentAt"].replace("Z", "+00:00"))
    assert abs((sent - before).total_seconds()) < 2


def test_segment_single_event_key() -> None:
    with Receiver() as rx:
        deliver(segment(rx.url), [event(7)])
        assert rx.requests[0].header("idempotency-key") == "msg-7"


def test_segment_discards_messages_over_32kb() -> None:
    events = [event(1), event(2, properties={"blob": "x" * 40_000}), event(3)]
    with Receiver() as rx:
        results = deliver(segment(rx.url), events)
        (req,) = rx.requests
    assert [r.outcome for r in results] == [DELIVERED, DISCARDED, DELIVERED]
    assert results[1].reason == "message_too_large"
    assert [m["messageId"] for m in req.json()["batch"]] == ["msg-1", "msg-3"]


def test_segment_all_messages_too_large_sends_nothing() -> None:
    with Receiver() as rx:
        results = deliver(segment(rx.url), [event(1, properties={"blob": "x" * 33_000})])
        assert rx.requests == []
    assert [r.reason for r in results] == ["message_too_large"]


def test_segment_splits_requests_under_500kb() -> None:
    events = [event(i, properties={"blob": "x" * 30_000}) for i in range(40)]  # ~1.2 MB
    with Receiver(200, 500, 200) as rx:
        results = deliver(segment(rx.url, batch_size=500), events)
        requests = rx.requests
    assert len(requests) == 3
    assert all(len(r.body) < MAX_REQUEST_BYTES for r in requests)
    sent = [[m["messageId"] for m in r.json()["batch"]] for r in requests]
    assert [m for ids in sent for m in ids] == [f"msg-{i}" for i in range(40)]
    # each event has the result of its own request
    expected = [DELIVERED] * len(sent[0]) + [RETRY] * len(sent[1]) + [DELIVERED] * len(sent[2])
    assert [r.outcome for r in results] == expected
    assert {r.reason for r in results[len(sent[0]) : len(sent[0]) + len(sent[1])]} == {"http_500"}


def test_segment_batch_size() -> None:
    with Receiver() as rx:
        deliver(segment(rx.url, batch_size=3), [event(i) for i in range(7)])
        assert [len(r.json()["batch"]) for r in rx.requests] == [3, 3, 1]


def test_segment_failures() -> None:
    events = [event(1), event(2)]
    with Receiver(Reply(429, b"slow", {"Retry-After": "3"}), Reply(400, b"bad")) as rx:
        first = deliver(segment(rx.url), events)
        second = deliver(segment(rx.url), events)
    assert [(r.outcome, r.reason, r.retry_after_s) for r in first] == [(RETRY, "http_429", 3.0)] * 2
    assert first[0].request is not None and first[0].request.startswith(b'{"batch":[')
    assert first[0].response == b"slow"
    assert [(r.outcome, r.reason) for r in second] == [(DISCARDED, "http_400")] * 2
    assert [r.reason for r in deliver(segment(unused_url()), events)] == ["connection_error"] * 2


def test_segment_timeout() -> None:
    with Receiver(Reply(200, delay=5)) as rx:
        start = time.monotonic()
        results = deliver(segment(rx.url, timeout="150ms"), [event(1)])
    assert [r.reason for r in results] == ["timeout"]
    assert time.monotonic() - start < 0.65
