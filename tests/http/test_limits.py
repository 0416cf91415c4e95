"""Size and count limits: 32 KB per message, 500 KB per batch request (before and after gzip),
2,500 messages per batch, 100 characters per messageId; and gzip bombs."""

from __future__ import annotations

import gzip
import json
import os

import httpx
import pytest

from tests.http._helpers import (
    AUTH,
    assert_error,
    assert_not_stored,
    assert_ok,
    dropped,
    new_id,
    stored,
    stored_one,
    track,
)
from tests.support.server import HeadwaterServer

MESSAGE_LIMIT = 32 * 1024
BATCH_LIMIT = 500 * 1024
MAX_MESSAGES = 2500


def compact(body: object) -> bytes:
    return json.dumps(body, separators=(",", ":")).encode()


def single_of_size(size: int, mid: str) -> bytes:
    """A track message of exactly `size` bytes."""
    msg = track(mid, properties={"pad": ""})
    msg["properties"]["pad"] = "x" * (size - len(compact(msg)))
    data = compact(msg)
    assert len(data) == size
    return data


def batch_of_size(size: int, ids: list[str]) -> bytes:
    """A batch body of exactly `size` bytes, its messages padded evenly."""
    msgs = [track(mid, properties={"pad": ""}) for mid in ids]
    need = size - len(compact({"batch": msgs}))
    per, rest = divmod(need, len(ids))
    for i, msg in enumerate(msgs):
        msg["properties"]["pad"] = "x" * (per + (rest if i == 0 else 0))
    data = compact({"batch": msgs})
    assert len(data) == size
    return data


def assert_over_limit(r: httpx.Response, limit: int) -> None:
    body = assert_error(r, 400)
    assert "Exceed payload limit" in body["message"]
    assert str(limit) in body["message"]


@pytest.mark.parametrize("path", ["/v1/track", "/v1/t"])
def test_a_single_message_of_exactly_32kb_is_stored(server: HeadwaterServer, path: str) -> None:
    mid = new_id()
    with server.client() as http:
        assert_ok(http.post(path, content=single_of_size(MESSAGE_LIMIT, mid), headers=AUTH))
    stored_one(server, mid)


@pytest.mark.parametrize("path", ["/v1/track", "/v1/t"])
def test_a_single_message_over_32kb_is_400(server: HeadwaterServer, path: str) -> None:
    mid = new_id()
    with server.client() as http:
        r = http.post(path, content=single_of_size(MESSAGE_LIMIT + 1, mid), headers=AUTH)
    assert_over_limit(r, MESSAGE_LIMIT)
    assert_not_stored(server, mid)


def test_a_single_message_over_32kb_once_decompressed_is_400(server: HeadwaterServer) -> None:
    mid = new_id()
    data = gzip.compress(single_of_size(MESSAGE_LIMIT + 1, mid))
    assert len(data) < 1024
    with server.client() as http:
        r = http.post("/v1/track", content=data, headers={**AUTH, "Content-Encoding": "gzip"})
    assert_over_limit(r, MESSAGE_LIMIT)
    assert_not_stored(server, mid)


def test_a_message_over_32kb_in_a_batch_is_dropped_and_the_rest_stored(
    server: HeadwaterServer,
) -> None:
    small, big, last = new_id(), new_id(), new_id()
    big_msg = json.loads(single_of_size(MESSAGE_LIMIT + 100, big))
    body = {"batch": [track(small), big_msg, track(last)]}
    with server.client() as http:
        r = http.post("/v1/batch", content=compact(body), headers=AUTH)
    assert dropped(r) == {1: "message_too_large"}
    found = stored(server, small, big, last)
    assert len(found[small]) == 1
    assert len(found[last]) == 1
    assert found[big] == []


def test_a_message_of_exactly_32kb_in_a_batch_is_stored(server: HeadwaterServer) -> None:
    at_limit, over = new_id(), new_id()
    batch = [single_of_size(MESSAGE_LIMIT, at_limit), single_of_size(MESSAGE_LIMIT + 1, over)]
    data = b'{"batch":[' + b",".join(batch) + b"]}"
    with server.client() as http:
        r = http.post("/v1/batch", content=data, headers=AUTH)
    assert dropped(r) == {1: "message_too_large"}
    stored_one(server, at_limit)
    assert_not_stored(server, over)


def test_a_batch_of_exactly_500kb_is_stored(server: HeadwaterServer) -> None:
    ids = [new_id() for _ in range(20)]
    with server.client() as http:
        assert_ok(http.post("/v1/batch", content=batch_of_size(BATCH_LIMIT, ids), headers=AUTH))
    assert all(len(v) == 1 for v in stored(server, *ids).values())


@pytest.mark.parametrize("path", ["/v1/batch", "/v1/import"])
def test_a_batch_over_500kb_is_400_and_nothing_stored(server: HeadwaterServer, path: str) -> None:
    ids = [new_id() for _ in range(20)]
    with server.client() as http:
        r = http.post(path, content=batch_of_size(BATCH_LIMIT + 1, ids), headers=AUTH)
    assert_over_limit(r, BATCH_LIMIT)
    assert_not_stored(server, *ids)


def test_a_gzip_batch_of_500kb_decompressed_is_stored(server: HeadwaterServer) -> None:
    ids = [new_id() for _ in range(20)]
    data = gzip.compress(batch_of_size(BATCH_LIMIT, ids))
    with server.client() as http:
        r = http.post("/v1/batch", content=data, headers={**AUTH, "Content-Encoding": "gzip"})
    assert_ok(r)
    assert all(len(v) == 1 for v in stored(server, *ids).values())


def test_a_gzip_batch_over_500kb_decompressed_is_400(server: HeadwaterServer) -> None:
    ids = [new_id() for _ in range(20)]
    data = gzip.compress(batch_of_size(BATCH_LIMIT + 1, ids))
    with server.client() as http:
        r = http.post("/v1/batch", content=data, headers={**AUTH, "Content-Encoding": "gzip"})
    assert_over_limit(r, BATCH_LIMIT)
    assert_not_stored(server, *ids)


def test_a_compressed_body_over_500kb_is_400(server: HeadwaterServer) -> None:
    data = gzip.compress(os.urandom(BATCH_LIMIT + 1024))  # incompressible
    assert len(data) > BATCH_LIMIT
    with server.client() as http:
        r = http.post("/v1/batch", content=data, headers={**AUTH, "Content-Encoding": "gzip"})
    assert_over_limit(r, BATCH_LIMIT)


@pytest.mark.parametrize(("path", "limit"), [("/v1/batch", BATCH_LIMIT), ("/v1/t", MESSAGE_LIMIT)])
def test_a_gzip_bomb_is_400_and_stores_nothing(
    server: HeadwaterServer, path: str, limit: int
) -> None:
    """10 MB of JSON (a valid message, then whitespace) compressed to ~10 KB."""
    mid = new_id()
    body = track(mid) if path == "/v1/t" else {"batch": [track(mid)]}
    data = json.dumps(body).encode()[:-1] + b" " * 10_000_000 + b"}"
    bomb = gzip.compress(data, compresslevel=9)
    assert len(bomb) < 20_000
    with server.client() as http:
        r = http.post(path, content=bomb, headers={**AUTH, "Content-Encoding": "gzip"})
    assert_over_limit(r, limit)
    assert_not_stored(server, mid)


def test_a_gzip_bomb_of_zeros_is_400(server: HeadwaterServer) -> None:
    bomb = gzip.compress(b"\0" * 10_000_000)
    with server.client() as http:
        r = http.post("/v1/batch", content=bomb, headers={**AUTH, "Content-Encoding": "gzip"})
    assert_over_limit(r, BATCH_LIMIT)
    # the server is still fine afterwards
    mid = new_id()
    with server.client() as http:
        assert_ok(http.post("/v1/track", json=track(mid), headers=AUTH))
    stored_one(server, mid)


def test_a_batch_of_2500_messages_is_stored(server: HeadwaterServer) -> None:
    run = new_id("max")
    ids = [f"{run}-{i}" for i in range(MAX_MESSAGES)]
    body = {"batch": [{"type": "track", "userId": "u", "event": "e", "messageId": m} for m in ids]}
    assert len(compact(body)) < BATCH_LIMIT
    with server.client() as http:
        assert_ok(http.post("/v1/batch", content=compact(body), headers=AUTH))
    found = stored(server, *ids)
    assert sum(len(v) for v in found.values()) == MAX_MESSAGES
    assert all(len(v) == 1 for v in found.values())


def test_a_batch_of_2501_messages_is_400_and_nothing_stored(server: HeadwaterServer) -> None:
    run = new_id("over")
    ids = [f"{run}-{i}" for i in range(MAX_MESSAGES + 1)]
    body = {"batch": [{"type": "track", "userId": "u", "event": "e", "messageId": m} for m in ids]}
    with server.client() as http:
        r = http.post("/v1/batch", content=compact(body), headers=AUTH)
    assert_error(r, 400, "too_many_messages")
    assert_not_stored(server, ids[0], ids[-1])


def test_message_id_of_100_characters_is_kept_over_100_dropped(server: HeadwaterServer) -> None:
    prefix = new_id("len")
    ok = prefix + "a" * (100 - len(prefix))
    too_long = prefix + "b" * (101 - len(prefix))
    with server.client() as http:
        r = http.post("/v1/batch", json={"batch": [track(ok), track(too_long)]}, headers=AUTH)
    assert dropped(r) == {1: "bad_request"}
    stored_one(server, ok)
    assert_not_stored(server, too_long)


def test_browser_metrics_over_the_limit_are_400(server: HeadwaterServer) -> None:
    with server.client() as http:
        r = http.post("/v1/m", content=b"{" + b" " * (600 * 1024) + b"}")
    assert_over_limit(r, 512 * 1024)
