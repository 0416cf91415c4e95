"""One contract for the `Log` interface (`headwater.log.base.Log`), run on every backend.

`LogContract` holds the tests; each backend subclasses it once and says how to open a log on
this test's own storage (`opened`: every call is a new process's view of the same log, so
opening a second one while the first is still open is how a test simulates a crash and a
takeover) and how to apply retention. Offsets differ by backend (the embedded log counts
records, JetStream counts batches), so the tests speak of `batch.end_offset` and
`end_offsets()` only, never of offset arithmetic.
"""

from __future__ import annotations

import abc
import asyncio
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager, suppress
from dataclasses import replace
from itertools import pairwise
from pathlib import Path
from typing import Any, ClassVar

import pytest

from headwater.log.base import Log, PartitionConsumer
from headwater.log.embedded import AppendSettings, enforce_retention
from headwater.log.embedded.log import EmbeddedLog
from headwater.log.jetstream import JetStreamLog, connect, ensure_log
from headwater.log.records import RecordBatch, Run, encode_run
from tests.support.jetstream import NATS_URL, namespace_settings, purge_prefix, unique_prefix

NAME = "events"
PARTITIONS = 4
SOURCE = "src_a"
OTHER_SOURCE = "src_b"
WAIT_S = 5.0  # upper bound for collecting batches that are known to be there


# -- records ----------------------------------------------------------------------------------


def message(rid: str, pad: int = 0) -> bytes:
    """A JSON message carrying its id (padded to make it bigger)."""
    body: dict[str, Any] = {"type": "track", "event": "E", "messageId": rid}
    if pad:
        body["pad"] = "x" * pad
    return json.dumps(body).encode()


def run_of(partition: int, ids: list[str], source: str = SOURCE, pad: int = 0) -> Run:
    """One run of final (unstamped) messages, one per id."""
    return Run(partition, encode_run(source, None, [message(i, pad) for i in ids]), len(ids))


def ids_of(batches: list[RecordBatch]) -> list[str]:
    return [json.loads(r.message)["messageId"] for b in batches for r in b.records]


def pairs_of(batches: list[RecordBatch]) -> list[tuple[str, bytes]]:
    return [(r.source_id, r.message) for b in batches for r in b.records]


def assert_contiguous(batches: list[RecordBatch], partition: int, start: int, end: int) -> None:
    """Batches of `partition` that tile [start, end) with no gap and no overlap."""
    assert batches, "no batches"
    assert all(b.partition == partition for b in batches)
    assert batches[0].base_offset == start
    for prev, nxt in pairwise(batches):
        assert nxt.base_offset == prev.end_offset
    assert all(b.count >= 1 for b in batches)
    assert batches[-1].end_offset == end


async def read_all(log: Log, partition: int, offset: int = 0) -> list[RecordBatch]:
    """Every batch of `partition` from `offset` on, page by page like a reader would."""
    batches: list[RecordBatch] = []
    while True:
        page = await log.read(partition, offset, max_records=7)
        if not page:
            return batches
        assert page[0].end_offset > offset
        batches.extend(page)
        offset = page[-1].end_offset


async def fetch_until(consumer: PartitionConsumer, end: int) -> list[RecordBatch]:
    """Fetch until the batch ending at `end` arrived (fails after `WAIT_S`)."""
    batches: list[RecordBatch] = []
    deadline = time.monotonic() + WAIT_S
    while not batches or batches[-1].end_offset < end:
        assert time.monotonic() < deadline, f"fetched up to {batches[-1:]}, wanted {end}"
        batches.extend(await consumer.fetch(100, timeout=0.2))
    return batches


async def append_batches(log: Log, partition: int, groups: list[list[str]], **kw: Any) -> None:
    """One append (so one batch, or more on JetStream if huge) per group of ids."""
    for ids in groups:
        await log.append([run_of(partition, ids, **kw)])


def contract(fn: Callable[[Any], Coroutine[Any, Any, None]]) -> Callable[[Any], None]:
    """Turn an async test method into a sync one (no pytest-asyncio here)."""

    def test(self: Any) -> None:
        asyncio.run(fn(self))

    test.__name__ = fn.__name__
    test.__qualname__ = fn.__qualname__
    test.__doc__ = fn.__doc__
    return test


# -- the contract -----------------------------------------------------------------------------


class LogContract(abc.ABC):
    """The behaviour every `Log` backend must have."""

    knows_produced: ClassVar[bool]
    """Whether `produced()` returns the producer's mark (else always None)."""

    age_s: ClassVar[float]
    """A retention age the backend applies reliably (JetStream's minimum may be 1 s)."""

    @abc.abstractmethod
    def opened(self) -> AbstractAsyncContextManager[Log]:
        """This test's log, as a new process opens it (created on first use), closed on exit."""

    @abc.abstractmethod
    async def apply_retention(
        self, *, max_age_s: float | None = None, max_bytes: int | None = None
    ) -> None:
        """Remove old data now: older than `max_age_s`, or beyond about `max_bytes` per
        partition (tests put their data in one partition). Returns once applied."""

    # -- appending and reading ----------------------------------------------------------------

    @contract
    async def test_new_log_is_empty(self) -> None:
        async with self.opened() as log:
            assert log.name == NAME
            assert log.partitions == PARTITIONS
            assert await log.end_offsets() == [0] * PARTITIONS
            assert await log.start_offsets() == [0] * PARTITIONS
            for p in range(PARTITIONS):
                assert await log.read(p, 0) == []
            assert await log.groups() == []
            assert await log.committed("nobody") == {}

    @contract
    async def test_append_then_read_back_in_order_with_source_ids(self) -> None:
        async with self.opened() as log:
            await log.append(
                [
                    run_of(0, ["a0", "a1", "a2"]),
                    run_of(2, ["c0"], source=OTHER_SOURCE),
                    run_of(0, ["b0", "b1"], source=OTHER_SOURCE),
                ]
            )
            await log.append([run_of(0, ["a3"]), run_of(3, ["d0", "d1"])])

            p0 = await read_all(log, 0)
            assert pairs_of(p0) == [
                (SOURCE, message("a0")),
                (SOURCE, message("a1")),
                (SOURCE, message("a2")),
                (OTHER_SOURCE, message("b0")),
                (OTHER_SOURCE, message("b1")),
                (SOURCE, message("a3")),
            ]
            assert pairs_of(await read_all(log, 2)) == [(OTHER_SOURCE, message("c0"))]
            assert ids_of(await read_all(log, 3)) == ["d0", "d1"]
            assert await log.read(1, 0) == []

            ends = await log.end_offsets()
            assert ends[1] == 0
            for p in (0, 2, 3):
                batches = await read_all(log, p)
                assert_contiguous(batches, p, 0, ends[p])

    @contract
    async def test_appended_data_is_visible_to_another_process(self) -> None:
        async with self.opened() as writer:
            await writer.append([run_of(1, ["x0", "x1"])])
            async with self.opened() as reader:
                assert ids_of(await read_all(reader, 1)) == ["x0", "x1"]
                assert await reader.end_offsets() == await writer.end_offsets()
        async with self.opened() as after_restart:
            assert ids_of(await read_all(after_restart, 1)) == ["x0", "x1"]

    @contract
    async def test_read_from_a_middle_offset(self) -> None:
        async with self.opened() as log:
            groups = [["m0", "m1"], ["m2"], ["m3", "m4", "m5"], ["m6"], ["m7"]]
            await append_batches(log, 1, groups)
            batches = await read_all(log, 1)
            assert ids_of(batches) == [i for g in groups for i in g]
            end = (await log.end_offsets())[1]
            assert_contiguous(batches, 1, 0, end)

            for k, batch in enumerate(batches):
                rest = await read_all(log, 1, batch.end_offset)
                assert ids_of(rest) == ids_of(batches[k + 1 :])
                assert rest == batches[k + 1 :]
                # reading at a batch's own start returns it first
                assert (await log.read(1, batch.base_offset))[0] == batch
            assert await log.read(1, end) == []
            assert await log.read(1, end + 100) == []

    @contract
    async def test_read_max_records_bounds_a_page(self) -> None:
        async with self.opened() as log:
            await append_batches(log, 0, [["r0", "r1"], ["r2", "r3"], ["r4"]])
            page = await log.read(0, 0, max_records=1)
            assert ids_of(page) == ["r0", "r1"]  # a batch is never split
            page = await log.read(0, page[-1].end_offset, max_records=3)
            assert ids_of(page) == ["r2", "r3", "r4"]

    @contract
    async def test_per_partition_order_under_many_interleaved_appends(self) -> None:
        expected: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
        async with self.opened() as log:
            for i in range(200):
                first, second = i % PARTITIONS, (i * 7 + 1) % PARTITIONS
                runs = [run_of(first, [f"{i}.0", f"{i}.1"])]
                expected[first] += [f"{i}.0", f"{i}.1"]
                if i % 3 == 0:
                    runs.append(run_of(second, [f"{i}.2"], source=OTHER_SOURCE))
                    expected[second].append(f"{i}.2")
                await log.append(runs)
            ends = await log.end_offsets()
            for p in range(PARTITIONS):
                batches = await read_all(log, p)
                assert ids_of(batches) == expected[p]
                assert_contiguous(batches, p, 0, ends[p])

    @contract
    async def test_concurrent_appends_store_each_record_once_and_keep_runs_together(
        self,
    ) -> None:
        async with self.opened() as log:
            appends = [
                log.append([run_of(i % PARTITIONS, [f"{i}.0", f"{i}.1", f"{i}.2"])])
                for i in range(60)
            ]
            await asyncio.gather(*appends)
            stored: Counter[str] = Counter()
            for p in range(PARTITIONS):
                ids = ids_of(await read_all(log, p))
                stored.update(ids)
                for k in range(0, len(ids), 3):  # every append's run, whole and in order
                    head = ids[k].split(".")[0]
                    assert ids[k : k + 3] == [f"{head}.0", f"{head}.1", f"{head}.2"]
                    assert int(head) % PARTITIONS == p
            assert stored == Counter(f"{i}.{j}" for i in range(60) for j in range(3))

    @contract
    async def test_append_to_a_partition_that_does_not_exist_raises_value_error(self) -> None:
        async with self.opened() as log:
            await log.append([run_of(0, ["ok"])])
            before = await log.end_offsets()
            with pytest.raises(ValueError):
                await log.append([run_of(PARTITIONS, ["nope"])])
            with pytest.raises(ValueError):
                await log.append([run_of(-1, ["nope"])])
            with pytest.raises(ValueError):  # all or nothing: the good run is not stored
                await log.append([run_of(1, ["good"]), run_of(PARTITIONS + 3, ["bad"])])
            assert await log.end_offsets() == before
            assert ids_of(await read_all(log, 0)) == ["ok"]
            assert await log.read(1, 0) == []

    @contract
    async def test_offsets(self) -> None:
        async with self.opened() as log:
            await append_batches(log, 2, [["o0", "o1", "o2"], ["o3"]])
            ends = await log.end_offsets()
            assert await log.start_offsets() == [0] * PARTITIONS
            assert ends[0] == ends[1] == ends[3] == 0
            batches = await read_all(log, 2)
            assert ends[2] == batches[-1].end_offset > batches[0].end_offset > 0

            await log.append([run_of(2, ["o4"])])
            later = await log.end_offsets()
            assert later[2] > ends[2]
            assert (await log.read(2, ends[2]))[0].base_offset == ends[2]  # next batch starts there

    # -- idempotent append --------------------------------------------------------------------

    @contract
    async def test_idempotent_append(self) -> None:
        async with self.opened() as log:
            await log.append([run_of(0, ["s1"]), run_of(1, ["t1"])], "stage-a", 1)
            ends = await log.end_offsets()
            await log.append([run_of(0, ["s1"]), run_of(1, ["t1"])], "stage-a", 1)  # replay
            assert await log.end_offsets() == ends
            assert ids_of(await read_all(log, 0)) == ["s1"]
            assert ids_of(await read_all(log, 1)) == ["t1"]

            await log.append([run_of(0, ["s2"])], "stage-a", 2)  # a new seq stores again
            await log.append([run_of(0, ["u1"])], "stage-b", 1)  # another producer, same seq
            assert ids_of(await read_all(log, 0)) == ["s1", "s2", "u1"]
            assert ids_of(await read_all(log, 1)) == ["t1"]

            if self.knows_produced:
                assert await log.produced("stage-a") == 2
                assert await log.produced("stage-b") == 1
            else:
                assert await log.produced("stage-a") is None
                assert await log.produced("stage-b") is None
            assert await log.produced("never-appended") is None

    @contract
    async def test_idempotent_append_survives_a_restart(self) -> None:
        async with self.opened() as first:
            await first.append([run_of(3, ["k1", "k2"])], "stage-a", 7)
        async with self.opened() as second:  # the producer restarts and replays
            await second.append([run_of(3, ["k1", "k2"])], "stage-a", 7)
            assert ids_of(await read_all(second, 3)) == ["k1", "k2"]
            expected = 7 if self.knows_produced else None
            assert await second.produced("stage-a") == expected

    @contract
    async def test_append_without_producer_is_not_deduplicated(self) -> None:
        async with self.opened() as log:
            await log.append([run_of(0, ["same"])])
            await log.append([run_of(0, ["same"])])
            assert ids_of(await read_all(log, 0)) == ["same", "same"]

    # -- consumers ----------------------------------------------------------------------------

    @contract
    async def test_consumer_of_a_new_group_starts_at_zero_and_fetches_in_order(self) -> None:
        async with self.opened() as log:
            groups = [["f0", "f1"], ["f2"], ["f3", "f4"], ["f5"]]
            await append_batches(log, 1, groups)
            end = (await log.end_offsets())[1]
            consumer = log.consumer("g", 1)
            try:
                assert await consumer.open() == 0
                batches = await fetch_until(consumer, end)
                assert ids_of(batches) == [i for g in groups for i in g]
                assert_contiguous(batches, 1, 0, end)
                assert batches == await read_all(log, 1)
            finally:
                await consumer.close()
            assert (await log.committed("g")).get(1, 0) == 0  # nothing committed

    @contract
    async def test_fetch_respects_max_batches(self) -> None:
        async with self.opened() as log:
            await append_batches(log, 0, [[f"b{i}"] for i in range(5)])
            consumer = log.consumer("g", 0)
            await consumer.open()
            first = await consumer.fetch(2, timeout=1.0)
            assert 1 <= len(first) <= 2
            rest = await fetch_until(consumer, (await log.end_offsets())[0])
            assert ids_of(first + rest) == [f"b{i}" for i in range(5)]
            await consumer.close()

    @contract
    async def test_fetch_with_nothing_new_returns_empty_within_the_timeout(self) -> None:
        async with self.opened() as log:
            consumer = log.consumer("g", 2)
            assert await consumer.open() == 0
            started = time.monotonic()
            assert await consumer.fetch(10, timeout=0.3) == []
            assert time.monotonic() - started < 0.3 + 0.7

            await append_batches(log, 2, [["n0"]])
            batches = await fetch_until(consumer, (await log.end_offsets())[2])
            assert ids_of(batches) == ["n0"]
            started = time.monotonic()  # caught up: nothing new again
            assert await consumer.fetch(10, timeout=0.3) == []
            assert time.monotonic() - started < 0.3 + 0.7
            await consumer.close()

    @contract
    async def test_consumer_sees_appends_of_another_process(self) -> None:
        async with self.opened() as log, self.opened() as writer:
            consumer = log.consumer("g", 3)
            await consumer.open()
            assert await consumer.fetch(10, timeout=0.05) == []
            await append_batches(writer, 3, [["w0"], ["w1", "w2"]])
            batches = await fetch_until(consumer, (await writer.end_offsets())[3])
            assert ids_of(batches) == ["w0", "w1", "w2"]
            await consumer.close()

    @contract
    async def test_commit_then_crash_resumes_exactly_after_the_commit(self) -> None:
        async with self.opened() as first:
            await append_batches(first, 0, [["c0"], ["c1", "c2"], ["c3"], ["c4"]])
            end = (await first.end_offsets())[0]
            old = first.consumer("g", 0)
            assert await old.open() == 0
            batches = await fetch_until(old, end)
            await old.commit(batches[1].end_offset)
            assert await first.committed("g") == {0: batches[1].end_offset}
            # the first process dies here (its consumer never closes); a new one takes over
            async with self.opened() as second:
                new = second.consumer("g", 0)
                assert await new.open() == batches[1].end_offset
                resumed = await fetch_until(new, end)
                assert resumed[0].base_offset == batches[1].end_offset
                assert ids_of(resumed) == ["c3", "c4"]
                assert await second.groups() == ["g"]
                await new.commit(resumed[-1].end_offset)
                assert await second.committed("g") == {0: end}
                await new.close()

    @contract
    async def test_a_takeover_without_a_commit_keeps_the_last_commit(self) -> None:
        """Crash, takeover, crash again before the new owner commits: the group's commit is
        still the first owner's, for `committed()` and for the next `open()`."""
        async with self.opened() as first:
            await append_batches(first, 0, [["h0"], ["h1"], ["h2"], ["h3"]])
            end = (await first.end_offsets())[0]
            old = first.consumer("g", 0)
            await old.open()
            batches = await fetch_until(old, end)
            await old.commit(batches[1].end_offset)
            mark = batches[1].end_offset
        async with self.opened() as second:
            new = second.consumer("g", 0)
            assert await new.open() == mark
            assert ids_of(await fetch_until(new, end)) == ["h2", "h3"]
            assert await second.committed("g") == {0: mark}
        async with self.opened() as third:  # the second owner died without committing
            assert await third.committed("g") == {0: mark}
            newer = third.consumer("g", 0)
            assert await newer.open() == mark
            assert ids_of(await fetch_until(newer, end)) == ["h2", "h3"]
            await newer.close()

    @contract
    async def test_uncommitted_batches_are_delivered_again_after_a_crash(self) -> None:
        async with self.opened() as first:
            await append_batches(first, 2, [["u0"], ["u1"], ["u2", "u3"]])
            end = (await first.end_offsets())[2]
            old = first.consumer("g", 2)
            await old.open()
            assert ids_of(await fetch_until(old, end)) == ["u0", "u1", "u2", "u3"]
            async with self.opened() as second:  # crash before any commit
                new = second.consumer("g", 2)
                assert await new.open() == 0
                again = await fetch_until(new, end)
                assert ids_of(again) == ["u0", "u1", "u2", "u3"]
                await new.commit(again[0].end_offset)
            async with self.opened() as third:  # crash again after committing one batch
                newer = third.consumer("g", 2)
                assert await newer.open() == again[0].end_offset
                assert ids_of(await fetch_until(newer, end)) == ["u1", "u2", "u3"]
                await newer.close()

    @contract
    async def test_commit_is_durable_across_a_clean_restart(self) -> None:
        async with self.opened() as first:
            await append_batches(first, 1, [["d0"], ["d1"], ["d2"]])
            consumer = first.consumer("g", 1)
            await consumer.open()
            batches = await fetch_until(consumer, (await first.end_offsets())[1])
            await consumer.commit(batches[0].end_offset)
            await consumer.close()
        async with self.opened() as second:
            assert await second.committed("g") == {1: batches[0].end_offset}
            consumer = second.consumer("g", 1)
            assert await consumer.open() == batches[0].end_offset
            fetched = await fetch_until(consumer, batches[-1].end_offset)
            assert ids_of(fetched) == ["d1", "d2"]
            await consumer.close()

    @contract
    async def test_a_new_consumer_in_the_same_process_takes_the_partition_over(self) -> None:
        async with self.opened() as log:
            await append_batches(log, 3, [["t0"], ["t1"], ["t2"]])
            end = (await log.end_offsets())[3]
            old = log.consumer("g", 3)
            await old.open()
            batches = await fetch_until(old, end)
            await old.commit(batches[0].end_offset)
            new = log.consumer("g", 3)
            assert await new.open() == batches[0].end_offset
            assert ids_of(await fetch_until(new, end)) == ["t1", "t2"]
            await old.close()
            await new.close()

    @contract
    async def test_committed_and_groups_report_commits(self) -> None:
        async with self.opened() as log:
            await append_batches(log, 0, [["q0"], ["q1"]])
            await append_batches(log, 2, [["r0"]])
            ends = await log.end_offsets()
            for group, partition in (("beta", 2), ("alpha", 0), ("alpha", 2)):
                consumer = log.consumer(group, partition)
                await consumer.open()
                batches = await fetch_until(consumer, ends[partition])
                await consumer.commit(batches[0].end_offset)
                await consumer.close()
            first_of_0 = (await log.read(0, 0))[0].end_offset
            assert await log.committed("alpha") == {0: first_of_0, 2: ends[2]}
            assert await log.committed("beta") == {2: ends[2]}
            assert await log.committed("gamma") == {}
            assert await log.groups() == ["alpha", "beta"]
        async with self.opened() as reopened:
            assert await reopened.committed("alpha") == {0: first_of_0, 2: ends[2]}
            assert await reopened.groups() == ["alpha", "beta"]

    @contract
    async def test_two_groups_are_independent(self) -> None:
        async with self.opened() as first:
            await append_batches(first, 1, [["i0"], ["i1"], ["i2"]])
            end = (await first.end_offsets())[1]
            one, two = first.consumer("one", 1), first.consumer("two", 1)
            assert await one.open() == 0
            assert await two.open() == 0
            batches_one = await fetch_until(one, end)
            batches_two = await fetch_until(two, end)
            assert ids_of(batches_one) == ids_of(batches_two) == ["i0", "i1", "i2"]
            await one.commit(batches_one[1].end_offset)
            async with self.opened() as second:  # crash of both
                assert await second.committed("one") == {1: batches_one[1].end_offset}
                assert (await second.committed("two")).get(1, 0) == 0
                one, two = second.consumer("one", 1), second.consumer("two", 1)
                assert await one.open() == batches_one[1].end_offset
                assert await two.open() == 0
                assert ids_of(await fetch_until(one, end)) == ["i2"]
                assert ids_of(await fetch_until(two, end)) == ["i0", "i1", "i2"]
                await one.close()
                await two.close()

    @contract
    async def test_commit_never_moves_backward(self) -> None:
        """`commit` "only ever moves forward": committing an older offset afterwards (a stale
        owner, a reordered retry) must not rewind the group (it may raise ValueError)."""
        async with self.opened() as log:
            await append_batches(log, 0, [["v0"], ["v1"], ["v2"]])
            end = (await log.end_offsets())[0]
            consumer = log.consumer("g", 0)
            await consumer.open()
            batches = await fetch_until(consumer, end)
            await consumer.commit(batches[1].end_offset)
            with suppress(ValueError):
                await consumer.commit(batches[0].end_offset)
            assert await log.committed("g") == {0: batches[1].end_offset}
            await consumer.close()
            again = log.consumer("g", 0)
            assert await again.open() == batches[1].end_offset
            await again.close()

    # -- retention ----------------------------------------------------------------------------

    async def _check_retained(self, log: Log, appended: list[str], must_keep: list[str]) -> None:
        """Retention removed a prefix of partition 0 and kept (at least) `must_keep`."""
        start, end = (await log.start_offsets())[0], (await log.end_offsets())[0]
        assert 0 < start < end
        retained = await read_all(log, 0)  # from offset 0: continues at the oldest retained
        assert_contiguous(retained, 0, start, end)
        ids = ids_of(retained)
        assert 0 < len(ids) < len(appended)
        assert ids == appended[len(appended) - len(ids) :]  # a suffix, in order
        assert ids[len(ids) - len(must_keep) :] == must_keep
        first = await log.read(0, 0)
        assert first[0].base_offset == start
        for removed in (start - 1, start // 2):  # a removed offset reads on at the oldest
            assert await log.read(0, removed) == first

    @contract
    async def test_retention_by_size_drops_the_oldest_data(self) -> None:
        async with self.opened() as log:
            old = [[f"z{i}"] for i in range(24)]
            await append_batches(log, 0, old, pad=900)
            end = (await log.end_offsets())[0]
            consumer = log.consumer("g", 0)
            await consumer.open()
            batches = await fetch_until(consumer, end)
            await consumer.commit(batches[0].end_offset)
            await consumer.close()
            assert await log.start_offsets() == [0] * PARTITIONS

            await self.apply_retention(max_bytes=4096)

            appended = [i for g in old for i in g]
            await self._check_retained(log, appended, must_keep=appended[-1:])
            assert (await log.end_offsets())[0] == end  # retention never moves the end
            # a group whose commit was removed continues at the oldest retained batch
            resumed = log.consumer("g", 0)
            await resumed.open()
            fetched = await fetch_until(resumed, end)
            assert fetched[0].base_offset == (await log.start_offsets())[0]
            assert fetched == await read_all(log, 0)
            await resumed.close()

    @contract
    async def test_retention_by_age_drops_the_oldest_data(self) -> None:
        async with self.opened() as log:
            old = [[f"o{i}", f"o{i}+"] for i in range(10)]
            await append_batches(log, 0, old, pad=500)
            await asyncio.sleep(self.age_s + 0.3)
            new = [["n0"], ["n1", "n2"]]
            await append_batches(log, 0, new)

            await self.apply_retention(max_age_s=self.age_s)

            appended = [i for g in old + new for i in g]
            await self._check_retained(log, appended, must_keep=["n0", "n1", "n2"])


# -- backends ---------------------------------------------------------------------------------


class TestEmbeddedLog(LogContract):
    knows_produced = True
    age_s = 0.2

    settings = AppendSettings(
        partitions=PARTITIONS, segment_bytes=4096, preallocate=False, min_free_disk_bytes=0
    )

    @pytest.fixture(autouse=True)
    def _storage(self, tmp_path: Path) -> None:
        self.root = tmp_path / "log" / NAME

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[Log]:
        log = EmbeddedLog(NAME, self.root, self.settings)
        try:
            yield log
        finally:
            await log.close()

    def opened(self) -> AbstractAsyncContextManager[Log]:
        return self._open()

    async def apply_retention(
        self, *, max_age_s: float | None = None, max_bytes: int | None = None
    ) -> None:
        never = 10**15
        enforce_retention(
            self.root,
            max_age_ms=never if max_age_s is None else int(max_age_s * 1000),
            max_bytes=never if max_bytes is None else max_bytes,
        )


class TestJetStreamLog(LogContract):
    knows_produced = False
    age_s = 1.0

    @pytest.fixture(autouse=True)
    def _namespace(self) -> Iterator[None]:
        prefix = unique_prefix()
        self.settings = namespace_settings(prefix, partitions=PARTITIONS)
        yield
        asyncio.run(purge_prefix(prefix))

    @asynccontextmanager
    async def _open(self) -> AsyncIterator[Log]:
        nc = await connect(NATS_URL, name="contract-test")
        try:
            js = nc.jetstream()
            await ensure_log(js, self.settings, NAME)
            log = JetStreamLog(NAME, nc, self.settings, js)
            try:
                yield log
            finally:
                await log.close()
        finally:
            await nc.close()

    def opened(self) -> AbstractAsyncContextManager[Log]:
        return self._open()

    async def apply_retention(
        self, *, max_age_s: float | None = None, max_bytes: int | None = None
    ) -> None:
        settings = self.settings
        if max_age_s is not None:
            settings = replace(settings, max_age_s=max_age_s)
        if max_bytes is not None:
            settings = replace(settings, max_bytes=max_bytes * PARTITIONS)  # per stream
        self.settings = settings
        async with self.opened():  # ensure_log updates the streams; the server applies at once
            pass
