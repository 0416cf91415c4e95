"""Group commit for the embedded log: many requests, one write, one fsync, then acknowledge.

The event loop never touches the disk. `append` queues encoded runs and awaits a future; a
writer thread takes everything queued (up to a bound), writes it to the current segment as one
framed record batch per partition with one `pwritev`, makes it durable with one `fdatasync`
(under the `always` policy), commits the index rows (no second fsync: the frames can rebuild
them, see `frames.py`) and settles all the futures of the group with one `call_soon_threadsafe`.
"""

from __future__ import annotations

import asyncio
import enum
import errno
import logging
import os
import sqlite3
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from headwater.log.base import LogBackpressure, LogError, LogUnavailable
from headwater.log.embedded.frames import HEADER_SIZE, encode_header, recover_tail
from headwater.log.embedded.store import LogFiles, connect, open_log
from headwater.log.records import Run, batch_header

log = logging.getLogger(__name__)

_IOV_MAX = 512
_Waiter = tuple[list[Run], asyncio.Future[None], int]


class FsyncPolicy(enum.StrEnum):
    """When appended data is forced to disk.

    `always`: before the acknowledgement (survives power loss). `interval`: acknowledged after
    the write reaches the OS (survives a crash of any Headwater process) and forced to disk every
    `fsync_interval_ms`, so a power loss can lose at most that window.
    """

    ALWAYS = "always"
    INTERVAL = "interval"


@dataclass(frozen=True, slots=True)
class WriterSettings:
    """Bounds and durability of one writer; see `docs/OPERATIONS.md`."""

    partitions: int = 8
    fsync: FsyncPolicy = FsyncPolicy.ALWAYS
    fsync_interval_ms: int = 50
    segment_bytes: int = 64 * 1024 * 1024
    segment_max_age_ms: int = 3_600_000
    max_pending_bytes: int = 32 * 1024 * 1024
    max_group_bytes: int = 8 * 1024 * 1024
    min_free_disk_bytes: int = 64 * 1024 * 1024


def _now_ms() -> int:
    return time.time_ns() // 1_000_000


class EmbeddedLogWriter:
    """Appends to an embedded log from one process; any number of processes may share a log."""

    def __init__(
        self,
        root: Path,
        settings: WriterSettings,
        *,
        clock_ms: Callable[[], int] = _now_ms,
        free_disk_bytes: Callable[[Path], int] | None = None,
    ) -> None:
        self.settings = settings
        self._files: LogFiles = open_log(root, settings.partitions)
        self._clock_ms = clock_ms
        self._free_disk_bytes = free_disk_bytes or _free_disk_bytes
        self._conn: sqlite3.Connection = connect(self._files, synchronous="NORMAL")
        self._cond = threading.Condition()
        self._pending: deque[_Waiter] = deque()
        self._pending_bytes = 0
        self._closing = False
        self._fatal: str | None = None
        self._fds: dict[int, int] = {}
        self._unsynced: set[int] = set()
        self._last_sync = time.monotonic()
        self._disk_checked = 0.0
        self._disk_low = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self.recovered_bytes = self._recover()
        self._thread = threading.Thread(target=self._run, name="log-writer", daemon=True)
        self._thread.start()
        self.commits = 0
        self.committed_records = 0

    # -- called on the event loop -------------------------------------------------------------

    @property
    def pending_bytes(self) -> int:
        """Bytes queued or being written, not yet acknowledged."""
        return self._pending_bytes

    @property
    def healthy(self) -> bool:
        """False once the writer has stopped or the disk is below its free-space floor."""
        return self._fatal is None and not self._closing and not self._disk_low

    async def append(self, runs: list[Run], nbytes: int) -> None:
        """Store every run in its partition; returns once durable, raises `LogError` if not.

        `nbytes` is the runs' total size, counted against the pending-bytes bound."""
        if self._fatal is not None:
            raise LogUnavailable(self._fatal, retry_after=5)
        if self._closing:
            raise LogUnavailable("the log writer is shutting down", retry_after=1)
        if self._disk_low:
            raise LogUnavailable("the log's disk is nearly full", retry_after=30)
        if self._pending_bytes + nbytes > self.settings.max_pending_bytes:
            raise LogBackpressure("the log writer is behind; retry shortly", retry_after=1)
        loop = asyncio.get_running_loop()
        self._loop = loop
        fut: asyncio.Future[None] = loop.create_future()
        with self._cond:
            self._pending.append((runs, fut, nbytes))
            self._pending_bytes += nbytes
            self._cond.notify()
        await fut

    def close(self, timeout: float = 10.0) -> None:
        """Flush what is queued, stop the thread and close files."""
        with self._cond:
            self._closing = True
            self._cond.notify()
        self._thread.join(timeout)
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._conn.close()
        self._files.close()

    def _recover(self) -> int:
        """Index frames a crash left beyond the index's end of the newest segment."""
        conn = self._conn
        with self._files.write_lock():
            row = conn.execute(
                "SELECT segment, bytes FROM segments ORDER BY segment DESC LIMIT 1").fetchone()
            if row is None:
                return 0
            segment, end = int(row[0]), int(row[1])
            path = self._files.segment_path(segment)
            if not path.exists():
                return 0
            fd = os.open(path, os.O_RDONLY)
            try:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    new_end = recover_tail(conn, fd, segment, end)
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
            finally:
                os.close(fd)
        if new_end > end:
            log.warning("recovered %d bytes of log frames missing from the index", new_end - end)
        return new_end - end

    # -- the writer thread --------------------------------------------------------------------

    def _run(self) -> None:
        interval = self.settings.fsync_interval_ms / 1000
        while True:
            with self._cond:
                if not self._pending and not self._closing:
                    self._cond.wait(interval if self._unsynced else None)
                group = self._take_group()
                closing = self._closing
            if group:
                self._commit_group(group)
            if self._unsynced and (closing or time.monotonic() - self._last_sync >= interval):
                self._sync_interval()
            if closing:
                with self._cond:
                    if not self._pending:
                        return

    def _take_group(self) -> list[_Waiter]:
        group: list[_Waiter] = []
        size = 0
        limit = self.settings.max_group_bytes
        while self._pending and (not group or size + self._pending[0][2] <= limit):
            item = self._pending.popleft()
            group.append(item)
            size += item[2]
        return group

    def _commit_group(self, group: list[_Waiter]) -> None:
        error: LogError | None = None
        nbytes = sum(item[2] for item in group)
        try:
            self._check_disk()
            self._write(group)
        except LogError as exc:
            error = exc
        except Exception as exc:
            log.exception("log commit failed")
            error = LogUnavailable(f"log commit failed: {exc}", retry_after=1)
        with self._cond:
            self._pending_bytes -= nbytes
        futures = [item[1] for item in group]
        loop = self._loop
        if loop is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(_settle, futures, error)
            except RuntimeError:  # loop closed meanwhile: nobody is waiting any more
                pass

    def _check_disk(self) -> None:
        now = time.monotonic()
        if now - self._disk_checked < 1.0:
            if self._disk_low:
                raise LogUnavailable("the log's disk is nearly full", retry_after=30)
            return
        self._disk_checked = now
        free = self._free_disk_bytes(self._files.root)
        self._disk_low = free < self.settings.min_free_disk_bytes
        if self._disk_low:
            raise LogUnavailable("the log's disk is nearly full", retry_after=30)

    def _write(self, group: list[_Waiter]) -> None:
        partitions = self.settings.partitions
        merged: list[list[bytes]] = [[] for _ in range(partitions)]
        counts = [0] * partitions
        for runs, _fut, _n in group:
            for run in runs:
                merged[run.partition].append(run.payload)
                counts[run.partition] += run.count
        now_ms = self._clock_ms()
        conn = self._conn
        with self._files.write_lock():
            conn.execute("BEGIN IMMEDIATE")
            try:
                segment, fd, start = self._current_segment(conn, now_ms)
                next_offsets = dict(conn.execute("SELECT partition, next_offset FROM partitions"))
                buffers: list[bytes] = []
                rows = []
                position = start
                for p, runs in enumerate(merged):
                    if not runs:
                        continue
                    chunks = [batch_header(len(runs)), *runs]
                    base = next_offsets[p]
                    header, length = encode_header(p, base, counts[p], chunks, now_ms)
                    buffers.append(header)
                    buffers.extend(chunks)
                    rows.append((p, base + counts[p], counts[p], now_ms, segment,
                                 position + HEADER_SIZE, length))
                    position += HEADER_SIZE + length
                self._write_all(fd, buffers, start)
                if self.settings.fsync is FsyncPolicy.ALWAYS:
                    os.fdatasync(fd)
                else:
                    self._unsynced.add(segment)
                conn.executemany("INSERT INTO batches VALUES(?,?,?,?,?,?,?)", rows)
                conn.executemany("UPDATE partitions SET next_offset=? WHERE partition=?",
                                 [(row[1], row[0]) for row in rows])
                conn.execute("UPDATE segments SET bytes=?, last_ms=? WHERE segment=?",
                             (position, now_ms, segment))
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        self.commits += 1
        self.committed_records += sum(row[2] for row in rows)

    def _write_all(self, fd: int, chunks: list[bytes], position: int) -> None:
        """Write `chunks` contiguously at `position` (over anything a dead writer left there)."""
        try:
            for i in range(0, len(chunks), _IOV_MAX):
                group = chunks[i : i + _IOV_MAX]
                size = sum(map(len, group))
                written = os.pwritev(fd, group, position)
                if written < size:  # short write (rare): finish this group before the next
                    rest = memoryview(b"".join(group))[written:]
                    while rest:
                        n = os.pwrite(fd, rest, position + written)
                        written += n
                        rest = rest[n:]
                position += size
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self._disk_low = True
                raise LogUnavailable("the log's disk is full", retry_after=30) from exc
            raise LogUnavailable(f"writing the log failed: {exc.strerror}") from exc

    def _current_segment(self, conn: sqlite3.Connection, now_ms: int) -> tuple[int, int, int]:
        """(segment, fd, position to write at), rolling to a new segment when due."""
        row = conn.execute(
            "SELECT segment, created_ms, bytes FROM segments ORDER BY segment DESC LIMIT 1"
        ).fetchone()
        settings = self.settings
        if (
            row is None
            or row[2] >= settings.segment_bytes
            or now_ms - row[1] >= settings.segment_max_age_ms
        ):
            segment = int(conn.execute(
                "SELECT value FROM meta WHERE key='next_segment'").fetchone()[0])
            conn.execute("UPDATE meta SET value=? WHERE key='next_segment'", (segment + 1,))
            conn.execute("INSERT INTO segments VALUES(?,?,?,0)", (segment, now_ms, now_ms))
            end = 0
        else:
            segment, end = int(row[0]), int(row[2])
        fd = self._fds.get(segment)
        if fd is None:
            for old in [s for s in self._fds if s != segment]:
                self._sync_fd(old)
                os.close(self._fds.pop(old))
            fd = os.open(self._files.segment_path(segment), os.O_WRONLY | os.O_CREAT, 0o644)
            self._fds[segment] = fd
        return segment, fd, end

    def _sync_fd(self, segment: int) -> None:
        if segment in self._unsynced:
            os.fdatasync(self._fds[segment])
            self._unsynced.discard(segment)

    def _sync_interval(self) -> None:
        try:
            for segment in list(self._unsynced):
                self._sync_fd(segment)
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except OSError as exc:
            self._fatal = f"fsync of the log failed: {exc.strerror}"
            log.error(self._fatal)
        self._last_sync = time.monotonic()


def _settle(futures: list[asyncio.Future[None]], error: LogError | None) -> None:
    for fut in futures:
        if fut.done():
            continue
        if error is None:
            fut.set_result(None)
        else:
            fut.set_exception(error)


def _free_disk_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
