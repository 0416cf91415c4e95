"""The stage runtime: consume a log partition by partition, run steps, write another log.

A stage owns some partitions of its input log. For each, in order, it fetches record batches,
turns their records into `Item`s, passes the list through its steps (pure functions that set
each item's output key or stop it with an outcome and a reason), appends what is left to the
output log, and only then commits the input offset. Everything a stage does is keyed by its
input position, so a replay after a crash changes nothing twice:

- the output append is idempotent per (stage, input partition, input offset): the embedded log
  stores a producer mark in the same transaction as the output and the stage resumes from it;
  JetStream drops a repeated `Nats-Msg-Id` within its duplicate window;
- steps are idempotent per `messageId` (their own state is keyed by it).

Bounded work: at most `max_batches` input batches per partition are in hand at a time, at
most `max_busy_partitions` partitions fetch, process and append at once (the others wait for
data without reading it: `PartitionConsumer.wait`), one partition's unit is appended before
the next is fetched, and the output's `LogBackpressure` or
`LogUnavailable` is the signal to back off and retry the same unit. Every item leaves with an
outcome (`processed` when written to the output, or the outcome a step gave it) and a reason,
counted in `StageMetrics`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import groupby
from operator import attrgetter
from pathlib import Path
from typing import Any, Protocol

import msgspec
from xxhash import xxh3_64_intdigest

from headwater.accounting.store import AccountingStore, Mark
from headwater.accounting.tally import INGEST, RECEIVED, Tally, now_ms
from headwater.events.stamp import decode_stamp
from headwater.log.base import Log, LogError, PartitionConsumer
from headwater.log.records import RecordBatch, Run, encode_run
from headwater.observability.metrics import Snapshot, write_snapshot

log = logging.getLogger(__name__)

PROCESSED = "processed"
FAILED = "failed"


class Item(msgspec.Struct, gc=False):
    """One message moving through a stage's steps."""

    source_id: str
    message: bytes
    key: str = ""  # what the output log is partitioned by (from the reader, or set by a step)
    outcome: str = ""  # empty while the item is still on its way to the output
    reason: str = ""
    stamp: bytes | None = None  # the request's stamp, for messages read as stored
    position: str = ""  # where it sits in the input log: "<partition>:<batch end>:<index>"
    via: str = ""  # how a step made it: "" (read from the log), "forwarded", "violation_generated"
    violations: list[tuple[str, str, str]] | None = None  # (event, type, field) it broke
    original: bytes | None = None  # the message as read, when a step changed it
    head: Any = None  # the message's ids, decoded once for the steps that need them (`routing`)

    def stop(self, outcome: str, reason: str) -> None:
        """End this item here: it is counted under `outcome`/`reason`, not written."""
        self.outcome = outcome
        self.reason = reason


class Step(Protocol):
    """One processing step: looks at every item of a unit, may set keys or stop items.

    A step is a pure function of the items and its own state; state it keeps must be keyed by
    `messageId` so that seeing a message again (a replay) has no second effect. A step that
    waits on I/O may also have `async run(items)`, which the stage awaits instead, letting
    another partition's unit use the CPU meanwhile.
    """

    name: str

    def __call__(self, items: list[Item]) -> None: ...


_outcome_of = attrgetter("source_id", "outcome", "reason")
_accounted = attrgetter("source_id", "stamp", "outcome", "reason", "via")
_violations_of = attrgetter("violations")


class StageMetrics:
    """Outcome counters of one stage process, flushed as a metrics snapshot."""

    def __init__(self, stage: str) -> None:
        self.stage = stage
        self.counts: dict[tuple[str, str, str], int] = {}

    def count(self, items: Sequence[Item]) -> None:
        """Count items that left the stage: those without an outcome were written out."""
        counts = self.counts
        for (source_id, outcome, reason), run in groupby(map(_outcome_of, items)):
            key = (source_id, outcome or PROCESSED, reason)
            counts[key] = counts.get(key, 0) + len(list(run))

    def total(self, outcome: str | None = None) -> int:
        return sum(n for (_s, o, _r), n in self.counts.items() if outcome in (None, o))

    def snapshot(self) -> Snapshot:
        return Snapshot(stage=[(self.stage, s, o, r, n) for (s, o, r), n in self.counts.items()])

    def flush(self, directory: Path) -> None:
        write_snapshot(directory, self.snapshot())


@dataclass
class StageSpec:
    """What a stage is: its name (the consumer group), its steps, its input and output."""

    name: str
    steps: list[Step]
    source: Log
    sink: Log
    merge_units: bool = True  # one append per fetch (embedded) or one per input batch (JetStream)
    max_batches: int = 64
    max_busy_partitions: int = 2  # processing is one thread's work: two overlap I/O with CPU
    fetch_timeout: float = 0.5
    backoff_max: float = 5.0
    holds: Callable[[int], bool] = field(default=lambda _p: True)
    # False: steps see messages as stored (with `Item.stamp`), and the output keeps the stamp
    # for its readers to apply; enough for steps that only route on a few fields.
    stamped: bool = True
    accounting: AccountingStore | None = None  # where outcomes are counted per source and minute


def producer_name(stage: str, partition: int) -> str:
    """The producer id of a stage's output for one input partition."""
    return f"{stage}.{partition}"


def outputs_of(items: Sequence[Item], partitions: int) -> list[Run]:
    """The runs to append for the items still on their way: per output partition and source."""
    grouped: dict[tuple[int, str, bytes | None], list[bytes]] = {}
    digest = xxh3_64_intdigest  # `partition_for`, inlined: this runs once per message
    for item in items:
        if item.outcome:
            continue
        key = (digest(item.key.encode()) % partitions, item.source_id, item.stamp)
        run = grouped.get(key)
        if run is None:
            grouped[key] = [item.message]
        else:
            run.append(item.message)
    return [
        Run(p, encode_run(source_id, stamp, messages), len(messages))
        for (p, source_id, stamp), messages in grouped.items()
    ]


def tally_items(stage: str, items: Sequence[Item], after: int | None = None) -> Tally:
    """The accounting of a unit: each item `received` at ingest (in the minute its request
    arrived) and its outcome at `stage`, plus the violations it carries; with `after`, only
    items of input batches ending after that offset."""
    if after is not None:
        items = [i for i in items if int(i.position.split(":")[1]) > after]
    counts: Counter[tuple[str, bytes | None, str, str, str]] = Counter()
    for key, run in groupby(map(_accounted, items)):  # items come in runs of one request
        counts[key] += len(list(run))
    tally = Tally()
    now = now_ms()
    minutes: dict[bytes | None, int] = {None: now}
    for (source_id, stamp, outcome, reason, via), n in counts.items():
        at = minutes.get(stamp)
        if at is None:
            at = minutes[stamp] = received_ms(stamp, now)
        tally.outcome(source_id, at, INGEST, RECEIVED, via, n)
        tally.outcome(source_id, at, stage, outcome or PROCESSED, reason, n)
    for item in filter(_violations_of, items):
        at = minutes.get(item.stamp, now)
        payload = item.original or item.message
        for event, vtype, vfield in item.violations or ():
            tally.violation(item.source_id, at, event, vtype, vfield, payload)
    return tally


def received_ms(stamp: bytes | None, default: int) -> int:
    """When the request of a message read as stored (with its `stamp`) arrived, in ms since
    the epoch; `default` for a message without a readable stamp."""
    if stamp is None:
        return default
    try:
        return int(decode_stamp(stamp).received_at.timestamp() * 1000)
    except (msgspec.DecodeError, ValueError):
        return default


class StageRunner:
    """Runs a stage on the partitions it is given; `assign`/`revoke` move them."""

    def __init__(self, spec: StageSpec, metrics: StageMetrics | None = None) -> None:
        self.spec = spec
        self.metrics = metrics or StageMetrics(spec.name)
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self.positions: dict[int, int] = {}
        self.errors = 0
        self._busy = asyncio.Semaphore(spec.max_busy_partitions)
        self._marks: dict[int, int] = {}  # how far each partition's accounting reaches

    @property
    def assigned(self) -> set[int]:
        return set(self._tasks)

    def assign(self, partition: int) -> None:
        """Start consuming `partition` (from its committed offset)."""
        if partition in self._tasks and not self._tasks[partition].done():
            return
        self._tasks[partition] = asyncio.get_running_loop().create_task(
            self._run_partition(partition), name=f"{self.spec.name}-p{partition}"
        )

    def revoke_now(self, partition: int) -> asyncio.Task[None] | None:
        """Stop consuming `partition` at once (what was not committed is replayed by its next
        owner; the output append is idempotent). Returns the cancelled task."""
        task = self._tasks.pop(partition, None)
        if task is not None:
            task.cancel()
        return task

    async def revoke(self, partition: int) -> None:
        """`revoke_now`, then wait until the partition's work has stopped."""
        task = self.revoke_now(partition)
        while task is not None and not task.done():
            # On Python 3.11, `wait_for` inside a library can swallow a cancellation that
            # coincides with its result: cancel again until the task has really ended.
            task.cancel()
            await asyncio.wait({task}, timeout=0.1)

    async def stop(self) -> None:
        for p in list(self._tasks):
            await self.revoke(p)

    async def process(self, batches: list[RecordBatch]) -> list[Item]:
        """Run the steps over the records of `batches` (no I/O besides the steps' own)."""
        items = [
            Item(
                record.source_id,
                record.message,
                record.profile_key or "",
                stamp=record.stamp,
                position=at + str(i),
            )
            for batch in batches
            for at in (f"{batch.partition}:{batch.end_offset}:",)
            for i, record in enumerate(batch.records)
        ]
        for step in self.spec.steps:
            run = getattr(step, "run", None)
            if run is not None:
                await run(items)
            else:
                step(items)
        return items

    async def _run_partition(self, partition: int) -> None:
        spec = self.spec
        consumer = spec.source.consumer(spec.name, partition, stamped=spec.stamped)
        backoff = 0.1
        while True:
            try:
                await self._consume(partition, consumer)
                return
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # retryable by design: back off, resume from the commit
                self.errors += 1
                level = logging.WARNING if isinstance(exc, LogError) else logging.ERROR
                log.log(
                    level,
                    "stage %s partition %d: %s; resuming from the last commit in %.1fs",
                    spec.name,
                    partition,
                    exc,
                    backoff,
                    exc_info=not isinstance(exc, LogError),
                )
                await asyncio.sleep(backoff)
                backoff = min(spec.backoff_max, backoff * 2)
            finally:
                with contextlib.suppress(Exception):
                    await consumer.close()

    async def _account(self, partition: int, unit: list[RecordBatch], items: list[Item]) -> None:
        """Count the unit's outcomes, once: the partition's accounting mark moves with them."""
        store = self.spec.accounting
        if store is None:
            return
        new = unit[-1].end_offset
        while True:
            mark = self._marks.get(partition)
            if mark is None:
                mark = await asyncio.to_thread(store.mark, self.spec.name, partition)
            if new <= mark:
                return  # counted before (a replay)
            after = mark if unit[0].end_offset <= mark else None
            tally = tally_items(self.spec.name, items, after)
            if await asyncio.to_thread(
                store.record, tally, Mark(self.spec.name, partition, mark, new)
            ):
                self._marks[partition] = new
                return
            self._marks.pop(partition, None)  # moved by someone else: read it again

    async def _consume(self, partition: int, consumer: PartitionConsumer) -> None:
        spec = self.spec
        producer = producer_name(spec.name, partition)
        self._marks.pop(partition, None)  # another owner may have counted further meanwhile
        position = await consumer.open()
        produced = await spec.sink.produced(producer)
        if produced is not None and produced > position:  # output got further than the commit
            await consumer.commit(produced)
            position = await consumer.open()
        self.positions[partition] = position
        me = asyncio.current_task()
        while spec.holds(partition) and self._tasks.get(partition) is me:  # not revoked
            if not await consumer.wait(spec.fetch_timeout):
                continue
            async with self._busy:  # bounds the units in hand (decoded) at once
                batches = await consumer.fetch(spec.max_batches, spec.fetch_timeout)
                if not batches:
                    continue
                units = [batches] if spec.merge_units else [[b] for b in batches]
                processed = [(unit, await self.process(unit)) for unit in units]
                for unit, items in processed:  # in order: a later mark must not pass a failure
                    # counted first: a restart may skip to the output's producer mark, past
                    # units it would otherwise never count (both are idempotent by position)
                    await self._account(partition, unit, items)
                    await spec.sink.append(
                        outputs_of(items, spec.sink.partitions), producer, unit[-1].end_offset
                    )
            if not spec.holds(partition) or self._tasks.get(partition) is not me:
                return  # lost the lease or revoked meanwhile: the next owner commits
            end = batches[-1].end_offset
            await consumer.commit(end)
            self.positions[partition] = end
            for _unit, items in processed:
                self.metrics.count(items)


async def flush_metrics_forever(metrics: StageMetrics, directory: Path, every: float = 1.0) -> None:
    """Write the stage's counters every `every` seconds (for `/metrics` and `status`)."""
    while True:
        await asyncio.sleep(every)
        try:
            metrics.flush(directory)
        except OSError as exc:
            log.warning("cannot write stage metrics: %s", exc)
