"""Shared helpers of the processing tests: messages that carry their id, inputs written as
runs, reading a whole log back, waiting for a stage to catch up, and wrappers around a `Log`
that make an append or a commit fail, hang or get observed."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

from headwater.log.base import Log, LogError, PartitionConsumer
from headwater.log.embedded import AppendSettings
from headwater.log.embedded.log import EmbeddedLog
from headwater.log.records import Record, RecordBatch, Run, encode_run, partition_for
from headwater.processing.steps import ProfileKey
from tests.support.jetstream import purge_prefix, unique_prefix

SOURCE = "src_a"
GROUP = "stage"


def message(mid: str, user: str | int | None = None, anon: str | int | None = None) -> bytes:
    """A track message carrying its id and, optionally, a userId / anonymousId."""
    body: dict[str, Any] = {"type": "track", "event": "E", "messageId": mid}
    if user is not None:
        body["userId"] = user
    if anon is not None:
        body["anonymousId"] = anon
    return json.dumps(body).encode()


def mid_of(record: Record) -> str:
    return str(json.loads(record.message)["messageId"])


def profile_key(raw: bytes) -> str:
    """The key `ProfileKey` gives a (valid) message."""
    body = json.loads(raw)
    for field in ("userId", "anonymousId", "messageId"):
        if body.get(field) not in (None, ""):
            return str(body[field])
    raise AssertionError(f"no identifier in {raw!r}")


Inputs = dict[int, list[tuple[str, bytes]]]  # input partition -> (source, message) in order


async def check_output(events: Log, inputs: Inputs) -> None:
    """Every input message is in the output exactly once, in the partition of its profile key,
    and the messages of one input partition and source keep their order."""
    records = await read_all(events)
    n = events.partitions
    stored = Counter((r.source_id, r.message) for rs in records.values() for r in rs)
    expected = Counter(pair for pairs in inputs.values() for pair in pairs)
    assert stored == expected
    assert set(stored.values()) <= {1}
    origin = {pair: p for p, pairs in inputs.items() for pair in pairs}
    for op, rs in records.items():
        for r in rs:
            assert partition_for(profile_key(r.message), n) == op
    for ip, pairs in inputs.items():
        for source in {s for s, _m in pairs}:
            for op in range(n):
                want = [
                    m for s, m in pairs if s == source and partition_for(profile_key(m), n) == op
                ]
                got = [
                    r.message
                    for r in records[op]
                    if r.source_id == source and origin[(r.source_id, r.message)] == ip
                ]
                assert got == want, f"order of input partition {ip} in output partition {op}"


def settings(partitions: int) -> AppendSettings:
    """Small, fast embedded logs for tests (no disk floor, no preallocation)."""
    return AppendSettings(partitions=partitions, min_free_disk_bytes=0, preallocate=False)


def open_logs(root: Path, inputs: int = 3, outputs: int = 4) -> tuple[EmbeddedLog, EmbeddedLog]:
    """The `ingest` and `events` embedded logs under `root` (created or reopened)."""
    return (
        EmbeddedLog("ingest", root / "ingest", settings(inputs)),
        EmbeddedLog("events", root / "events", settings(outputs)),
    )


async def write_input(
    log: Log, partition: int, messages: list[bytes], source: str = SOURCE
) -> None:
    """Append `messages` as one run (one batch) to `partition` of `log`."""
    await log.append([Run(partition, encode_run(source, None, messages), len(messages))])


async def write_batches(
    log: Log, partition: int, prefix: str, batches: int, per_batch: int, source: str = SOURCE
) -> list[bytes]:
    """`batches` batches of `per_batch` messages each; ids `<prefix>-<n>`, users cycling so
    that the messages spread over the output partitions. Returns the messages in order."""
    written: list[bytes] = []
    for b in range(batches):
        msgs = [
            message(f"{prefix}-{b * per_batch + i}", user=f"u{(b * per_batch + i) % 7}")
            for i in range(per_batch)
        ]
        await write_input(log, partition, msgs, source)
        written.extend(msgs)
    return written


async def read_partition(log: Log, partition: int) -> list[RecordBatch]:
    batches: list[RecordBatch] = []
    offset = 0
    while True:
        page = await log.read(partition, offset)
        if not page:
            return batches
        batches.extend(page)
        offset = page[-1].end_offset


async def read_all(log: Log) -> dict[int, list[Record]]:
    """Every record of `log`, per partition, in order."""
    return {
        p: [r for b in await read_partition(log, p) for r in b.records]
        for p in range(log.partitions)
    }


def id_counts(records: dict[int, list[Record]]) -> Counter[str]:
    return Counter(mid_of(r) for rs in records.values() for r in rs)


async def caught_up(source: Log, group: str) -> bool:
    """Whether `group` has committed everything `source` holds."""
    committed = await source.committed(group)
    ends = await source.end_offsets()
    return all(committed.get(p, 0) >= end for p, end in enumerate(ends))


async def wait_for(
    condition: Callable[[], Awaitable[bool]], timeout: float = 10.0, every: float = 0.02
) -> None:
    deadline = time.monotonic() + timeout
    while not await condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s")
        await asyncio.sleep(every)


def valid_steps() -> list[Any]:
    return [ProfileKey()]


class SinkWrapper:
    """A `Log` that delegates to `inner`, records every append attempt and can fail or hang.

    - `fail`: how many of the next append attempts raise `error` (nothing stored);
    - `fail_when(attempt_no)`: raise `error` on these attempts only;
    - `store_limit`: after this many appends were let through, further ones hang unstored;
    - `hang_after_store`: each stored append then hangs (a crash right after the output).
    """

    def __init__(self, inner: Log, error: type[LogError] = LogError) -> None:
        self.inner = inner
        self.name = inner.name
        self.partitions = inner.partitions
        self.error = error
        self.fail = 0
        self.fail_when: Callable[[int], bool] = lambda _n: False
        self.store_limit: int | None = None
        self.hang_after_store = False
        self.attempts: list[tuple[str | None, int, list[tuple[int, bytes, int]]]] = []
        self.stored: list[tuple[str | None, int]] = []
        self.admitted = 0
        self.hanging = 0
        self.on_fail: Callable[[str | None, int], Awaitable[None]] | None = None
        self.on_stored: Callable[[], None] | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    async def append(self, runs: list[Run], producer: str | None = None, seq: int = 0) -> None:
        self.attempts.append(
            (producer, seq, [(r.partition, bytes(r.payload), r.count) for r in runs])
        )
        if self.fail > 0 or self.fail_when(len(self.attempts)):
            self.fail = max(0, self.fail - 1)
            if self.on_fail is not None:
                await self.on_fail(producer, seq)
            raise self.error("refused by the test", retry_after=0)
        if self.store_limit is not None and self.admitted >= self.store_limit:
            await self._hang()
        self.admitted += 1
        await self.inner.append(runs, producer, seq)
        self.stored.append((producer, seq))
        if self.on_stored is not None:
            self.on_stored()
        if self.hang_after_store:
            await self._hang()

    async def _hang(self) -> None:
        self.hanging += 1
        await asyncio.Event().wait()  # until cancelled: the process "died" here


class SourceWrapper:
    """A `Log` whose consumers call `before_commit(partition, offset)` before committing (it may
    raise to make the commit fail)."""

    def __init__(self, inner: Log, before_commit: Callable[[int, int], Awaitable[None]]) -> None:
        self.inner = inner
        self.name = inner.name
        self.partitions = inner.partitions
        self.before_commit = before_commit

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def consumer(self, group: str, partition: int, stamped: bool = True) -> PartitionConsumer:
        return _Consumer(self.inner.consumer(group, partition, stamped), self.before_commit)


class _Consumer:
    def __init__(
        self, inner: PartitionConsumer, before_commit: Callable[[int, int], Awaitable[None]]
    ) -> None:
        self.inner = inner
        self.partition = inner.partition
        self.before_commit = before_commit

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)  # open, wait, fetch, ...

    async def commit(self, offset: int) -> None:
        await self.before_commit(self.partition, offset)
        await self.inner.commit(offset)

    async def close(self) -> None:
        await self.inner.close()


@contextlib.contextmanager
def jetstream_prefix() -> Iterator[str]:
    """A JetStream namespace of this test's own, deleted afterwards even on failure."""
    prefix = unique_prefix()
    try:
        yield prefix
    finally:
        asyncio.run(purge_prefix(prefix))


@contextlib.asynccontextmanager
async def closing(*logs: Log) -> AsyncIterator[None]:
    try:
        yield
    finally:
        for log in logs:
            await log.close()
