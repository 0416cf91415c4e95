"""The embedded log's append path (`SegmentAppender`): partitions and offsets, group commits,
segment rolling, several appenders on one log, the partition-count check, the disk floor and
the fsync policies."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from headwater.log.base import LogError, LogUnavailable
from headwater.log.embedded import EmbeddedLogReader, FsyncPolicy, SegmentAppender
from headwater.log.embedded.log import EmbeddedLog
from headwater.log.embedded.store import LogLayoutError
from headwater.log.records import partition_for
from tests.log._helpers import (
    Clock,
    all_ids,
    assert_dense,
    ids_of,
    partition_ids,
    read_all,
    run_of,
    segment_files,
    settings,
)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "log"


def test_runs_land_in_their_partitions_with_dense_offsets(root: Path) -> None:
    appender = SegmentAppender(root, settings(partitions=4))
    keys = [f"msg-{i}" for i in range(60)]
    expected: dict[int, list[str]] = {p: [] for p in range(4)}
    for start in range(0, 60, 6):  # ten commits of six messages routed by key
        runs = []
        for key in keys[start : start + 6]:
            p = partition_for(key, 4)
            runs.append(run_of(p, [key]))
            expected[p].append(key)
        assert appender.commit([runs]) == 6
    appender.close()

    reader = EmbeddedLogReader(root)
    assert reader.partitions == 4
    for p in range(4):
        assert partition_ids(reader, p) == expected[p]
    assert reader.end_offsets() == [len(expected[p]) for p in range(4)]
    assert reader.start_offsets() == [0, 0, 0, 0]
    assert_dense(reader)
    reader.close()


def test_one_commit_merges_every_group_into_one_batch_per_partition(root: Path) -> None:
    appender = SegmentAppender(root, settings(partitions=2))
    groups = [
        [run_of(0, ["a1", "a2"]), run_of(1, ["a3"])],  # request A touches both partitions
        [run_of(0, ["b1"])],  # request B
        [run_of(1, ["c1", "c2"]), run_of(0, ["c3"])],  # request C
    ]
    assert appender.commit(groups) == 7
    assert appender.commits == 1
    assert appender.committed_records == 7
    appender.close()

    reader = EmbeddedLogReader(root)
    p0, p1 = reader.read(0, 0), reader.read(1, 0)
    # one batch per partition, requests in arrival order inside it
    assert [(b.base_offset, b.count, ids_of(b)) for b in p0] == [(0, 4, ["a1", "a2", "b1", "c3"])]
    assert [(b.base_offset, b.count, ids_of(b)) for b in p1] == [(0, 3, ["a3", "c1", "c2"])]
    assert all(r.source_id == "src_test" for r in p0[0].records)
    reader.close()


def test_offsets_continue_across_reopen(root: Path) -> None:
    first = SegmentAppender(root, settings(partitions=2))
    first.commit([[run_of(0, ["x1", "x2"])]])
    first.close()
    second = SegmentAppender(root, settings(partitions=2))
    assert second.recovered_bytes == 0
    second.commit([[run_of(0, ["x3"]), run_of(1, ["y1"])]])
    second.close()

    reader = EmbeddedLogReader(root)
    assert [(b.base_offset, ids_of(b)) for b in reader.read(0, 0)] == [
        (0, ["x1", "x2"]),
        (2, ["x3"]),
    ]
    assert reader.end_offsets() == [3, 1]
    reader.close()


def test_segments_roll_by_size_and_reads_span_them(root: Path) -> None:
    appender = SegmentAppender(root, settings(partitions=2, segment_bytes=2048))
    for i in range(40):
        appender.commit([[run_of(i % 2, [f"m{i}"], pad=200)]])
    appender.close()

    files = segment_files(root)
    assert len(files) >= 4
    # a segment rolls once it reaches the size, so none is much bigger than one commit past it
    assert all(f.stat().st_size < 2048 + 400 for f in files)
    reader = EmbeddedLogReader(root)
    assert partition_ids(reader, 0) == [f"m{i}" for i in range(0, 40, 2)]
    assert partition_ids(reader, 1) == [f"m{i}" for i in range(1, 40, 2)]
    assert reader.size_bytes() == sum(f.stat().st_size for f in files)
    reader.close()


def test_segments_roll_by_age(root: Path) -> None:
    clock = Clock()
    appender = SegmentAppender(
        root, settings(partitions=1, segment_max_age_ms=1000), clock_ms=clock
    )
    appender.commit([[run_of(0, ["t0"])]])
    clock.now += 999
    appender.commit([[run_of(0, ["t999"])]])
    assert len(segment_files(root)) == 1
    clock.now += 1
    appender.commit([[run_of(0, ["t1000"])]])
    assert len(segment_files(root)) == 2
    appender.close()

    reader = EmbeddedLogReader(root)
    assert partition_ids(reader, 0) == ["t0", "t999", "t1000"]
    reader.close()


def test_two_appenders_interleaving_keep_offsets_dense(root: Path) -> None:
    """Two appenders on one log (as two processes would be) share offsets and segments."""
    a = SegmentAppender(root, settings(partitions=3, segment_bytes=1500))
    b = SegmentAppender(root, settings(partitions=3, segment_bytes=1500))
    expected: dict[int, list[str]] = {p: [] for p in range(3)}
    for i in range(30):
        appender, name = (a, "a") if i % 3 else (b, "b")
        p = i % 3
        ids = [f"{name}{i}-{j}" for j in range(1 + i % 2)]
        appender.commit([[run_of(p, ids, pad=100)]])
        expected[p].extend(ids)
    a.close()
    b.close()

    reader = EmbeddedLogReader(root)
    assert_dense(reader)
    for p in range(3):
        assert partition_ids(reader, p) == expected[p]
    assert reader.end_offsets() == [len(expected[p]) for p in range(3)]
    assert len(segment_files(root)) > 2  # the appenders rolled segments under each other
    reader.close()


def test_two_appenders_in_threads_commit_concurrently(root: Path) -> None:
    appenders = [SegmentAppender(root, settings(partitions=4, segment_bytes=8192)) for _ in "ab"]
    errors: list[BaseException] = []

    def write(n: int, appender: SegmentAppender) -> None:
        try:
            for i in range(60):
                appender.commit(
                    [[run_of(i % 4, [f"w{n}-{i}-0", f"w{n}-{i}-1"])], [run_of(3, [f"w{n}-{i}-x"])]]
                )
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(n, a)) for n, a in enumerate(appenders)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    for a in appenders:
        a.close()
    assert not errors

    counts = all_ids(root)
    assert len(counts) == 2 * 60 * 3
    assert set(counts.values()) == {1}
    reader = EmbeddedLogReader(root)
    assert_dense(reader)
    assert sum(reader.end_offsets()) == 360
    # within each writer, its records keep their commit order
    for p in range(4):
        seen = partition_ids(reader, p)
        for n in range(2):
            mine = [int(i.split("-")[1]) for i in seen if i.startswith(f"w{n}-")]
            assert mine == sorted(mine)
    reader.close()


def test_partition_count_mismatch_on_reopen_is_refused(root: Path) -> None:
    SegmentAppender(root, settings(partitions=4)).close()
    first = SegmentAppender(root, settings(partitions=4))
    first.commit([[run_of(2, ["kept"])]])
    first.close()

    with pytest.raises(LogLayoutError) as info:
        SegmentAppender(root, settings(partitions=8))
    text = str(info.value)
    assert str(root) in text
    assert "has 4 partitions" in text
    assert "asks for 8" in text
    assert "keep log.partitions at 4" in text

    # the refused open changed nothing: the log still opens with its own count
    again = SegmentAppender(root, settings(partitions=4))
    again.commit([[run_of(2, ["after"])]])
    again.close()
    reader = EmbeddedLogReader(root)
    assert reader.partitions == 4
    assert partition_ids(reader, 2) == ["kept", "after"]
    reader.close()


def test_disk_floor_refuses_the_commit_and_stores_nothing(root: Path) -> None:
    free = {"bytes": 10 * 1024 * 1024}
    calls: list[Path] = []

    def disk_free(path: Path) -> int:
        calls.append(path)
        return free["bytes"]

    appender = SegmentAppender(
        root, settings(partitions=2, min_free_disk_bytes=64 * 1024 * 1024), disk_free=disk_free
    )
    with pytest.raises(LogUnavailable) as info:
        appender.commit([[run_of(0, ["refused"])]])
    err = info.value
    assert isinstance(err, LogError)
    assert err.status == 503
    assert err.code == "log_unavailable"
    assert err.retry_after > 0
    assert "disk" in str(err)
    assert set(calls) == {root}  # asked about the disk the log is on
    assert appender.disk_low
    assert appender.commits == 0

    reader = EmbeddedLogReader(root)
    assert reader.end_offsets() == [0, 0]
    assert reader.read(0, 0) == []
    assert reader.size_bytes() == 0
    assert all(f.stat().st_size == 0 for f in segment_files(root))

    # once space is freed, appends resume (the disk is re-checked at most once a second)
    free["bytes"] = 1024**4
    deadline = time.monotonic() + 3
    while True:
        try:
            appender.commit([[run_of(0, ["accepted"])]])
            break
        except LogUnavailable:
            assert time.monotonic() < deadline, "appends did not resume after space was freed"
            time.sleep(0.1)
    assert not appender.disk_low
    assert partition_ids(reader, 0) == ["accepted"]
    assert reader.end_offsets() == [1, 0]
    reader.close()
    appender.close()


def test_interval_fsync_data_visible_at_once_and_sync_clears_the_debt(root: Path) -> None:
    appender = SegmentAppender(
        root, settings(partitions=2, fsync=FsyncPolicy.INTERVAL, fsync_interval_ms=10_000)
    )
    assert not appender.needs_sync
    assert appender.sync_due_in() is None

    appender.commit([[run_of(1, ["i1", "i2"])]])
    reader = EmbeddedLogReader(root)
    assert partition_ids(reader, 1) == ["i1", "i2"]  # acknowledged means readable, before fsync
    assert appender.needs_sync
    due = appender.sync_due_in()
    assert due is not None
    assert 0 < due <= 10.0

    appender.sync()
    assert not appender.needs_sync
    assert appender.sync_due_in() is None
    assert appender.fatal is None

    appender.commit([[run_of(1, ["i3"])]])
    assert appender.needs_sync
    appender.close()  # close forces the rest to disk
    assert partition_ids(reader, 1) == ["i1", "i2", "i3"]
    reader.close()


def test_always_fsync_leaves_nothing_to_sync(root: Path) -> None:
    appender = SegmentAppender(root, settings(partitions=1, fsync=FsyncPolicy.ALWAYS))
    appender.commit([[run_of(0, ["a"])]])
    assert not appender.needs_sync
    assert appender.sync_due_in() is None
    appender.close()


def test_large_group_with_many_runs_is_stored_whole(root: Path) -> None:
    """More buffers than one `pwritev` takes (IOV_MAX) still land as one contiguous commit."""
    appender = SegmentAppender(root, settings(partitions=2))
    groups = [[run_of(i % 2, [f"g{i}"])] for i in range(1500)]
    assert appender.commit(groups) == 1500
    appender.close()

    reader = EmbeddedLogReader(root)
    assert partition_ids(reader, 0) == [f"g{i}" for i in range(0, 1500, 2)]
    assert partition_ids(reader, 1) == [f"g{i}" for i in range(1, 1500, 2)]
    assert [len(read_all(reader, p)) for p in range(2)] == [1, 1]
    reader.close()


def test_commit_each_stores_several_producers_in_one_commit(tmp_path: Path) -> None:
    root = tmp_path / "log"
    appender = SegmentAppender(root, settings(partitions=2))
    assert appender.commit([[run_of(0, ["a1"])]], ("stage-a", 1)) == 1
    kept = appender.commit_each(
        [
            ([run_of(0, ["a1"])], ("stage-a", 1)),  # a replay: its mark is there already
            ([run_of(1, ["b1"])], ("stage-b", 1)),
            ([run_of(0, ["a2"])], ("stage-a", 2)),
            ([run_of(0, ["a2"])], ("stage-a", 2)),  # the same seq again, in the same call
            ([run_of(1, ["free"])], None),  # no producer: always stored
        ]
    )
    assert kept == [False, True, True, False, True]
    assert appender.commits == 2  # the five appends were one commit
    assert appender.produced("stage-a") == 2 and appender.produced("stage-b") == 1
    appender.close()
    reader = EmbeddedLogReader(root)
    assert partition_ids(reader, 0) == ["a1", "a2"]
    assert partition_ids(reader, 1) == ["b1", "free"]
    reader.close()


def test_appends_of_several_tasks_share_commits(tmp_path: Path) -> None:
    """A stage's partitions append concurrently: the appends that wait together go in one
    commit (one fsync), and each keeps its own producer mark."""

    async def go() -> tuple[int, list[str]]:
        log = EmbeddedLog("events", tmp_path / "events", settings(partitions=4))
        try:
            await log.append([run_of(0, ["p0-1"])], "stage-p0", 1)
            await asyncio.gather(
                *(log.append([run_of(p, [f"p{p}-2"])], f"stage-p{p}", 2) for p in range(4)),
                log.append([run_of(0, ["p0-1"])], "stage-p0", 1),  # a replay, stored nothing
            )
            assert log._appender is not None
            commits = log._appender.commits
            ids = [i for p in range(4) for b in await log.read(p, 0) for i in ids_of(b)]
            with pytest.raises(ValueError, match="no partition 9"):
                await log.append([run_of(9, ["x"])])
            return commits, ids
        finally:
            await log.close()

    commits, ids = asyncio.run(go())
    assert commits == 2  # 6 appends: the first alone, the other five together
    assert ids == ["p0-1", "p0-2", "p1-2", "p2-2", "p3-2"]
