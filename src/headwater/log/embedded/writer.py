"""Group commit for the embedded log: many requests, one write, one fsync, then acknowledge.

The event loop never touches the disk. `append` queues encoded records and awaits a future; a
writer thread takes everything queued (up to a bound), writes it to the current segment as one
record batch per partition, makes it durable under the fsync policy, commits the index rows and
settles all the futures of the group with one `call_soon_threadsafe`.
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
from headwater.log.embedded.store import LogFiles, connect, open_log
from headwater.log.records import join_records

log = logging.getLogger(__name__)

_Waiter = tuple[list[list[bytes]], asyncio.Future[None], int]


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
        sync = "FULL" if settings.fsync is FsyncPolicy.ALWAYS else "NORMAL"
        self._conn: sqlite3.Connection = connect(self._files, synchronous=sync)
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

    async def append(self, parts: list[list[bytes]], nbytes: int) -> None:
        """Store `parts[p]` in partition `p`; returns once durable, raises `LogError` if not."""
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
            self._pending.append((parts, fut, nbytes))
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
        for parts, _fut, _n in group:
            for p, records in enumerate(parts):
                if records:
                    merged[p].extend(records)
        payloads = [(p, len(recs), join_records(recs)) for p, recs in enumerate(merged) if recs]
        now_ms = self._clock_ms()
        conn = self._conn
        with self._files.write_lock():
            conn.execute("BEGIN IMMEDIATE")
            try:
                segment, fd = self._current_segment(conn, now_ms)
                position = os.lseek(fd, 0, os.SEEK_END)
                total = sum(len(payload) for _p, _n, payload in payloads)
                self._write_all(fd, [payload for _p, _n, payload in payloads], position, total)
                if self.settings.fsync is FsyncPolicy.ALWAYS:
                    os.fdatasync(fd)
                else:
                    self._unsynced.add(segment)
                next_offsets = dict(conn.execute("SELECT partition, next_offset FROM partitions"))
                rows = []
                updates = []
                pos = position
                for p, count, payload in payloads:
                    end = next_offsets[p] + count
                    rows.append((p, end, count, now_ms, segment, pos, len(payload)))
                    updates.append((end, p))
                    pos += len(payload)
                conn.executemany("INSERT INTO batches VALUES(?,?,?,?,?,?,?)", rows)
                conn.executemany("UPDATE partitions SET next_offset=? WHERE partition=?", updates)
                conn.execute(
                    "UPDATE segments SET bytes=?, last_ms=? WHERE segment=?",
                    (position + total, now_ms, segment),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        self.commits += 1
        self.committed_records += sum(n for _p, n, _payload in payloads)

    def _write_all(self, fd: int, chunks: list[bytes], position: int, total: int) -> None:
        try:
            written = os.writev(fd, chunks)
            while written < total:  # short write: continue from where it stopped
                rest = b"".join(chunks)[written:]
                written += os.write(fd, rest)
        except OSError as exc:
            _truncate_quietly(fd, position)
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                self._disk_low = True
                raise LogUnavailable("the log's disk is full", retry_after=30) from exc
            raise LogUnavailable(f"writing the log failed: {exc.strerror}") from exc

    def _current_segment(self, conn: sqlite3.Connection, now_ms: int) -> tuple[int, int]:
        row = conn.execute(
            "SELECT segment, created_ms, bytes FROM segments ORDER BY segment DESC LIMIT 1"
        ).fetchone()
        settings = self.settings
        if (
            row is None
            or row[2] >= settings.segment_bytes
            or now_ms - row[1] >= settings.segment_max_age_ms
        ):
            segment = int(conn.execute("SELECT value FROM meta WHERE key='next_segment'").fetchone()[0])
            conn.execute("UPDATE meta SET value=? WHERE key='next_segment'", (segment + 1,))
            conn.execute("INSERT INTO segments VALUES(?,?,?,0)", (segment, now_ms, now_ms))
        else:
            segment = int(row[0])
        fd = self._fds.get(segment)
        if fd is None:
            for old in [s for s in self._fds if s != segment]:
                self._sync_fd(old)
                os.close(self._fds.pop(old))
            fd = os.open(
                self._files.segment_path(segment), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644
            )
            self._fds[segment] = fd
        return segment, fd

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


def _truncate_quietly(fd: int, position: int) -> None:
    try:
        os.ftruncate(fd, position)
    except OSError:
        log.warning("could not trim a failed write at %d", position)


def _free_disk_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
