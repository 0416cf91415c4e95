"""The router: every destination reads the `events` log on its own and delivers what is meant
for it, so a slow or failing destination only ever delays itself.

For each (destination, partition) a *lane* consumes `events` as the consumer group
`router-<destination id>`: it fetches record batches, keeps the events of the destination's
sources that its filter lets through (the others are counted `filtered` with a reason), and
tries each once: the destination's lanes share a `batcher.RequestBatcher`, which sends their
events in requests of up to `max_batch`, `max_in_flight` at once. Every quarter second at
most, a lane keeps the events that failed for now as retry jobs in the delivery state, counts
what it delivered, and only then commits its offset (`Lane.settle`). A crash replays from the
last commit: some events reach their destination twice, always with the same `messageId` (and
`Idempotency-Key`); a stop drains first, so a clean restart repeats nothing.

For each destination a *retrier* takes the jobs that are due, tries them again, and either
forgets them (delivered, or refused for good), schedules them again with backoff, or turns them
into dead letters once their retry period (4 hours by default) is over.

An *ordered* destination gets one profile's events in order: a lane sends one request at a
time, and an event whose profile has a job waiting joins the queue behind it rather than
overtaking it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import datetime

import msgspec

from headwater.accounting.store import AccountingStore, Mark
from headwater.accounting.tally import Tally, now_ms
from headwater.delivery.attempts import (
    AWAITING_RETRY,
    FILTERED,
    WAITING_FOR_EARLIER,
    Backoff,
    add_counts,
    attempt,
    count,
    observe,
    settle_first,
)
from headwater.delivery.batcher import RequestBatcher
from headwater.delivery.metrics import DeliveryMetrics
from headwater.delivery.model import RETRY, Event, Result
from headwater.delivery.retrier import Retrier
from headwater.delivery.routes import Route
from headwater.delivery.state import DeliveryState, RetryJob
from headwater.log.base import Log, PartitionConsumer
from headwater.log.records import RecordBatch

log = logging.getLogger(__name__)

MAX_BATCHES = 64  # record batches fetched at once by a lane
FETCH_TIMEOUT_S = 0.5
# A lane settles (keeps its retry jobs, records its counts, commits its position) at most this
# often, and when it is idle: three transactions, whatever the number of units delivered.
# What a stop leaves unsettled is delivered again (kept jobs and counts do not repeat).
SETTLE_EVERY_S = 0.25
# On `stop`, lanes get this long to finish the unit in hand and settle it (what is still in
# flight after that is cancelled, and delivered again by the next router).
DRAIN_S = 5.0
SKIPPED = "skipped"  # read past: gone from the log before this destination read it
REMOVED_BY_RETENTION = "removed_by_retention"


class _Head(msgspec.Struct):
    messageId: str = ""
    receivedAt: str = ""
    userId: object = None
    anonymousId: object = None
    profileId: str | None = None


_decode_head = msgspec.json.Decoder(_Head).decode


class Router:
    """Delivers the `events` log to `routes`, partitions given by `assign`/`revoke_now`."""

    def __init__(
        self,
        routes: list[Route],
        events: Log,
        state: DeliveryState,
        accounting: AccountingStore | None = None,
        *,
        backoff: Backoff | None = None,
        clock: Callable[[], int] = now_ms,
        holds: Callable[[int], bool] = lambda _p: True,
        metrics: DeliveryMetrics | None = None,
    ) -> None:
        self.routes = routes
        self.metrics = metrics or DeliveryMetrics()
        self.events = events
        self.state = state
        self.accounting = accounting
        self.backoff = backoff or Backoff()
        self.clock = clock
        self.holds = holds
        self._lanes: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._retriers: dict[str, tuple[Retrier, asyncio.Task[None]]] = {}
        self._batchers: dict[str, RequestBatcher] = {}
        self._partitions: set[int] = set()
        self.errors = 0

    def start(self) -> None:
        """Start every destination's retrier (lanes start with `assign`)."""
        for route in self.routes:
            self._start_retrier(route)

    def _start_retrier(self, route: Route) -> None:
        retrier = Retrier(
            route, self.state, self.accounting, self.backoff, self.clock, self.metrics
        )
        task = asyncio.get_running_loop().create_task(retrier.run(), name=f"retry-{route.id}")
        self._retriers[route.id] = (retrier, task)

    def batcher(self, route: Route) -> RequestBatcher:
        """The route's requests, shared by its lanes."""
        batcher = self._batchers.get(route.id)
        if batcher is None or batcher.route is not route:
            batcher = self._batchers[route.id] = RequestBatcher(route)
        return batcher

    def assign(self, partition: int) -> None:
        """Deliver `partition` to every destination, from each one's committed offset."""
        self._partitions.add(partition)
        for route in self.routes:
            self._start_lane(route, partition)

    def _start_lane(self, route: Route, partition: int) -> None:
        key = (route.id, partition)
        task = self._lanes.get(key)
        if task is None or task.done():
            self._lanes[key] = asyncio.get_running_loop().create_task(
                self._lane_forever(route, partition), name=f"lane-{route.id}-p{partition}"
            )

    def revoke_now(self, partition: int) -> None:
        """Stop delivering `partition` (what was not committed is delivered again)."""
        self._partitions.discard(partition)
        for route in self.routes:
            task = self._lanes.pop((route.id, partition), None)
            if task is not None:
                task.cancel()

    async def replace_routes(self, routes: list[Route]) -> None:
        """Deliver to `routes` from now on. Routes made again the same keep running; the
        others' lanes drain (as on `stop`) and their retriers stop; the lanes of a changed
        route start again from its committed offsets."""
        kept = {r.id: r for r in self.routes}
        same = {r.id for r in routes if r.id in kept and kept[r.id].version == r.version}
        gone = [r for r in self.routes if r.id not in same]
        await self._stop_routes(gone, DRAIN_S)
        self.routes = [kept[r.id] if r.id in same else r for r in routes]
        for route in self.routes:
            if route.id not in same:
                self._start_retrier(route)
                for p in self._partitions:
                    self._start_lane(route, p)

    async def stop(self, drain_s: float = DRAIN_S) -> None:
        """Stop: lanes finish the unit in hand and settle it (for up to `drain_s`, so a
        restart delivers nothing twice), then every lane and retrier stops and the
        destinations close."""
        await self._stop_routes(self.routes, drain_s)

    async def _stop_routes(self, routes: list[Route], drain_s: float = 0.0) -> None:
        ids = {r.id for r in routes}
        tasks = [t for (rid, _p), t in self._lanes.items() if rid in ids]
        # a lane that is no longer in `_lanes` finishes its unit, settles it and ends; a
        # retrier that is stopping finishes its round
        self._lanes = {k: t for k, t in self._lanes.items() if k[0] not in ids}
        for rid in ids & self._retriers.keys():
            retrier, task = self._retriers.pop(rid)
            retrier.stopping = True
            tasks.append(task)
        if tasks and drain_s > 0:
            await asyncio.wait(tasks, timeout=drain_s)
        tasks = [t for t in tasks if not t.done()]
        while tasks:  # cancelled again until they end (see `StageRunner.revoke`)
            for task in tasks:
                task.cancel()
            _done, pending = await asyncio.wait(tasks, timeout=0.1)
            tasks = list(pending)
        for route in routes:
            batcher = self._batchers.pop(route.id, None)
            if batcher is not None:
                await batcher.close()
            try:
                await route.destination.close()
            except Exception:
                log.exception("closing destination %s failed", route.spec.name)

    # -- a lane: one destination, one partition ---------------------------------------------

    async def _lane_forever(self, route: Route, partition: int) -> None:
        backoff = 0.1
        while True:
            try:
                await Lane(self, route, partition).run()
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # retryable by design: back off, resume from the commit
                self.errors += 1
                log.error(
                    "destination %s partition %d: %s; resuming from the last commit in %.1fs",
                    route.spec.name, partition, exc, backoff,
                )  # fmt: skip
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)


class Lane:
    """One destination's reading of one partition of `events`.

    A lane *settles* what it delivered at most every `SETTLE_EVERY_S` (and when idle or
    stopped): it keeps the retry jobs, records the counts with the accounting mark, then
    commits its offset, in that order, so a stop at any point replays only what is not yet
    settled, and nothing is kept or counted twice."""

    def __init__(self, router: Router, route: Route, partition: int) -> None:
        self.router = router
        self.route = route
        self.partition = partition
        self.mark: int | None = None  # how far the accounting of this lane reaches
        self.tally = Tally()  # the counts of the units delivered since the last settle
        self.jobs: list[RetryJob] = []  # their retry jobs
        self.delivered_to: int | None = None  # the end of the last unit delivered

    async def run(self) -> None:
        router, route = self.router, self.route
        consumer: PartitionConsumer = router.events.consumer(route.group, self.partition)
        position = await consumer.open()
        me = asyncio.current_task()
        key = (route.id, self.partition)
        loop = asyncio.get_running_loop()
        done: int | None = None  # delivered up to here, not committed yet
        settled_at = loop.time()
        try:
            while router.holds(self.partition) and router._lanes.get(key) is me:
                batches = await consumer.fetch(MAX_BATCHES, FETCH_TIMEOUT_S)
                if router._lanes.get(key) is not me:
                    break  # stopping: what was just fetched is left for the next reader
                if not batches:
                    if done is not None:  # idle: nothing is left unsettled for long
                        await self.settle()
                        await consumer.commit(done)
                        done = None
                    continue
                if batches[0].base_offset > position:
                    self._skipped(batches[0].base_offset - position)
                position = max(position, batches[-1].end_offset)
                await self.deliver(batches)
                done = batches[-1].end_offset
                if loop.time() - settled_at >= SETTLE_EVERY_S:
                    await self.settle()
                    await consumer.commit(done)
                    done, settled_at = None, loop.time()
        finally:
            # stopped, drained or revoked: what was delivered is settled and committed (the
            # rest is delivered again by the next reader)
            with contextlib.suppress(Exception):
                await self.settle()
                if done is not None:
                    await consumer.commit(done)

    async def deliver(self, batches: list[RecordBatch]) -> None:
        """Deliver the unit's events once; its retry jobs and counts wait for `settle`."""
        router, route = self.router, self.route
        tally = self.tally
        counted = await self._counted_until()
        chosen: list[Event] = []
        replayed: set[str] = set()  # message ids of events counted before a replay
        for batch in batches:
            count_it = batch.end_offset > counted
            received: dict[str, int] = {}
            for record in batch.records:
                if record.source_id not in route.sources:
                    continue  # not one of its sources: not an outcome of this destination
                event = _event(record.source_id, record.message, received, router.clock)
                reason = route.filter.check(record.message)
                if reason is not None:
                    if count_it:
                        count(tally, route, event, FILTERED, reason)
                    continue
                chosen.append(event)
                if not count_it:
                    replayed.add(event.message_id)
        if chosen:
            if route.ordered:
                parked, ready, results = await self._in_order(chosen)
            else:
                parked, ready = [], chosen
                results = await router.batcher(route).deliver(chosen)
            now = router.clock()
            uncounted = {i for i, e in enumerate(ready) if e.message_id in replayed}
            self.jobs += settle_first(route, ready, results, now, router.backoff, tally, uncounted)
            observe(router.metrics, route, ready, results, now)
            for event in parked:
                self.jobs.append(RetryJob(route.id, event, 0, now, now, WAITING_FOR_EARLIER))
                if event.message_id not in replayed:
                    count(tally, route, event, AWAITING_RETRY, WAITING_FOR_EARLIER)
        self.delivered_to = batches[-1].end_offset

    def _skipped(self, offsets: int) -> None:
        """Retention removed what this lane had not read yet: say so, and count it."""
        route = self.route
        log.error(
            "destination %s partition %d: %d offsets of events were removed by retention "
            "before this destination read them (log.retention); they are skipped",
            route.spec.name, self.partition, offsets,
        )  # fmt: skip
        self.router.metrics.count(route.stage, "", SKIPPED, REMOVED_BY_RETENTION, offsets)

    async def settle(self) -> None:
        """Keep the retry jobs of what was delivered, then record its counts."""
        router = self.router
        if self.jobs:
            await asyncio.to_thread(router.state.keep, self.jobs)
            self.jobs = []
        if self.delivered_to is not None:
            await self._account(self.delivered_to, self.tally)
            add_counts(router.metrics, self.tally)
        self.tally, self.delivered_to = Tally(), None

    async def _in_order(self, events: list[Event]) -> tuple[list[Event], list[Event], list[Result]]:
        """An ordered destination's events, a request at a time: those whose profile has an
        earlier event waiting (a job, or one that failed just now) wait behind it; the others
        are tried. Returns (waiting, tried, their results)."""
        route = self.route
        blocked = set(await asyncio.to_thread(self.router.state.waiting_keys, route.id))
        blocked.update(job.event.order_key for job in self.jobs)  # kept at the next settle
        size = max(1, route.destination.max_batch)
        parked: list[Event] = []
        tried: list[Event] = []
        results: list[Result] = []
        at = 0
        while at < len(events):
            chunk: list[Event] = []
            while at < len(events) and len(chunk) < size:
                event = events[at]
                at += 1
                (parked if event.order_key in blocked else chunk).append(event)
            if not chunk:
                continue
            got = await attempt(route, chunk)
            blocked.update(
                e.order_key for e, r in zip(chunk, got, strict=True) if r.outcome == RETRY
            )
            tried += chunk
            results += got
        return parked, tried, results

    async def _counted_until(self) -> int:
        """The offset this lane's counts reach (batches ending at or before it were counted
        before a replay)."""
        store = self.router.accounting
        if store is None:
            return -1
        if self.mark is None:
            self.mark = await asyncio.to_thread(store.mark, self.route.stage, self.partition)
        return self.mark

    async def _account(self, new: int, tally: Tally) -> None:
        """Record `tally` and move the mark to `new`, in one transaction."""
        store = self.router.accounting
        if store is None:
            return
        mark = await self._counted_until()
        if new <= mark:
            return
        moved = Mark(self.route.stage, self.partition, mark, new)
        if await asyncio.to_thread(store.record, tally, moved):
            self.mark = new
        else:
            self.mark = None  # moved by another router meanwhile: read again next time


def _event(
    source_id: str, message: bytes, received: dict[str, int], clock: Callable[[], int]
) -> Event:
    """The `Event` of a stored message (`received`: receivedAt texts already parsed)."""
    try:
        head = _decode_head(message)
    except (msgspec.DecodeError, msgspec.ValidationError):
        head = _Head()
    at = received.get(head.receivedAt)
    if at is None:
        try:
            at = int(datetime.fromisoformat(head.receivedAt).timestamp() * 1000)
        except ValueError:
            at = clock()
        received[head.receivedAt] = at
    key = head.profileId or _text(head.userId) or _text(head.anonymousId) or head.messageId
    return Event(head.messageId, source_id, at, key, message)


def _text(value: object) -> str:
    return value if isinstance(value, str) else "" if value is None else str(value)
