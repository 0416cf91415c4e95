"""Shared helpers for the embedded log tests: records that carry their id, reading everything
back, and rewinding the SQLite index the way a power loss with a non-fsynced index would."""

from __future__ import annotations

import json
import sqlite3
from collections import Counter
from pathlib import Path
from typing import Any

from headwater.log.embedded import AppendSettings, EmbeddedLogReader
from headwater.log.records import RecordBatch, Run, encode_run

SOURCE = "src_test"


def message(rid: str | int, pad: int = 0) -> bytes:
    """A JSON message carrying its id (and optional padding, to make it bigger)."""
    body: dict[str, Any] = {"type": "track", "event": "E", "messageId": str(rid)}
    if pad:
        body["pad"] = "x" * pad
    return json.dumps(body).encode()


def run_of(partition: int, ids: list[str] | list[int], pad: int = 0) -> Run:
    """One run of final (unstamped) messages, one per id, for `partition`."""
    payload = encode_run(SOURCE, None, [message(i, pad) for i in ids])
    return Run(partition, payload, len(ids))


def settings(**kwargs: Any) -> AppendSettings:
    """Append settings for tests: no disk floor unless asked for, and segments that start empty
    (file sizes exact; preallocation has tests of its own) unless asked for."""
    kwargs.setdefault("min_free_disk_bytes", 0)
    kwargs.setdefault("preallocate", False)
    return AppendSettings(**kwargs)


def ids_of(batch: RecordBatch) -> list[str]:
    return [json.loads(r.message)["messageId"] for r in batch.records]


def read_all(reader: EmbeddedLogReader, partition: int, offset: int = 0) -> list[RecordBatch]:
    """Every batch of `partition` from `offset` on, reading page by page like a consumer."""
    batches: list[RecordBatch] = []
    while True:
        page = reader.read(partition, offset)
        if not page:
            return batches
        batches.extend(page)
        offset = page[-1].end_offset


def partition_ids(reader: EmbeddedLogReader, partition: int) -> list[str]:
    return [i for b in read_all(reader, partition) for i in ids_of(b)]


def all_ids(root: Path) -> Counter[str]:
    """How many times every message id is stored in the log, over all partitions."""
    reader = EmbeddedLogReader(root)
    try:
        counts: Counter[str] = Counter()
        for p in range(reader.partitions):
            counts.update(partition_ids(reader, p))
        return counts
    finally:
        reader.close()


def assert_dense(reader: EmbeddedLogReader) -> None:
    """Every partition's batches are contiguous from its start offset to its end offset, and
    each batch holds exactly as many records as offsets it spans."""
    starts, ends = reader.start_offsets(), reader.end_offsets()
    for p in range(reader.partitions):
        expected = starts[p]
        for batch in read_all(reader, p):
            assert batch.base_offset == expected, f"gap or overlap in partition {p}"
            assert len(batch.records) == batch.count
            expected = batch.end_offset
        assert expected == ends[p], f"partition {p} ends at {expected}, index says {ends[p]}"


_INDEX_TABLES = ("meta", "partitions", "segments", "batches")


def snapshot_index(root: Path) -> dict[str, list[tuple[Any, ...]]]:
    """The index's log state (not consumer offsets), to restore later."""
    conn = sqlite3.connect(root / "index.db")
    try:
        return {t: conn.execute(f"SELECT * FROM {t}").fetchall() for t in _INDEX_TABLES}
    finally:
        conn.close()


def restore_index(root: Path, snapshot: dict[str, list[tuple[Any, ...]]]) -> None:
    """Put the index back as it was at `snapshot`, as if the commits since never reached disk
    (the segment files keep their bytes, as they were fsynced)."""
    conn = sqlite3.connect(root / "index.db", isolation_level=None)
    try:
        conn.execute("BEGIN IMMEDIATE")
        for table, rows in snapshot.items():
            conn.execute(f"DELETE FROM {table}")
            if rows:
                marks = ",".join("?" * len(rows[0]))
                conn.executemany(f"INSERT INTO {table} VALUES({marks})", rows)
        conn.execute("COMMIT")
    finally:
        conn.close()


def segment_files(root: Path) -> list[Path]:
    return sorted((root / "segments").glob("*.seg"))


def disk_bytes(root: Path) -> int:
    """Bytes of segment files actually on disk."""
    return sum(p.stat().st_size for p in segment_files(root))


class Clock:
    """A settable millisecond clock for the appender's `clock_ms`."""

    def __init__(self, start: int = 1_700_000_000_000) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now
