"""The stage runtime's accounting: what `tally_items` counts for a unit, and a `StageRunner`
whose counts stay exact when units are replayed (after a crash, a failed commit, or another
owner that counted part of them first)."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgspec
import pytest

from headwater.accounting.store import (
    NO_MARK,
    Mark,
    Retention,
    SqliteAccountingStore,
)
from headwater.accounting.tally import (
    HOUR_MS,
    INGEST,
    MINUTE_MS,
    RECEIVED,
    SAMPLE_MAX_BYTES,
    SAMPLES_PER_VIOLATION,
    Tally,
)
from headwater.config import Config
from headwater.control.store import stable_id
from headwater.events.stamp import Stamp, encode_stamp
from headwater.log.base import Log
from headwater.log.embedded.log import EmbeddedLog
from headwater.log.records import Run, encode_run
from headwater.processing import runtime
from headwater.processing.plans import TrackingPlans, plans_by_source
from headwater.processing.runtime import (
    FAILED,
    PROCESSED,
    Item,
    StageRunner,
    StageSpec,
    tally_items,
)
from tests.processing._helpers import (
    GROUP,
    SOURCE,
    SinkWrapper,
    SourceWrapper,
    caught_up,
    message,
    open_logs,
    read_partition,
    valid_steps,
    wait_for,
)

STAGE = "processor"
OTHER = "src_other"
T0 = datetime(2026, 3, 1, 12, 0, 30, tzinfo=UTC)  # 30 s into a minute
T0_MS = int(T0.timestamp() * 1000)
MINUTE0 = T0_MS - T0_MS % MINUTE_MS
NOW_MS = 1_900_000_000_000 + 12_345  # a fixed "now" for items without a stamp
RETENTION = Retention(48 * HOUR_MS, 90 * 24 * HOUR_MS)


def stamp_at(at: datetime) -> bytes:
    return encode_stamp(Stamp(received_at=at))


STAMP0 = stamp_at(T0)
T1 = datetime(2026, 3, 1, 12, 1, 59, 999_000, tzinfo=UTC)  # the next minute
T1_MS = int(T1.timestamp() * 1000)
STAMP1 = stamp_at(T1)
MINUTE1 = MINUTE0 + MINUTE_MS


@pytest.fixture
def fixed_now(monkeypatch: pytest.MonkeyPatch) -> int:
    monkeypatch.setattr(runtime, "now_ms", lambda: NOW_MS)
    return NOW_MS - NOW_MS % MINUTE_MS


def item(
    source: str = SOURCE,
    stamp: bytes | None = STAMP0,
    position: str = "0:10:0",
    outcome: str = "",
    reason: str = "",
    via: str = "",
    message: bytes = b'{"type":"track"}',
    violations: list[tuple[str, str, str]] | None = None,
    original: bytes | None = None,
) -> Item:
    return Item(
        source,
        message,
        stamp=stamp,
        position=position,
        outcome=outcome,
        reason=reason,
        via=via,
        violations=violations,
        original=original,
    )


# -- tally_items --------------------------------------------------------------------------------


def test_each_item_is_received_once_and_has_one_outcome_at_the_stage(fixed_now: int) -> None:
    items = [
        item(),
        item(position="0:10:1"),
        item(outcome="blocked", reason="unplanned_event", position="0:10:2"),
        item(outcome="duplicate", reason="", position="0:10:3"),
        item(OTHER, via="forwarded", position="0:10:2"),
        item(OTHER, via="violation_generated", position="0:10:2"),
        item(stamp=STAMP1, outcome=FAILED, reason="invalid_message", position="0:10:4"),
        item(stamp=None, position="0:10:5"),
    ]
    tally = tally_items(STAGE, items)
    assert tally.outcomes == {
        (SOURCE, MINUTE0, INGEST, RECEIVED, ""): 4,
        (SOURCE, MINUTE0, STAGE, PROCESSED, ""): 2,
        (SOURCE, MINUTE0, STAGE, "blocked", "unplanned_event"): 1,
        (SOURCE, MINUTE0, STAGE, "duplicate", ""): 1,
        (OTHER, MINUTE0, INGEST, RECEIVED, "forwarded"): 1,
        (OTHER, MINUTE0, INGEST, RECEIVED, "violation_generated"): 1,
        (OTHER, MINUTE0, STAGE, PROCESSED, ""): 2,
        (SOURCE, MINUTE1, INGEST, RECEIVED, ""): 1,
        (SOURCE, MINUTE1, STAGE, FAILED, "invalid_message"): 1,
        (SOURCE, fixed_now, INGEST, RECEIVED, ""): 1,
        (SOURCE, fixed_now, STAGE, PROCESSED, ""): 1,
    }
    assert tally.violations == {} and tally.samples == []
    received = sum(n for k, n in tally.outcomes.items() if k[2] == INGEST)
    at_stage = sum(n for k, n in tally.outcomes.items() if k[2] == STAGE)
    assert received == at_stage == len(items)


def test_items_are_bucketed_by_the_minute_their_request_arrived(fixed_now: int) -> None:
    edges = [
        datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC),
        datetime(2026, 3, 1, 12, 0, 59, 999_000, tzinfo=UTC),
        datetime(2026, 3, 1, 12, 1, 0, tzinfo=UTC),
        datetime(2026, 3, 1, 13, 0, 0, 1000, tzinfo=UTC),
    ]
    tally = tally_items(STAGE, [item(stamp=stamp_at(at)) for at in edges])
    minutes = Counter(k[1] for k in tally.outcomes if k[2] == INGEST)
    start = int(edges[0].timestamp() * 1000)
    assert minutes == {start: 1, start + MINUTE_MS: 1, start + 60 * MINUTE_MS: 1}
    assert tally.outcomes[(SOURCE, start, INGEST, RECEIVED, "")] == 2


def test_items_without_a_readable_stamp_are_counted_now(fixed_now: int) -> None:
    tally = tally_items(STAGE, [item(stamp=None), item(stamp=b"\xc1 not msgpack")])
    assert tally.outcomes == {
        (SOURCE, fixed_now, INGEST, RECEIVED, ""): 2,
        (SOURCE, fixed_now, STAGE, PROCESSED, ""): 2,
    }


def test_after_skips_the_items_of_batches_counted_before(fixed_now: int) -> None:
    items = [
        item(position="0:10:0"),
        item(position="0:10:1", violations=[("E", "type", "x")]),
        item(position="0:25:0", outcome="blocked", reason="violation"),
        item(OTHER, position="0:25:0", via="forwarded"),
        item(position="0:25:1", violations=[("E", "type", "y")]),
        item(position="0:40:0"),
    ]

    def counts(after: int | None) -> tuple[Counter[tuple[str, str]], int]:
        tally = tally_items(STAGE, items, after)
        stages: Counter[tuple[str, str]] = Counter()
        for (_s, _m, stage, outcome, _r), n in tally.outcomes.items():
            stages[(stage, outcome)] += n
        return stages, sum(tally.violations.values())

    assert counts(None) == counts(-1) == counts(NO_MARK) == counts(9)
    assert counts(None) == (
        {(INGEST, RECEIVED): 6, (STAGE, PROCESSED): 5, (STAGE, "blocked"): 1},
        2,
    )
    assert (
        counts(10)
        == counts(24)
        == (
            {(INGEST, RECEIVED): 4, (STAGE, PROCESSED): 3, (STAGE, "blocked"): 1},
            1,
        )
    )
    assert counts(25) == ({(INGEST, RECEIVED): 1, (STAGE, PROCESSED): 1}, 0)
    empty = tally_items(STAGE, items, 40)
    assert not empty and empty.outcomes == {} and empty.samples == []


def test_violations_are_counted_with_the_message_as_it_arrived(fixed_now: int) -> None:
    original = b'{"event":"E","properties":{"x":"1","extra":2}}'
    changed = b'{"event":"E","properties":{},"context":{"protocols":{}}}'
    items = [
        item(
            message=changed,
            original=original,
            violations=[("E", "type", "properties.x"), ("E", "required", "properties")],
        ),
        item(
            stamp=STAMP1,
            message=b'{"event":"E","blocked":true}',
            outcome="blocked",
            reason="violation",
            violations=[("E", "type", "properties.x")],
        ),
        item(stamp=None, message=b'{"n":1}', violations=[("Nope", "unplanned_event", "event")]),
    ]
    tally = tally_items(STAGE, items)
    assert tally.violations == {
        (SOURCE, MINUTE0, "E", "type", "properties.x"): 1,
        (SOURCE, MINUTE0, "E", "required", "properties"): 1,
        (SOURCE, MINUTE1, "E", "type", "properties.x"): 1,
        (SOURCE, fixed_now, "Nope", "unplanned_event", "event"): 1,
    }
    # samples keep the time the request arrived, to the millisecond
    samples = [(s.event, s.type, s.field, s.at_ms, s.payload) for s in tally.samples]
    assert samples == [
        ("E", "type", "properties.x", T0_MS, original),
        ("E", "required", "properties", T0_MS, original),
        ("E", "type", "properties.x", T1_MS, b'{"event":"E","blocked":true}'),
        ("Nope", "unplanned_event", "event", NOW_MS, b'{"n":1}'),
    ]


def test_violation_samples_are_few_and_short(fixed_now: int) -> None:
    big = b'{"x":"' + b"a" * (2 * SAMPLE_MAX_BYTES) + b'"}'
    items = [
        item(position=f"0:10:{i}", message=big, violations=[("E", "type", "x")]) for i in range(9)
    ]
    tally = tally_items(STAGE, items)
    assert tally.violations == {(SOURCE, MINUTE0, "E", "type", "x"): 9}
    assert len(tally.samples) == SAMPLES_PER_VIOLATION
    assert all(s.payload == big[:SAMPLE_MAX_BYTES] for s in tally.samples)


# -- the store's marks --------------------------------------------------------------------------


def one(source: str = SOURCE, n: int = 1) -> Tally:
    tally = Tally()
    tally.outcome(source, T0_MS, INGEST, RECEIVED, "", n)
    tally.outcome(source, T0_MS, STAGE, PROCESSED, "", n)
    return tally


def totals(store: SqliteAccountingStore, source: str = SOURCE) -> Counter[tuple[str, str, str]]:
    """Everything counted for `source`, at minute grain (checked equal at hour grain)."""
    found: dict[int, Counter[tuple[str, str, str]]] = {}
    for grain in (MINUTE_MS, HOUR_MS):
        found[grain] = Counter()
        for row in store.outcomes(source, 0, 2**62, grain):
            found[grain][(row.stage, row.outcome, row.reason)] += row.count
    assert found[MINUTE_MS] == found[HOUR_MS]
    return found[MINUTE_MS]


def test_record_with_a_stale_mark_is_refused_and_adds_nothing(tmp_path: Path) -> None:
    store = SqliteAccountingStore(tmp_path / "acct.db", RETENTION)
    try:
        assert store.mark(STAGE, 0) == NO_MARK
        assert store.record(one(n=10), Mark(STAGE, 0, NO_MARK, 10))
        assert store.mark(STAGE, 0) == 10
        assert not store.record(one(n=10), Mark(STAGE, 0, NO_MARK, 10))  # counted before
        assert not store.record(one(n=5), Mark(STAGE, 0, 3, 15))  # never there
        assert store.mark(STAGE, 0) == 10
        assert totals(store) == {(INGEST, RECEIVED, ""): 10, (STAGE, PROCESSED, ""): 10}
        assert store.record(one(n=5), Mark(STAGE, 0, 10, 15))
        assert store.mark(STAGE, 0) == 15
        assert store.mark(STAGE, 1) == NO_MARK  # marks are per partition
        assert store.mark("another", 0) == NO_MARK  # and per stage
        assert totals(store) == {(INGEST, RECEIVED, ""): 15, (STAGE, PROCESSED, ""): 15}
    finally:
        store.close()


# -- a stage runner with accounting -------------------------------------------------------------


PER_BATCH = 10
BAD = [b"[1, 2]", b'{"type": "track", "event": "no ids"}']  # failed: invalid, no identifier


def spec(source: Log | Any, sink: Log | Any, store: Any, **kwargs: Any) -> StageSpec:
    kwargs.setdefault("fetch_timeout", 0.05)
    kwargs.setdefault("backoff_max", 0.1)
    kwargs.setdefault("stamped", False)  # as the processor reads: each item has its stamp
    return StageSpec(GROUP, valid_steps(), source, sink, accounting=store, **kwargs)


async def write(ingest: EmbeddedLog, partition: int, prefix: str, batches: int) -> int:
    """`batches` stamped batches of `PER_BATCH` messages (the first with the two bad ones)
    to `partition`; returns how many messages were written."""
    n = 0
    for b in range(batches):
        msgs = [
            message(f"{prefix}-{b}-{i}", user=f"u{i % 3}")
            for i in range(PER_BATCH - (len(BAD) if b == 0 else 0))
        ]
        if b == 0:
            msgs = [*BAD, *msgs]
        await ingest.append([Run(partition, encode_run(SOURCE, STAMP0, msgs), len(msgs))])
        n += len(msgs)
    return n


def expected(n: int, bad: int) -> Counter[tuple[str, str, str]]:
    """The counts of `n` messages of which `bad` (made by `write`) failed, half each way."""
    return Counter(
        {
            (INGEST, RECEIVED, ""): n,
            (GROUP, PROCESSED, ""): n - bad,
            (GROUP, FAILED, "invalid_message"): bad // 2,
            (GROUP, FAILED, "no_identifier"): bad // 2,
        }
    )


async def run_to_end(runner: StageRunner, ingest: EmbeddedLog, timeout: float = 10.0) -> None:
    for p in range(ingest.partitions):
        runner.assign(p)
    try:
        await wait_for(lambda: caught_up(ingest, GROUP), timeout)
    finally:
        await runner.stop()


async def marks(store: SqliteAccountingStore, ingest: EmbeddedLog) -> list[int]:
    return [store.mark(GROUP, p) for p in range(ingest.partitions)]


class NoProducerMarks:
    """A sink that, like JetStream, keeps no producer marks (`produced` is None): a new owner
    replays every uncommitted unit, and only the accounting's mark keeps the counts exact."""

    def __init__(self, inner: Log) -> None:
        self.inner = inner
        self.name = inner.name
        self.partitions = inner.partitions

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def produced(self, producer: str) -> int | None:
        return None


class CountingStore:
    """Delegates to a store; counts `record` calls, refused ones and mark reads."""

    def __init__(self, inner: SqliteAccountingStore) -> None:
        self.inner = inner
        self.recorded = 0
        self.refused = 0
        self.reads = 0
        self.before_record: Callable[[Tally, Mark | None], None] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def mark(self, stage: str, partition: int) -> int:
        self.reads += 1
        return self.inner.mark(stage, partition)

    def record(self, tally: Tally, mark: Mark | None = None) -> bool:
        if self.before_record is not None:
            self.before_record(tally, mark)
        ok = self.inner.record(tally, mark)
        self.recorded += 1
        self.refused += not ok
        return ok


def test_a_runner_counts_every_message_once(tmp_path: Path) -> None:
    async def main() -> None:
        ingest, events = open_logs(tmp_path, inputs=2, outputs=3)
        store = SqliteAccountingStore(tmp_path / "acct.db", RETENTION)
        try:
            n = await write(ingest, 0, "a", 3) + await write(ingest, 1, "b", 2)
            runner = StageRunner(spec(ingest, events, store, max_batches=2))
            await run_to_end(runner, ingest)
            assert totals(store) == expected(n, 2 * len(BAD))
            assert await marks(store, ingest) == await ingest.end_offsets()
            # all in the minute the requests arrived
            rows = store.outcomes(SOURCE, 0, 2**62, MINUTE_MS)
            assert {r.bucket_ms for r in rows} == {MINUTE0}
            assert runner.metrics.total() == n
            # more input later: counted on top, the marks follow
            m = await write(ingest, 1, "c", 2)
            await run_to_end(StageRunner(spec(ingest, events, store)), ingest)
            assert totals(store) == expected(n + m, 3 * len(BAD))
            assert await marks(store, ingest) == await ingest.end_offsets()
        finally:
            store.close()
            await ingest.close()
            await events.close()

    asyncio.run(main())


@pytest.mark.parametrize("merge_units", [True, False])
def test_a_failed_commit_after_the_accounting_does_not_count_twice(
    tmp_path: Path, merge_units: bool
) -> None:
    async def main() -> None:
        ingest, events = open_logs(tmp_path, inputs=2, outputs=3)
        store = CountingStore(SqliteAccountingStore(tmp_path / "acct.db", RETENTION))
        failed: list[tuple[int, int]] = []

        async def fail_first_commit(partition: int, offset: int) -> None:
            if partition not in {p for p, _o in failed}:
                # the unit's counts are in, with the mark at its end
                assert store.inner.mark(GROUP, partition) == offset
                failed.append((partition, offset))
                raise OSError("the commit did not happen")

        try:
            n = await write(ingest, 0, "a", 4) + await write(ingest, 1, "b", 3)
            runner = StageRunner(
                spec(
                    SourceWrapper(ingest, fail_first_commit),
                    events,
                    store,
                    merge_units=merge_units,
                )
            )
            await run_to_end(runner, ingest)
            assert len(failed) == 2 and runner.errors == 2
            assert totals(store.inner) == expected(n, 2 * len(BAD))
            assert await marks(store.inner, ingest) == await ingest.end_offsets()
            assert store.refused == 0
        finally:
            store.close()
            await ingest.close()
            await events.close()

    asyncio.run(main())


def hang_commits(hung: list[int]) -> Callable[[int, int], Awaitable[None]]:
    """A commit that never happens: the process dies after its accounting, before the commit."""

    async def before_commit(partition: int, offset: int) -> None:
        hung.append(partition)
        await asyncio.Event().wait()

    return before_commit


@pytest.mark.parametrize("producer_marks", [True, False])
def test_a_crash_after_the_accounting_before_the_commit_does_not_count_twice(
    tmp_path: Path, producer_marks: bool
) -> None:
    """The process dies between a unit's accounting and its commit; a new process (logs and
    store reopened) replays from the commit, with more input meanwhile, so that its first unit
    spans batches counted before and batches not yet counted."""

    async def crash() -> int:
        ingest, events = open_logs(tmp_path, inputs=2, outputs=3)
        store = SqliteAccountingStore(tmp_path / "acct.db", RETENTION)
        hung: list[int] = []
        try:
            n = await write(ingest, 0, "a", 3) + await write(ingest, 1, "b", 3)
            runner = StageRunner(spec(SourceWrapper(ingest, hang_commits(hung)), events, store))
            for p in range(ingest.partitions):
                runner.assign(p)
            await wait_for(lambda: asyncio.sleep(0, sorted(hung) == [0, 1]))
            await runner.stop()  # the process dies here
            assert await ingest.committed(GROUP) == {}
            assert totals(store) == expected(n, 2 * len(BAD))  # counted, not committed
            assert await marks(store, ingest) == await ingest.end_offsets()
            return n
        finally:
            store.close()
            await ingest.close()
            await events.close()

    async def replay(n: int) -> None:
        ingest, events = open_logs(tmp_path, inputs=2, outputs=3)  # reopened from disk
        store = CountingStore(SqliteAccountingStore(tmp_path / "acct.db", RETENTION))
        try:
            m = await write(ingest, 0, "c", 2)
            sink = events if producer_marks else NoProducerMarks(events)
            runner = StageRunner(spec(ingest, sink, store))
            await run_to_end(runner, ingest)
            assert totals(store.inner) == expected(n + m, 3 * len(BAD))
            assert await marks(store.inner, ingest) == await ingest.end_offsets()
            assert store.refused == 0
            if not producer_marks:  # everything was replayed; the mark left out what was counted
                assert runner.metrics.total() == n + m
        finally:
            store.close()
            await ingest.close()
            await events.close()

    asyncio.run(replay(asyncio.run(crash())))


def test_a_runner_replaying_units_another_owner_counted_does_not_count_them(
    tmp_path: Path,
) -> None:
    """Two runners in turn on the same input and store: the second, without producer marks
    and from a commit the first never made, replays everything and counts nothing twice."""

    async def main() -> None:
        ingest, events = open_logs(tmp_path, inputs=1, outputs=2)
        store = CountingStore(SqliteAccountingStore(tmp_path / "acct.db", RETENTION))
        hung: list[int] = []
        try:
            n = await write(ingest, 0, "a", 4)
            first = StageRunner(
                spec(
                    SourceWrapper(ingest, hang_commits(hung)),
                    events,
                    store,
                    max_batches=2,
                    merge_units=False,  # one unit per batch, as on JetStream
                )
            )
            first.assign(0)
            await wait_for(lambda: asyncio.sleep(0, hung == [0]))
            await first.stop()
            # the first owner counted its first two units (one batch each) and died
            assert store.inner.mark(GROUP, 0) == 2 * PER_BATCH
            assert totals(store.inner)[(INGEST, RECEIVED, "")] == 2 * PER_BATCH
            # the second replays both: the first ends before the mark, the second at it
            second = StageRunner(
                spec(ingest, NoProducerMarks(events), store, max_batches=1, merge_units=False)
            )
            await run_to_end(second, ingest)
            assert second.metrics.total() == n
            assert totals(store.inner) == expected(n, len(BAD))
            assert store.inner.mark(GROUP, 0) == n
            assert store.refused == 0
        finally:
            store.close()
            await ingest.close()
            await events.close()

    asyncio.run(main())


@pytest.mark.parametrize("moved_to", ["next_batch", "end"])
def test_a_mark_moved_underneath_is_read_again_and_nothing_counts_twice(
    tmp_path: Path, moved_to: str
) -> None:
    """While a runner works, another owner counts part of its input (the mark the runner
    remembers goes stale): its `record` is refused, it reads the mark again and counts only
    what the other did not."""

    async def main() -> None:
        ingest, events = open_logs(tmp_path, inputs=1, outputs=2)
        store = CountingStore(SqliteAccountingStore(tmp_path / "acct.db", RETENTION))
        moved: list[Mark] = []
        try:
            n = await write(ingest, 0, "a", 4)
            ends = [b.end_offset for b in await read_partition(ingest, 0)]
            assert ends == [PER_BATCH * (i + 1) for i in range(4)]

            def other_owner(_tally: Tally, mark: Mark | None) -> None:
                assert mark is not None
                if moved or mark.expected == NO_MARK:
                    return  # let the first unit through; race the second one only
                to = mark.expected + PER_BATCH if moved_to == "next_batch" else n
                other = Tally()
                k = to - mark.expected  # the other owner's batches: all good messages
                other.outcome(SOURCE, T0_MS, INGEST, RECEIVED, "", k)
                other.outcome(SOURCE, T0_MS, GROUP, PROCESSED, "", k)
                assert store.inner.record(other, Mark(GROUP, 0, mark.expected, to))
                moved.append(Mark(GROUP, 0, mark.expected, to))

            store.before_record = other_owner
            runner = StageRunner(spec(ingest, events, store, max_batches=2))
            await run_to_end(runner, ingest)
            assert len(moved) == 1
            assert store.refused == 1  # the stale mark, once
            assert totals(store.inner) == expected(n, len(BAD))
            assert store.inner.mark(GROUP, 0) == n
            assert store.reads == 2  # once at the start, once after the refusal
        finally:
            store.close()
            await ingest.close()
            await events.close()

    asyncio.run(main())


def test_a_runner_counts_violations_and_forwarded_messages(tmp_path: Path) -> None:
    """Through the processor's steps: tracking-plan outcomes, forwarded messages received by
    their target source, and violations with samples; exact after a crash and a replay."""
    web, quarantine = stable_id("src", "acme", "web"), stable_id("src", "acme", "quarantine")
    config = msgspec.convert(
        {
            "workspaces": [
                {
                    "name": "acme",
                    "tracking_plans": [{"name": "p", "rules": {"track": {"Known": {}}}}],
                    "sources": [
                        {
                            "name": "web",
                            "tracking_plan": "p",
                            "enforcement": {
                                "unplanned_events": "block",
                                "forward_blocked_to": "quarantine",
                            },
                        },
                        {"name": "quarantine"},
                    ],
                }
            ]
        },
        Config,
    )
    events_sent = ["Known", "Nope", "Known", "Nope", "Nope"]
    msgs = [
        json.dumps({"type": "track", "event": e, "userId": "u", "messageId": f"m{i}"}).encode()
        for i, e in enumerate(events_sent)
    ]

    def stage(source: Log | Any, sink: Log | Any, store: Any) -> StageRunner:
        steps = [TrackingPlans(plans_by_source(config)), *valid_steps()]
        return StageRunner(
            StageSpec(
                GROUP, steps, source, sink, fetch_timeout=0.05, stamped=False, accounting=store
            )
        )

    async def main() -> None:
        ingest, events = open_logs(tmp_path, inputs=1, outputs=2)
        store = SqliteAccountingStore(tmp_path / "acct.db", RETENTION)
        hung: list[int] = []
        try:
            await ingest.append([Run(0, encode_run(web, STAMP0, msgs), len(msgs))])
            first = stage(SourceWrapper(ingest, hang_commits(hung)), events, store)
            first.assign(0)
            await wait_for(lambda: asyncio.sleep(0, hung == [0]))
            await first.stop()  # counted, not committed: the replay makes it all again
            await run_to_end(stage(ingest, NoProducerMarks(events), store), ingest)
            assert totals(store, web) == {
                (INGEST, RECEIVED, ""): 5,
                (GROUP, PROCESSED, ""): 2,
                (GROUP, "blocked", "unplanned_event"): 3,
            }
            assert totals(store, quarantine) == {
                (INGEST, RECEIVED, "forwarded"): 3,
                (GROUP, PROCESSED, ""): 3,
            }
            [row] = store.violations(web, 0, 2**62, MINUTE_MS)
            assert (row.event, row.type, row.field, row.count) == (
                "Nope",
                "unplanned_event",
                "event",
                3,
            )
            samples = store.samples(web)
            assert sorted(s.payload for s in samples) == sorted([msgs[1], msgs[3], msgs[4]])
            assert {s.at_ms for s in samples} == {T0_MS}
            assert store.violations(quarantine, 0, 2**62, MINUTE_MS) == []
        finally:
            store.close()
            await ingest.close()
            await events.close()

    asyncio.run(main())


def test_a_crash_after_the_output_before_the_accounting_still_counts_every_message(
    tmp_path: Path,
) -> None:
    async def crash() -> int:
        ingest, events = open_logs(tmp_path, inputs=1, outputs=2)
        store = SqliteAccountingStore(tmp_path / "acct.db", RETENTION)
        try:
            n = await write(ingest, 0, "a", 3)
            sink = SinkWrapper(events)
            sink.hang_after_store = True  # the output is stored, then the process dies
            runner = StageRunner(spec(ingest, sink, store))
            runner.assign(0)
            await wait_for(lambda: asyncio.sleep(0, sink.hanging == 1))
            await runner.stop()
            return n
        finally:
            store.close()
            await ingest.close()
            await events.close()

    async def replay(n: int) -> None:
        ingest, events = open_logs(tmp_path, inputs=1, outputs=2)
        store = SqliteAccountingStore(tmp_path / "acct.db", RETENTION)
        try:
            await run_to_end(StageRunner(spec(ingest, events, store)), ingest)
            assert totals(store) == expected(n, len(BAD))
        finally:
            store.close()
            await ingest.close()
            await events.close()

    asyncio.run(replay(asyncio.run(crash())))
