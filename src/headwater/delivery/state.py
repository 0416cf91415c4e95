"""Delivery state: events awaiting a retry, and the dead letters of those that ran out of time.

Events that are delivered (or discarded) at the first attempt leave no state: the router's
position in the `events` log says they are done. An event that fails with a retryable reason
is kept here (`RetryJob`) before the router moves past it in the log, then tried again when it
is due, with randomized exponential backoff, until its retry period (4 hours by default) is
over; then it becomes a dead letter, kept until it is re-driven (`headwater deadletter
redrive`) or deleted.

Backends: `SqliteDeliveryState` (embedded, `<data>/state/delivery.db`) and
`PostgresDeliveryState` (shared by a fleet of routers); one contract suite runs on both.
Every method that writes returns once the write is durable (committed).
"""

from __future__ import annotations

from typing import Protocol

import msgspec

from headwater.delivery.model import Event


class RetryJob(msgspec.Struct):
    """An event of one destination, awaiting its next attempt."""

    destination_id: str
    event: Event
    attempts: int  # attempts made so far (0: none yet, e.g. re-driven from the dead letters)
    first_ms: int  # the first attempt: the retry period counts from here
    due_ms: int  # the next attempt, not before
    reason: str  # why the last attempt failed
    id: int = 0  # given by the store when added
    status: int | None = None  # the last attempt's HTTP status, if it had an answer
    request: bytes | None = None  # samples of the last failure
    response: bytes | None = None


class DeadLetter(msgspec.Struct):
    """An event whose retry period ran out (or that a destination refused for good, when the
    destination keeps those)."""

    id: int
    destination_id: str
    event: Event
    attempts: int
    first_ms: int
    failed_ms: int  # when it became a dead letter
    reason: str
    status: int | None = None
    request: bytes | None = None
    response: bytes | None = None


class DeliveryState(Protocol):
    """Retry jobs and dead letters of every destination."""

    def add(self, jobs: list[RetryJob]) -> list[RetryJob]:
        """Keep `jobs` (their `id` is ignored). One job per destination and messageId: a job
        already kept (a replayed unit's) is left as it is. Returns `jobs` with the ids of
        their jobs, in order."""
        ...

    def keep(self, jobs: list[RetryJob]) -> None:
        """`add` without finding the ids: what the router does with every failed event."""
        ...

    def due(
        self, destination_id: str, now_ms: int, limit: int, first_of_key: bool = False
    ) -> list[RetryJob]:
        """Up to `limit` jobs of the destination due at `now_ms`, the earliest due first (ties:
        the oldest added first). `first_of_key`: only jobs that are the first (lowest id) of
        their order key, for an ordered destination whose later jobs wait behind."""
        ...

    def next_due_ms(self, destination_id: str) -> int | None:
        """When the destination's earliest job is due (None: no job)."""
        ...

    def waiting_keys(self, destination_id: str) -> dict[str, int]:
        """The order keys (profiles) with a job waiting, each with the id of its first (lowest)
        job: for an ordered destination, a profile's later events wait behind that one."""
        ...

    def finish(self, ids: list[int]) -> None:
        """Forget these jobs (delivered, or discarded for good); unknown ids are ignored."""
        ...

    def reschedule(self, jobs: list[RetryJob]) -> None:
        """Store the new `attempts`, `due_ms`, `reason`, `status` and samples of these jobs (by
        id; the event and `first_ms` stay as they are)."""
        ...

    def expire(self, jobs: list[RetryJob], now_ms: int) -> None:
        """Turn these jobs (by id; unknown ids are ignored) into dead letters, failed at
        `now_ms`, with the `attempts`, reason, status and samples given here (the event and
        `first_ms` as stored); dead letters get new ids, in the order of `jobs`."""
        ...

    def pending(self, destination_id: str | None = None) -> dict[str, int]:
        """Jobs awaiting a retry, per destination id (all, or just the one); a destination
        without any is left out."""
        ...

    def dead_letters(
        self, destination_id: str | None = None, limit: int = 100, after_id: int = 0
    ) -> list[DeadLetter]:
        """Dead letters with `id > after_id`, oldest first (all destinations, or one)."""
        ...

    def dead_count(self, destination_id: str | None = None) -> dict[str, int]:
        """Dead letters per destination id (all, or just the one); a destination without any is
        left out."""
        ...

    def redrive(self, destination_id: str, ids: list[int] | None, now_ms: int) -> int:
        """Turn these dead letters (None: all of the destination's; ids of other destinations
        are ignored) back into jobs due at `now_ms`, with a fresh retry period (attempts 0,
        first_ms now) and their last reason and samples; returns how many."""
        ...

    def delete_dead(self, destination_id: str, ids: list[int] | None) -> int:
        """Delete these dead letters (None: all of the destination's; ids of other destinations
        are ignored); returns how many."""
        ...

    def close(self) -> None: ...
