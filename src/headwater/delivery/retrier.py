"""A destination's retrier: the jobs that are due, tried again; then forgotten, scheduled again
with backoff, or turned into dead letters at the end of their retry period.

A round that gets nothing through (the destination is down) makes the next rounds probes: one
request's worth of due jobs every `poll_s`, until one gets through. The other due jobs wait (a
job is never retried before it is due, and may be later), so a destination that is down costs
a request per `poll_s` rather than one per due job."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from headwater.accounting.store import AccountingStore
from headwater.accounting.tally import Tally
from headwater.delivery.attempts import (
    EXPIRED,
    Backoff,
    add_counts,
    attempt,
    count,
    observe,
    once,
)
from headwater.delivery.metrics import DeliveryMetrics
from headwater.delivery.model import DELIVERED, DISCARDED
from headwater.delivery.routes import Route
from headwater.delivery.state import DeliveryState, RetryJob

log = logging.getLogger(__name__)

POLL_S = 0.5  # how often a destination without due jobs looks again, at most


class Retrier:
    """Retries one route's jobs as they fall due."""

    def __init__(
        self,
        route: Route,
        state: DeliveryState,
        accounting: AccountingStore | None,
        backoff: Backoff,
        clock: Callable[[], int],
        metrics: DeliveryMetrics | None = None,
        poll_s: float = POLL_S,
    ) -> None:
        self.metrics = metrics or DeliveryMetrics()
        self.route = route
        self.state = state
        self.accounting = accounting
        self.backoff = backoff
        self.clock = clock
        self.poll_s = poll_s
        self.probe = max(1, route.destination.max_batch)  # one request's worth
        self.limit = self.probe * max(1, route.destination.max_in_flight)
        self.failing = False  # the last round delivered nothing: the next one only probes
        self.stopping = False  # set: end after the round in hand (see `Router.stop`)

    async def run(self) -> None:
        """Retry until `stopping` is set (errors are logged, and the round is tried again
        later)."""
        while not self.stopping:
            try:
                if not await self.round():
                    await asyncio.sleep(await self._idle_s())
                elif self.failing:  # down: one probe per poll, not every due job at once
                    await asyncio.sleep(self.poll_s)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("retrying destination %s failed", self.route.spec.name)
                await asyncio.sleep(self.poll_s)

    async def _idle_s(self) -> float:
        nxt = await asyncio.to_thread(self.state.next_due_ms, self.route.id)
        if nxt is None:
            return self.poll_s
        return min(self.poll_s, max(0.01, (nxt - self.clock()) / 1000))

    async def round(self) -> bool:
        """Retry the jobs due now; whether there were any."""
        route = self.route
        now = self.clock()
        # an ordered destination: each profile's first job only, one at a time
        limit = self.probe if self.failing else self.limit
        jobs = await asyncio.to_thread(self.state.due, route.id, now, limit, route.ordered)
        if not jobs:
            return False
        results = await attempt(route, [j.event for j in jobs])
        now = self.clock()
        tally = Tally()
        done: list[int] = []
        again: list[RetryJob] = []
        dead: list[RetryJob] = []
        sampled: set[int] = set()
        for job, result in zip(jobs, results, strict=True):
            if result.outcome in (DELIVERED, DISCARDED):
                done.append(job.id)
                count(tally, route, job.event, result.outcome, result.reason)
                continue
            job.attempts += 1
            job.reason = result.reason
            kept = once(result, sampled)
            job.status, job.request, job.response = kept.status, kept.request, kept.response
            end = job.first_ms + route.retry_period_ms
            if now >= end:
                dead.append(job)
                count(tally, route, job.event, EXPIRED, result.reason)
            else:
                job.due_ms = min(now + self.backoff.delay_ms(job.attempts, result), end)
                again.append(job)
        self.failing = not done  # nothing got through: the destination is down for now
        await asyncio.to_thread(self._settle, done, again, dead, now)
        if self.accounting is not None and tally:
            await asyncio.to_thread(self.accounting.record, tally)
        observe(self.metrics, route, [j.event for j in jobs], results, now)
        add_counts(self.metrics, tally)
        return True

    def _settle(
        self, done: list[int], again: list[RetryJob], dead: list[RetryJob], now: int
    ) -> None:
        if done:
            self.state.finish(done)
        if again:
            self.state.reschedule(again)
        if dead:
            self.state.expire(dead, now)
