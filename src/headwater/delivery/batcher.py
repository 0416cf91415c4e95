"""A destination's requests, gathered across its lanes.

Each lane reads one partition of `events`, so at moderate rates one lane's fetch holds a few
events, and sending each fetch as its own request would make many small requests (an HTTP
request costs the router far more than an event in it). A `RequestBatcher` takes the events of
every lane of a destination and sends them in requests of up to `max_batch`, at most
`max_in_flight` at once (the route's bound, shared with its retrier): a request leaves as soon
as it is full, or when its oldest event has waited `linger_s`, or, when every request slot was
busy, as soon as one frees up (by then the events have waited anyway). Each caller gets its
own events' results, in order.

Unordered destinations only: an ordered destination's lane sends one request at a time and
must not have its events split over requests in flight together.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from dataclasses import dataclass, field

from headwater.delivery.attempts import request
from headwater.delivery.model import Event, Result
from headwater.delivery.routes import Route

LINGER_S = 0.01  # how long a request that is not full waits for more events, at most


@dataclass
class _Part:
    """One caller's events, and their results as they come."""

    events: list[Event]
    done: asyncio.Future[list[Result]]
    since: float  # loop time it was queued
    results: list[Result | None] = field(default_factory=list)
    taken: int = 0  # events handed to requests so far
    left: int = 0  # events whose results are still missing

    def __post_init__(self) -> None:
        self.results = [None] * len(self.events)
        self.left = len(self.events)


class RequestBatcher:
    """Sends one route's events in full requests, whichever lane they come from."""

    def __init__(self, route: Route, linger_s: float = LINGER_S) -> None:
        self.route = route
        self.linger_s = linger_s
        self.size = max(1, route.destination.max_batch)
        self._parts: deque[_Part] = deque()
        self._queued = 0  # events queued and not yet in a request
        self._more = asyncio.Event()  # something was queued
        self._task: asyncio.Task[None] | None = None
        self._sending: set[asyncio.Task[None]] = set()

    async def deliver(self, events: list[Event]) -> list[Result]:
        """The results of `events` (in order), sent along with other lanes' events."""
        if not events:
            return []
        loop = asyncio.get_running_loop()
        part = _Part(events, loop.create_future(), loop.time())
        self._parts.append(part)
        self._queued += len(events)
        self._more.set()
        if self._task is None or self._task.done():
            self._task = loop.create_task(self._dispatch(), name=f"batch-{self.route.id}")
        try:
            return await asyncio.shield(part.done)
        except asyncio.CancelledError:
            self._forget(part)
            raise

    async def close(self) -> None:
        """Stop sending (requests in flight are cancelled; their callers are gone too)."""
        tasks = [t for t in (self._task, *self._sending) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        self._task = None

    def _forget(self, part: _Part) -> None:
        """A caller that stopped waiting: its events not yet in a request are not sent."""
        with contextlib.suppress(ValueError):
            self._parts.remove(part)
            self._queued -= len(part.events) - part.taken

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        slots = self.route.in_flight
        while True:
            while not self._parts:
                self._more.clear()
                await self._more.wait()
            await slots.acquire()
            try:
                while self._queued < self.size and self._parts:  # linger for a full request
                    wait = self._parts[0].since + self.linger_s - loop.time()
                    if wait <= 0:
                        break
                    self._more.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._more.wait(), wait)
                chunk = self._take()
            except BaseException:
                slots.release()
                raise
            if not chunk:
                slots.release()
                continue
            task = loop.create_task(self._send(chunk))
            self._sending.add(task)
            task.add_done_callback(self._sending.discard)

    def _take(self) -> list[tuple[_Part, int]]:
        """Up to `size` queued events, oldest first, as (part, index) pairs."""
        chunk: list[tuple[_Part, int]] = []
        while self._parts and len(chunk) < self.size:
            part = self._parts[0]
            n = min(self.size - len(chunk), len(part.events) - part.taken)
            chunk += [(part, i) for i in range(part.taken, part.taken + n)]
            part.taken += n
            self._queued -= n
            if part.taken == len(part.events):
                self._parts.popleft()
        return chunk

    async def _send(self, chunk: list[tuple[_Part, int]]) -> None:
        try:
            results = await request(self.route, [part.events[i] for part, i in chunk])
        finally:
            self.route.in_flight.release()
        for (part, i), result in zip(chunk, results, strict=True):
            part.results[i] = result
            part.left -= 1
            if part.left == 0 and not part.done.done():
                part.done.set_result([r for r in part.results if r is not None])
