"""The delivery state a router asks for (embedded SQLite, or PostgreSQL shared by a fleet), and
the row codec both backends share.

Both keep the same two tables:

- `delivery_jobs(id, destination, due_ms, attempts, first_ms, reason, status, order_key,
  message_id, event, request, response)`, indexed on (destination, due_ms, id) for `due`,
  on (destination, order_key) for `waiting_keys`, and unique on (destination, message_id): a
  replayed unit keeps no second job;
- `delivery_dead_letters(id, destination, attempts, first_ms, failed_ms, reason, status,
  order_key, message_id, event, request, response)`, indexed on (destination, id).

`event` is the `Event` encoded with msgpack; `order_key` and `message_id` repeat two of its
fields so that they can be indexed and searched.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import msgspec

from headwater.delivery.model import Event
from headwater.delivery.state import DeadLetter, DeliveryState, RetryJob

BACKENDS = ("embedded", "postgres")

# Column lists that queries name as `{insert}` (what `job_row` gives, in order), `{job}` (what
# `job_of` takes) and `{dead}` (what `dead_letter_of` takes).
COLUMNS = {
    "insert": "destination, due_ms, attempts, first_ms, reason, status, order_key, message_id,"
    " event, request, response",
    "job": "id, destination, due_ms, attempts, first_ms, reason, status, event, request, response",
    "dead": "id, destination, attempts, first_ms, failed_ms, reason, status, event, request,"
    " response",
}

encode_event = msgspec.msgpack.Encoder().encode
decode_event = msgspec.msgpack.Decoder(Event).decode

JobRow = tuple[str, int, int, int, str, int | None, str, str, bytes, bytes | None, bytes | None]


def job_row(job: RetryJob) -> JobRow:
    """The values of `job` for the `{insert}` columns."""
    e = job.event
    return (
        job.destination_id,
        job.due_ms,
        job.attempts,
        job.first_ms,
        job.reason,
        job.status,
        e.order_key,
        e.message_id,
        encode_event(e),
        job.request,
        job.response,
    )


def job_of(row: Sequence[Any]) -> RetryJob:
    """The job of a row of the `{job}` columns."""
    id_, destination, due_ms, attempts, first_ms, reason, status, event, req, resp = row
    return RetryJob(
        destination,
        decode_event(event),
        attempts,
        first_ms,
        due_ms,
        reason,
        id_,
        status,
        _bytes(req),
        _bytes(resp),
    )


def dead_letter_of(row: Sequence[Any]) -> DeadLetter:
    """The dead letter of a row of the `{dead}` columns."""
    id_, destination, attempts, first_ms, failed_ms, reason, status, event, req, resp = row
    return DeadLetter(
        id_,
        destination,
        decode_event(event),
        attempts,
        first_ms,
        failed_ms,
        reason,
        status,
        _bytes(req),
        _bytes(resp),
    )


def with_ids(jobs: list[RetryJob], ids: Iterable[int]) -> list[RetryJob]:
    """`jobs` with the ids a store gave them (in the same order)."""
    return [msgspec.structs.replace(job, id=id_) for job, id_ in zip(jobs, ids, strict=True)]


def counts(rows: Iterable[Sequence[Any]]) -> dict[str, int]:
    """{destination: count} of (destination, count) rows."""
    return {str(dest): int(n) for dest, n in rows}


def _bytes(value: bytes | memoryview | None) -> bytes | None:
    return bytes(value) if isinstance(value, memoryview) else value


def open_delivery_state(
    backend: str,
    *,
    path: Path | None = None,
    url: str | None = None,
    schema: str = "headwater",
) -> DeliveryState:
    """The delivery state of `backend`: "embedded" (SQLite at `path`) or "postgres" (at `url`,
    in `schema`)."""
    if backend == "embedded":
        if path is None:
            raise ValueError("the embedded delivery state needs a path")
        from headwater.delivery.sqlite_state import SqliteDeliveryState

        return SqliteDeliveryState(path)
    if backend == "postgres":
        if not url:
            raise ValueError("the postgres delivery state needs a url")
        from headwater.delivery.postgres_state import PostgresDeliveryState

        return PostgresDeliveryState(url, schema)
    raise ValueError(f"unknown delivery state backend {backend!r} (one of {', '.join(BACKENDS)})")
