"""The stage runtime on embedded logs: pass-through, crash and replay, backpressure, leases.

The key property: whatever happens between the output append and the input commit, a fresh
runner leaves every input message in the output exactly once, in its input partition's order.
"""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from headwater.events.stamp import Stamp, encode_stamp
from headwater.log.base import LogBackpressure, LogError, LogUnavailable
from headwater.log.embedded.log import EmbeddedLog
from headwater.log.records import Run, encode_run, partition_for
from headwater.processing.runtime import (
    FAILED,
    PROCESSED,
    StageRunner,
    StageSpec,
    outputs_of,
    producer_name,
)
from tests.processing._helpers import (
    GROUP,
    SOURCE,
    Inputs,
    SinkWrapper,
    SourceWrapper,
    caught_up,
    check_output,
    message,
    mid_of,
    open_logs,
    profile_key,
    read_all,
    read_partition,
    valid_steps,
    wait_for,
    write_batches,
    write_input,
)


def spec(source: object, sink: object, **kwargs: object) -> StageSpec:
    kwargs.setdefault("fetch_timeout", 0.05)
    kwargs.setdefault("backoff_max", 0.2)
    return StageSpec(GROUP, valid_steps(), source, sink, **kwargs)  # type: ignore[arg-type]


async def fill(ingest: EmbeddedLog, batches: int = 4, per_batch: int = 10) -> Inputs:
    """`batches` batches of `per_batch` valid messages in every input partition."""
    inputs: Inputs = {}
    for p in range(ingest.partitions):
        msgs = await write_batches(ingest, p, f"p{p}", batches, per_batch)
        inputs[p] = [(SOURCE, m) for m in msgs]
    return inputs


async def run_to_end(runner: StageRunner, timeout: float = 10.0) -> None:
    """Run `runner` on every partition of its input until it has committed everything."""
    source = runner.spec.source
    for p in range(source.partitions):
        runner.assign(p)
    try:
        await wait_for(lambda: caught_up(source, GROUP), timeout)
    finally:
        await runner.stop()


async def check_committed_to_end(ingest: EmbeddedLog, events: EmbeddedLog) -> None:
    ends = await ingest.end_offsets()
    committed = await ingest.committed(GROUP)
    assert [committed.get(p, 0) for p in range(ingest.partitions)] == ends
    for p, end in enumerate(ends):
        if end:
            assert await events.produced(producer_name(GROUP, p)) == end


# -- pass-through -------------------------------------------------------------------------------


def test_pass_through_every_message_once_keyed_ordered_and_counted(tmp_path: Path) -> None:
    async def main() -> None:
        ingest, events = open_logs(tmp_path, inputs=3, outputs=4)
        try:
            inputs = await fill(ingest, batches=5, per_batch=20)
            # another source, anonymous and numeric ids, in partition 1
            extra = [
                message("b-1", anon="anon-1"),
                message("b-2", user=12345),
                message("b-3"),
                message("b-4", user="", anon=99),
            ]
            await write_input(ingest, 1, extra, source="src_b")
            inputs[1] += [("src_b", m) for m in extra]
            # unreadable and unidentifiable messages: counted, never written
            bad = [b"[1, 2]", b'{"messageId": "x", "userId": {"a": 1}}', b"7"]
            await write_input(ingest, 0, [*bad, b'{"type": "track"}', message("ok-0")])
            inputs[0].append((SOURCE, message("ok-0")))

            runner = StageRunner(spec(ingest, events, max_batches=2))
            for p in range(ingest.partitions):
                runner.assign(p)
            assert runner.assigned == {0, 1, 2}
            # more input while it runs: the runner tails its partitions
            await asyncio.sleep(0.1)
            late = await write_batches(ingest, 2, "late", 3, 5)
            inputs[2] += [(SOURCE, m) for m in late]
            await wait_for(lambda: caught_up(ingest, GROUP))
            await runner.stop()
            assert runner.assigned == set()

            await check_output(events, inputs)
            await check_committed_to_end(ingest, events)
            assert runner.positions == dict(enumerate(await ingest.end_offsets()))
            assert runner.errors == 0

            valid = sum(len(v) for v in inputs.values())
            metrics = runner.metrics
            assert metrics.total(PROCESSED) == valid
            assert metrics.counts[(SOURCE, FAILED, "invalid_message")] == 3
            assert metrics.counts[(SOURCE, FAILED, "no_identifier")] == 1
            assert metrics.counts[("src_b", PROCESSED, "")] == 4
            assert metrics.total(FAILED) == 4
            received = sum(await ingest.end_offsets())
            assert metrics.total() == received == metrics.total(PROCESSED) + metrics.total(FAILED)
        finally:
            await ingest.close()
            await events.close()

    asyncio.run(main())


def test_a_new_runner_resumes_at_the_commit(tmp_path: Path) -> None:
    async def main() -> None:
        ingest, events = open_logs(tmp_path, inputs=2, outputs=3)
        try:
            inputs = await fill(ingest, batches=2, per_batch=10)
            await run_to_end(StageRunner(spec(ingest, events)))
            more = await write_batches(ingest, 0, "more", 2, 10)
            inputs[0] += [(SOURCE, m) for m in more]
            second = StageRunner(spec(ingest, events))
            await run_to_end(second)
            assert second.metrics.total() == 20  # only the new messages
            await check_output(events, inputs)
            await check_committed_to_end(ingest, events)
        finally:
            await ingest.close()
            await events.close()

    asyncio.run(main())


def test_an_all_failed_unit_is_committed_and_writes_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        ingest, events = open_logs(tmp_path, inputs=1, outputs=2)
        try:
            await write_input(ingest, 0, [b"[]", b"1", b'{"event": "no ids"}'])
            runner = StageRunner(spec(ingest, events))
            await run_to_end(runner)
            assert await events.end_offsets() == [0, 0]
            assert await ingest.committed(GROUP) == {0: 3}
            assert runner.metrics.total(FAILED) == 3
            assert runner.metrics.total(PROCESSED) == 0
        finally:
            await ingest.close()
            await events.close()

    asyncio.run(main())


# -- crash and replay ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("merge_units", "max_batches", "store_limit", "stuck"),
    [
        (True, 64, None, 2),  # every partition's one unit stored, then the crash
        (True, 2, None, 2),  # the first of two units of every partition stored, then the crash
        (False, 64, None, 2),  # each partition's first per-batch unit stored, then the crash
        (False, 64, 3, 2),  # three per-batch units stored in all, each partition's next not
    ],
)
def test_crash_after_output_append_before_commit_changes_nothing_twice(
    tmp_path: Path, merge_units: bool, max_batches: int, store_limit: int | None, stuck: int
) -> None:
    async def crash() -> Inputs:
        ingest, events = open_logs(tmp_path, inputs=2, outputs=4)
        try:
            inputs = await fill(ingest, batches=4, per_batch=10)
            sink = SinkWrapper(events)
            sink.store_limit = store_limit
            sink.hang_after_store = store_limit is None
            runner = StageRunner(
                spec(ingest, sink, merge_units=merge_units, max_batches=max_batches)
            )
            for p in range(ingest.partitions):
                runner.assign(p)
            await wait_for(lambda: asyncio.sleep(0, sink.hanging == stuck))
            await asyncio.sleep(0.05)
            assert sink.hanging == stuck
            assert len(sink.stored) == (stuck if store_limit is None else store_limit)
            assert await ingest.committed(GROUP) == {}  # the output is there, the commit not
            await runner.stop()  # the process dies here
            assert runner.metrics.total() == 0
            return inputs
        finally:
            await ingest.close()
            await events.close()

    async def replay(inputs: Inputs) -> None:
        ingest, events = open_logs(tmp_path, inputs=2, outputs=4)  # reopened from disk
        try:
            before = sum(len(rs) for rs in (await read_all(events)).values())
            assert 0 < before <= 80
            await run_to_end(StageRunner(spec(ingest, events, merge_units=merge_units)))
            await check_output(events, inputs)
            await check_committed_to_end(ingest, events)
        finally:
            await ingest.close()
            await events.close()

    asyncio.run(replay(asyncio.run(crash())))


@pytest.mark.parametrize("merge_units", [True, False])
def test_failed_commit_is_retried_without_writing_twice(tmp_path: Path, merge_units: bool) -> None:
    async def main() -> None:
        ingest, events = open_logs(tmp_path, inputs=2, outputs=3)
        failed: set[int] = set()

        async def fail_first_commit(partition: int, offset: int) -> None:
            if partition not in failed:
                failed.add(partition)
                raise OSError("the index is gone for a moment")

        try:
            inputs = await fill(ingest, batches=3, per_batch=10)
            runner = StageRunner(
                spec(SourceWrapper(ingest, fail_first_commit), events, merge_units=merge_units)
            )
            await run_to_end(runner)
            assert failed == {0, 1}
            assert runner.errors == 2
            await check_output(events, inputs)
            await check_committed_to_end(ingest, events)
        finally:
            await ingest.close()
            await events.close()

    asyncio.run(main())


@pytest.mark.parametrize("upto_batch", [1, 3, 4])
def test_output_written_by_an_earlier_owner_is_not_written_again(
    tmp_path: Path, upto_batch: int
) -> None:
    """What an earlier owner appended (with its producer mark) before dying uncommitted: a new
    runner on the reopened logs continues after it."""

    async def earlier_owner() -> Inputs:
        ingest, events = open_logs(tmp_path, inputs=2, outputs=4)
        try:
            inputs = await fill(ingest, batches=4, per_batch=10)
            owner = StageRunner(spec(ingest, events))
            for p in range(ingest.partitions):
                batches = (await read_partition(ingest, p))[:upto_batch]
                items = await owner.process(batches)
                await events.append(
                    outputs_of(items, events.partitions),
                    producer_name(GROUP, p),
                    batches[-1].end_offset,
                )
            return inputs
        finally:
            await ingest.close()
            await events.close()

    async def new_owner(inputs: Inputs) -> None:
        ingest, events = open_logs(tmp_path, inputs=2, outputs=4)
        try:
            ends_before = await events.end_offsets()
            runner = StageRunner(spec(ingest, events))
            await run_to_end(runner)
            await check_output(events, inputs)
            await check_committed_to_end(ingest, events)
            written = sum(await events.end_offsets()) - sum(ends_before)
            assert written == 2 * (4 - upto_batch) * 10
        finally:
            await ingest.close()
            await events.close()

    asyncio.run(new_owner(asyncio.run(earlier_owner())))


# -- backpressure -------------------------------------------------------------------------------


@pytest.mark.parametrize("error", [LogBackpressure, LogUnavailable])
def test_output_backpressure_retries_the_same_unit_and_commits_only_after(
    tmp_path: Path, error: type[LogError]
) -> None:
    async def main() -> None:
        ingest, events = open_logs(tmp_path, inputs=2, outputs=3)
        sink = SinkWrapper(events, error=error)
        sink.fail = 3
        early_commits: list[tuple[int, int]] = []
        committed_while_refused: list[int] = []

        async def output_first(partition: int, offset: int) -> None:
            produced = await events.produced(producer_name(GROUP, partition))
            if produced is None or produced < offset:
                early_commits.append((partition, offset))

        async def note_commits(producer: str | None, seq: int) -> None:
            partition = int(str(producer).rsplit(".", 1)[1])
            committed_while_refused.append((await ingest.committed(GROUP)).get(partition, 0))

        sink.on_fail = note_commits
        try:
            inputs = await fill(ingest, batches=3, per_batch=10)
            runner = StageRunner(spec(SourceWrapper(ingest, output_first), sink))
            await run_to_end(runner)

            assert runner.errors == 3
            assert early_commits == []
            assert committed_while_refused == [0, 0, 0]  # the refused unit is not committed
            # every attempt of one (producer, seq) carried the same unit, stored once
            units: dict[tuple[str | None, int], set[object]] = {}
            for producer, seq, runs in sink.attempts:
                units.setdefault((producer, seq), set()).add(tuple(runs))
            assert all(len(u) == 1 for u in units.values())
            assert len(sink.attempts) == len(units) + 3
            assert sorted(sink.stored) == sorted(units)
            await check_output(events, inputs)
            await check_committed_to_end(ingest, events)
            assert runner.metrics.total(PROCESSED) == 60
        finally:
            await ingest.close()
            await events.close()

    asyncio.run(main())


def test_per_batch_units_a_failed_earlier_append_is_not_skipped(tmp_path: Path) -> None:
    async def main() -> None:
        ingest, events = open_logs(tmp_path, inputs=1, outputs=3)
        sink = SinkWrapper(events, error=LogUnavailable)
        sink.fail_when = lambda attempt: attempt == 1  # the first unit's first append only
        try:
            inputs = await fill(ingest, batches=3, per_batch=10)
            runner = StageRunner(spec(ingest, sink, merge_units=False))
            await run_to_end(runner)
            assert runner.errors == 1
            await check_output(events, inputs)
        finally:
            await ingest.close()
            await events.close()

    asyncio.run(main())


# -- leases and revocation ----------------------------------------------------------------------


def test_lease_lost_during_the_append_leaves_the_commit_to_the_next_owner(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        ingest, events = open_logs(tmp_path, inputs=1, outputs=3)
        held = {"lease": True}
        sink = SinkWrapper(events)

        def lose_lease() -> None:
            held["lease"] = False

        sink.on_stored = lose_lease
        try:
            inputs = await fill(ingest, batches=3, per_batch=10)
            runner = StageRunner(spec(ingest, sink, max_batches=1, holds=lambda _p: held["lease"]))
            runner.assign(0)
            await wait_for(lambda: asyncio.sleep(0, sink.stored != []))
            await wait_for(lambda: asyncio.sleep(0, runner._tasks[0].done()))
            assert len(sink.stored) == 1
            assert await ingest.committed(GROUP) == {}  # not committed: the lease was gone
            assert runner.metrics.total() == 0

            sink.on_stored = None
            held["lease"] = True  # acquired again (or by another member)
            await run_to_end(runner)
            await check_output(events, inputs)
            await check_committed_to_end(ingest, events)
        finally:
            await ingest.close()
            await events.close()

    asyncio.run(main())


def test_revoke_stops_a_partition_and_assign_resumes_it(tmp_path: Path) -> None:
    async def main() -> None:
        ingest, events = open_logs(tmp_path, inputs=2, outputs=3)
        try:
            inputs = await fill(ingest, batches=2, per_batch=10)
            runner = StageRunner(spec(ingest, events))
            runner.assign(0)
            runner.assign(1)
            runner.assign(1)  # already running: no second task
            await wait_for(lambda: caught_up(ingest, GROUP))
            await runner.revoke(1)
            assert runner.assigned == {0}
            assert runner.revoke_now(1) is None

            more = await write_batches(ingest, 1, "more", 1, 10)
            inputs[1] += [(SOURCE, m) for m in more]
            await asyncio.sleep(0.2)
            assert (await ingest.committed(GROUP))[1] == 20  # nobody works on partition 1

            await run_to_end(runner)
            await check_output(events, inputs)
            await check_committed_to_end(ingest, events)
        finally:
            await ingest.close()
            await events.close()

    asyncio.run(main())


class AnsweredWhenCancelled:
    """An embedded consumer whose `wait` is a request with a timeout (`asyncio.wait_for`), as
    in nats-py's `next_msg` under `JetStreamConsumer.wait`/`fetch`; the test answers it in the
    same loop iteration as the revoke cancels it."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.waiting = asyncio.Event()
        self.answer: asyncio.Future[bool] | None = None

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)

    async def wait(self, timeout: float) -> bool:
        self.answer = asyncio.get_running_loop().create_future()
        self.waiting.set()
        try:
            return await asyncio.wait_for(self.answer, timeout)
        except TimeoutError:
            return False


def test_revoke_ends_the_partition_even_if_the_cancellation_is_swallowed(
    tmp_path: Path,
) -> None:
    async def main() -> None:
        ingest, events = open_logs(tmp_path, inputs=1, outputs=2)
        consumers: list[AnsweredWhenCancelled] = []

        class Source(SourceWrapper):
            def consumer(  # type: ignore[override]
                self, group: str, partition: int, stamped: bool = True
            ) -> object:
                consumers.append(
                    AnsweredWhenCancelled(self.inner.consumer(group, partition, stamped))
                )
                return consumers[-1]

        async def no_hook(_p: int, _o: int) -> None:
            return None

        held = {"lease": True}
        runner = StageRunner(
            spec(Source(ingest, no_hook), events, fetch_timeout=0.2, holds=lambda _p: held["lease"])
        )
        try:
            runner.assign(0)
            await wait_for(lambda: asyncio.sleep(0, bool(consumers)))
            await consumers[0].waiting.wait()
            assert consumers[0].answer is not None
            consumers[0].answer.set_result(False)  # the answer arrives...
            stopping = asyncio.get_running_loop().create_task(runner.revoke(0))  # ...as we stop
            await asyncio.sleep(0)
            done, _ = await asyncio.wait({stopping}, timeout=1.0)
            held["lease"] = False  # end the partition's loop either way (cleanup)
            await asyncio.wait_for(stopping, 5)
            assert stopping in done, "revoke() did not return while the lease was held"
        finally:
            await runner.stop()
            await ingest.close()
            await events.close()

    asyncio.run(main())


@pytest.mark.parametrize("stamped", [True, False])
def test_stamped_runs_read_the_same_from_events_whether_stamped_or_passed_through(
    tmp_path: Path, stamped: bool
) -> None:
    """Messages stored as sent with their request's stamp (as the gateway stores them) read
    from `events` exactly as they read from `ingest`, stamped, whether the stage stamps them
    (`stamped=True`) or passes them through with their stamp for readers to apply."""

    async def main() -> None:
        ingest, events = open_logs(tmp_path, inputs=2, outputs=3)
        try:
            received = datetime(2026, 3, 1, 12, 0, 0, 500_000, tzinfo=UTC)
            stamp = encode_stamp(Stamp(received, "2026-03-01T12:00:10.000Z", "10.1.2.3"))
            sent = [
                b'{"type":"track","event":"E","userId":"u%d","messageId":"m%d",'
                b'"timestamp":"2026-03-01T12:00:09.000Z","context":{"library":{"name":"x"}}}'
                % (i, i)
                for i in range(20)
            ]
            for p in range(2):
                run = encode_run(SOURCE, stamp, sent[p::2])
                await ingest.append([Run(p, run, len(sent[p::2]))])
            expected = {
                mid_of(r): r.message for rs in (await read_all(ingest)).values() for r in rs
            }
            assert json.loads(next(iter(expected.values())))["context"]["ip"] == "10.1.2.3"
            await run_to_end(StageRunner(spec(ingest, events, stamped=stamped)))
            out = await read_all(events)
            got = {mid_of(r): r.message for rs in out.values() for r in rs}
            assert got == expected  # byte for byte: receivedAt, corrected timestamp, ip, ...
            for p, records in out.items():
                for r in records:
                    assert partition_for(profile_key(r.message), 3) == p
        finally:
            await ingest.close()
            await events.close()

    asyncio.run(main())
