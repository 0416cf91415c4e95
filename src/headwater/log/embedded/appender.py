"""The embedded log's append path: framed record batches, one write and one fsync per commit.

`SegmentAppender.commit` takes the runs of many requests (a group), merges them into one record
batch per partition, writes all the frames with one `pwritev` at the index's end of the current
segment, forces them to disk with one `fdatasync` (under the `always` policy), and commits their
index rows. The index commit has no fsync of its own: after a power loss the frames rebuild it
(`frames.recover_tail`, run when an appender opens the log).

It is synchronous and single-threaded by design; the log server (`server.py`) calls it between
reads of its clients' sockets, which is what makes a group commit.
"""

from __future__ import annotations

import enum
import errno
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from headwater.log.base import LogError, LogUnavailable
from headwater.log.embedded.frames import HEADER_SIZE, encode_header, recover_tail
from headwater.log.embedded.spare import SpareSegments
from headwater.log.embedded.store import LogFiles, connect, open_log
from headwater.log.records import Run, batch_header

log = logging.getLogger(__name__)

_IOV_MAX = 512
PREALLOCATE_BELOW_BYTES_PER_S = 16 * 1024 * 1024


class FsyncPolicy(enum.StrEnum):
    """When appended data is forced to disk.

    `always`: before the acknowledgement (survives power loss). `interval`: acknowledged after
    the write reaches the OS (survives a crash of any Headwater process) and forced to disk every
    `fsync_interval_ms`, so a power loss can lose at most that window.
    """

    ALWAYS = "always"
    INTERVAL = "interval"


@dataclass(frozen=True, slots=True)
class AppendSettings:
    """Durability and bounds of the append path; see `docs/OPERATIONS.md`."""

    partitions: int = 8
    fsync: FsyncPolicy = FsyncPolicy.ALWAYS
    fsync_interval_ms: int = 50
    segment_bytes: int = 64 * 1024 * 1024
    segment_max_age_ms: int = 3_600_000
    max_pending_bytes: int = 32 * 1024 * 1024
    max_group_bytes: int = 8 * 1024 * 1024
    min_free_disk_bytes: int = 64 * 1024 * 1024
    preallocate: bool = True


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def free_disk_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def check_partitions(runs: Iterable[Run], partitions: int) -> None:
    """Raise `ValueError` for a run aimed at a partition the log does not have."""
    for run in runs:
        if not 0 <= run.partition < partitions:
            raise ValueError(f"no partition {run.partition}: the log has {partitions}")


def _mark(conn: sqlite3.Connection, producer: str) -> int | None:
    """The producer's mark: the highest `seq` it has committed (None: never)."""
    row = conn.execute("SELECT seq FROM producers WHERE producer=?", (producer,)).fetchone()
    return None if row is None else int(row[0])


class SegmentAppender:
    """Appends record batches to an embedded log (any number of appenders may share one)."""

    def __init__(
        self,
        root: Path,
        settings: AppendSettings,
        *,
        clock_ms: Callable[[], int] = now_ms,
        disk_free: Callable[[Path], int] = free_disk_bytes,
    ) -> None:
        self.settings = settings
        self.root = root
        self._files: LogFiles = open_log(root, settings.partitions)
        self._clock_ms = clock_ms
        self._disk_free = disk_free
        self._conn: sqlite3.Connection = connect(self._files, synchronous="NORMAL")
        self._fds: dict[int, int] = {}
        self._unsynced: set[int] = set()
        self._last_sync = time.monotonic()
        self._disk_checked = 0.0
        self.disk_low = False
        self.fatal: str | None = None
        self.commits = 0
        self.committed_records = 0
        self.recovered_bytes = self._recover()
        self._spare = (
            SpareSegments(self._files.segments_dir, settings.segment_bytes)
            if settings.preallocate
            else None
        )
        self._spare_asked = -1
        # One commit at a time, even when callers run commits in threads and give up waiting.
        self._mutex = threading.RLock()

    def close(self) -> None:
        """Force everything written to disk and release files."""
        with self._mutex:
            self._close()

    def _close(self) -> None:
        if self._unsynced:
            self._sync()
        if self._spare is not None:
            self._spare.close()
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._conn.close()
        self._files.close()

    @property
    def needs_sync(self) -> bool:
        """Under the `interval` policy: whether written data awaits its fsync."""
        return bool(self._unsynced)

    def sync_due_in(self) -> float | None:
        """Seconds until the interval fsync is due (None when nothing awaits it)."""
        if not self._unsynced:
            return None
        elapsed = time.monotonic() - self._last_sync
        return max(0.0, self.settings.fsync_interval_ms / 1000 - elapsed)

    def commit(self, groups: Iterable[list[Run]], producer: tuple[str, int] | None = None) -> int:
        """Durably store every run of every group (all or nothing); returns records stored.

        With `producer=(name, seq)`, the commit also records `seq` as the producer's mark, in
        the same transaction, and stores nothing if the mark is already at `seq` or beyond (an
        idempotent append: see `headwater.log.base.Log`). Raises `LogError` when nothing could
        be stored.
        """
        runs = [run for group in groups for run in group]
        with self._mutex:
            return self._commit([(runs, producer)])[0]

    def commit_each(self, items: list[tuple[list[Run], tuple[str, int] | None]]) -> list[bool]:
        """Durably store several producers' appends in one commit (one write, one fsync):
        each item's runs are stored unless its producer's mark is already at its `seq` or
        beyond (as in `commit`). Returns which items were stored; raises `LogError` when
        nothing could be stored."""
        with self._mutex:
            return self._commit(items)[1]

    def _commit(
        self, items: list[tuple[list[Run], tuple[str, int] | None]]
    ) -> tuple[int, list[bool]]:
        if self.fatal is not None:
            raise LogUnavailable(self.fatal, retry_after=5)
        self._check_disk()
        for runs, _producer in items:
            check_partitions(runs, self.settings.partitions)
        try:
            stored, kept = self._write(items)
        except LogError:
            raise
        except (OSError, sqlite3.Error) as exc:
            log.exception("log commit failed")
            raise LogUnavailable(f"log commit failed: {exc}", retry_after=1) from exc
        self.commits += 1
        self.committed_records += stored
        return stored, kept

    def sync(self) -> None:
        """Force written data to disk now (the `interval` policy's periodic step)."""
        with self._mutex:
            self._sync()

    def _sync(self) -> None:
        try:
            for segment in list(self._unsynced):
                self._sync_fd(segment)
            self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
        except OSError as exc:
            self.fatal = f"fsync of the log failed: {exc.strerror}"
            log.error(self.fatal)
        self._last_sync = time.monotonic()

    # -- internals ----------------------------------------------------------------------------

    def _check_disk(self) -> None:
        now = time.monotonic()
        if now - self._disk_checked >= 1.0:
            self._disk_checked = now
            self.disk_low = self._disk_free(self.root) < self.settings.min_free_disk_bytes
        if self.disk_low:
            raise LogUnavailable("the log's disk is nearly full", retry_after=30)

    def produced(self, producer: str) -> int | None:
        """The producer's mark: the highest `seq` it has committed (None: never)."""
        with self._mutex:
            return _mark(self._conn, producer)

    def _write(
        self, items: list[tuple[list[Run], tuple[str, int] | None]]
    ) -> tuple[int, list[bool]]:
        now = self._clock_ms()
        conn = self._conn
        partitions = self.settings.partitions
        with self._files.write_lock():
            conn.execute("BEGIN IMMEDIATE")
            try:
                kept = self._keep_marked(conn, items, now)
                merged: list[list[bytes | memoryview]] = [[] for _ in range(partitions)]
                counts = [0] * partitions
                for (item_runs, _producer), keep in zip(items, kept, strict=True):
                    for run in item_runs if keep else ():
                        merged[run.partition].append(run.payload)
                        counts[run.partition] += run.count
                if not any(merged):
                    conn.execute("COMMIT")
                    return 0, kept
                segment, fd, start = self._current_segment(conn, now)
                next_offsets = dict(conn.execute("SELECT partition, next_offset FROM partitions"))
                buffers: list[bytes | memoryview] = []
                rows = []
                position = start
                for p, runs in enumerate(merged):
                    if not runs:
                        continue
                    chunks = [batch_header(len(runs)), *runs]
                    base = next_offsets[p]
                    header, length = encode_header(p, base, counts[p], chunks, now)
                    buffers.append(header)
                    buffers.extend(chunks)
                    rows.append(
                        (
                            p,
                            base + counts[p],
                            counts[p],
                            now,
                            segment,
                            position + HEADER_SIZE,
                            length,
                        )
                    )
                    position += HEADER_SIZE + length
                self._write_all(fd, buffers, start)
                if self.settings.fsync is FsyncPolicy.ALWAYS:
                    os.fdatasync(fd)
                else:
                    self._unsynced.add(segment)
                conn.executemany("INSERT INTO batches VALUES(?,?,?,?,?,?,?)", rows)
                conn.executemany(
                    "UPDATE partitions SET next_offset=? WHERE partition=?",
                    [(row[1], row[0]) for row in rows],
                )
                conn.execute(
                    "UPDATE segments SET bytes=?, last_ms=? WHERE segment=?",
                    (position, now, segment),
                )
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        return sum(row[2] for row in rows), kept

    @staticmethod
    def _keep_marked(
        conn: sqlite3.Connection, items: list[tuple[list[Run], tuple[str, int] | None]], now: int
    ) -> list[bool]:
        """Which items to store (a producer's mark below their `seq`), and their new marks
        written, in the open transaction."""
        kept: list[bool] = []
        marks: dict[str, int | None] = {}
        for _runs, producer in items:
            if producer is None:
                kept.append(True)
                continue
            name, seq = producer
            if name not in marks:
                marks[name] = _mark(conn, name)
            current = marks[name]
            keep = current is None or current < seq
            if keep:
                marks[name] = seq
                conn.execute("INSERT OR REPLACE INTO producers VALUES(?,?,?)", (name, seq, now))
            kept.append(keep)
        return kept

    def _write_all(self, fd: int, chunks: list[bytes | memoryview], position: int) -> None:
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
                self.disk_low = True
                raise LogUnavailable("the log's disk is full", retry_after=30) from exc
            raise LogUnavailable(f"writing the log failed: {exc.strerror}") from exc

    def _current_segment(self, conn: sqlite3.Connection, now: int) -> tuple[int, int, int]:
        """(segment, fd, position to write at), rolling to a new segment when due."""
        row = conn.execute(
            "SELECT segment, created_ms, bytes FROM segments ORDER BY segment DESC LIMIT 1"
        ).fetchone()
        settings = self.settings
        if (
            row is None
            or row[2] >= settings.segment_bytes
            or now - row[1] >= settings.segment_max_age_ms
        ):
            segment = int(
                conn.execute("SELECT value FROM meta WHERE key='next_segment'").fetchone()[0]
            )
            conn.execute("UPDATE meta SET value=? WHERE key='next_segment'", (segment + 1,))
            conn.execute("INSERT INTO segments VALUES(?,?,?,0)", (segment, now, now))
            end = 0
        else:
            segment, end = int(row[0]), int(row[2])
            if self._spare is not None and end * 2 >= settings.segment_bytes:
                self._maybe_prepare_spare(segment, end, now - int(row[1]))
        fd = self._fds.get(segment)
        if fd is None:
            for old in [s for s in self._fds if s != segment]:
                self._sync_fd(old)
                os.close(self._fds.pop(old))
            path = self._files.segment_path(segment)
            if end == 0 and self._spare is not None and not path.exists():
                self._spare.take(path)  # start the segment preallocated if a spare is ready
            fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o644)
            self._fds[segment] = fd
        return segment, fd, end

    def _maybe_prepare_spare(self, segment: int, size: int, age_ms: int) -> None:
        """Half way through a segment, ask for a preallocated next one if this one fills
        slowly. Zero-filling doubles the bytes written, which a fast (batch) stream cannot
        afford, and its large commits gain little from a cheaper fsync."""
        if self._spare is None or self._spare_asked == segment:
            return
        self._spare_asked = segment
        if size * 1000 // max(1, age_ms) < PREALLOCATE_BELOW_BYTES_PER_S:
            self._spare.request()

    def _sync_fd(self, segment: int) -> None:
        if segment in self._unsynced:
            os.fdatasync(self._fds[segment])
            self._unsynced.discard(segment)

    def _recover(self) -> int:
        """Index frames a crash left outside the index: past its end of the newest segment it
        knows, and in newer segment files it does not know (lost commits that rolled to a new
        segment). Returns the bytes recovered."""
        conn = self._conn
        recovered = 0
        with self._files.write_lock():
            conn.execute("BEGIN IMMEDIATE")
            try:
                row = conn.execute(
                    "SELECT segment, bytes FROM segments ORDER BY segment DESC LIMIT 1"
                ).fetchone()
                newest = int(row[0]) if row else 0
                todo: list[tuple[int, int | None]] = [(newest, int(row[1]))] if row else []
                todo += [(n, None) for n in self._files.segment_numbers() if n > newest]
                for segment, start in todo:
                    path = self._files.segment_path(segment)
                    if not path.exists():
                        continue
                    if start is None:  # a segment file the index never heard of
                        now = self._clock_ms()
                        conn.execute("INSERT INTO segments VALUES(?,?,?,0)", (segment, now, now))
                        conn.execute(
                            "UPDATE meta SET value = max(value, ?) WHERE key='next_segment'",
                            (segment + 1,),
                        )
                        start = 0
                    fd = os.open(path, os.O_RDONLY)
                    try:
                        recovered += recover_tail(conn, fd, segment, start) - start
                    finally:
                        os.close(fd)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        if recovered:
            log.warning("recovered %d bytes of log frames missing from the index", recovered)
        return recovered
