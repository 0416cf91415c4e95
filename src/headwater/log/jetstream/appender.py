"""The gateway's writer on JetStream: group commit per event-loop iteration, acks by callback.

Requests submitted in one loop iteration are merged per partition into record batches and
published together (`publish_async`, every partition at once); each request's callback runs when
every message holding its runs is acknowledged by JetStream (stored, and with replicas > 1
stored on a quorum). Each message carries a unique `Nats-Msg-Id`, reused if the publish is
retried, so a lost acknowledgement never stores a batch twice.
"""

from __future__ import annotations

import asyncio
import logging
import uuid

from nats.aio.client import Client as NATS
from nats.errors import Error as NatsError
from nats.js import JetStreamContext

from headwater.log.base import (
    Done,
    LogBackpressure,
    LogError,
    LogUnavailable,
    call_done,
    submitted,
)
from headwater.log.jetstream.log import PAYLOAD_HEADROOM, publish, split_payloads
from headwater.log.jetstream.streams import JetStreamSettings, Names, connect, ensure_log
from headwater.log.records import Run

log = logging.getLogger(__name__)


class JetStreamAppender:
    """Implements `LogAppender` for the `ingest` log on JetStream."""

    def __init__(self, settings: JetStreamSettings, log_name: str = "ingest") -> None:
        self.settings = settings
        self.log_name = log_name
        self.names = Names(settings.prefix)
        self.nc: NATS | None = None
        self.js: JetStreamContext | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._out: list[tuple[list[Run], int, Done]] = []
        self._flush_scheduled = False
        self._inflight = 0
        self._id_prefix = uuid.uuid4().hex[:16]
        self._next_id = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._connector: asyncio.Task[None] | None = None
        self._closed = False

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Connect in the background (and keep the connection; NATS reconnects by itself)."""
        self._loop = loop
        self._connector = loop.create_task(self._connect())

    async def _connect(self) -> None:
        while not self._closed:
            try:
                nc = await connect(self.settings.url, name=f"headwater-gateway-{self._id_prefix}")
                js = nc.jetstream(publish_async_max_pending=20_000)
                await ensure_log(js, self.settings, self.log_name)
            except (OSError, NatsError, TimeoutError) as exc:
                log.warning("cannot reach JetStream at %s (%s); retrying", self.settings.url, exc)
                await asyncio.sleep(1.0)
                continue
            self.nc, self.js = nc, js
            return

    async def wait_connected(self, timeout: float) -> bool:
        deadline = asyncio.get_running_loop().time() + timeout
        while not self.healthy and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        return self.healthy

    @property
    def healthy(self) -> bool:
        return self.nc is not None and self.nc.is_connected

    @property
    def pending_bytes(self) -> int:
        return self._inflight

    def close(self) -> None:
        self._closed = True
        if self._connector is not None:
            self._connector.cancel()
        for task in list(self._tasks):
            task.cancel()
        out, self._out = self._out, []
        for _runs, _n, done in out:
            call_done(done, LogUnavailable("the gateway is shutting down"))
        if self.nc is not None and self._loop is not None and not self._loop.is_closed():
            nc = self.nc
            self.nc = None
            task = self._loop.create_task(nc.close())
            self._tasks.add(task)

    def submit(self, runs: list[Run], nbytes: int, done: Done) -> None:
        if not self.healthy:
            done(LogUnavailable("JetStream is not reachable", retry_after=1))
            return
        if self._inflight + nbytes > self.settings.max_pending_bytes:
            done(LogBackpressure("the log is behind; retry shortly", retry_after=1))
            return
        self._inflight += nbytes
        self._out.append((runs, nbytes, done))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop = self._loop or asyncio.get_running_loop()
            loop.call_soon(self._flush)

    async def append(self, runs: list[Run], nbytes: int) -> None:
        """`submit` as a coroutine: returns once durable, raises `LogError` if not."""
        await submitted(self.submit, runs, nbytes)

    def _flush(self) -> None:
        self._flush_scheduled = False
        out, self._out = self._out, []
        if not out:
            return
        loop = self._loop or asyncio.get_running_loop()
        task = loop.create_task(self._publish_group(out))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish_group(self, out: list[tuple[list[Run], int, Done]]) -> None:
        error: LogError | None = None
        try:
            js, nc = self.js, self.nc
            if js is None or nc is None:
                raise LogUnavailable("JetStream is not reachable", retry_after=1)
            runs = [run for request_runs, _n, _d in out for run in request_runs]
            max_payload = max(64 * 1024, nc.max_payload - PAYLOAD_HEADROOM)
            payloads = split_payloads(runs, self.settings.partitions, max_payload)
            sends = []
            for p, chunks in payloads.items():
                subject = self.names.subject(self.log_name, p)
                for chunk in chunks:
                    self._next_id += 1
                    sends.append(publish(js, subject, chunk, f"{self._id_prefix}-{self._next_id}"))
            await asyncio.gather(*sends)
        except LogError as exc:
            error = exc
        except asyncio.CancelledError:
            error = LogUnavailable("the gateway is shutting down")
            raise
        except Exception as exc:  # never leave a request without an answer
            log.exception("publishing to JetStream failed")
            error = LogUnavailable(f"JetStream publish failed: {exc}", retry_after=1)
        finally:
            for _runs, nbytes, done in out:
                self._inflight -= nbytes
                call_done(done, error)
