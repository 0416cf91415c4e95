"""Reading the embedded log: committed batches from any offset, and consumer-group offsets."""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import time
from collections import OrderedDict
from pathlib import Path

import msgspec

from headwater.log.embedded.store import LogFiles, connect, stored_partitions
from headwater.log.records import Record, RecordBatch, decode_batch

log = logging.getLogger(__name__)

# What a reader that keeps decoded batches for its other consumers (`recent_bytes`) keeps, in
# payload bytes: the router's lanes of several destinations read each batch of `events` within
# moments of each other.
RECENT_BYTES = 16 * 1024 * 1024


class EmbeddedLogReader:
    """Reads an embedded log, from this or another process, while writers append to it.

    Only batches whose index rows have committed are visible, and those are durable. Reading at
    an offset that retention has removed continues at the oldest retained offset.
    """

    def __init__(self, root: Path, recent_bytes: int = 0) -> None:
        """`recent_bytes`: keep batches decoded lately, up to that many payload bytes, for
        this reader's other consumers (0: keep none; each consumer reads its own)."""
        self._partitions = stored_partitions(root)
        self._recent_limit = recent_bytes
        self._files = LogFiles(root)
        self._conn: sqlite3.Connection = connect(self._files, synchronous="NORMAL")
        # commits have their own connection, so a thread can commit while the loop reads
        self._commit_lock = threading.Lock()
        self._commit_conn: sqlite3.Connection | None = None
        self._fds: dict[int, int] = {}
        self._recent: OrderedDict[tuple[int, int, bool], tuple[list[Record], int]] = OrderedDict()
        self._recent_bytes = 0
        self.corrupt_batches = 0

    @property
    def partitions(self) -> int:
        return self._partitions

    def read(
        self,
        partition: int,
        offset: int,
        max_records: int = 10_000,
        max_batches: int = 1000,
        stamped: bool = True,
    ) -> list[RecordBatch]:
        rows = self._conn.execute(
            "SELECT end_offset, count, segment, position, length FROM batches "
            "WHERE partition=? AND end_offset>? ORDER BY end_offset LIMIT ?",
            (partition, offset, max_batches),
        ).fetchall()
        batches: list[RecordBatch] = []
        total = 0
        for end_offset, count, segment, position, length in rows:
            base = end_offset - count
            found = self._recent.get((partition, end_offset, stamped))
            if found is not None:
                records = found[0]
            else:
                payload = self._pread(segment, position, length)
                if payload is None:  # removed by retention after the query: read again there
                    break
                records = self._decode(payload, stamped, partition, base, end_offset, segment)
                self._remember((partition, end_offset, stamped), records, length)
            batches.append(RecordBatch(partition, base, records, count))
            total += count
            if total >= max_records:
                break
        return batches

    def _decode(
        self, payload: bytes, stamped: bool, partition: int, base: int, end: int, segment: int
    ) -> list[Record]:
        try:
            return decode_batch(payload, stamped)
        except msgspec.DecodeError:
            self.corrupt_batches += 1
            log.error(
                "unreadable batch in partition %d at offsets %d-%d (segment %d); skipped",
                partition, base, end, segment,
            )  # fmt: skip
            return []

    def _remember(self, key: tuple[int, int, bool], records: list[Record], size: int) -> None:
        """Keep a decoded batch for the next reader of it (records are immutable)."""
        if size > self._recent_limit:
            return
        self._recent[key] = (records, size)
        self._recent_bytes += size
        while self._recent_bytes > self._recent_limit:
            _key, (_records, n) = self._recent.popitem(last=False)
            self._recent_bytes -= n

    def end_offsets(self) -> list[int]:
        rows = self._conn.execute(
            "SELECT next_offset FROM partitions ORDER BY partition"
        ).fetchall()
        return [int(r[0]) for r in rows]

    def start_offsets(self) -> list[int]:
        rows = self._conn.execute(
            "SELECT start_offset FROM partitions ORDER BY partition"
        ).fetchall()
        return [int(r[0]) for r in rows]

    def segment_sizes(self) -> dict[int, int]:
        """Bytes written to each segment (files may be larger: preallocated)."""
        rows = self._conn.execute("SELECT segment, bytes FROM segments")
        return {int(s): int(b) for s, b in rows}

    def size_bytes(self) -> int:
        """Bytes of data on disk (segment files), the figure retention bounds."""
        row = self._conn.execute("SELECT coalesce(sum(bytes), 0) FROM segments").fetchone()
        return int(row[0])

    def commit(self, group: str, offsets: dict[int, int], forward_only: bool = False) -> None:
        """Set `group`'s offsets (`forward_only`: never move one back, as a stage commits).
        Safe to call from any thread, while another reads."""
        now_ms = time.time_ns() // 1_000_000
        rows = [(group, p, off, now_ms) for p, off in offsets.items()]
        sql = (
            "INSERT INTO consumer_offsets VALUES(?,?,?,?) ON CONFLICT(grp, partition) DO UPDATE "
            "SET committed=max(committed, excluded.committed), updated_ms=excluded.updated_ms"
            if forward_only
            else "INSERT OR REPLACE INTO consumer_offsets VALUES(?,?,?,?)"
        )
        with self._commit_lock, self._files.write_lock():
            if self._commit_conn is None:
                self._commit_conn = connect(self._files, synchronous="NORMAL")
            conn = self._commit_conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                conn.executemany(sql, rows)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    def committed(self, group: str) -> dict[int, int]:
        rows = self._conn.execute(
            "SELECT partition, committed FROM consumer_offsets WHERE grp=?", (group,)
        ).fetchall()
        return {int(p): int(off) for p, off in rows}

    def groups(self) -> list[str]:
        """Every consumer group that has committed offsets."""
        rows = self._conn.execute("SELECT DISTINCT grp FROM consumer_offsets ORDER BY grp")
        return [str(r[0]) for r in rows]

    def close(self) -> None:
        for fd in self._fds.values():
            os.close(fd)
        self._fds.clear()
        self._conn.close()
        with self._commit_lock:
            if self._commit_conn is not None:
                self._commit_conn.close()
                self._commit_conn = None
            self._files.close()

    def _pread(self, segment: int, position: int, length: int) -> bytes | None:
        fd = self._fds.get(segment)
        if fd is None:
            try:
                fd = os.open(self._files.segment_path(segment), os.O_RDONLY)
            except FileNotFoundError:
                return None
            if len(self._fds) >= 8:
                oldest = min(self._fds)
                os.close(self._fds.pop(oldest))
            self._fds[segment] = fd
        return os.pread(fd, length, position)
