"""Recovery of the embedded log at open: frames the index lost (its commits are not fsynced, so
a power loss can drop the last ones) are re-indexed exactly; torn or stale frames at the tail
are not; bytes a dead writer left are overwritten by the next commit and never appear."""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from headwater.log.embedded import EmbeddedLogReader, SegmentAppender
from headwater.log.embedded.frames import HEADER_SIZE, encode_header
from headwater.log.records import batch_header
from tests.log._helpers import (
    all_ids,
    assert_dense,
    partition_ids,
    restore_index,
    run_of,
    segment_files,
    settings,
    snapshot_index,
)


def _state(root: Path) -> dict[str, Any]:
    """The index's view of the data (without timestamps recovery cannot know)."""
    conn = sqlite3.connect(root / "index.db")
    try:
        return {
            "batches": conn.execute("SELECT * FROM batches ORDER BY segment, position").fetchall(),
            "partitions": conn.execute("SELECT * FROM partitions ORDER BY partition").fetchall(),
            "segments": conn.execute("SELECT segment, bytes FROM segments").fetchall(),
        }
    finally:
        conn.close()


@pytest.fixture
def lost(tmp_path: Path) -> tuple[Path, dict[str, Any]]:
    """A log whose index lost its last three commits (B1-B3) but whose segment kept them.

    Returns the root and the index state before the loss. B3 is one frame, partition 0.
    """
    root = tmp_path / "log"
    appender = SegmentAppender(root, settings(partitions=3))
    appender.commit([[run_of(0, ["a0", "a1"]), run_of(1, ["a2"])]])
    snapshot = snapshot_index(root)
    appender.commit([[run_of(1, ["b1-0", "b1-1"]), run_of(2, ["b1-2"])]])
    appender.commit([[run_of(2, ["b2-0"])], [run_of(0, ["b2-1"])]])
    appender.commit([[run_of(0, ["b3-0", "b3-1", "b3-2"], pad=50)]])
    appender.close()
    full = _state(root)
    restore_index(root, snapshot)
    return root, full


def test_lost_index_commits_are_reindexed_exactly(lost: tuple[Path, dict[str, Any]]) -> None:
    root, full = lost
    reader = EmbeddedLogReader(root)
    assert reader.end_offsets() == [2, 1, 0]  # what a reader sees before recovery

    indexed_before = sum(length + HEADER_SIZE for *_, length in _state(root)["batches"])
    appender = SegmentAppender(root, settings(partitions=3))
    assert appender.recovered_bytes == full["segments"][0][1] - indexed_before > 0
    assert _state(root) == full

    assert reader.end_offsets() == [6, 3, 2]
    assert partition_ids(reader, 0) == ["a0", "a1", "b2-1", "b3-0", "b3-1", "b3-2"]
    assert partition_ids(reader, 1) == ["a2", "b1-0", "b1-1"]
    assert partition_ids(reader, 2) == ["b1-2", "b2-0"]

    # appends continue after the recovered frames, offsets dense
    appender.commit([[run_of(0, ["c0"]), run_of(2, ["c1"])]])
    appender.close()
    assert partition_ids(reader, 0)[-1] == "c0"
    assert reader.end_offsets() == [7, 3, 3]
    assert_dense(reader)
    reader.close()

    # a further reopen finds nothing more to recover
    again = SegmentAppender(root, settings(partitions=3))
    assert again.recovered_bytes == 0
    again.close()
    assert set(all_ids(root).values()) == {1}


def _damage_last_frame(root: Path, full: dict[str, Any], how: str) -> None:
    *_, segment, position, length = full["batches"][-1]
    path = segment_files(root)[0]
    assert path.name == f"{segment:012d}.seg"
    frame_at = position - HEADER_SIZE
    if how == "truncated payload":
        os.truncate(path, position + length // 2)
    elif how == "truncated header":
        os.truncate(path, frame_at + HEADER_SIZE // 2)
    else:
        with open(path, "r+b") as f:
            at = position + length // 2 if how == "bad crc" else frame_at
            f.seek(at)
            byte = f.read(1)
            f.seek(at)
            f.write(bytes([byte[0] ^ 0xFF]))


@pytest.mark.parametrize("how", ["truncated payload", "truncated header", "bad crc", "bad magic"])
def test_a_torn_tail_frame_is_not_indexed(lost: tuple[Path, dict[str, Any]], how: str) -> None:
    root, full = lost
    _damage_last_frame(root, full, how)

    appender = SegmentAppender(root, settings(partitions=3))
    state = _state(root)
    assert state["batches"] == full["batches"][:-1]  # everything up to the torn frame
    reader = EmbeddedLogReader(root)
    assert reader.end_offsets() == [3, 3, 2]
    assert partition_ids(reader, 0) == ["a0", "a1", "b2-1"]

    # the next commit takes the torn frame's place and its offsets; the torn data never shows
    appender.commit([[run_of(0, ["c0"])]])
    appender.close()
    assert partition_ids(reader, 0) == ["a0", "a1", "b2-1", "c0"]
    assert reader.end_offsets() == [4, 3, 2]
    assert_dense(reader)
    reader.close()
    again = SegmentAppender(root, settings(partitions=3))
    assert again.recovered_bytes == 0
    again.close()
    assert not any(i.startswith("b3") for i in all_ids(root))


def _frame(partition: int, base: int, ids: list[str], pad: int = 0) -> bytes:
    """A complete, valid frame as an appender would write it."""
    run = run_of(partition, ids, pad)
    chunks = [batch_header(1), run.payload]
    header, _length = encode_header(partition, base, run.count, chunks, 1)
    return header + b"".join(chunks)


def _append_to_segment(root: Path, data: bytes) -> None:
    with open(segment_files(root)[-1], "ab") as f:
        f.write(data)


@pytest.mark.parametrize(
    "leftover",
    [
        "partial frame",
        "garbage",
        "stale frame at a used offset",
    ],
)
def test_bytes_of_a_writer_that_died_are_overwritten(tmp_path: Path, leftover: str) -> None:
    root = tmp_path / "log"
    first = SegmentAppender(root, settings(partitions=2))
    first.commit([[run_of(0, ["a0", "a1"])]])
    first.close()
    if leftover == "partial frame":
        data = _frame(0, 2, ["dead0", "dead1"], pad=500)[:300]
    elif leftover == "garbage":
        data = b"HWB1" + b"\x00\x07" * 700
    else:  # a complete frame whose offsets are already taken: must not be a duplicate
        data = _frame(0, 0, ["dead0", "dead1"])
    _append_to_segment(root, data)

    appender = SegmentAppender(root, settings(partitions=2))
    assert appender.recovered_bytes == 0
    appender.commit([[run_of(0, ["c0"]), run_of(1, ["c1"])]])
    appender.close()
    reader = EmbeddedLogReader(root)
    assert partition_ids(reader, 0) == ["a0", "a1", "c0"]
    assert partition_ids(reader, 1) == ["c1"]
    assert_dense(reader)
    reader.close()
    assert not any(i.startswith("dead") for i in all_ids(root))


def test_an_open_appender_overwrites_a_dead_writers_uncommitted_frame(tmp_path: Path) -> None:
    """Another process wrote a whole frame at the index's end and died before committing it;
    the appender that is still running writes over it and the dead frame never appears."""
    root = tmp_path / "log"
    survivor = SegmentAppender(root, settings(partitions=2))
    survivor.commit([[run_of(0, ["a0"])]])
    _append_to_segment(root, _frame(0, 1, ["dead0", "dead1"], pad=2000))  # bigger than ours

    survivor.commit([[run_of(0, ["c0"])]])
    survivor.commit([[run_of(1, ["c1"])]])
    reader = EmbeddedLogReader(root)
    assert partition_ids(reader, 0) == ["a0", "c0"]
    assert reader.end_offsets() == [2, 1]
    survivor.close()

    # the rest of the dead frame, now behind ours, is not taken for a frame at the next open
    reopened = SegmentAppender(root, settings(partitions=2))
    assert reopened.recovered_bytes == 0
    reopened.commit([[run_of(0, ["d0"])]])
    reopened.close()
    assert partition_ids(reader, 0) == ["a0", "c0", "d0"]
    assert_dense(reader)
    reader.close()
    assert not any(i.startswith("dead") for i in all_ids(root))


def test_lost_index_commits_across_a_segment_roll_are_recovered(tmp_path: Path) -> None:
    root = tmp_path / "log"
    appender = SegmentAppender(root, settings(partitions=1, segment_bytes=300))
    appender.commit([[run_of(0, ["a0"], pad=100)]])
    appender.commit([[run_of(0, ["a1"], pad=100)]])  # segment 1 is now over 300 bytes
    snapshot = snapshot_index(root)
    appender.commit([[run_of(0, ["b0"], pad=100)]])  # rolls: segment 2, acknowledged, fsynced
    appender.close()
    assert len(segment_files(root)) == 2
    restore_index(root, snapshot)  # power loss: the index never got the last commit

    reopened = SegmentAppender(root, settings(partitions=1, segment_bytes=300))
    reopened.commit([[run_of(0, ["c0"], pad=100)]])
    reopened.close()
    reader = EmbeddedLogReader(root)
    ids = partition_ids(reader, 0)
    reader.close()
    assert ids == ["a0", "a1", "b0", "c0"]  # actual: ["a0", "a1", "c0"]; b0 overwritten
