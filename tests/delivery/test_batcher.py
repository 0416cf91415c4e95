"""A destination's lanes share its requests: many small deliveries become full requests to a
real receiver, each caller gets its own results in order, and the route's bound on requests in
flight holds."""

from __future__ import annotations

import asyncio
import time
from typing import Any

from headwater.config import DestinationConfig
from headwater.delivery.batcher import RequestBatcher
from headwater.delivery.destinations.base import DestinationSpec
from headwater.delivery.model import DELIVERED, DISCARDED, RETRY, Event, Result
from headwater.delivery.routes import Route, make_route
from tests.delivery.receiver import Receiver, Reply
from tests.delivery.test_router import WEB, WS, message, route


def events(first: int, n: int) -> list[Event]:
    return [Event(f"m{i}", WEB, 0, f"u{i}", message(i)) for i in range(first, first + n)]


def sent_ids(rx: Receiver) -> list[list[str]]:
    return [[m["messageId"] for m in r.json()] for r in rx.requests]


def test_small_deliveries_of_many_lanes_go_out_as_full_requests() -> None:
    with Receiver() as rx:
        hook = route("Hook", rx.url, settings={"batch_size": 20})

        async def go() -> list[list[Result]]:
            batcher = RequestBatcher(hook, linger_s=0.2)
            try:  # eight lanes with 5 events each: two requests of 20
                return await asyncio.gather(*(batcher.deliver(events(5 * k, 5)) for k in range(8)))
            finally:
                await batcher.close()
                await hook.destination.close()

        got = asyncio.run(go())
        assert [len(r) for r in got] == [5] * 8
        assert all(r.outcome == DELIVERED for results in got for r in results)
        sizes = [len(ids) for ids in sent_ids(rx)]
        assert sizes == [20, 20]
        assert sorted(i for ids in sent_ids(rx) for i in ids) == sorted(f"m{i}" for i in range(40))


def test_each_caller_gets_the_results_of_its_own_events_in_order() -> None:
    def answer(request: Any) -> Reply:  # refuse for good any request holding m3
        ids = [m["messageId"] for m in request.json()]
        return Reply(400) if "m3" in ids else Reply(503)

    with Receiver() as rx:
        rx.behave(answer)
        hook = route("Hook", rx.url, settings={"batch_size": 4})

        async def go() -> tuple[list[Result], list[Result]]:
            batcher = RequestBatcher(hook, linger_s=0.2)
            try:  # requests: m0-m3 (refused), m4 m5 + m100 m101 (503), m102 (503)
                a, b = await asyncio.gather(
                    batcher.deliver(events(0, 6)), batcher.deliver(events(100, 3))
                )
                return a, b
            finally:
                await batcher.close()
                await hook.destination.close()

        a, b = asyncio.run(go())
        assert [r.outcome for r in a] == [DISCARDED] * 4 + [RETRY] * 2
        assert [r.outcome for r in b] == [RETRY] * 3
        assert sorted(sent_ids(rx)) == [  # in flight together: in any order
            ["m0", "m1", "m2", "m3"], ["m102"], ["m4", "m5", "m100", "m101"]
        ]  # fmt: skip


def test_a_request_that_is_not_full_leaves_after_the_linger() -> None:
    with Receiver() as rx:
        hook = route("Hook", rx.url, settings={"batch_size": 100})

        async def go() -> float:
            batcher = RequestBatcher(hook, linger_s=0.05)
            try:
                started = time.monotonic()
                results = await batcher.deliver(events(0, 3))
                assert [r.outcome for r in results] == [DELIVERED] * 3
                return time.monotonic() - started
            finally:
                await batcher.close()
                await hook.destination.close()

        took = asyncio.run(go())
        assert 0.05 <= took < 1.0
        assert sent_ids(rx) == [["m0", "m1", "m2"]]


def test_requests_in_flight_stay_within_the_routes_bound() -> None:
    with Receiver(Reply(200, delay=0.1)) as rx:
        hook = route("Hook", rx.url, settings={"batch_size": 10, "max_in_flight": 2})

        async def go() -> float:
            batcher = RequestBatcher(hook, linger_s=0.0)
            try:
                started = time.monotonic()
                await asyncio.gather(*(batcher.deliver(events(10 * k, 10)) for k in range(6)))
                return time.monotonic() - started
            finally:
                await batcher.close()
                await hook.destination.close()

        took = asyncio.run(go())
        assert len(rx.requests) == 6
        assert took >= 0.3  # six requests of 0.1 s, two at a time
        starts = sorted(r.time for r in rx.requests)
        assert starts[2] - starts[0] >= 0.09  # the third waited for a slot


def test_a_caller_that_stops_waiting_has_its_unsent_events_dropped() -> None:
    with Receiver(Reply(200, delay=0.2)) as rx:
        hook = route("Hook", rx.url, settings={"batch_size": 5, "max_in_flight": 1})

        async def go() -> None:
            batcher = RequestBatcher(hook, linger_s=0.0)
            try:
                task = asyncio.ensure_future(batcher.deliver(events(0, 15)))
                await asyncio.sleep(0.1)  # the first request is in flight, ten wait
                task.cancel()
                await asyncio.sleep(0.3)
                later = await batcher.deliver(events(100, 2))
                assert [r.outcome for r in later] == [DELIVERED] * 2
            finally:
                await batcher.close()
                await hook.destination.close()

        asyncio.run(go())
        assert sent_ids(rx) == [["m0", "m1", "m2", "m3", "m4"], ["m100", "m101"]]


class Broken:
    max_batch = 10
    max_in_flight = 1
    ordered = False

    def __init__(self, spec: DestinationSpec) -> None:
        self.calls = 0

    async def deliver(self, events: list[Event]) -> list[Result]:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("a bug")
        return [Result(DELIVERED)]  # one result for several events: also a bug

    async def close(self) -> None:
        return None


def test_a_destination_that_raises_or_miscounts_gets_retryable_errors() -> None:
    conf = DestinationConfig(name="Broken", type="webhook", sources=["web"], settings={})
    broken: Route = make_route(WS, conf, lambda _ws: ["web"], make=Broken)

    async def go() -> tuple[list[Result], list[Result]]:
        batcher = RequestBatcher(broken, linger_s=0.0)
        try:
            return await batcher.deliver(events(0, 3)), await batcher.deliver(events(3, 2))
        finally:
            await batcher.close()

    first, second = asyncio.run(go())
    assert [(r.outcome, r.reason) for r in first] == [(RETRY, "destination_error")] * 3
    assert b"a bug" in (first[0].response or b"")
    assert [(r.outcome, r.reason) for r in second] == [(RETRY, "destination_error")] * 2
