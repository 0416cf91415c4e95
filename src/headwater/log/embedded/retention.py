"""Retention for the embedded log: whole segments go once too old or over the size budget."""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from pathlib import Path

from headwater.log.embedded.store import LogFiles, connect


@dataclass(frozen=True, slots=True)
class RetentionResult:
    """What one retention pass removed."""

    segments_removed: int
    bytes_removed: int
    records_removed: int


def enforce_retention(
    root: Path, *, max_age_ms: int, max_bytes: int, now_ms: int | None = None
) -> RetentionResult:
    """Delete the oldest segments while they are older than `max_age_ms` or the log is over
    `max_bytes`. The newest segment is kept for size (it is being written) but not for age.
    """
    now = time.time_ns() // 1_000_000 if now_ms is None else now_ms
    files = LogFiles(root)
    conn = connect(files)
    removed: list[tuple[int, int]] = []
    records = 0
    try:
        with files.write_lock():
            segments = conn.execute(
                "SELECT segment, last_ms, bytes FROM segments ORDER BY segment"
            ).fetchall()
            total = sum(int(s[2]) for s in segments)
            for i, (segment, last_ms, nbytes) in enumerate(segments):
                newest = i == len(segments) - 1
                too_old = now - last_ms > max_age_ms
                too_big = total > max_bytes and not newest
                if not (too_old or too_big):
                    break
                removed.append((int(segment), int(nbytes)))
                total -= int(nbytes)
            if removed:
                conn.execute("BEGIN IMMEDIATE")
                try:
                    for segment, _n in removed:
                        row = conn.execute(
                            "SELECT coalesce(sum(count), 0) FROM batches WHERE segment=?",
                            (segment,),
                        ).fetchone()
                        records += int(row[0])
                        conn.execute("DELETE FROM batches WHERE segment=?", (segment,))
                        conn.execute("DELETE FROM segments WHERE segment=?", (segment,))
                    conn.execute(
                        "UPDATE partitions SET start_offset = coalesce("
                        "(SELECT min(end_offset - count) FROM batches b "
                        " WHERE b.partition = partitions.partition), next_offset)"
                    )
                    conn.execute("COMMIT")
                except BaseException:
                    conn.execute("ROLLBACK")
                    raise
                for segment, _n in removed:
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(files.segment_path(segment))
    finally:
        conn.close()
        files.close()
    return RetentionResult(len(removed), sum(n for _s, n in removed), records)
