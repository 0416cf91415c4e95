"""Preallocated segments: a zero-filled spare is made ready (at start, and when segments fill
slowly) and a new segment starts from it, so commits fsync data only. Nothing a reader or
recovery sees may change because of it."""

from __future__ import annotations

import time
from pathlib import Path

from headwater.log.embedded import EmbeddedLogReader, SegmentAppender
from tests.log._helpers import (
    Clock,
    partition_ids,
    restore_index,
    run_of,
    segment_files,
    settings,
    snapshot_index,
)

SEGMENT = 64 * 1024


def _spare(root: Path) -> Path:
    return root / "segments" / "spare.next"


def _wait_for_spare(root: Path, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not _spare(root).exists():
        assert time.monotonic() < deadline, "no spare segment was prepared"
        time.sleep(0.01)


def _appender(root: Path, clock: Clock | None = None) -> SegmentAppender:
    config = settings(partitions=2, segment_bytes=SEGMENT, preallocate=True)
    if clock is None:
        return SegmentAppender(root, config)
    return SegmentAppender(root, config, clock_ms=clock)


def _fill_slowly_past_half(appender: SegmentAppender, clock: Clock, root: Path) -> None:
    """Write half a segment at 4 KB a second: the appender asks for a spare; wait for it."""
    for i in range(9):
        clock.now += 1_000
        appender.commit([[run_of(i % 2, [f"h{i}"], pad=4000)]])
    _wait_for_spare(root)


def test_a_slowly_filling_segment_is_followed_by_a_preallocated_one(tmp_path: Path) -> None:
    root = tmp_path / "log"
    clock = Clock()
    appender = _appender(root, clock)
    assert not _spare(root).exists()  # nothing is written ahead of need
    _fill_slowly_past_half(appender, clock, root)
    assert _spare(root).stat().st_size == SEGMENT
    for i in range(9):  # on to the next segment
        clock.now += 1_000
        appender.commit([[run_of(i % 2, [f"n{i}"], pad=4000)]])
    appender.close()
    first, second = segment_files(root)[:2]
    reader = EmbeddedLogReader(root)
    logical = reader.segment_sizes()
    assert first.stat().st_size == logical[int(first.stem)]  # written as it grew
    assert second.stat().st_size == SEGMENT > logical[int(second.stem)]  # allocated whole
    assert partition_ids(reader, 0)[-1] == "n8"
    assert reader.size_bytes() == sum(logical.values())  # what is written, not allocated
    reader.close()


def test_slowly_filled_segments_roll_into_preallocated_ones(tmp_path: Path) -> None:
    root = tmp_path / "log"
    clock = Clock()
    appender = _appender(root, clock)
    for i in range(40):
        clock.now += 1_000  # 4 KB a second: far below the preallocation threshold
        if i % 16 == 15:  # a segment holds 16 such commits; half way, a spare was asked for
            _wait_for_spare(root)
        appender.commit([[run_of(i % 2, [f"m{i}"], pad=4000)]])
    appender.close()
    files = segment_files(root)
    assert len(files) >= 3
    assert all(f.stat().st_size >= SEGMENT for f in files)  # every one started preallocated
    reader = EmbeddedLogReader(root)
    assert partition_ids(reader, 0) == [f"m{i}" for i in range(0, 40, 2)]
    assert partition_ids(reader, 1) == [f"m{i}" for i in range(1, 40, 2)]
    reader.close()


def test_recovery_stops_at_the_zeros_of_a_preallocated_segment(tmp_path: Path) -> None:
    root = tmp_path / "log"
    clock = Clock()
    appender = _appender(root, clock)
    _fill_slowly_past_half(appender, clock, root)
    clock.now += 1_000
    appender.commit([[run_of(0, ["big"], pad=40_000)]])  # fills the first segment
    appender.commit([[run_of(0, ["a0"])]])  # the first frame of the preallocated one
    snapshot = snapshot_index(root)
    appender.commit([[run_of(0, ["b0"]), run_of(1, ["b1"])]])
    appender.close()
    restore_index(root, snapshot)  # the index lost the last commit, the frames did not

    again = _appender(root, clock)
    assert again.recovered_bytes > 0
    again.commit([[run_of(0, ["c0"])]])
    again.close()
    reader = EmbeddedLogReader(root)
    assert partition_ids(reader, 0)[-3:] == ["a0", "b0", "c0"]
    assert partition_ids(reader, 1)[-1] == "b1"
    assert segment_files(root)[-1].stat().st_size == SEGMENT
    reader.close()


def test_fast_streams_do_not_pay_for_zero_filling(tmp_path: Path) -> None:
    root = tmp_path / "log"
    clock = Clock()  # 20 KB a commit, 1 ms apart: 20 MB/s, a batch stream (whatever the
    appender = _appender(root, clock)  # machine's load makes of the real time in between)
    for i in range(20):
        appender.commit([[run_of(i % 2, [f"m{i}"], pad=20_000)]])
        clock.now += 1
    time.sleep(0.2)
    appender.close()
    files = segment_files(root)
    assert len(files) >= 3
    reader = EmbeddedLogReader(root)
    logical = reader.segment_sizes()
    reader.close()
    # segments are written as they grow, never zero-filled
    assert all(f.stat().st_size == logical[int(f.stem)] for f in files)
    assert not _spare(root).exists()


def test_without_a_spare_ready_segments_start_empty(tmp_path: Path) -> None:
    root = tmp_path / "log"
    appender = SegmentAppender(root, settings(partitions=2, segment_bytes=SEGMENT))
    appender.commit([[run_of(0, ["a"])]])
    appender.close()
    [first] = segment_files(root)
    assert first.stat().st_size < SEGMENT
    assert not _spare(root).exists()


def test_closing_stops_the_preparation(tmp_path: Path) -> None:
    root = tmp_path / "log"
    big = SegmentAppender(
        root, settings(partitions=2, segment_bytes=512 * 1024 * 1024, preallocate=True)
    )
    started = time.monotonic()
    big.close()  # while half a gigabyte of zeros is being written
    assert time.monotonic() - started < 5
    assert not list((root / "segments").glob("*.tmp"))


def test_a_spare_left_half_made_by_a_killed_process_is_cleaned_up(tmp_path: Path) -> None:
    root = tmp_path / "log"
    (root / "segments").mkdir(parents=True)
    stale = root / "segments" / "spare.999999999.1.tmp"  # no such process
    stale.write_bytes(b"\0" * 100)
    appender = _appender(root)
    appender.close()
    assert not stale.exists()
