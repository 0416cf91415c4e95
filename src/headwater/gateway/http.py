"""HTTP plumbing for the RSGI app: bounded body reading, gzip with a size cap, auth, responses."""

from __future__ import annotations

import base64
import binascii
import ipaddress
import zlib

import msgspec

from headwater.gateway.server import Request

JSON = "application/json"
SUCCESS_BODY = b'{"success":true}'

_encoder = msgspec.json.Encoder()


class HttpError(Exception):
    """Answer the request with `status` and a JSON body `{"code", "message"}`."""

    def __init__(
        self, status: int, code: str, message: str, *, retry_after: int | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def body(self) -> bytes:
        return _encoder.encode({"code": self.code, "message": self.message})


def too_large(limit: int) -> HttpError:
    return HttpError(400, "payload_too_large", f"Exceed payload limit ({limit} bytes)")


def request_body(request: Request, limit: int) -> bytes:
    """The request body, decompressed, refusing anything over `limit` bytes before or after
    decompression. (The HTTP server already refused bodies over the path's limit as sent.)"""
    body = request.body
    if len(body) > limit:
        raise too_large(limit)
    encoding = request.headers.get("content-encoding")
    if encoding:
        body = decompress(body, encoding.strip().lower(), limit)
    return body


def decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """Inflate gzip or deflate without ever producing more than `limit` bytes."""
    if encoding == "gzip" or encoding == "x-gzip":
        wbits = 16 + zlib.MAX_WBITS
    elif encoding == "deflate":
        wbits = zlib.MAX_WBITS
    elif encoding == "identity":
        return body
    else:
        raise HttpError(
            415,
            "unsupported_encoding",
            f"Content-Encoding {encoding!r} is not supported (use gzip)",
        )
    parts: list[bytes] = []
    size = 0
    rest = body
    while True:  # a gzip body may be several members one after another (RFC 1952)
        inflater = zlib.decompressobj(wbits)
        try:
            out = inflater.decompress(rest, limit + 1 - size)
        except zlib.error:
            raise HttpError(400, "invalid_encoding", f"the body is not valid {encoding}") from None
        size += len(out)
        if size > limit or inflater.unconsumed_tail:
            raise too_large(limit)
        if not inflater.eof:
            raise HttpError(400, "invalid_encoding", f"the {encoding} body is truncated")
        parts.append(out)
        rest = inflater.unused_data
        if not rest or wbits == zlib.MAX_WBITS:
            break
    if rest:
        raise HttpError(400, "invalid_encoding", f"data after the end of the {encoding} body")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def basic_auth_key(header: str | None) -> str | None:
    """The write key of an `Authorization: Basic base64(key:)` header (colon optional);
    None for other schemes (a Bearer token travels with the key in the body)."""
    if not header or header[:6].lower() != "basic ":
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=False).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, _, password = decoded.partition(":")
    return user or password or None


class ClientAddress:
    """Finds the client's IP, believing `X-Forwarded-For` only from trusted proxies."""

    def __init__(self, trusted_proxies: list[str]) -> None:
        self._trusted = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]

    def of(self, request: Request) -> str | None:
        peer = request.client
        if not self._trusted or peer is None:
            return peer
        forwarded = request.headers.get("x-forwarded-for")
        if not forwarded or not self._is_trusted(peer):
            return peer
        for hop in reversed([h.strip() for h in forwarded.split(",")]):
            if not hop:
                continue
            try:
                address = ipaddress.ip_address(hop)
            except ValueError:
                return peer  # not an address: the chain cannot be believed past this point
            if not any(address in net for net in self._trusted):
                return str(address)
        return peer

    def _is_trusted(self, ip: str) -> bool:
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        return any(addr in net for net in self._trusted)


def cors_headers(origin: str | None) -> list[tuple[str, str]]:
    if origin:
        return [
            ("access-control-allow-origin", origin),
            ("vary", "Origin"),
            ("access-control-allow-credentials", "true"),
        ]
    return [("access-control-allow-origin", "*")]


def preflight_headers(origin: str | None, requested: str | None) -> list[tuple[str, str]]:
    allow = requested or "Content-Type, Authorization, X-Retry-Count, Content-Encoding"
    return [
        *cors_headers(origin),
        ("access-control-allow-methods", "GET, POST, OPTIONS"),
        ("access-control-allow-headers", allow),
        ("access-control-max-age", "86400"),
    ]
