"""What the HTTP destination types share: checks of their common settings, request bodies and
headers, and one request turned into a `Result`.

`HttpSender` holds one `aiohttp.ClientSession` (a keep-alive pool of `max_in_flight`
connections), made on first use inside the running loop and closed by `close()`. httpx was
about seven times slower per request (see BENCHMARKS.md, "Delivery"). A
request gets `timeout` seconds from start to the last byte of the answer; redirects are not
followed (a 3xx is an answer like any other); the `HTTP_PROXY`, `HTTPS_PROXY` and `NO_PROXY`
environment variables apply; a timeout or a server that cannot be reached is a
retryable failure, any answer is classified by `model.classify`.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import re
import urllib.request
from collections.abc import Iterable, Mapping
from typing import Any
from urllib.parse import urlsplit

import aiohttp
import xxhash
from multidict import CIMultiDict

import headwater
from headwater.config import parse_duration
from headwater.delivery.model import DELIVERED_RESULT, Event, Result, classify, failed

DEFAULT_TIMEOUT_S = 10.0
MAX_TIMEOUT_S = 300.0
MAX_IN_FLIGHT = 256  # the most any HTTP destination may ask for
RESPONSE_KEEP = 64 * 1024  # read at most this much of an answer; a longer one costs its connection
USER_AGENT = f"headwater/{getattr(headwater, '__version__', '')}".rstrip("/")

_RESERVED = frozenset({"content-length", "transfer-encoding", "connection"})
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # an HTTP header name (RFC 9110 token)
_UNSAFE = re.compile(r"[\x00-\x20\x7f]")  # never raw in a URL


# --- settings ------------------------------------------------------------------------------


def check_keys(type_name: str, settings: Mapping[str, Any], known: Iterable[str]) -> None:
    """Raise `ValueError` naming the settings `type_name` does not know."""
    known = sorted(known)
    unknown = sorted(set(settings) - set(known))
    if unknown:
        raise ValueError(
            f"{type_name}: unknown setting(s) {', '.join(map(repr, unknown))} "
            f"(known: {', '.join(known)})"
        )


def check_url(value: Any, name: str = "url") -> str:
    """`value` if it is an absolute http(s) URL with a host."""
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be an http or https URL, got {value!r}")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 - raises ValueError on a bad port
        if _UNSAFE.search(value):
            raise ValueError("spaces and control characters must be percent-encoded")
    except ValueError as exc:
        raise ValueError(f"{name} is not a valid URL: {value!r} ({exc})") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{name} must be an http or https URL with a host, got {value!r}")
    return value


def check_timeout(value: Any, name: str = "timeout") -> float:
    """Seconds from a number or a duration string ("10s", "500ms"), in (0, MAX_TIMEOUT_S]."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(
            f"{name} must be a number of seconds or a duration like 10s, got {value!r}"
        )
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        raise ValueError(f"{name}: {exc}") from None
    if not 0 < seconds <= MAX_TIMEOUT_S:
        raise ValueError(
            f"{name} must be more than 0 and at most {MAX_TIMEOUT_S:g}s, got {value!r}"
        )
    return seconds


def check_int(settings: Mapping[str, Any], name: str, default: int, low: int, high: int) -> int:
    """The integer setting `name` (`default` when absent), in [low, high]."""
    value = settings.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise ValueError(f"{name} must be an integer from {low} to {high}, got {value!r}")
    return value


def check_bool(settings: Mapping[str, Any], name: str, default: bool) -> bool:
    """The boolean setting `name` (`default` when absent)."""
    value = settings.get(name, default)
    if not isinstance(value, bool):
        raise ValueError(f"{name} must be true or false, got {value!r}")
    return value


def check_str(settings: Mapping[str, Any], name: str, required: bool = False) -> str | None:
    """The non-empty string setting `name` (None when absent and not `required`)."""
    value = settings.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value:
        raise ValueError(f"{name} must be a non-empty string, got {value!r}")
    return value


def check_header_name(value: Any, name: str) -> str:
    """`value` if it is a valid HTTP header name."""
    if not isinstance(value, str) or not _TOKEN.fullmatch(value):
        raise ValueError(f"{name}: not a valid HTTP header name: {value!r}")
    return value


def check_headers(value: Any, name: str = "headers") -> dict[str, str]:
    """A mapping of header names to values, both strings, without line breaks."""
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{name} must be a mapping of header names to values, got {value!r}")
    for key, val in value.items():
        check_header_name(key, name)
        if key.lower() in _RESERVED:
            raise ValueError(f"{name}: {key!r} is set by the request itself")
        if not isinstance(val, str) or any(c in val for c in "\r\n\0"):
            raise ValueError(f"{name}: the value of {key!r} must be a one-line string")
    return dict(value)


# --- requests ------------------------------------------------------------------------------


def idempotency_key(events: list[Event]) -> str:
    """The messageId of a single event; for several, `batch-` + a hash of their messageIds."""
    if len(events) == 1:
        return events[0].message_id
    ids = "\n".join(e.message_id for e in events).encode()
    return "batch-" + xxhash.xxh3_128_hexdigest(ids)


def json_array(messages: Iterable[bytes]) -> bytes:
    """A JSON array of already encoded JSON values."""
    return b"[" + b",".join(messages) + b"]"


def signature(secret: str, body: bytes) -> str:
    """`sha256=` + the hex HMAC-SHA256 of `body` keyed by `secret`."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def proxy_for(url: str) -> str | None:
    """The proxy `HTTP_PROXY` or `HTTPS_PROXY` names for `url`, unless `NO_PROXY` leaves it
    out. (aiohttp's `trust_env` would work it out again for every request.)"""
    parts = urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if not proxy or urllib.request.proxy_bypass(parts.netloc):
        return None
    return proxy


def basic_auth(user: str, password: str) -> str:
    """The `Authorization` header value of HTTP basic auth."""
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode("ascii")


Headers = CIMultiDict[str]  # names match whatever their case


def base_headers(extra: Mapping[str, str] | None = None) -> Headers:
    """Content-Type, User-Agent and no compression of answers, then `extra` over them (names
    match whatever their case)."""
    headers: Headers = CIMultiDict(
        {
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
            "Accept-Encoding": "identity",  # the answer's bytes are its sample as they are
        }
    )
    for name, value in (extra or {}).items():
        headers[name] = value
    return headers


class HttpSender:
    """Sends requests over one keep-alive pool and turns what comes of them into results."""

    def __init__(
        self, timeout: float, max_in_flight: int, auth: tuple[str, str] | None = None
    ) -> None:
        self.timeout = timeout
        self.max_in_flight = max_in_flight
        # HTTP basic auth: a header of every request
        self._auth = {"Authorization": basic_auth(*auth)} if auth else None
        self._session: aiohttp.ClientSession | None = None
        self._proxies: dict[str, str | None] = {}  # by URL: what the environment says

    def session(self) -> aiohttp.ClientSession:
        """The pool, made on first use (so inside the loop that uses it)."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.max_in_flight, limit_per_host=0),
                timeout=aiohttp.ClientTimeout(total=self.timeout),
                headers=self._auth,
                auto_decompress=False,
                skip_auto_headers=("Accept",),
            )
        return self._session

    async def send(self, method: str, url: str, body: bytes, headers: Headers) -> Result:
        """One request: delivered on 2xx, else what `classify` or the failure makes of it."""
        try:
            async with asyncio.timeout(self.timeout):
                async with self.session().request(
                    method,
                    url,
                    data=body,
                    headers=headers,
                    allow_redirects=False,
                    proxy=self._proxy(url),
                ) as response:
                    answer = bytearray()
                    async for chunk in response.content.iter_any():
                        answer += chunk
                        if len(answer) >= RESPONSE_KEEP:
                            break
                    status = response.status
                    retry_after = response.headers.get("Retry-After")
        except TimeoutError:
            return failed("timeout", body)
        except (aiohttp.ClientError, OSError):
            return failed("connection_error", body)
        if 200 <= status < 300:
            return DELIVERED_RESULT
        return classify(status, retry_after, body, bytes(answer))

    def _proxy(self, url: str) -> str | None:
        if url not in self._proxies:
            self._proxies[url] = proxy_for(url)
        return self._proxies[url]

    async def close(self) -> None:
        """Close the pool's connections."""
        session, self._session = self._session, None
        if session is not None:
            await session.close()
