"""A real HTTP/1.1 server on 127.0.0.1 for tests of HTTP destinations: it records every request
and answers as told (a status, a sequence of them, headers such as `Retry-After`, a delay, or a
dropped connection). It runs in a thread, so sync tests and tests driving their own event loop
(`asyncio.run`) can both use it.

    with Receiver() as rx:
        rx.reply(503, Reply(429, headers={"Retry-After": "2"}), 200)  # in turn; the last sticks
        ...  # send to rx.url
        assert rx.requests[0].json() == {...}
"""

from __future__ import annotations

import contextlib
import json
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any


@dataclass(frozen=True)
class Reply:
    """How to answer one request."""

    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (cut short when the receiver stops)
    close: bool = False  # drop the connection instead of answering


@dataclass(frozen=True)
class Request:
    """One request as it arrived."""

    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    time: float  # time.monotonic() when it had arrived whole

    def json(self) -> Any:
        return json.loads(self.body)

    def header(self, name: str) -> str | None:
        return self.headers.get(name.lower())


Behaviour = Callable[[Request], Reply]


class Receiver:
    """An HTTP server on a free port of 127.0.0.1; `url` is its root (no trailing slash)."""

    def __init__(self, *replies: Reply | int) -> None:
        self.requests: list[Request] = []
        self.in_flight = 0
        self.peak_in_flight = 0  # the most requests being answered at once
        self._replies: list[Reply] = []
        self._behaviour: Behaviour | None = None
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._stopping = threading.Event()
        self._sockets: set[socket.socket] = set()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.port: int = self._server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread: threading.Thread | None = None
        self.reply(*(replies or (200,)))

    # --- behaviour -------------------------------------------------------------------------

    def reply(self, *replies: Reply | int) -> None:
        """Answer the next requests with `replies` in turn (an int is a bare status); the last
        one answers every request after."""
        if not replies:
            raise ValueError("reply() needs at least one reply")
        with self._lock:
            self._replies = [Reply(r) if isinstance(r, int) else r for r in replies]
            self._behaviour = None

    def behave(self, behaviour: Behaviour) -> None:
        """Answer each request with what `behaviour(request)` returns (called in the server's
        threads)."""
        with self._lock:
            self._behaviour = behaviour

    def _next_reply(self, request: Request) -> Reply:
        with self._lock:
            self.requests.append(request)
            self._arrived.notify_all()
            if self._behaviour is not None:
                behaviour = self._behaviour
            else:
                return self._replies.pop(0) if len(self._replies) > 1 else self._replies[0]
        return behaviour(request)

    # --- inspection ------------------------------------------------------------------------

    def wait_for(self, count: int, timeout: float = 2.0) -> list[Request]:
        """The requests once at least `count` have arrived (AssertionError after `timeout`)."""
        with self._arrived:
            if not self._arrived.wait_for(lambda: len(self.requests) >= count, timeout):
                raise AssertionError(f"{len(self.requests)} requests arrived, not {count}")
            return list(self.requests)

    def clear(self) -> None:
        """Forget the requests so far."""
        with self._lock:
            self.requests.clear()
            self.peak_in_flight = self.in_flight

    # --- life ------------------------------------------------------------------------------

    def start(self) -> Receiver:
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving, and drop the open connections (delayed answers end at once)."""
        self._stopping.set()
        if self._thread is not None:
            self._server.shutdown()
            self._thread.join()
        self._server.server_close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def __enter__(self) -> Receiver:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def unused_url() -> str:
    """The URL of a port of 127.0.0.1 that nothing listens on (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def _handler_for(receiver: Receiver) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive

        def setup(self) -> None:
            super().setup()
            with receiver._lock:
                receiver._sockets.add(self.connection)

        def finish(self) -> None:
            with contextlib.suppress(OSError):
                super().finish()
            with receiver._lock:
                receiver._sockets.discard(self.connection)

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _read_body(self) -> bytes:
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                body = bytearray()
                while size := int(self.rfile.readline().split(b";")[0], 16):
                    body += self.rfile.read(size)
                    self.rfile.readline()
                while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                    pass  # trailers
                return bytes(body)
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _handle(self) -> None:
            body = self._read_body()
            headers = {k.lower(): v for k, v in self.headers.items()}
            request = Request(self.command, self.path, headers, body, time.monotonic())
            with receiver._lock:
                receiver.in_flight += 1
                receiver.peak_in_flight = max(receiver.peak_in_flight, receiver.in_flight)
            try:
                reply = receiver._next_reply(request)
                if reply.delay:
                    receiver._stopping.wait(reply.delay)
                if reply.close or receiver._stopping.is_set():
                    self.close_connection = True
                    return
                self.send_response(reply.status)
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(reply.body)))
                self.end_headers()
                self.wfile.write(reply.body)
            except OSError:  # the client has gone (e.g. it timed out)
                self.close_connection = True
            finally:
                with receiver._lock:
                    receiver.in_flight -= 1

        do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _handle

    return Handler
