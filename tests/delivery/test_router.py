"""The router against real HTTP receivers on loopback: every event delivered once to each
destination meant for it, filters counted, a failing destination isolated from a healthy one
and retried until it comes back, retry periods ending in dead letters, and re-driving them."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from headwater.accounting.store import Retention, SqliteAccountingStore
from headwater.accounting.tally import now_ms
from headwater.config import DestinationConfig, FilterConfig
from headwater.control.destinations import DestinationCatalog
from headwater.control.store import ControlStore, stable_id
from headwater.delivery.attempts import Backoff
from headwater.delivery.metrics import DeliveryMetrics
from headwater.delivery.model import Event
from headwater.delivery.retrier import Retrier
from headwater.delivery.role import current_routes, follow_destinations
from headwater.delivery.router import DRAIN_S, Lane, Router
from headwater.delivery.routes import Route, make_route
from headwater.delivery.state import DeliveryState, RetryJob
from headwater.delivery.states import open_delivery_state
from headwater.events.stamp import Stamp, encode_stamp
from headwater.log.embedded.log import EmbeddedLog
from headwater.log.embedded.retention import enforce_retention
from headwater.log.records import Run, encode_run
from headwater.observability.metrics import merge, quantile, render
from headwater.paths import DataPaths
from tests.delivery.receiver import Receiver, Reply
from tests.processing._helpers import settings

WS = "acme"
WEB = stable_id("src", WS, "web")
APP = stable_id("src", WS, "app")
FAST = Backoff(base_s=0.05, cap_s=0.2)


def message(n: int, **extra: Any) -> bytes:
    body = {"type": "track", "event": "Order Completed", "messageId": f"m{n}",
            "userId": f"u{n % 5}", "properties": {"total": n}, **extra}  # fmt: skip
    return json.dumps(body).encode()


def route(name: str, url: str, **conf: Any) -> Route:
    settings_ = {"url": url, "timeout": conf.pop("timeout", "2s"), **conf.pop("settings", {})}
    dest = DestinationConfig(name=name, type="webhook", sources=["web"], settings=settings_, **conf)
    return make_route(WS, dest, lambda _ws: ["web", "app"])


class Harness:
    """An `events` log, delivery state and accounting under `root`, and a router over them."""

    def __init__(self, root: Path, partitions: int = 2, segment_bytes: int | None = None) -> None:
        self.root = root
        log_settings = settings(partitions)
        if segment_bytes is not None:
            log_settings = replace(log_settings, segment_bytes=segment_bytes)
        self.events = EmbeddedLog("events", root / "events", log_settings)
        self.state: DeliveryState = open_delivery_state("embedded", path=root / "delivery.db")
        self.accounting = SqliteAccountingStore(root / "accounting.db", Retention(10**9, 10**10))
        stamp = datetime.now(UTC)
        self.stamp = encode_stamp(Stamp(stamp, stamp.isoformat(), "10.0.0.1"))
        self.metrics = DeliveryMetrics()

    async def write(self, messages: list[bytes], source: str = WEB, partition: int = 0) -> None:
        run = Run(partition, encode_run(source, self.stamp, messages), len(messages))
        await self.events.append([run])

    async def deliver_until(
        self,
        routes: list[Route],
        done: Callable[[], bool],
        timeout: float = 10.0,
        backoff: Backoff = FAST,
        drain_s: float = DRAIN_S,
    ) -> float:
        """Run a router until `done()`, then stop it (`drain_s`: see `Router.stop`); returns
        the seconds it took."""
        router = Router(
            routes, self.events, self.state, self.accounting, backoff=backoff, metrics=self.metrics
        )
        started = time.monotonic()
        router.start()
        for p in range(self.events.partitions):
            router.assign(p)
        try:
            while not done():
                assert time.monotonic() - started < timeout, "the router did not get there in time"
                await asyncio.sleep(0.02)
            return time.monotonic() - started
        finally:
            await router.stop(drain_s)

    def outcomes(self, r: Route, source: str = WEB) -> dict[tuple[str, str], int]:
        found: dict[tuple[str, str], int] = {}
        for row in self.accounting.outcomes(source, 0, now_ms() + 60_000, 60_000):
            if row.stage == r.stage:
                key = (row.outcome, row.reason)
                found[key] = found.get(key, 0) + row.count
        return found

    def close(self) -> None:
        self.state.close()
        self.accounting.close()


def ids(rx: Receiver) -> list[str]:
    out = []
    for r in rx.requests:
        body = r.json()
        out += [m["messageId"] for m in (body if isinstance(body, list) else [body])]
    return out


def test_every_event_of_its_sources_reaches_a_healthy_webhook_once(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    with Receiver() as rx:
        hook = route("Hook", rx.url, settings={"batch_size": 10})

        async def go() -> None:
            await h.write([message(n) for n in range(30)], partition=0)
            await h.write([message(n) for n in range(30, 50)], partition=1)
            await h.write([message(n) for n in range(50, 55)], source=APP)  # not its source
            await h.deliver_until([hook], lambda: len(ids(rx)) >= 50)
            await asyncio.sleep(0.2)  # nothing more arrives

        asyncio.run(go())
        assert sorted(ids(rx)) == sorted(f"m{n}" for n in range(50))
        first = rx.requests[0].json()[0]
        assert first["receivedAt"] and first["context"]["ip"] == "10.0.0.1"  # as stored
    assert h.outcomes(hook) == {("delivered", ""): 50}
    assert h.state.pending() == {}
    h.close()


def test_filters_and_integrations_are_counted_and_not_sent(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    with Receiver() as rx:
        hook = route("Hook", rx.url, filters=FilterConfig(where="properties.total >= 3"))
        sent = [
            message(0),  # filtered by the condition
            message(5, integrations={"Hook": False}),
            message(6, integrations={"All": False}),
            message(7, integrations={"All": False, "Hook": True}),
            message(8),
        ]

        async def go() -> None:
            await h.write(sent)
            await h.deliver_until([hook], lambda: len(ids(rx)) >= 2)
            await asyncio.sleep(0.2)

        asyncio.run(go())
        assert sorted(ids(rx)) == ["m7", "m8"]
    assert h.outcomes(hook) == {
        ("delivered", ""): 2,
        ("filtered", "filtered_condition"): 1,
        ("filtered", "integrations_disabled"): 2,
    }
    h.close()


def test_a_failing_destination_does_not_delay_a_healthy_one_and_gets_everything_later(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    with Receiver() as good, Receiver(Reply(503)) as bad:
        healthy = route("Healthy", good.url, settings={"batch_size": 20})
        failing = route("Failing", bad.url, settings={"batch_size": 20})
        healthy_s: list[float] = []

        async def go() -> None:
            await h.write([message(n) for n in range(100)])
            started = time.monotonic()

            def healthy_done_and_failing_kept() -> bool:
                if not healthy_s and len(ids(good)) >= 100:
                    healthy_s.append(time.monotonic() - started)
                kept = h.outcomes(failing).get(("awaiting_retry", "http_503"), 0)
                return bool(healthy_s) and kept == 100

            await h.deliver_until([healthy, failing], healthy_done_and_failing_kept)
            # the failing one kept every event as a retry job: none is lost
            assert h.state.pending()[failing.id] == 100
            bad.reply(200)  # it is back
            await h.deliver_until(
                [healthy, failing],
                lambda: not h.state.pending().get(failing.id) and len({i for i in ids(bad)}) >= 100,
            )

        asyncio.run(go())
        assert healthy_s[0] < 2.0
        assert sorted(set(ids(bad))) == sorted(f"m{n}" for n in range(100))
        assert len(ids(good)) == 100  # the healthy one got each once
    assert h.outcomes(failing)[("awaiting_retry", "http_503")] == 100
    assert h.outcomes(failing)[("delivered", "")] == 100
    h.close()


def test_a_final_status_discards_with_the_status_as_reason(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    with Receiver(Reply(400, b"bad payload")) as rx:
        hook = route("Hook", rx.url)

        async def go() -> None:
            await h.write([message(n) for n in range(3)])
            await h.deliver_until(
                [hook], lambda: h.outcomes(hook).get(("discarded", "http_400")) == 3
            )
            await asyncio.sleep(0.2)

        asyncio.run(go())
        assert len(rx.requests) == 3  # tried once each, never again
    assert h.state.pending() == {} and h.state.dead_count() == {}
    h.close()


def test_events_failing_past_their_retry_period_become_dead_letters_and_can_be_redriven(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path)
    with Receiver(Reply(500, b"down")) as rx:
        hook = route("Hook", rx.url, retry_period="1s")

        async def go() -> None:
            await h.write([message(n) for n in range(4)])
            await h.deliver_until([hook], lambda: h.state.dead_count().get(hook.id) == 4)
            assert len(rx.requests) > 4  # retried before giving up
            dead = h.state.dead_letters(hook.id)
            assert {d.event.message_id for d in dead} == {"m0", "m1", "m2", "m3"}
            assert all(d.reason == "http_500" and d.response == b"down" for d in dead)
            rx.reply(200)
            rx.clear()
            assert h.state.redrive(hook.id, None, now_ms()) == 4
            await h.deliver_until([hook], lambda: len(ids(rx)) >= 4 and not h.state.pending())

        asyncio.run(go())
        assert sorted(ids(rx)) == ["m0", "m1", "m2", "m3"]
    assert h.outcomes(hook)[("expired", "http_500")] == 4
    assert h.state.dead_count() == {}
    h.close()


def test_retry_after_is_honoured(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    with Receiver(Reply(429, headers={"Retry-After": "1"}), 200) as rx:
        hook = route("Hook", rx.url)

        async def go() -> None:
            await h.write([message(1)])
            await h.deliver_until([hook], lambda: len(rx.requests) >= 2)

        asyncio.run(go())
        first, second = rx.requests[:2]
        assert second.time - first.time >= 0.9  # not before the second it asked for
    h.close()


def test_a_restarted_router_goes_on_from_its_commit_without_resending(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    with Receiver() as rx:
        hook = route("Hook", rx.url)

        async def go() -> None:
            await h.write([message(n) for n in range(10)])
            await h.deliver_until([hook], lambda: len(ids(rx)) >= 10)
            await h.write([message(n) for n in range(10, 15)])
            await h.deliver_until([hook], lambda: len(ids(rx)) >= 15)
            await asyncio.sleep(0.2)

        asyncio.run(go())
        assert sorted(ids(rx)) == sorted(f"m{n}" for n in range(15))
    assert h.outcomes(hook) == {("delivered", ""): 15}
    h.close()


def test_latency_and_outcomes_reach_the_metrics(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    with Receiver() as rx:
        hook = route("Hook", rx.url, settings={"batch_size": 5})

        async def go() -> None:
            await h.write([message(n) for n in range(20)])
            await h.deliver_until([hook], lambda: len(ids(rx)) >= 20)

        asyncio.run(go())
    snap = merge([h.metrics.snapshot()])
    [(name, buckets, seconds)] = snap.delivery
    assert name == "Hook" and sum(buckets) == 20 and seconds >= 0
    assert quantile(buckets, 0.99) <= 5.0  # received moments ago
    assert (hook.stage, WEB, "delivered", "", 20) in snap.stage
    text = render(snap, [], 0).decode()
    assert 'headwater_delivery_latency_seconds_count{destination="Hook"} 20.0' in text
    h.close()


def test_an_ordered_destination_gets_each_profiles_events_in_order(tmp_path: Path) -> None:
    """u1's first event fails once: u1's later events wait behind it (others go on), then
    arrive in the order they were sent."""
    h = Harness(tmp_path)
    failed_once: list[str] = []

    def behaviour(request: Any) -> Reply:
        mid = request.json()["messageId"]
        if mid == "m1" and not failed_once:
            failed_once.append(mid)
            return Reply(503)
        return Reply(200)

    with Receiver() as rx:
        rx.behave(behaviour)
        hook = route("Hook", rx.url, ordered=True)

        async def go() -> None:
            await h.write([message(n) for n in range(1, 16)])  # u1: m1, m6, m11 (n % 5 == 1)
            await h.deliver_until([hook], lambda: len(set(ids(rx))) >= 15 and not h.state.pending())

        asyncio.run(go())
    delivered = [mid for mid in ids(rx)][1:]  # after the failed first attempt of m1
    u1 = [m for m in delivered if m in ("m1", "m6", "m11")]
    assert u1 == ["m1", "m6", "m11"]
    assert delivered.index("m2") < delivered.index("m1")  # other profiles did not wait
    assert h.outcomes(hook)[("awaiting_retry", "waiting_for_earlier")] == 2
    h.close()


def test_a_slow_destination_does_not_slow_a_fast_one(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    with Receiver() as fast, Receiver(Reply(200, delay=1.5)) as slow:
        quick = route("Quick", fast.url, settings={"batch_size": 10})
        sluggish = route("Sluggish", slow.url, settings={"batch_size": 10, "max_in_flight": 1})
        took: list[float] = []
        slow_by_then: list[int] = []

        def fast_done() -> bool:
            slow_by_then.append(len(ids(slow)))
            return len(ids(fast)) >= 60

        async def go() -> None:
            await h.write([message(n) for n in range(60)])
            took.append(await h.deliver_until([quick, sluggish], fast_done, drain_s=0))

        asyncio.run(go())
        assert took[0] < 1.5  # before the slow one has answered even its first request
        assert slow_by_then[-1] <= 10
    h.close()


def test_replacing_routes_keeps_unchanged_ones_and_restarts_changed_ones(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    with Receiver() as first, Receiver() as second, Receiver() as steady:
        same = route("Steady", steady.url)
        moving = route("Moving", first.url)

        async def go() -> None:
            router = Router([same, moving], h.events, h.state, h.accounting, backoff=FAST)
            router.start()
            for p in range(h.events.partitions):
                router.assign(p)
            try:
                await h.write([message(n) for n in range(5)])
                while len(ids(first)) < 5 or len(ids(steady)) < 5:
                    await asyncio.sleep(0.02)
                kept = router._lanes[(same.id, 0)]
                again = [route("Steady", steady.url), route("Moving", second.url)]
                await router.replace_routes(again)
                assert router._lanes[(same.id, 0)] is kept  # made the same: left running
                await h.write([message(n) for n in range(5, 10)])
                deadline = time.monotonic() + 10
                while len(ids(second)) < 5 or len(ids(steady)) < 10:
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.02)
                await router.replace_routes([again[0]])  # Moving removed
                assert (moving.id, 0) not in router._lanes
            finally:
                await router.stop()

        asyncio.run(go())
        assert sorted(ids(second)) == [f"m{n}" for n in range(5, 10)]  # from its commit on
        assert sorted(ids(steady)) == sorted(f"m{n}" for n in range(10))  # each once
    h.close()


def test_a_replayed_unit_keeps_no_second_job_and_is_counted_once(tmp_path: Path) -> None:
    """A router that stops after keeping a unit's retry jobs but before committing reads the
    unit again: the destination sees the events again, but nothing else happens twice."""
    h = Harness(tmp_path)
    with Receiver(Reply(503)) as rx:
        hook = route("Hook", rx.url, settings={"batch_size": 5})

        async def go() -> None:
            await h.write([message(n) for n in range(12)])
            batches = await h.events.read(0, 0)
            router = Router([hook], h.events, h.state, h.accounting, backoff=FAST)
            first = Lane(router, hook, 0)
            await first.deliver(batches)
            await first.settle()  # stopped here, before committing
            replay = Lane(router, hook, 0)
            await replay.deliver(batches)
            await replay.settle()

        asyncio.run(go())
        assert len(ids(rx)) == 24  # tried twice: at least once is all a crash allows
    assert h.state.pending() == {hook.id: 12}
    assert h.outcomes(hook) == {("awaiting_retry", "http_503"): 12}
    h.close()


def test_the_events_of_one_failed_request_keep_its_samples_once(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    with Receiver(Reply(503, b"busy")) as rx:
        hook = route("Hook", rx.url, settings={"batch_size": 5})

        async def go() -> None:
            await h.write([message(n) for n in range(10)])
            await h.deliver_until([hook], lambda: h.state.pending().get(hook.id) == 10)

        asyncio.run(go())
    jobs = h.state.due(hook.id, now_ms() + 10**9, 100)
    with_samples = [j for j in jobs if j.response is not None]
    assert len(with_samples) == 2  # one per request of five
    assert all(j.response == b"busy" and j.request for j in with_samples)
    assert all(j.status == 503 and j.reason == "http_503" for j in jobs)
    h.close()


def test_a_destination_that_is_down_gets_probes_not_every_due_job(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    with Receiver(Reply(503)) as rx:
        hook = route("Hook", rx.url, settings={"batch_size": 5, "max_in_flight": 4})
        now = now_ms()
        h.state.add(
            [
                RetryJob(hook.id, Event(f"m{n}", WEB, now, f"u{n}", message(n)), 1, now, now, "x")
                for n in range(200)
            ]
        )
        retrier = Retrier(hook, h.state, h.accounting, Backoff(0.01, 0.02), now_ms, poll_s=0.2)

        async def go() -> None:
            task = asyncio.get_running_loop().create_task(retrier.run())
            try:
                await asyncio.sleep(1.0)
                assert retrier.failing
                assert len(rx.requests) <= 4 + 6  # one full round, then a probe per 0.2 s
                rx.reply(200)
                deadline = time.monotonic() + 10
                while h.state.pending():
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
                assert not retrier.failing
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

        asyncio.run(go())
        assert set(ids(rx)) == {f"m{n}" for n in range(200)}
    h.close()


def test_a_stopped_router_finishes_its_unit_so_a_restart_repeats_nothing(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    with Receiver(Reply(200, delay=0.3)) as rx:
        hook = route("Hook", rx.url, settings={"batch_size": 10, "max_in_flight": 2})

        async def go() -> None:
            await h.write([message(n) for n in range(40)])
            router = Router([hook], h.events, h.state, h.accounting, backoff=FAST)
            router.start()
            router.assign(0)
            deadline = time.monotonic() + 10
            while not rx.requests:  # the unit's first requests are in flight
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            await router.stop()  # drains: the unit is delivered, settled and committed
            assert len(ids(rx)) == 40
            again = route("Hook", rx.url, settings={"batch_size": 10, "max_in_flight": 2})
            second = Router([again], h.events, h.state, h.accounting, backoff=FAST)
            second.start()
            second.assign(0)
            await asyncio.sleep(0.8)  # a restarted router has nothing left to send
            await second.stop()

        asyncio.run(go())
        assert sorted(ids(rx)) == sorted(f"m{n}" for n in range(40))  # each once
    assert h.outcomes(hook) == {("delivered", ""): 40}
    h.close()


def test_a_destination_down_for_ten_minutes_gets_everything_afterwards(tmp_path: Path) -> None:
    """Ten minutes of a destination answering 503 while events keep coming, on a clock that
    runs 300 times faster (the default backoff: 10 s doubling up to 30 min; retry period
    4 h): nothing lost, nothing expired, the destination probed rather than flooded."""
    h = Harness(tmp_path)
    speed = 300
    start_ms, t0 = now_ms(), time.monotonic()

    def clock() -> int:
        return start_ms + int((time.monotonic() - t0) * speed * 1000)

    down = {"now": True}
    down_s: list[float] = []  # how long it was down, in real seconds
    refused: list[int] = []
    accepted: list[str] = []

    def answer(request: Any) -> Reply:
        if down["now"]:
            refused.append(len(request.json()))
            return Reply(503)
        accepted.extend(m["messageId"] for m in request.json())
        return Reply(200)

    sent = [f"m{n}" for n in range(200)]
    with Receiver() as rx:
        rx.behave(answer)
        hook = route("Hook", rx.url, settings={"batch_size": 10})

        async def go() -> None:
            router = Router([hook], h.events, h.state, h.accounting, clock=clock)
            router.start()
            for p in range(h.events.partitions):
                router.assign(p)
            try:
                for wave in range(20):  # a wave of 10 events every 24 s of the clock
                    batch = [message(n) for n in range(wave * 10, wave * 10 + 10)]
                    await h.write(batch, partition=wave % 2)
                    await asyncio.sleep(0.08)
                deadline = time.monotonic() + 20
                # down for ten minutes at least, until each event is kept for a retry
                while clock() - start_ms < 10 * 60_000 or h.state.pending() != {hook.id: 200}:
                    assert time.monotonic() < deadline, f"pending: {h.state.pending()}"
                    await asyncio.sleep(0.05)
                down["now"] = False
                down_s.append(time.monotonic() - t0)
                while set(accepted) < set(sent):
                    assert time.monotonic() < deadline, f"{len(set(sent) - set(accepted))} left"
                    await asyncio.sleep(0.05)
                while h.state.pending():  # the last round's jobs are forgotten
                    assert time.monotonic() < deadline
                    await asyncio.sleep(0.05)
            finally:
                await router.stop()

        asyncio.run(go())
    # every event tried once on arrival (requests of up to 10), then probes of one request
    # per half second while down: far fewer requests than retries of every job would make
    assert sum(refused) >= 200
    assert len(refused) <= 20 + down_s[0] / 0.5 + 10
    assert sorted(set(accepted)) == sorted(sent)
    assert h.state.dead_count() == {}
    found = h.outcomes(hook)
    assert found[("delivered", "")] == 200
    assert found[("awaiting_retry", "http_503")] == 200
    assert ("expired", "http_503") not in found
    h.close()


def test_events_removed_by_retention_before_a_destination_read_them_are_counted(
    tmp_path: Path,
) -> None:
    h = Harness(tmp_path, segment_bytes=4096)  # a few appends per segment
    with Receiver() as rx:
        hook = route("Hook", rx.url, settings={"batch_size": 50})

        async def go() -> None:
            for n in range(0, 200, 10):
                await h.write([message(k) for k in range(n, n + 10)])
            removed = enforce_retention(tmp_path / "events", max_age_ms=10**12, max_bytes=1)
            assert removed.records_removed > 0
            left = 200 - removed.records_removed
            await h.deliver_until([hook], lambda: len(ids(rx)) >= left)

        asyncio.run(go())
        got = ids(rx)
    skipped = 200 - len(got)
    assert skipped > 0 and sorted(got) == sorted(f"m{n}" for n in range(skipped, 200))
    assert h.metrics.outcomes == {
        (hook.stage, WEB, "delivered", ""): len(got),
        (hook.stage, "", "skipped", "removed_by_retention"): skipped,
    }
    h.close()


def test_a_destination_made_while_the_router_starts_is_not_missed(tmp_path: Path) -> None:
    """The router makes its routes at start and then follows the control plane: a destination
    made in between (the admin API answering while the router still starts) is applied."""
    paths = DataPaths(tmp_path)
    store = ControlStore(paths.control_db)
    store.create_workspace(WS)
    store.create_source(WS, "web")
    seen, routes = current_routes(paths)  # the router starts: no destination yet
    hook = DestinationConfig(name="Late", type="webhook", settings={"url": "http://127.0.0.1:9/"})
    DestinationCatalog(store).create(WS, hook)  # made before the router follows
    store.close()
    h = Harness(tmp_path)

    async def go() -> list[str]:
        router = Router(routes, h.events, h.state, h.accounting)
        follow = asyncio.get_running_loop().create_task(
            follow_destinations(router, paths, seen, every=0.05)
        )
        try:
            deadline = time.monotonic() + 5
            while not router.routes:
                assert time.monotonic() < deadline, "the destination was never applied"
                await asyncio.sleep(0.02)
            return [r.spec.name for r in router.routes]
        finally:
            follow.cancel()
            await router.stop()

    assert routes == []
    assert asyncio.run(go()) == ["Late"]
    h.close()


def test_a_stopped_router_finishes_its_retry_round(tmp_path: Path) -> None:
    h = Harness(tmp_path)
    with Receiver(Reply(200, delay=0.3)) as rx:
        hook = route("Hook", rx.url, settings={"batch_size": 5, "max_in_flight": 2})
        now = now_ms()
        h.state.add(
            [
                RetryJob(hook.id, Event(f"m{n}", WEB, now, f"u{n}", message(n)), 1, now, now, "x")
                for n in range(10)
            ]
        )

        async def go() -> None:
            router = Router([hook], h.events, h.state, h.accounting, backoff=FAST)
            router.start()  # its retrier only: no partition assigned
            deadline = time.monotonic() + 10
            while not rx.requests:  # the round's requests are in flight
                assert time.monotonic() < deadline
                await asyncio.sleep(0.01)
            await router.stop()

        asyncio.run(go())
        assert sorted(ids(rx)) == sorted(f"m{n}" for n in range(10))  # each once
    assert h.state.pending() == {}  # the round ended: no job is left to be sent again
    assert h.outcomes(hook) == {("delivered", ""): 10}
    h.close()
