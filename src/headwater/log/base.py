"""The log's small interface: append (for writers) and read / commit (for consumers).

Errors say what a caller must tell its client: `LogBackpressure` means "slow down and retry"
(HTTP 429), `LogUnavailable` means "the log cannot take this now" (HTTP 503). Neither ever
acknowledges anything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Protocol

from headwater.log.records import RecordBatch, Run


class LogError(Exception):
    """Base of the errors a log raises to its writers; nothing in the failed append is stored."""

    status = 503
    code = "log_unavailable"

    def __init__(self, message: str, retry_after: int = 1) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class LogBackpressure(LogError):
    """The writer is behind beyond its bound: retry after `retry_after` seconds."""

    status = 429
    code = "overloaded"


class LogUnavailable(LogError):
    """The log cannot store anything now (disk full, writer stopped, storage error)."""


class LogAppender(Protocol):
    """Appends encoded records to partitions; says when they are durable."""

    def submit(self, runs: list[Run], nbytes: int, done: Callable[[LogError | None], None]) -> None:
        """Store every run in its partition, all or nothing; call `done(None)` once durable,
        or `done(error)` if not (perhaps before returning)."""
        ...

    async def append(self, runs: list[Run], nbytes: int) -> None:
        """`submit` as a coroutine: return once durable, raise `LogError` if not."""
        ...

    def close(self) -> None:
        """Stop accepting appends and release resources."""
        ...


Done = Callable[[LogError | None], None]
"""What a writer's `submit` calls once: None when the runs are durable, else the error."""


async def submitted(
    submit: Callable[[list[Run], int, Done], None], runs: list[Run], nbytes: int
) -> None:
    """`submit(runs, nbytes, done)` as a coroutine: returns once durable, raises `LogError`."""
    import asyncio

    fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def done(error: LogError | None) -> None:
        if fut.done():
            return
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)

    submit(runs, nbytes, done)
    await fut


def call_done(done: Done, error: LogError | None) -> None:
    """Call a completion callback; a caller's bug must not stop the others' acknowledgements."""
    try:
        done(error)
    except Exception:
        logging.getLogger(__name__).exception("a log completion callback failed")


class LogReader(Protocol):
    """Reads committed record batches and keeps consumer-group offsets."""

    @property
    def partitions(self) -> int:
        """How many partitions the log has."""
        ...

    def read(self, partition: int, offset: int, max_records: int = 10_000) -> list[RecordBatch]:
        """Batches of `partition` holding records at or after `offset`, oldest first."""
        ...

    def end_offsets(self) -> list[int]:
        """Per partition, the offset the next appended record will get."""
        ...

    def start_offsets(self) -> list[int]:
        """Per partition, the oldest offset still retained."""
        ...

    def commit(self, group: str, offsets: dict[int, int]) -> None:
        """Record that `group` has processed every record before `offsets[p]` in partition p."""
        ...

    def committed(self, group: str) -> dict[int, int]:
        """The offsets `group` last committed, per partition (missing: never committed)."""
        ...

    def close(self) -> None:
        """Release resources."""
        ...


class PartitionConsumer(Protocol):
    """One consumer group's reading of one partition, as a stage owning it sees it.

    `open` takes the partition over: it returns the group's committed offset and makes the
    next `fetch` start there (whatever an earlier owner had fetched and not committed is
    delivered again). `commit(offset)` durably records that every record before `offset` is
    processed; it only ever moves forward.
    """

    partition: int

    async def open(self) -> int:
        """Take the partition over; returns the committed offset (0: never committed)."""
        ...

    async def wait(self, timeout: float) -> bool:
        """Whether there is something to fetch, waiting up to `timeout` for it (nothing is
        decoded: a stage waits here without holding data)."""
        ...

    async def fetch(self, max_batches: int, timeout: float) -> list[RecordBatch]:
        """The next batches after the last fetched (empty when none arrived within `timeout`)."""
        ...

    async def commit(self, offset: int) -> None:
        """Record, durably, that the group has processed everything before `offset`."""
        ...

    async def close(self) -> None:
        """Stop reading (nothing is committed by closing)."""
        ...


class Log(Protocol):
    """One named log (`ingest`, `events`) as stages and tools see it, on any backend.

    Offsets are per partition and only grow. The embedded backend counts records; JetStream
    counts stored batches (one stream message each). A batch's `end_offset` is what a
    consumer commits after processing it.

    `append(runs, producer, seq)` is idempotent per producer: appending again with a `seq`
    already appended for that `producer` stores nothing (the embedded backend remembers the
    highest `seq` of every producer; JetStream the exact `producer:seq` within the stream's
    duplicate window). A stage uses the input position it has processed as `seq`, so a
    replay after a crash does not write its output twice.
    """

    name: str
    partitions: int

    async def append(self, runs: list[Run], producer: str | None = None, seq: int = 0) -> None:
        """Store every run in its partition and return once durable (raises `LogError`)."""
        ...

    async def produced(self, producer: str) -> int | None:
        """The highest `seq` appended by `producer`, where the backend knows it, else None."""
        ...

    async def read(
        self, partition: int, offset: int, max_records: int = 10_000
    ) -> list[RecordBatch]:
        """Batches of `partition` at or after `offset`, oldest first (no group involved)."""
        ...

    async def end_offsets(self) -> list[int]:
        """Per partition, the offset the next appended batch will start at."""
        ...

    async def start_offsets(self) -> list[int]:
        """Per partition, the oldest offset still retained."""
        ...

    def consumer(self, group: str, partition: int, stamped: bool = True) -> PartitionConsumer:
        """A consumer of `partition` for `group` (call `open` before fetching). With
        `stamped=False` records come as stored, each with its stamp (`Record.stamp`)."""
        ...

    async def committed(self, group: str) -> dict[int, int]:
        """The offsets `group` has committed, per partition (missing: never committed)."""
        ...

    async def groups(self) -> list[str]:
        """The consumer groups that have committed (or hold a consumer) on this log."""
        ...

    async def close(self) -> None:
        """Release connections and files."""
        ...
