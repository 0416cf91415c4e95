"""HTTP plumbing of the gateway (`headwater.gateway.http`): body limits, decompression,
Basic auth, the client's address behind proxies, CORS."""

from __future__ import annotations

import base64
import gzip
import json
import zlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.gateway.http import (
    ClientAddress,
    HttpError,
    basic_auth_key,
    cors_headers,
    decompress,
    preflight_headers,
    request_body,
    too_large,
)
from headwater.gateway.server import Request


def request(headers: dict[str, str], body: bytes, client: str | None = "203.0.113.5") -> Request:
    return Request("POST", "/v1/batch", "", headers, client, body)


def read(headers: dict[str, str], body: bytes, limit: int) -> bytes:
    return request_body(request(headers, body), limit)


def error_of(headers: dict[str, str], body: bytes, limit: int) -> HttpError:
    with pytest.raises(HttpError) as info:
        read(headers, body, limit)
    return info.value


# -- request_body --------------------------------------------------------------------------------


def test_request_body_is_the_body_as_sent() -> None:
    assert read({}, b"hello", 5) == b"hello"
    assert read({}, b"", 5) == b""


def test_a_body_over_the_limit_is_refused() -> None:
    err = error_of({}, b"x" * 6, 5)
    assert (err.status, err.code) == (400, "payload_too_large")
    assert "5 bytes" in err.message


@pytest.mark.parametrize("encoding", ["gzip", "GZIP", " gzip ", "x-gzip"])
def test_request_body_inflates_gzip(encoding: str) -> None:
    payload = b'{"batch":[]}' * 100
    assert read({"content-encoding": encoding}, gzip.compress(payload), 2000) == payload


def test_the_limit_applies_after_decompression_too() -> None:
    payload = b"x" * 10_000
    compressed = gzip.compress(payload)
    assert len(compressed) < 1000
    err = error_of({"content-encoding": "gzip"}, compressed, 1000)
    assert err.code == "payload_too_large"


def test_http_error_body_and_too_large() -> None:
    err = HttpError(429, "busy", "try later", retry_after=3)
    assert json.loads(err.body()) == {"code": "busy", "message": "try later"}
    assert err.retry_after == 3
    big = too_large(500)
    assert (big.status, big.code, big.message) == (400, "payload_too_large", str(big))
    assert "500" in big.message


# -- decompress ----------------------------------------------------------------------------------


def test_decompress_gzip_deflate_and_identity() -> None:
    data = b"hello world " * 50
    assert decompress(gzip.compress(data), "gzip", 1000) == data
    assert decompress(zlib.compress(data), "deflate", 1000) == data
    assert decompress(data, "identity", 1000) == data


def test_decompress_exactly_at_the_limit() -> None:
    data = b"a" * 1000
    assert decompress(gzip.compress(data), "gzip", 1000) == data
    with pytest.raises(HttpError) as info:
        decompress(gzip.compress(data), "gzip", 999)
    assert info.value.code == "payload_too_large"


def test_a_compression_bomb_is_refused() -> None:
    bomb = gzip.compress(b"\0" * 50_000_000)
    assert len(bomb) < 100_000
    with pytest.raises(HttpError) as info:
        decompress(bomb, "gzip", 500 * 1024)
    assert info.value.code == "payload_too_large"


@pytest.mark.parametrize("encoding", ["br", "zstd", "compress", "gzip, deflate"])
def test_unsupported_encodings(encoding: str) -> None:
    with pytest.raises(HttpError) as info:
        decompress(b"x", encoding, 100)
    assert (info.value.status, info.value.code) == (415, "unsupported_encoding")


@pytest.mark.parametrize(
    ("body", "encoding"),
    [
        (b"not gzip at all", "gzip"),
        (zlib.compress(b"x"), "gzip"),
        (gzip.compress(b"x"), "deflate"),
    ],
)
def test_invalid_compressed_bodies(body: bytes, encoding: str) -> None:
    with pytest.raises(HttpError) as info:
        decompress(body, encoding, 100)
    assert (info.value.status, info.value.code) == (400, "invalid_encoding")


@pytest.mark.parametrize("cut", [0, 5, -4, -1])
def test_a_truncated_gzip_body_is_invalid(cut: int) -> None:
    full = gzip.compress(b'{"batch":[{"type":"track"}]}')
    with pytest.raises(HttpError) as info:
        decompress(full[:cut], "gzip", 1000)
    assert info.value.code == "invalid_encoding"


def test_nothing_after_the_first_gzip_member_is_silently_dropped() -> None:
    body = gzip.compress(b'{"batch":[') + gzip.compress(b"]}")
    try:
        out = decompress(body, "gzip", 1000)
    except HttpError:  # refusing multi-member gzip would be fine too
        out = b'{"batch":[]}'
    assert out == b'{"batch":[]}'
    with pytest.raises(HttpError):
        decompress(gzip.compress(b"{}") + b"trailing junk", "gzip", 1000)


@given(st.binary(max_size=3000), st.integers(0, 4000))
def test_decompress_never_returns_more_than_the_limit(data: bytes, limit: int) -> None:
    try:
        out = decompress(gzip.compress(data), "gzip", limit)
    except HttpError as exc:
        assert exc.code == "payload_too_large"
        assert len(data) > limit
    else:
        assert out == data
        assert len(out) <= limit


@given(st.binary(max_size=500), st.sampled_from(["gzip", "deflate"]))
def test_decompress_of_junk_raises_only_http_errors(junk: bytes, encoding: str) -> None:
    try:
        out = decompress(junk, encoding, 1000)
    except HttpError as exc:
        assert exc.status == 400
    else:
        assert len(out) <= 1000


# -- basic_auth_key ------------------------------------------------------------------------------


def basic(credentials: bytes, scheme: str = "Basic ") -> str:
    return scheme + base64.b64encode(credentials).decode()


def test_basic_auth_write_key() -> None:
    assert basic_auth_key(basic(b"wk_abc:")) == "wk_abc"
    assert basic_auth_key(basic(b"wk_abc")) == "wk_abc"
    assert basic_auth_key(basic(b"wk_abc:ignored")) == "wk_abc"
    assert basic_auth_key(basic(b":wk_pw")) == "wk_pw"  # key sent as the password
    assert basic_auth_key(basic(b"wk_abc:", "basic ")) == "wk_abc"
    assert basic_auth_key(basic(b"wk_abc:", "BASIC ")) == "wk_abc"
    assert basic_auth_key("Basic   " + base64.b64encode(b"wk:").decode() + "  ") == "wk"


@pytest.mark.parametrize(
    "header",
    [
        None,
        "",
        "Bearer wk_abc",
        "Basic",
        "Basicd2s6",
        "Basic !!!",
        "Basic d2s",  # bad padding
        basic(b"\xff\xfe:"),
        basic(b":"),
        basic(b""),
    ],
)
def test_headers_without_a_write_key(header: str | None) -> None:
    assert basic_auth_key(header) is None


@given(st.text(max_size=60))
def test_basic_auth_key_never_raises(header: str) -> None:
    key = basic_auth_key(header)
    assert key is None or (isinstance(key, str) and key)


# -- ClientAddress -------------------------------------------------------------------------------


def scope(client: str | None, forwarded: str | None = None) -> Request:
    headers = {} if forwarded is None else {"x-forwarded-for": forwarded}
    return request(headers, b"", client)


@pytest.mark.parametrize("client", ["203.0.113.5", "2001:db8::1", "::1", None])
def test_the_peer_address(client: str | None) -> None:
    assert ClientAddress([]).of(scope(client)) == client
    assert ClientAddress(["10.0.0.0/8"]).of(scope(client)) == client


def test_forwarded_for_is_ignored_without_trusted_proxies() -> None:
    assert ClientAddress([]).of(scope("10.0.0.1", "1.2.3.4")) == "10.0.0.1"


def test_forwarded_for_is_ignored_from_an_untrusted_peer() -> None:
    addresses = ClientAddress(["10.0.0.0/8"])
    assert addresses.of(scope("198.51.100.7", "1.2.3.4")) == "198.51.100.7"


def test_the_rightmost_untrusted_hop_is_the_client() -> None:
    addresses = ClientAddress(["10.0.0.0/8", "192.168.1.1"])
    # a client can put anything on the left; only what trusted proxies appended is believed
    assert addresses.of(scope("10.0.0.1", "6.6.6.6, 1.2.3.4, 10.0.0.2")) == "1.2.3.4"
    assert addresses.of(scope("192.168.1.1", "1.2.3.4 ,  192.168.1.1")) == "1.2.3.4"
    assert addresses.of(scope("10.0.0.1", "1.2.3.4")) == "1.2.3.4"


def test_forwarded_for_of_only_trusted_hops_gives_the_peer() -> None:
    addresses = ClientAddress(["10.0.0.0/8"])
    assert addresses.of(scope("10.0.0.1", "10.0.0.2, 10.0.0.3")) == "10.0.0.1"
    assert addresses.of(scope("10.0.0.1", " , ,")) == "10.0.0.1"
    assert addresses.of(scope("10.0.0.1", "")) == "10.0.0.1"


def test_ipv6_trusted_proxies() -> None:
    addresses = ClientAddress(["fd00::/8", "127.0.0.1"])
    assert addresses.of(scope("fd00::1", "2001:db8::9")) == "2001:db8::9"
    assert addresses.of(scope("127.0.0.1", "2001:db8::9, fd00::5")) == "2001:db8::9"


def test_a_proxy_given_as_a_host_address_with_host_bits() -> None:
    addresses = ClientAddress(["10.1.2.3/8"])  # not strict: means 10.0.0.0/8
    assert addresses.of(scope("10.200.0.1", "1.2.3.4")) == "1.2.3.4"


def test_an_invalid_trusted_proxy_is_refused() -> None:
    with pytest.raises(ValueError, match="not-an-ip"):
        ClientAddress(["not-an-ip"])


# -- CORS ----------------------------------------------------------------------------------------


def test_cors_headers() -> None:
    assert cors_headers(None) == [("access-control-allow-origin", "*")]
    with_origin = dict(cors_headers("https://shop.example"))
    assert with_origin["access-control-allow-origin"] == "https://shop.example"
    assert with_origin["access-control-allow-credentials"] == "true"
    assert with_origin["vary"] == "Origin"


def test_preflight_headers() -> None:
    headers = dict(preflight_headers("https://shop.example", None))
    assert headers["access-control-allow-origin"] == "https://shop.example"
    assert "POST" in headers["access-control-allow-methods"]
    assert "OPTIONS" in headers["access-control-allow-methods"]
    allowed = headers["access-control-allow-headers"].lower()
    for name in ("content-type", "authorization", "content-encoding"):
        assert name in allowed
    assert int(headers["access-control-max-age"]) > 0
    echoed = dict(preflight_headers(None, "X-Custom, Content-Type"))
    assert echoed["access-control-allow-headers"] == "X-Custom, Content-Type"
    assert echoed["access-control-allow-origin"] == "*"
