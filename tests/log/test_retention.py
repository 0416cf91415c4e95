"""Retention of the embedded log (`enforce_retention`): whole oldest segments go by age or size,
start offsets follow, readers carry on at the oldest retained record, disk stays bounded."""

from __future__ import annotations

from pathlib import Path

import pytest

from headwater.log.embedded import EmbeddedLogReader, SegmentAppender, enforce_retention
from tests.log._helpers import (
    Clock,
    assert_dense,
    disk_bytes,
    ids_of,
    partition_ids,
    run_of,
    segment_files,
    settings,
)

HOUR = 3_600_000
FOREVER = 10**15
NO_LIMIT = 10**15


@pytest.fixture
def aged(tmp_path: Path) -> tuple[Path, Clock]:
    """Three segments one second apart: seg 1 (t0, t0+500), seg 2 (t0+1000), seg 3 (t0+2000).

    Partition 0 gets r0 r1 | r2 | r3 | r4 (offsets 0-4), partition 1 gets q0 | q1 (0-1).
    """
    root = tmp_path / "log"
    clock = Clock()
    appender = SegmentAppender(
        root, settings(partitions=2, segment_max_age_ms=1000), clock_ms=clock
    )
    t0 = clock.now
    appender.commit([[run_of(0, ["r0", "r1"]), run_of(1, ["q0"])]])
    clock.now = t0 + 500
    appender.commit([[run_of(0, ["r2"])]])
    clock.now = t0 + 1000
    appender.commit([[run_of(0, ["r3"]), run_of(1, ["q1"])]])
    clock.now = t0 + 2000
    appender.commit([[run_of(0, ["r4"])]])
    appender.close()
    assert len(segment_files(root)) == 3
    return root, clock


def test_age_removes_whole_oldest_segments(aged: tuple[Path, Clock]) -> None:
    root, clock = aged
    reader = EmbeddedLogReader(root)
    assert partition_ids(reader, 0) == ["r0", "r1", "r2", "r3", "r4"]  # caches open files
    before = reader.size_bytes()
    kept = segment_files(root)[-1]

    result = enforce_retention(root, max_age_ms=1000, max_bytes=NO_LIMIT, now_ms=clock.now + 100)
    assert result.segments_removed == 2
    assert result.records_removed == 6
    assert result.bytes_removed == before - reader.size_bytes()
    assert segment_files(root) == [kept]

    assert reader.start_offsets() == [4, 2]  # partition 1 has nothing left: start = end
    assert reader.end_offsets() == [5, 2]
    # a reader at a removed offset continues at the oldest retained one
    assert [(b.base_offset, ids_of(b)) for b in reader.read(0, 0)] == [(4, ["r4"])]
    assert [(b.base_offset, ids_of(b)) for b in reader.read(0, 2)] == [(4, ["r4"])]
    assert reader.read(1, 0) == []
    assert_dense(reader)
    reader.close()


def test_age_boundary_keeps_a_segment_exactly_max_age_old(aged: tuple[Path, Clock]) -> None:
    root, clock = aged
    t0 = clock.now - 2000
    # segment 1 was last written at t0+500: exactly 1000 ms old is still kept
    result = enforce_retention(root, max_age_ms=1000, max_bytes=NO_LIMIT, now_ms=t0 + 1500)
    assert result.segments_removed == 0
    assert len(segment_files(root)) == 3
    result = enforce_retention(root, max_age_ms=1000, max_bytes=NO_LIMIT, now_ms=t0 + 1501)
    assert result.segments_removed == 1
    reader = EmbeddedLogReader(root)
    assert reader.start_offsets() == [3, 1]
    assert partition_ids(reader, 0) == ["r3", "r4"]
    reader.close()


def test_age_can_empty_the_log_and_appends_continue_the_offsets(aged: tuple[Path, Clock]) -> None:
    root, clock = aged
    result = enforce_retention(root, max_age_ms=1000, max_bytes=NO_LIMIT, now_ms=clock.now + HOUR)
    assert result.segments_removed == 3
    assert result.records_removed == 7
    assert segment_files(root) == []

    reader = EmbeddedLogReader(root)
    assert reader.start_offsets() == reader.end_offsets() == [5, 2]
    assert reader.read(0, 0) == []
    assert reader.size_bytes() == 0

    appender = SegmentAppender(root, settings(partitions=2, segment_max_age_ms=1000))
    appender.commit([[run_of(0, ["r5"]), run_of(1, ["q2"])]])
    appender.close()
    assert [(b.base_offset, ids_of(b)) for b in reader.read(0, 0)] == [(5, ["r5"])]
    assert [(b.base_offset, ids_of(b)) for b in reader.read(1, 0)] == [(2, ["q2"])]
    assert reader.start_offsets() == [5, 2]
    assert_dense(reader)
    reader.close()


def test_committed_consumer_offsets_survive_retention(aged: tuple[Path, Clock]) -> None:
    root, clock = aged
    reader = EmbeddedLogReader(root)
    reader.commit("slow", {0: 1, 1: 0})
    enforce_retention(root, max_age_ms=1000, max_bytes=NO_LIMIT, now_ms=clock.now + 100)
    assert reader.committed("slow") == {0: 1, 1: 0}
    # the slow consumer resumes at the oldest retained record, not at an error
    batches = reader.read(0, reader.committed("slow")[0])
    assert batches[0].base_offset == reader.start_offsets()[0] == 4
    reader.close()


def _fill(root: Path, commits: int, segment_bytes: int = 1000) -> None:
    appender = SegmentAppender(root, settings(partitions=2, segment_bytes=segment_bytes))
    for i in range(commits):
        appender.commit([[run_of(i % 2, [f"m{i}"], pad=300)]])
    appender.close()


def test_size_removes_oldest_segments_until_under_budget(tmp_path: Path) -> None:
    root = tmp_path / "log"
    _fill(root, 30)
    files = segment_files(root)
    assert len(files) >= 8
    reader = EmbeddedLogReader(root)
    before = reader.size_bytes()
    assert before > 3000

    result = enforce_retention(root, max_age_ms=FOREVER, max_bytes=3000)
    assert result.segments_removed > 0
    after = reader.size_bytes()
    assert after <= 3000
    assert result.bytes_removed == before - after
    assert disk_bytes(root) == after
    # the oldest went, the newest stayed
    assert segment_files(root) == files[result.segments_removed :]
    assert result.records_removed == sum(reader.start_offsets())

    # what is left is the newest records, contiguous up to the end
    for p in range(2):
        kept = partition_ids(reader, p)
        written = [f"m{i}" for i in range(p, 30, 2)]
        assert kept == written[len(written) - len(kept) :]
        assert len(kept) == reader.end_offsets()[p] - reader.start_offsets()[p]
    assert_dense(reader)

    # a second pass within budget removes nothing
    again = enforce_retention(root, max_age_ms=FOREVER, max_bytes=3000)
    assert (again.segments_removed, again.bytes_removed, again.records_removed) == (0, 0, 0)
    reader.close()


def test_size_never_removes_the_segment_being_written(tmp_path: Path) -> None:
    root = tmp_path / "log"
    _fill(root, 12)
    newest = segment_files(root)[-1]
    result = enforce_retention(root, max_age_ms=FOREVER, max_bytes=10)
    assert result.segments_removed >= 1
    assert segment_files(root) == [newest]
    reader = EmbeddedLogReader(root)
    assert reader.size_bytes() > 10
    kept = partition_ids(reader, 0) + partition_ids(reader, 1)
    assert "m11" in kept
    assert len(kept) == sum(reader.end_offsets()) - sum(reader.start_offsets()) < 12
    assert_dense(reader)
    reader.close()


def test_disk_stays_bounded_under_a_write_loop(tmp_path: Path) -> None:
    root = tmp_path / "log"
    segment_bytes, budget = 4096, 16384
    appender = SegmentAppender(root, settings(partitions=3, segment_bytes=segment_bytes))
    reader = EmbeddedLogReader(root)
    commit_bytes = 0
    peak = 0
    consumer = {p: 0 for p in range(3)}  # a consumer keeping up, offset per partition
    consumed: dict[int, list[str]] = {p: [] for p in range(3)}
    for i in range(400):
        appender.commit([[run_of(i % 3, [f"w{i}"], pad=200)]])
        if i == 0:
            commit_bytes = disk_bytes(root)
        if i % 10 == 9:
            enforce_retention(root, max_age_ms=FOREVER, max_bytes=budget)
            for p in range(3):  # consume what is there now
                for batch in reader.read(p, consumer[p]):
                    consumed[p].extend(ids_of(batch))
                    consumer[p] = batch.end_offset
        peak = max(peak, disk_bytes(root))
    appender.close()

    assert len(list((root / "segments").iterdir())) <= budget // segment_bytes + 2
    # between passes the log grows by at most ten commits beyond budget + one open segment
    assert peak <= budget + segment_bytes + 10 * commit_bytes
    assert reader.size_bytes() <= budget
    assert sum(reader.start_offsets()) > 0
    assert sum(reader.end_offsets()) == 400
    assert_dense(reader)
    # the consumer that kept up saw every record once and in order
    for p in range(3):
        assert consumed[p] == [f"w{i}" for i in range(p, 400, 3)]
    reader.close()
