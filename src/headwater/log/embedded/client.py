"""The gateway side of the embedded log: sends runs to the log server, awaits the acks."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import msgspec

from headwater.log.base import (
    Done,
    LogBackpressure,
    LogError,
    LogUnavailable,
    call_done,
    submitted,
)
from headwater.log.embedded.protocol import (
    FrameReader,
    Request,
    encode_requests,
    response_decoder,
)
from headwater.log.records import Run

log = logging.getLogger(__name__)

FLUSH_BYTES = 64 * 1024


class LogClient(asyncio.Protocol):
    """An asyncio client of the log server; implements `LogAppender`.

    Requests made in one loop iteration leave in one write, or sooner once `FLUSH_BYTES` have
    gathered (so that a busy iteration does not hold back the log server's next commit). While
    the server cannot be reached, `append` fails at once with `LogUnavailable` and a
    background task reconnects.
    A server that is alive but has not acknowledged a request within `ack_timeout` seconds is
    treated as gone: the connection is dropped, so every waiting request fails (and is retried
    by its client) instead of hanging.
    """

    def __init__(
        self,
        path: str,
        max_pending_bytes: int,
        reconnect_every: float = 0.2,
        ack_timeout: float = 30.0,
    ) -> None:
        self.path = path
        self.max_pending_bytes = max_pending_bytes
        self.reconnect_every = reconnect_every
        self.ack_timeout = ack_timeout
        self._transport: asyncio.Transport | None = None
        self._reader = FrameReader(self._on_frame)
        self._waiters: dict[int, tuple[Done, int, float]] = {}
        self._inflight = 0
        self._next_id = 1
        self._out: list[Request] = []
        self._out_bytes = 0
        self._flush_scheduled = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._connector: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ----------------------------------------------------------------------------

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Begin connecting (and reconnecting whenever the connection drops)."""
        self._loop = loop
        self._connector = loop.create_task(self._connect_forever())

    async def wait_connected(self, timeout: float) -> bool:
        """True once connected, False if not within `timeout` seconds."""
        deadline = asyncio.get_running_loop().time() + timeout
        while self._transport is None and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        return self._transport is not None

    def close(self) -> None:
        self._closed = True
        if self._connector is not None:
            self._connector.cancel()
        if self._transport is not None:
            self._transport.close()
        self._fail_all(LogUnavailable("the gateway is shutting down"))

    @property
    def healthy(self) -> bool:
        """Whether the log server is reachable."""
        return self._transport is not None

    @property
    def pending_bytes(self) -> int:
        """Bytes sent to the log server and not yet acknowledged."""
        return self._inflight

    async def _connect_forever(self) -> None:
        loop = self._loop
        assert loop is not None
        while not self._closed:
            if self._transport is None:
                with contextlib.suppress(OSError):
                    await loop.create_unix_connection(lambda: self, self.path)
            elif self._waiters:
                _done, _n, sent = next(iter(self._waiters.values()))  # the oldest
                if loop.time() - sent > self.ack_timeout:
                    log.error(
                        "the log server has not answered for %.0fs; reconnecting", self.ack_timeout
                    )
                    self._transport.abort()
            await asyncio.sleep(self.reconnect_every)

    # -- appending ----------------------------------------------------------------------------

    def submit(self, runs: list[Run], nbytes: int, done: Done) -> None:
        """Store every run in its partition and call `done(None)` once they are durable, or
        `done(error)` with the `LogError` that kept them from it (perhaps at once)."""
        if self._transport is None:
            done(LogUnavailable("the log server is not reachable", retry_after=1))
            return
        if self._inflight + nbytes > self.max_pending_bytes:
            done(LogBackpressure("the log is behind; retry shortly", retry_after=1))
            return
        loop = self._loop or asyncio.get_running_loop()
        request_id = self._next_id
        self._next_id += 1
        self._waiters[request_id] = (done, nbytes, loop.time())
        self._inflight += nbytes
        self._out.append((request_id, runs))
        self._out_bytes += nbytes
        if self._out_bytes >= FLUSH_BYTES:  # enough to start a commit: do not wait
            self._flush()
        elif not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)

    async def append(self, runs: list[Run], nbytes: int) -> None:
        """`submit` as a coroutine: returns once durable, raises `LogError` if not."""
        await submitted(self.submit, runs, nbytes)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._out_bytes = 0
        out, self._out = self._out, []
        if self._transport is not None and out:
            self._transport.writelines(encode_requests(out))

    # -- asyncio.Protocol ---------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self._reader = FrameReader(self._on_frame)

    def data_received(self, data: bytes) -> None:
        try:
            self._reader.feed(data)
        except (ValueError, msgspec.DecodeError) as exc:
            log.error("bad frame from the log server: %s", exc)
            if self._transport is not None:
                self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        self._out.clear()
        self._out_bytes = 0
        self._fail_all(LogUnavailable("lost the connection to the log server", retry_after=1))

    def _on_frame(self, frame: memoryview) -> None:
        ok, failed = response_decoder.decode(frame)
        waiters = self._waiters
        for request_id in ok:
            entry = waiters.pop(request_id, None)
            if entry is not None:
                self._inflight -= entry[1]
                call_done(entry[0], None)
        for request_id, status, code, message, retry_after in failed:
            entry = waiters.pop(request_id, None)
            if entry is not None:
                self._inflight -= entry[1]
                call_done(entry[0], _error(status, code, message, retry_after))

    def _fail_all(self, error: LogError) -> None:
        waiters, self._waiters = self._waiters, {}
        self._inflight = 0
        for done, _n, _sent in waiters.values():
            call_done(done, error)


def _error(status: int, code: str, message: str, retry_after: int) -> LogError:
    cls = LogBackpressure if status == 429 else LogUnavailable
    err = cls(message, retry_after=retry_after)
    err.status = status
    err.code = code
    return err
