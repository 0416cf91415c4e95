"""HTTP/1.1 for the gateway: llhttp (via httptools) parsing on the worker's event loop.

Why not a threaded server such as granian: a Tracking API request is small and must wait for
the log's acknowledgement, so what costs is per-request overhead, not parsing. Handing each
request from an I/O thread to the Python thread and back costs two cross-thread wake-ups; on
the reference machine a single-threaded uvloop + httptools loop answers about twice as many
small requests per core (see BENCHMARKS.md). This module is only the connection handling;
parsing is httptools', the event loop uvloop's.

What a connection guarantees:
- requests on one connection are answered in order (pipelining is allowed, handled one at a
  time: reading pauses while a request is being answered);
- the body is bounded before it is read: the application's limit for the path is checked
  against `Content-Length` when the headers arrive, and while a chunked body arrives;
- `Expect: 100-continue` is honoured; HTTP/1.0 and `Connection: close` close after the answer;
- slow clients are cut off: a request must arrive whole within `request_timeout`, an idle
  keep-alive connection is closed after `keepalive_timeout`; headers are bounded;
- a worker reads at most `max_concurrent` requests at a time; past that, connections wait
  (reading paused), so memory stays bounded under overload.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Protocol
from urllib.parse import unquote

import httptools

log = logging.getLogger(__name__)

MAX_HEADER_BYTES = 32 * 1024
_REASONS = {s.value: s.phrase.encode() for s in HTTPStatus}
_CONTINUE = b"HTTP/1.1 100 Continue\r\n\r\n"


@dataclass(slots=True)
class Request:
    """One HTTP request, its body read whole (and bounded)."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    client: str | None
    body: bytes = b""


@dataclass(slots=True)
class Response:
    """What to answer: the server adds `content-length` and, if closing, `connection`.

    `head`, when given, is the status line and `headers` already encoded (`encode_head`), for
    answers sent so often that encoding them every time would show.
    """

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""
    head: bytes | None = None


_INTERNAL_ERROR = Response(
    500,
    [("content-type", "application/json")],
    b'{"code":"internal_error","message":"internal error"}',
)


def encode_head(status: int, headers: list[tuple[str, str]]) -> bytes:
    """The status line and header lines of an answer (without `content-length`)."""
    lines = [b"HTTP/1.1 %d %s\r\n" % (status, _REASONS.get(status, b""))]
    lines.extend(b"%s: %s\r\n" % (k.encode("latin-1"), v.encode("latin-1")) for k, v in headers)
    return b"".join(lines)


Respond = Callable[[Response], None]


class Application(Protocol):
    """What the connection needs from the application."""

    def body_limit(self, method: str, path: str) -> int:
        """The largest body (as sent, before any decompression) accepted on this path."""
        ...

    def too_large(self, request: Request, limit: int) -> Response:
        """The answer to a request whose body is over `limit`."""
        ...

    def handle(self, request: Request, respond: Respond) -> None:
        """Answer a request by calling `respond` once, now or later (say, when the log has
        acknowledged it). No task or future per request: that is most of what an event loop
        would otherwise spend on a small request."""
        ...


@dataclass
class ServerState:
    """What the connections of one worker share."""

    max_concurrent: int = 100
    request_timeout: float = 30.0
    keepalive_timeout: float = 65.0
    active: int = 0
    connections: set[HttpConnection] = field(default_factory=set)
    waiting: deque[HttpConnection] = field(default_factory=deque)
    closing: bool = False

    def acquire(self) -> bool:
        """Take a slot for a connection that starts a request, if one is free."""
        if self.active < self.max_concurrent:
            self.active += 1
            return True
        return False

    def release(self) -> None:
        """A connection has answered all it read: hand its slot to a waiting one."""
        while self.waiting:
            conn = self.waiting.popleft()
            if conn.transport is not None and not conn.transport.is_closing():
                conn.take_slot()
                return
        self.active -= 1


class HttpConnection(asyncio.Protocol):
    """One client connection."""

    def __init__(self, app: Application, state: ServerState) -> None:
        self.app = app
        self.state = state
        self.loop = asyncio.get_running_loop()
        self.transport: asyncio.Transport | None = None
        self.parser = httptools.HttpRequestParser(self)
        self.client: str | None = None
        self._url = b""
        self._headers: dict[str, str] = {}
        self._header_bytes = 0
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._limit = 0
        self._target = ("", "")
        self._queue: deque[tuple[Request, bool]] = deque()
        self._busy = False
        self._current: tuple[Request, bool] | None = None
        self._slot = False  # whether this connection holds one of the worker's request slots
        self._reading = False  # a request has begun and is not complete yet
        self._paused = False
        self._timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername")
        self.client = peer[0] if isinstance(peer, tuple) else None
        self.state.connections.add(self)
        self._arm(self.state.keepalive_timeout)

    def connection_lost(self, exc: Exception | None) -> None:
        self.state.connections.discard(self)
        if self._slot:
            self._slot = False
            self.state.release()
        if self._timer is not None:
            self._timer.cancel()
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(400, b"upgrades are not supported")
        except httptools.HttpParserError as exc:
            self._fail(400, f"malformed HTTP request: {exc}".encode())

    # -- httptools callbacks ------------------------------------------------------------------

    def on_message_begin(self) -> None:
        self._url = b""
        self._headers = {}
        self._header_bytes = 0
        self._body = []
        self._body_bytes = 0
        self._reading = True
        self._arm(self.state.request_timeout)
        if not self._slot:
            if self.state.acquire():
                self._slot = True
            else:  # the worker is at capacity: read no more until a slot is ours
                self._pause()
                self.state.waiting.append(self)

    def on_url(self, url: bytes) -> None:
        self._url += url
        self._header_bytes += len(url)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._headers_too_large()

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_bytes += len(name) + len(value)
        if self._header_bytes > MAX_HEADER_BYTES:
            self._headers_too_large()
        key = name.decode("latin-1").lower()
        headers = self._headers
        if key in headers:  # a repeated header: its values joined, as RFC 9110 allows
            headers[key] = f"{headers[key]}, {value.decode('latin-1')}"
        else:
            headers[key] = value.decode("latin-1")

    def on_headers_complete(self) -> None:
        method = self.parser.get_method().decode("latin-1")
        self._target = _split_target(self._url)
        self._limit = self.app.body_limit(method, self._target[0])
        length = self._headers.get("content-length")
        if length is not None and length.strip().isdigit() and int(length) > self._limit:
            self._refuse_too_large()
            return
        if self._headers.get("expect", "").lower() == "100-continue" and self.transport:
            self.transport.write(_CONTINUE)

    def on_body(self, body: bytes) -> None:
        self._body_bytes += len(body)
        if self._body_bytes > self._limit:
            self._refuse_too_large()
            return
        self._body.append(body)

    def on_message_complete(self) -> None:
        path, query = self._target
        request = Request(
            self.parser.get_method().decode("latin-1"),
            path,
            query,
            self._headers,
            self.client,
            self._body[0] if len(self._body) == 1 else b"".join(self._body),
        )
        self._body = []
        self._reading = False
        self._queue.append((request, self.parser.should_keep_alive()))
        self._pause()  # one request at a time; what is already buffered waits in the queue
        self._start_answering()

    def _start_answering(self) -> None:
        if not self._slot or self._busy or not self._queue or self.transport is None:
            return
        self._busy = True
        self._current = request, _keep_alive = self._queue.popleft()
        try:
            self.app.handle(request, self._respond)
        except Exception:
            log.exception("unhandled error answering %s %s", request.method, request.path)
            self._respond(_INTERNAL_ERROR)

    # -- answering ----------------------------------------------------------------------------

    def _respond(self, response: Response) -> None:
        current = self._current
        if current is None:  # answered twice: keep the first
            log.error("a request was answered twice; the second answer is dropped")
            return
        self._current = None
        request, keep_alive = current
        keep_alive = keep_alive and not self.state.closing
        self._write(response, keep_alive, head=request.method == "HEAD")
        self._busy = False
        if not keep_alive:
            self._close()
            return
        if self._queue:  # pipelined requests: the next one, on the next loop turn
            self.loop.call_soon(self._start_answering)
            return
        if self._slot and not self._reading:  # all answered: the slot goes to someone else
            self._slot = False
            self.state.release()
        if self.transport is not None:
            self._arm(self.state.keepalive_timeout)
            self._resume_reading()

    def _write(self, response: Response, keep_alive: bool, *, head: bool = False) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        body = response.body
        start = response.head or encode_head(response.status, response.headers)
        tail = b"" if keep_alive else b"connection: close\r\n"
        self.transport.write(
            b"%scontent-length: %d\r\n%s\r\n%s" % (start, len(body), tail, b"" if head else body)
        )

    # -- flow control and failure -------------------------------------------------------------

    def take_slot(self) -> None:
        """A slot freed up for this waiting connection: go on reading and answering."""
        self._slot = True
        self._start_answering()
        self._resume_reading()

    def close_when_idle(self) -> None:
        """Graceful shutdown: close now if idle, else after the answer in progress."""
        if not self._busy and not self._reading and not self._queue:
            self._close()

    def abort(self) -> None:
        """Drop the connection now (shutdown ran out of time)."""
        if self.transport is not None:
            self.transport.abort()

    def _resume_reading(self) -> None:
        if self._paused and self.transport is not None and not self._busy:
            self._paused = False
            self.transport.resume_reading()

    def _pause(self) -> None:
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()

    def _headers_too_large(self) -> None:
        self._fail(431, b"request headers too large")
        raise httptools.HttpParserError("headers too large")

    def _refuse_too_large(self) -> None:
        request = Request(
            self.parser.get_method().decode("latin-1"),
            self._target[0],
            "",
            self._headers,
            self.client,
        )
        self._respond_and_close(self.app.too_large(request, self._limit))
        raise httptools.HttpParserError("body too large")

    def _fail(self, status: int, message: bytes) -> None:
        body = b'{"code":"bad_request","message":"%s"}' % message.replace(b'"', b"'")
        self._respond_and_close(Response(status, [("content-type", "application/json")], body))

    def _respond_and_close(self, response: Response) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        if self._busy:  # an earlier request is being answered: answers must stay in order
            self._close()
            return
        self._write(response, keep_alive=False)
        self._close()

    def _close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.close()

    def _arm(self, seconds: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.loop.call_later(seconds, self._timed_out)

    def _timed_out(self) -> None:
        if self._busy or self._queue or (self._reading and not self._slot):
            # waiting for the application, or for a slot, is not the client's fault
            self._arm(self.state.request_timeout)
            return
        if self._reading:
            with contextlib.suppress(Exception):
                self._write(
                    Response(
                        408,
                        [("content-type", "application/json")],
                        b'{"code":"request_timeout","message":"request too slow"}',
                    ),
                    keep_alive=False,
                )
        self._close()


def _split_target(raw: bytes) -> tuple[str, str]:
    """(path, query) of a request target, the path percent-decoded."""
    if b"?" not in raw and b"%" not in raw and raw.startswith(b"/"):
        return raw.decode("latin-1"), ""  # the common case: a plain path
    try:
        url = httptools.parse_url(raw)
    except httptools.HttpParserInvalidURLError:
        return "", ""
    return unquote(url.path.decode("latin-1")), (url.query or b"").decode("latin-1")


ConnectionFactory = Callable[[], HttpConnection]


def connection_factory(app: Application, state: ServerState) -> ConnectionFactory:
    """What `loop.create_server` needs to serve `app`."""
    return lambda: HttpConnection(app, state)
