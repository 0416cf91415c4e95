"""Files and schema shared by the embedded log's writer, reader and retention."""

from __future__ import annotations

import contextlib
import fcntl
import os
import sqlite3
from collections.abc import Iterator
from pathlib import Path

SCHEMA = """
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS partitions(
    partition INTEGER PRIMARY KEY,
    next_offset INTEGER NOT NULL,
    start_offset INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS segments(
    segment INTEGER PRIMARY KEY,
    created_ms INTEGER NOT NULL,
    last_ms INTEGER NOT NULL,
    bytes INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS batches(
    partition INTEGER NOT NULL,
    end_offset INTEGER NOT NULL,
    count INTEGER NOT NULL,
    created_ms INTEGER NOT NULL,
    segment INTEGER NOT NULL,
    position INTEGER NOT NULL,
    length INTEGER NOT NULL,
    PRIMARY KEY(partition, end_offset)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS batches_by_segment ON batches(segment);
CREATE TABLE IF NOT EXISTS consumer_offsets(
    grp TEXT NOT NULL,
    partition INTEGER NOT NULL,
    committed INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY(grp, partition)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS producers(
    producer TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
) WITHOUT ROWID;
"""


class LogLayoutError(Exception):
    """The log on disk does not match what the configuration asks for."""


class LogFiles:
    """Paths of one embedded log and the cross-process write lock."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.segments_dir = root / "segments"
        self.index_path = root / "index.db"
        self.lock_path = root / "write.lock"
        self._lock_fd: int | None = None

    def segment_path(self, segment: int) -> Path:
        return self.segments_dir / f"{segment:012d}.seg"

    def segment_numbers(self) -> list[int]:
        """The numbers of the segment files on disk, in order."""
        return sorted(int(p.stem) for p in self.segments_dir.glob("*.seg") if p.stem.isdigit())

    @contextlib.contextmanager
    def write_lock(self) -> Iterator[None]:
        """Hold the log's exclusive write lock (blocks in the kernel, releases the GIL)."""
        if self._lock_fd is None:
            self._lock_fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def close(self) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None


def connect(files: LogFiles, *, synchronous: str = "FULL") -> sqlite3.Connection:
    """Open the index in autocommit mode; transactions are explicit (`BEGIN IMMEDIATE`)."""
    conn = sqlite3.connect(
        files.index_path, isolation_level=None, check_same_thread=False, timeout=30.0
    )
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute(f"PRAGMA synchronous={synchronous}")
    return conn


def open_log(root: Path, partitions: int) -> LogFiles:
    """Create the log if needed and check its partition count; returns its files."""
    files = LogFiles(root)
    files.segments_dir.mkdir(parents=True, exist_ok=True)
    try:
        _initialise(files, root, partitions)
    except BaseException:
        files.close()
        raise
    return files


def _initialise(files: LogFiles, root: Path, partitions: int) -> None:
    with files.write_lock():
        conn = connect(files)
        try:
            conn.executescript(SCHEMA)
            row = conn.execute("SELECT value FROM meta WHERE key='partitions'").fetchone()
            if row is None:
                conn.execute("BEGIN IMMEDIATE")
                conn.execute("INSERT INTO meta VALUES('partitions', ?)", (partitions,))
                conn.execute("INSERT INTO meta VALUES('next_segment', 1)")
                conn.executemany(
                    "INSERT INTO partitions VALUES(?, 0, 0)", [(p,) for p in range(partitions)]
                )
                conn.execute("COMMIT")
            elif row[0] != partitions:
                raise LogLayoutError(
                    f"the log at {root} has {row[0]} partitions but the configuration asks for "
                    f"{partitions}; keep log.partitions at {row[0]} or start from a new data dir"
                )
        finally:
            conn.close()


def stored_partitions(root: Path) -> int:
    """How many partitions an existing log has (raises `LogLayoutError` if there is no log)."""
    index = root / "index.db"
    if not index.exists():
        raise LogLayoutError(f"no log at {root}: start `headwater up` once to create it")
    conn = sqlite3.connect(f"file:{index}?mode=ro", uri=True)
    try:
        row = conn.execute("SELECT value FROM meta WHERE key='partitions'").fetchone()
    finally:
        conn.close()
    if row is None:
        raise LogLayoutError(f"the log at {root} is not initialised")
    return int(row[0])
