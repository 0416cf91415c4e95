"""The log's small interface: append (for writers) and read / commit (for consumers).

Errors say what a caller must tell its client: `LogBackpressure` means "slow down and retry"
(HTTP 429), `LogUnavailable` means "the log cannot take this now" (HTTP 503). Neither ever
acknowledges anything.
"""

from __future__ import annotations

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
