"""Bodies as clients send them: any Content-Type, gzip/deflate, chunked; and what malformed,
corrupt or unsupported bodies get."""

from __future__ import annotations

import gzip
import json
import zlib
from collections.abc import Callable, Iterator

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


@pytest.mark.parametrize(
    "content_type",
    [
        "application/json",
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        "application/octet-stream",
        None,
    ],
)
@pytest.mark.parametrize("path", ["/v1/t", "/v1/batch"])
def test_any_content_type_is_parsed_as_json(
    server: HeadwaterServer, path: str, content_type: str | None
) -> None:
    mid = new_id()
    body = track(mid) if path == "/v1/t" else {"batch": [track(mid)]}
    headers = dict(AUTH)
    if content_type is not None:
        headers["Content-Type"] = content_type
    with server.client() as http:
        assert_ok(http.post(path, content=json.dumps(body).encode(), headers=headers))
    stored_one(server, mid)


@pytest.mark.parametrize(
    ("encoding", "compress"),
    [
        ("gzip", gzip.compress),
        ("GZIP", gzip.compress),
        ("x-gzip", gzip.compress),
        ("deflate", zlib.compress),
        ("identity", lambda data: data),
    ],
)
@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
def test_compressed_bodies_are_accepted(
    server: HeadwaterServer, path: str, encoding: str, compress: Callable[[bytes], bytes]
) -> None:
    mid = new_id()
    body = track(mid) if path == "/v1/track" else {"batch": [track(mid)]}
    data = compress(json.dumps(body).encode())
    with server.client() as http:
        r = http.post(path, content=data, headers={**AUTH, "Content-Encoding": encoding})
    assert_ok(r)
    assert stored_one(server, mid)["event"] == "Order Completed"


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, br"])
def test_unsupported_content_encoding_is_415(server: HeadwaterServer, encoding: str) -> None:
    mid = new_id()
    with server.client() as http:
        r = http.post(
            "/v1/batch",
            content=json.dumps({"batch": [track(mid)]}).encode(),
            headers={**AUTH, "Content-Encoding": encoding},
        )
    assert_error(r, 415)
    assert_not_stored(server, mid)


def test_corrupt_gzip_is_400(server: HeadwaterServer) -> None:
    mid = new_id()
    data = bytearray(gzip.compress(json.dumps({"batch": [track(mid)]}).encode()))
    data[12:20] = b"\xff" * 8  # damage the deflate stream
    with server.client() as http:
        r = http.post(
            "/v1/batch", content=bytes(data), headers={**AUTH, "Content-Encoding": "gzip"}
        )
    assert_error(r, 400)
    assert_not_stored(server, mid)


@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
def test_plain_json_sent_as_gzip_is_400(server: HeadwaterServer, path: str) -> None:
    mid = new_id()
    body = track(mid) if path == "/v1/track" else {"batch": [track(mid)]}
    with server.client() as http:
        r = http.post(
            path, content=json.dumps(body).encode(), headers={**AUTH, "Content-Encoding": "gzip"}
        )
    assert_error(r, 400)
    assert_not_stored(server, mid)


def test_truncated_gzip_is_400(server: HeadwaterServer) -> None:
    mid = new_id()
    data = gzip.compress(json.dumps({"batch": [track(mid)]}).encode())
    with server.client() as http:
        r = http.post(
            "/v1/batch",
            content=data[: len(data) // 2],
            headers={**AUTH, "Content-Encoding": "gzip"},
        )
    assert_error(r, 400)
    assert_not_stored(server, mid)


MALFORMED = [b"", b"{", b"nul", b'{"batch": [', b"{'batch': []}", b'{"batch": [}]}', b"\xff\xfe"]


@pytest.mark.parametrize("body", MALFORMED, ids=[repr(b) for b in MALFORMED])
@pytest.mark.parametrize("path", ["/v1/track", "/v1/batch"])
def test_malformed_json_is_400_with_code_and_message(
    server: HeadwaterServer, path: str, body: bytes
) -> None:
    with server.client() as http:
        assert_error(http.post(path, content=body, headers=AUTH), 400)


def test_a_truncated_batch_stores_none_of_its_messages(server: HeadwaterServer) -> None:
    ids = [new_id() for _ in range(5)]
    data = json.dumps({"batch": [track(m) for m in ids]}).encode()
    with server.client() as http:
        r = http.post("/v1/batch", content=data[:-40], headers=AUTH)
    assert_error(r, 400, "invalid_json")
    assert_not_stored(server, *ids)


@pytest.mark.parametrize("body", [[1, 2], "a string", 42, None, True])
def test_a_single_message_that_is_not_an_object_is_400(
    server: HeadwaterServer, body: object
) -> None:
    with server.client() as http:
        assert_error(http.post("/v1/track", json=body, headers=AUTH), 400)


@pytest.mark.parametrize(
    "body",
    [[{"type": "track"}], {"batch": "nope"}, {"batch": {"type": "track"}}, "x", 1, None],
    ids=["array", "batch-string", "batch-object", "string", "number", "null"],
)
def test_a_body_that_is_not_a_batch_is_400(server: HeadwaterServer, body: object) -> None:
    with server.client() as http:
        assert_error(http.post("/v1/batch", json=body, headers=AUTH), 400)


@pytest.mark.parametrize("body", [{"batch": []}, {"sentAt": "2024-01-01T00:00:00Z"}, {}])
def test_a_batch_without_messages_is_400_empty_batch(server: HeadwaterServer, body: object) -> None:
    with server.client() as http:
        assert_error(http.post("/v1/batch", json=body, headers=AUTH), 400, "empty_batch")


def test_chunked_bodies_are_accepted(server: HeadwaterServer) -> None:
    ids = [new_id() for _ in range(3)]
    data = json.dumps({"batch": [track(m) for m in ids]}).encode()

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding: chunked
        for i in range(0, len(data), 50):
            yield data[i : i + 50]

    with server.client() as http:
        assert_ok(http.post("/v1/batch", content=chunks(), headers=AUTH))
    assert all(len(v) == 1 for v in stored(server, *ids).values())


def test_json_with_unicode_and_escapes_is_stored_as_sent(server: HeadwaterServer) -> None:
    mid = new_id()
    props = {"name": "Zoë 🚀 中文", "quote": 'say "hi"\n\ttab', "slash": "a/b\\c", "nul": "\u0000"}
    with server.client() as http:
        r = http.post(
            "/v1/track",
            content=json.dumps(track(mid, properties=props), ensure_ascii=False).encode(),
            headers=AUTH,
        )
    assert_ok(r)
    assert stored_one(server, mid)["properties"] == props


def test_a_lone_surrogate_escape_does_not_lose_the_batch(server: HeadwaterServer) -> None:
    ok, odd = new_id(), new_id()
    odd_msg = json.dumps(track(odd, properties={"title": "PLACEHOLDER"}))
    odd_msg = odd_msg.replace("PLACEHOLDER", "Launch \\ud83d")  # a half emoji, escaped
    data = ('{"batch": [' + json.dumps(track(ok)) + ", " + odd_msg + "]}").encode()
    json.loads(data)  # valid JSON for Python (as for Go, Node and browsers)
    with server.client() as http:
        r = http.post("/v1/batch", content=data, headers=AUTH)
    assert r.status_code == 200, r.text
    assert 0 not in dropped(r)
    stored_one(server, ok)


@pytest.mark.parametrize("depth", [1000, 100_000])
@pytest.mark.parametrize(
    ("path", "where"),
    [
        ("/v1/track", "properties"),
        ("/v1/batch", "properties"),
        ("/v1/batch", "batch-context"),
        ("/v1/batch", "batch-sent-at"),
    ],
)
def test_deeply_nested_json_is_400_not_a_server_error(
    server: HeadwaterServer, path: str, where: str, depth: int
) -> None:
    nested = "[" * depth + "]" * depth
    mid = new_id()
    msg = json.dumps(track(mid, properties={"deep": "PLACEHOLDER"}))
    if where == "properties":
        msg = msg.replace('"PLACEHOLDER"', nested)
        data = msg if path == "/v1/track" else '{"batch": [' + msg + "]}"
    else:
        field = "context" if where == "batch-context" else "sentAt"
        data = '{"batch": [' + msg + '], "' + field + '": ' + nested + "}"
    with server.client() as http:
        r = http.post(path, content=data.encode(), headers=AUTH)
    assert_error(r, 400)
    assert_not_stored(server, mid)


def test_a_multi_member_gzip_body_is_inflated_whole(server: HeadwaterServer) -> None:
    ids = [new_id(), new_id()]
    data = json.dumps({"batch": [track(m) for m in ids]}).encode()
    half = len(data) // 2
    body = gzip.compress(data[:half]) + gzip.compress(data[half:])  # RFC 1952 members
    with server.client() as http:
        r = http.post("/v1/batch", content=body, headers={**AUTH, "Content-Encoding": "gzip"})
    assert_ok(r)
    assert all(len(v) == 1 for v in stored(server, *ids).values())


def test_junk_after_the_gzip_body_is_400(server: HeadwaterServer) -> None:
    mid = new_id()
    body = gzip.compress(json.dumps({"batch": [track(mid)]}).encode()) + b"junk"
    with server.client() as http:
        r = http.post("/v1/batch", content=body, headers={**AUTH, "Content-Encoding": "gzip"})
    assert_error(r, 400)
    assert_not_stored(server, mid)
