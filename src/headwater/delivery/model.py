"""What delivery passes around: an event on its way to a destination, what came of one attempt,
and how an HTTP answer is classified (Segment's rules).

Retryable: timeouts, connection errors, 408, 423, 429 (with `Retry-After` honoured) and every
5xx but 501. Any other answer that is not a success is final: the event is discarded with the
status as its reason.
"""

from __future__ import annotations

import email.utils
import time
from typing import Final, Literal

import msgspec

DELIVERED: Final = "delivered"
RETRY: Final = "retry"  # failed for now: tried again later
DISCARDED: Final = "discarded"  # failed for good (a final status, a bad setting)
Outcome = Literal["delivered", "retry", "discarded"]

RETRYABLE_STATUSES = frozenset({408, 423, 429})
SAMPLE_BYTES = 2048  # how much of a failed request and its answer is kept as a sample


class Event(msgspec.Struct, frozen=True, gc=False):
    """One message on its way to one destination."""

    message_id: str
    source_id: str
    received_ms: int  # when the gateway received it: end-to-end latency counts from here
    order_key: str  # the profile key: events sharing it go in order where a destination asks
    message: bytes  # the message as readers of the `events` log see it (stamped JSON)


class Result(msgspec.Struct, frozen=True):
    """What one attempt at delivering one event came to."""

    outcome: Outcome
    reason: str = ""  # "" when delivered; else e.g. "http_500", "timeout", "connection_error"
    status: int | None = None  # the HTTP status, when there was an answer
    retry_after_s: float | None = None  # the destination asked to wait this long
    request: bytes | None = None  # samples of a failure (cut at SAMPLE_BYTES)
    response: bytes | None = None


DELIVERED_RESULT = Result(DELIVERED)


def classify(
    status: int,
    retry_after: str | None = None,
    request: bytes | None = None,
    response: bytes | None = None,
) -> Result:
    """The result of an HTTP answer with `status` (and its `Retry-After` header, if any)."""
    if 200 <= status < 300:
        return DELIVERED_RESULT
    outcome: Outcome = (
        RETRY
        if status in RETRYABLE_STATUSES or (500 <= status < 600 and status != 501)
        else DISCARDED
    )
    return Result(
        outcome,
        f"http_{status}",
        status,
        parse_retry_after(retry_after) if outcome == RETRY else None,
        request[:SAMPLE_BYTES] if request is not None else None,
        response[:SAMPLE_BYTES] if response is not None else None,
    )


def failed(reason: str, request: bytes | None = None) -> Result:
    """A retryable failure without an answer (`timeout`, `connection_error`)."""
    return Result(RETRY, reason, request=request[:SAMPLE_BYTES] if request else None)


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header: delta-seconds or an HTTP date (None: absent
    or unreadable)."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when is None:
        return None
    return max(0.0, when.timestamp() - (time.time() if now is None else now))
