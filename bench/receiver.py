"""A fast webhook receiver for the delivery benchmark: asyncio (uvloop) + httptools, one process,
HTTP/1.1 keep-alive, on 127.0.0.1.

    .venv/bin/python bench/receiver.py --port 9000 [--status 200|500|...] [--delay 0]
        [--out arrivals.json]

Every `POST`/`PUT` (any path) is a delivery: its JSON body (one message, or an array of them)
is decoded with msgspec for the messages' `messageId`s only, and the arrival of each new
messageId is recorded (`time.time()` in milliseconds, taken once per request when its body is
complete); a messageId seen again counts as a duplicate. The answer is `--status` (200 by
default; 500 for a failing destination) at once, or after `--delay` seconds (past the client's
timeout, for a destination that times out: the connection is usually gone by then).

- `GET /stats`: counts as JSON (requests, events, unique messageIds, duplicates, bodies that
  were not JSON, first and last arrival in ms);
- `GET /arrivals`: every messageId's first arrival, `{"<messageId>": <ms>, ...}`;
- `POST /reset` (exactly that path): forget everything;
- on SIGTERM or SIGINT: the arrivals are written to `--out` (if given), then it exits.

It keeps up with a few hundred thousand events/s in batches of 100 on one core (decoding
only the `messageId` of each message is a fraction of a microsecond per event).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from pathlib import Path

import httptools
import msgspec


class _Id(msgspec.Struct, gc=False):
    messageId: str = ""


_decode_ids = msgspec.json.Decoder(list[_Id] | _Id).decode
_encode = msgspec.json.Encoder().encode

_REASONS = {200: b"OK", 400: b"Bad Request", 404: b"Not Found", 500: b"Internal Server Error"}


def _answer(status: int, body: bytes, keep_alive: bool = True) -> bytes:
    reason = _REASONS.get(status, b"Status")
    close = b"" if keep_alive else b"connection: close\r\n"
    return b"HTTP/1.1 %d %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n%s\r\n%s" % (
        status,
        reason,
        len(body),
        close,
        body,
    )


class Recorder:
    """What arrived: the first arrival per messageId, and counts."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.arrivals: dict[str, float] = {}
        self.requests = 0
        self.events = 0
        self.duplicates = 0
        self.bad_bodies = 0
        self.body_bytes = 0
        self.first_ms: float | None = None
        self.last_ms: float | None = None

    def record(self, body: bytes) -> None:
        now = round(time.time() * 1000, 3)
        self.requests += 1
        self.body_bytes += len(body)
        try:
            decoded = _decode_ids(body)
        except (msgspec.DecodeError, msgspec.ValidationError):
            self.bad_bodies += 1
            return
        messages = decoded if isinstance(decoded, list) else [decoded]
        arrivals = self.arrivals
        before = len(arrivals)
        for m in messages:
            arrivals.setdefault(m.messageId, now)
        new = len(arrivals) - before
        self.events += len(messages)
        self.duplicates += len(messages) - new
        if self.first_ms is None:
            self.first_ms = now
        self.last_ms = now

    def stats(self) -> dict[str, object]:
        return {
            "requests": self.requests,
            "events": self.events,
            "unique": len(self.arrivals),
            "duplicates": self.duplicates,
            "bad_bodies": self.bad_bodies,
            "body_bytes": self.body_bytes,
            "first_ms": self.first_ms,
            "last_ms": self.last_ms,
        }


class Connection(asyncio.Protocol):
    """One client connection; requests are answered in order, one at a time."""

    def __init__(self, recorder: Recorder, status: int, delay: float) -> None:
        self.recorder = recorder
        self.status = status
        self.delay = delay
        self.loop = asyncio.get_running_loop()
        self.parser = httptools.HttpRequestParser(self)
        self.transport: asyncio.Transport | None = None
        self._url = b""
        self._body: list[bytes] = []
        self._answer = _answer(status, b'{"success":true}' if status < 300 else b'{"error":1}')

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserError:
            if self.transport is not None:
                self.transport.write(_answer(400, b'{"error":"bad request"}', False))
                self.transport.close()

    def on_message_begin(self) -> None:
        self._url = b""
        self._body = []

    def on_url(self, url: bytes) -> None:
        self._url += url

    def on_body(self, body: bytes) -> None:
        self._body.append(body)

    def on_message_complete(self) -> None:
        method = self.parser.get_method()
        keep_alive = self.parser.should_keep_alive()
        body = self._body[0] if len(self._body) == 1 else b"".join(self._body)
        self._body = []
        if method in (b"POST", b"PUT") and self._url != b"/reset":
            self.recorder.record(body)
            if self.delay > 0:  # answer later (one request at a time on this connection)
                if self.transport is not None:
                    self.transport.pause_reading()
                self.loop.call_later(self.delay, self._late, keep_alive)
                return
            self._write(self._answer, keep_alive)
            return
        if method == b"GET" and self._url == b"/stats":
            self._write(_answer(200, _encode(self.recorder.stats())), keep_alive)
        elif method == b"GET" and self._url == b"/arrivals":
            self._write(_answer(200, _encode(self.recorder.arrivals)), keep_alive)
        elif method == b"POST" and self._url == b"/reset":
            self.recorder.reset()
            self._write(_answer(200, b'{"reset":true}'), keep_alive)
        else:
            self._write(_answer(404, b'{"error":"not found"}'), keep_alive)

    def _late(self, keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return  # the client gave up (timed out) and closed
        self._write(self._answer, keep_alive)
        if self.transport is not None and keep_alive:
            self.transport.resume_reading()

    def _write(self, data: bytes, keep_alive: bool) -> None:
        if self.transport is None or self.transport.is_closing():
            return
        self.transport.write(data)
        if not keep_alive:
            self.transport.close()


async def serve(port: int, status: int, delay: float, out: Path | None) -> None:
    recorder = Recorder()
    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        lambda: Connection(recorder, status, delay), "127.0.0.1", port, backlog=1024
    )
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"receiver on 127.0.0.1:{port}, status {status}, delay {delay:g}s", flush=True)
    try:
        await stop.wait()
    finally:
        server.close()
        if out is not None:
            tmp = out.with_suffix(out.suffix + ".tmp")
            tmp.write_bytes(_encode({"stats": recorder.stats(), "arrivals": recorder.arrivals}))
            tmp.replace(out)
        print(f"receiver stopping: {recorder.stats()}", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--status", type=int, default=200, help="the status of every delivery's answer")
    p.add_argument(
        "--delay", type=float, default=0.0, help="answer deliveries after this many seconds"
    )
    p.add_argument("--out", type=Path, default=None, help="arrivals written here on SIGTERM")
    args = p.parse_args(argv)
    try:
        import uvloop

        loop = uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        loop = asyncio.new_event_loop()
    try:
        with contextlib.suppress(KeyboardInterrupt):
            loop.run_until_complete(serve(args.port, args.status, args.delay, args.out))
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
