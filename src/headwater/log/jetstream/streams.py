"""Names, settings and stream set-up of the JetStream backend.

Log `<log>` partition `p` is the stream `<prefix>-<log>-<p>` holding the subject
`<prefix>.<log>.<p>`: one stream per partition, so a stream sequence is a partition offset and a
partition's retention, replication and consumers are independent of the others. Each message is
one record batch (the same MessagePack encoding as the embedded log).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass

import nats
from nats.aio.client import Client as NATS
from nats.errors import NoServersError
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import APIError, NotFoundError

from headwater.config import Config, parse_duration, parse_size

log = logging.getLogger(__name__)

INSUFFICIENT_STORAGE = 10047  # JetStream's error code: "insufficient storage resources"


@dataclass(frozen=True, slots=True)
class JetStreamSettings:
    """What the backend needs from the `log:` section of `headwater.yaml`."""

    url: str = "nats://127.0.0.1:4222"
    prefix: str = "headwater"
    partitions: int = 8
    replicas: int = 1
    max_age_s: float = 7 * 86400.0
    max_bytes: int = 20 * 1024**3
    duplicate_window_s: float = 600.0
    lease_ttl_s: float = 6.0
    max_pending_bytes: int = 32 * 1024 * 1024

    @classmethod
    def from_config(cls, config: Config) -> JetStreamSettings:
        lc = config.log
        return cls(
            url=lc.url,
            prefix=lc.prefix,
            partitions=lc.partitions,
            replicas=lc.replicas,
            max_age_s=parse_duration(lc.retention.max_age),
            max_bytes=parse_size(lc.retention.max_bytes),
            duplicate_window_s=parse_duration(lc.duplicate_window),
            lease_ttl_s=parse_duration(lc.lease_ttl),
            max_pending_bytes=parse_size(lc.max_pending_bytes),
        )


@dataclass(frozen=True, slots=True)
class Names:
    """Stream, subject and bucket names under one prefix."""

    prefix: str

    def stream(self, log: str, partition: int) -> str:
        return f"{self.prefix}-{log}-{partition}"

    def subject(self, log: str, partition: int) -> str:
        return f"{self.prefix}.{log}.{partition}"

    @property
    def leases_bucket(self) -> str:
        return f"{self.prefix}-leases"


class NatsErrors:
    """nats-py's error callback: one log line per kind of error and `every` seconds (the
    default callback logs a traceback on every reconnect attempt)."""

    def __init__(self, url: str, every: float = 30.0) -> None:
        self.url = url
        self.every = every
        self._last: dict[str, float] = {}

    async def __call__(self, error: Exception) -> None:
        kind = type(error).__name__
        now = time.monotonic()
        if now - self._last.get(kind, -self.every) >= self.every:
            self._last[kind] = now
            log.warning("NATS at %s: %s: %s (retrying)", self.url, kind, error or "no answer")


async def connect(url: str, name: str = "headwater", *, forever: bool = True) -> NATS:
    """A NATS connection. `forever` (long-running roles): wait for the server as long as it
    takes and keep reconnecting. Otherwise (tools): raise `OSError` if it does not answer
    within a few seconds."""
    errors = NatsErrors(url)

    async def on_error(error: Exception) -> None:  # nats-py wants a coroutine function
        await errors(error)

    try:
        return await nats.connect(
            url,
            name=name,
            max_reconnect_attempts=-1 if forever else 2,
            reconnect_time_wait=0.5,
            connect_timeout=2 if not forever else 5,
            allow_reconnect=True,
            error_cb=on_error,
        )
    except (NoServersError, TimeoutError, OSError) as exc:
        raise OSError(f"NATS at {url} does not answer ({type(exc).__name__})") from None


async def connect_until(url: str, name: str, stop: asyncio.Event) -> NATS | None:
    """Wait for NATS as `connect` does, unless `stop` is set first: then None.

    nats-py's connect can swallow a cancellation that lands while one attempt times out, so
    the attempt is cancelled again until it ends; one that connected anyway is closed."""
    connecting = asyncio.ensure_future(connect(url, name))
    stopping = asyncio.ensure_future(stop.wait())
    await asyncio.wait({connecting, stopping}, return_when=asyncio.FIRST_COMPLETED)
    stopping.cancel()
    if not stop.is_set():
        return connecting.result()
    while not connecting.done():
        connecting.cancel()
        await asyncio.wait({connecting}, timeout=0.5)
    if not connecting.cancelled() and connecting.exception() is None:
        await connecting.result().close()
    return None


async def ensure_log(js: JetStreamContext, settings: JetStreamSettings, log: str) -> None:
    """Create the streams of `log` if missing; bring limits in line with the settings."""
    names = Names(settings.prefix)
    per_partition_bytes = max(1, settings.max_bytes // settings.partitions)
    for p in range(settings.partitions):
        config = js_api.StreamConfig(
            name=names.stream(log, p),
            subjects=[names.subject(log, p)],
            retention=js_api.RetentionPolicy.LIMITS,
            storage=js_api.StorageType.FILE,
            num_replicas=settings.replicas,
            max_age=settings.max_age_s,
            max_bytes=per_partition_bytes,
            discard=js_api.DiscardPolicy.OLD,
            duplicate_window=min(settings.duplicate_window_s, settings.max_age_s),
            allow_direct=True,
        )
        try:
            info = await js.stream_info(config.name or "")
        except NotFoundError:
            try:
                await js.add_stream(config)
            except APIError as exc:
                if exc.err_code == INSUFFICIENT_STORAGE:
                    raise OSError(
                        f"JetStream cannot reserve {per_partition_bytes} bytes for stream "
                        f"{config.name}: every stream reserves its share of "
                        "log.retention.max_bytes; lower it to fit the servers' file storage"
                    ) from None
                raise
            continue
        current = info.config
        if (
            current.max_age != config.max_age
            or current.max_bytes != config.max_bytes
            or current.duplicate_window != config.duplicate_window
        ):
            await js.update_stream(config)


async def log_exists(js: JetStreamContext, settings: JetStreamSettings, log: str) -> bool:
    """Whether the streams of `log` exist (its first partition's stream does)."""
    try:
        await js.stream_info(Names(settings.prefix).stream(log, 0))
    except NotFoundError:
        return False
    return True


async def delete_log(js: JetStreamContext, settings: JetStreamSettings, log: str) -> None:
    """Delete every stream of `log` (tests and tools; the data is gone)."""
    names = Names(settings.prefix)
    for p in range(settings.partitions):
        with contextlib.suppress(NotFoundError):
            await js.delete_stream(names.stream(log, p))
