"""The embedded backend behind the `Log` interface that stages use.

A stage process appends to its output log directly (`SegmentAppender`, in a thread so the event
loop keeps running; the appends its partitions make while a commit is under way go together in
the next one, each with its own producer mark) and reads its input with `EmbeddedLogReader`.
Offsets count records; consumer groups commit into the log's own index.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

from headwater.log.base import LogUnavailable
from headwater.log.embedded.appender import AppendSettings, SegmentAppender, check_partitions
from headwater.log.embedded.reader import EmbeddedLogReader
from headwater.log.embedded.store import open_log
from headwater.log.records import RecordBatch, Run


class EmbeddedLog:
    """One embedded log (`<data>/log/<name>/`), created if missing."""

    def __init__(
        self,
        name: str,
        root: Path,
        settings: AppendSettings,
        create: bool = True,
        recent_bytes: int = 0,
    ) -> None:
        """`recent_bytes`: see `EmbeddedLogReader` (for several consumer groups that read the
        same batches at about the same time)."""
        self.name = name
        self.root = root
        if create:
            open_log(root, settings.partitions).close()
        # raises LogLayoutError if there is no log
        self._reader = EmbeddedLogReader(root, recent_bytes)
        self.partitions = self._reader.partitions
        self._settings = settings
        self._appender: SegmentAppender | None = None
        self._lock = asyncio.Lock()
        # appends waiting for the next commit: (runs, producer mark, caller's future)
        self._waiting: list[tuple[list[Run], tuple[str, int] | None, asyncio.Future[None]]] = []
        self._committing: asyncio.Task[None] | None = None

    def _writer(self) -> SegmentAppender:
        if self._appender is None:
            self._appender = SegmentAppender(self.root, self._settings)
        return self._appender

    async def append(self, runs: list[Run], producer: str | None = None, seq: int = 0) -> None:
        """Durably append `runs`: the appends of this process's tasks that wait together go
        in one commit (one write, one fsync), each with its own producer mark."""
        check_partitions(runs, self.partitions)  # a bad append fails alone, not its commit
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        self._waiting.append((runs, None if producer is None else (producer, seq), done))
        if self._committing is None or self._committing.done():
            self._committing = loop.create_task(self._commit_waiting())
        await asyncio.shield(done)

    async def _commit_waiting(self) -> None:
        while self._waiting:
            group, self._waiting = self._waiting, []
            try:
                async with self._lock:  # one commit at a time per process
                    writer = self._writer()
                    await asyncio.to_thread(writer.commit_each, [(r, m) for r, m, _d in group])
            except BaseException as exc:
                failure = exc if isinstance(exc, Exception) else LogUnavailable("log closed")
                for *_item, done in group:
                    if not done.done():
                        done.set_exception(failure)
                if not isinstance(exc, Exception):
                    raise
            else:
                for *_item, done in group:
                    if not done.done():
                        done.set_result(None)

    async def produced(self, producer: str) -> int | None:
        async with self._lock:
            return self._writer().produced(producer)

    async def read(
        self, partition: int, offset: int, max_records: int = 10_000
    ) -> list[RecordBatch]:
        return self._reader.read(partition, offset, max_records)

    async def end_offsets(self) -> list[int]:
        return self._reader.end_offsets()

    async def start_offsets(self) -> list[int]:
        return self._reader.start_offsets()

    def consumer(self, group: str, partition: int, stamped: bool = True) -> EmbeddedConsumer:
        return EmbeddedConsumer(self._reader, group, partition, stamped)

    async def committed(self, group: str) -> dict[int, int]:
        return self._reader.committed(group)

    async def groups(self) -> list[str]:
        """The consumer groups that have committed offsets."""
        return self._reader.groups()

    def size_bytes(self) -> int:
        return self._reader.size_bytes()

    async def close(self) -> None:
        if self._committing is not None:
            await asyncio.wait({self._committing})
        async with self._lock:
            if self._appender is not None:
                self._appender.close()
                self._appender = None
        self._reader.close()


MAX_RECORDS = 4096  # per fetch: bounds a stage's work in hand per partition (and its memory)


class EmbeddedConsumer:
    """A consumer group's reading of one partition of an embedded log.

    Waiting for new data polls the index (cheap: one indexed query) with a short back-off.
    """

    POLL_S = 0.01

    def __init__(
        self, reader: EmbeddedLogReader, group: str, partition: int, stamped: bool = True
    ) -> None:
        self._reader = reader
        self._stamped = stamped
        self.group = group
        self.partition = partition
        self._next = 0

    async def open(self) -> int:
        committed = self._reader.committed(self.group).get(self.partition, 0)
        self._next = committed
        return committed

    def seek(self, offset: int) -> None:
        """Continue fetching at `offset` (a stage that knows its output got further)."""
        self._next = offset

    async def wait(self, timeout: float) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while self._reader.end_offsets()[self.partition] <= self._next:
            if loop.time() >= deadline:
                return False
            await asyncio.sleep(self.POLL_S)
        return True

    async def fetch(self, max_batches: int, timeout: float) -> list[RecordBatch]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            batches = self._reader.read(
                self.partition,
                self._next,
                max_records=MAX_RECORDS,
                max_batches=max_batches,
                stamped=self._stamped,
            )
            if batches:
                self._next = batches[-1].end_offset
                return batches
            if loop.time() >= deadline:
                return []
            await asyncio.sleep(self.POLL_S)

    async def commit(self, offset: int) -> None:
        # in a thread: the log's write lock may be held by an append (and its fsync)
        await asyncio.to_thread(
            self._reader.commit, self.group, {self.partition: offset}, forward_only=True
        )

    async def close(self) -> None:
        return None
