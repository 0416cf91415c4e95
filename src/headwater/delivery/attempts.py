"""One attempt at delivering a list of events to a route's destination, and what it leads to:
the results, the retry jobs of the events that failed for now, and their accounting.

Backoff is randomized and exponential: the n-th retry waits `base * 2**(n-1)` seconds (at
most `cap`), times a random factor between 0.5 and 1.5, or as long as the destination's
`Retry-After` asks; never past the end of the event's retry period.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass

import msgspec

from headwater.accounting.tally import Tally
from headwater.delivery.metrics import DeliveryMetrics
from headwater.delivery.model import DELIVERED, DISCARDED, RETRY, Event, Result
from headwater.delivery.routes import Route
from headwater.delivery.state import RetryJob

log = logging.getLogger(__name__)

# outcomes of a destination's stage in the delivery overview
FILTERED = "filtered"  # not for this destination (integrations object, filters): reason says
AWAITING_RETRY = "awaiting_retry"  # its first attempt failed for now: it is retried
EXPIRED = "expired"  # still failing at the end of its retry period: a dead letter
DESTINATION_ERROR = "destination_error"  # the destination's code raised (a bug): retried
WAITING_FOR_EARLIER = "waiting_for_earlier"  # ordered: an earlier event of its profile waits


@dataclass(frozen=True)
class Backoff:
    """How long retries wait: `base_s` doubling up to `cap_s`, randomized by half."""

    base_s: float = 10.0
    cap_s: float = 1800.0

    def delay_ms(self, attempts: int, result: Result | None = None) -> int:
        """The wait before the next attempt, after `attempts` failed ones."""
        if result is not None and result.retry_after_s is not None:  # as asked (the caller
            return int(result.retry_after_s * 1000)  # keeps it within the retry period)
        exp = min(self.cap_s, self.base_s * 2 ** max(0, attempts - 1))
        return int(exp * random.uniform(0.5, 1.5) * 1000)


async def attempt(route: Route, events: list[Event]) -> list[Result]:
    """Deliver `events` in requests of at most `max_batch`, at most `max_in_flight` of the
    route's requests at once (ordered routes: one request at a time, in order)."""
    size = max(1, route.destination.max_batch)
    chunks = [events[i : i + size] for i in range(0, len(events), size)]

    async def one(chunk: list[Event]) -> list[Result]:
        async with route.in_flight:
            return await request(route, chunk)

    if route.ordered:
        out: list[Result] = []
        for chunk in chunks:
            out += await one(chunk)
        return out
    parts = await asyncio.gather(*(one(c) for c in chunks))
    return [r for part in parts for r in part]


async def request(route: Route, events: list[Event]) -> list[Result]:
    """One request of `events` to the route's destination: a result per event (a bug in the
    destination's code is a retryable `destination_error`, never an exception)."""
    try:
        results = await route.destination.deliver(events)
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a destination's bug must not stop its lane
        log.exception("destination %s failed to deliver", route.spec.name)
        return [Result(RETRY, DESTINATION_ERROR, response=str(exc).encode()[:512])] * len(events)
    if len(results) != len(events):
        log.error("destination %s gave %d results for %d events", route.spec.name,
                  len(results), len(events))  # fmt: skip
        return [Result(RETRY, DESTINATION_ERROR)] * len(events)
    return results


def once(result: Result, sampled: set[int]) -> Result:
    """`result`, without its request and answer samples when a job keeps them already: the
    events of one request share its result, and its samples (up to 4 KB) are kept once."""
    if result.request is None and result.response is None:
        return result
    if id(result) in sampled:
        return msgspec.structs.replace(result, request=None, response=None)
    sampled.add(id(result))
    return result


def new_job(route: Route, event: Event, result: Result, now_ms: int, backoff: Backoff) -> RetryJob:
    """The retry job of an event whose first attempt failed for now."""
    delay = min(backoff.delay_ms(1, result), route.retry_period_ms)
    return RetryJob(
        route.id,
        event,
        1,
        now_ms,
        now_ms + delay,
        result.reason,
        status=result.status,
        request=result.request,
        response=result.response,
    )


def count(tally: Tally, route: Route, event: Event, outcome: str, reason: str = "") -> None:
    """Count one event's outcome at the route's stage, in the minute it was received."""
    tally.outcome(event.source_id, event.received_ms, route.stage, outcome, reason)


def settle_first(
    route: Route,
    events: list[Event],
    results: list[Result],
    now_ms: int,
    backoff: Backoff,
    tally: Tally,
    uncounted: set[int] | None = None,
) -> list[RetryJob]:
    """Count the first attempt's results (but for the events at the `uncounted` indexes:
    counted before a replay); the jobs of the events to retry."""
    jobs: list[RetryJob] = []
    skip = uncounted or set()
    sampled: set[int] = set()  # results whose samples a job keeps already
    for i, (event, result) in enumerate(zip(events, results, strict=True)):
        if result.outcome == RETRY:
            jobs.append(new_job(route, event, once(result, sampled), now_ms, backoff))
        if i in skip:
            continue
        if result.outcome == DELIVERED:
            count(tally, route, event, DELIVERED)
        elif result.outcome == DISCARDED:
            count(tally, route, event, DISCARDED, result.reason)
        else:
            count(tally, route, event, AWAITING_RETRY, result.reason)
    return jobs


def observe(
    metrics: DeliveryMetrics, route: Route, events: list[Event], results: list[Result], now: int
) -> None:
    """The end-to-end latency of each delivered event, in `metrics`."""
    name = route.spec.name
    for event, result in zip(events, results, strict=True):
        if result.outcome == DELIVERED:
            metrics.observe(name, max(0, now - event.received_ms) / 1000)


def add_counts(metrics: DeliveryMetrics, tally: Tally) -> None:
    """A unit's counted outcomes, in `metrics` too."""
    for (source_id, _minute, stage, outcome, reason), n in tally.outcomes.items():
        metrics.count(stage, source_id, outcome, reason, n)
