"""Reading the embedded log (`EmbeddedLogReader`): from any offset, paging, offsets, consumer
groups, and readers in other connections and processes."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from headwater.log.embedded import EmbeddedLogReader, SegmentAppender
from headwater.log.embedded.store import LogLayoutError
from tests.log._helpers import (
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
    """A log with partition 0 holding batches of 3, 5 and 2 records (offsets 0-9), partition 1
    one batch of 4 and partition 2 nothing."""
    root = tmp_path / "log"
    appender = SegmentAppender(root, settings(partitions=3))
    appender.commit([[run_of(0, ["a0", "a1", "a2"]), run_of(1, ["b0", "b1", "b2", "b3"])]])
    appender.commit([[run_of(0, ["a3", "a4", "a5", "a6", "a7"])]])
    appender.commit([[run_of(0, ["a8", "a9"])]])
    appender.close()
    return root


@pytest.fixture
def reader(root: Path) -> Iterator[EmbeddedLogReader]:
    r = EmbeddedLogReader(root)
    yield r
    r.close()


def test_read_from_zero_returns_every_batch_in_order(reader: EmbeddedLogReader) -> None:
    batches = reader.read(0, 0)
    assert [(b.base_offset, b.count, b.end_offset) for b in batches] == [
        (0, 3, 3),
        (3, 5, 8),
        (8, 2, 10),
    ]
    assert [i for b in batches for i in ids_of(b)] == [f"a{i}" for i in range(10)]
    assert all(b.partition == 0 for b in batches)


@pytest.mark.parametrize(
    ("offset", "first_base"),
    [(0, 0), (2, 0), (3, 3), (4, 3), (7, 3), (8, 8), (9, 8)],
)
def test_read_from_any_offset_starts_at_the_batch_holding_it(
    reader: EmbeddedLogReader, offset: int, first_base: int
) -> None:
    batches = reader.read(0, offset)
    assert batches[0].base_offset == first_base
    assert batches[0].base_offset <= offset < batches[0].end_offset
    # a consumer skips the records before its offset and gets exactly the rest
    records = [i for b in batches for i in ids_of(b)][offset - first_base :]
    assert records == [f"a{i}" for i in range(offset, 10)]


def test_read_at_or_past_the_end_is_empty(reader: EmbeddedLogReader) -> None:
    assert reader.read(0, 10) == []
    assert reader.read(0, 1000) == []
    assert reader.read(2, 0) == []


def test_max_records_pages_without_losing_or_repeating(reader: EmbeddedLogReader) -> None:
    assert [b.base_offset for b in reader.read(0, 0, max_records=1)] == [0]  # never empty
    assert [b.base_offset for b in reader.read(0, 0, max_records=4)] == [0, 3]
    assert [b.base_offset for b in reader.read(0, 0, max_records=8)] == [0, 3]

    offset, seen = 0, []
    while page := reader.read(0, offset, max_records=2):
        seen.extend(i for b in page for i in ids_of(b))
        offset = page[-1].end_offset
    assert seen == [f"a{i}" for i in range(10)]


def test_end_and_start_offsets_and_size(root: Path, reader: EmbeddedLogReader) -> None:
    assert reader.partitions == 3
    assert reader.end_offsets() == [10, 4, 0]
    assert reader.start_offsets() == [0, 0, 0]
    assert reader.size_bytes() == sum(f.stat().st_size for f in segment_files(root))
    assert reader.size_bytes() > 0


def test_reader_sees_commits_made_after_it_opened(root: Path, reader: EmbeddedLogReader) -> None:
    before = reader.size_bytes()
    appender = SegmentAppender(root, settings(partitions=3))
    appender.commit([[run_of(2, ["c0"]), run_of(0, ["a10"])]])
    assert reader.end_offsets() == [11, 4, 1]
    assert partition_ids(reader, 2) == ["c0"]
    assert ids_of(reader.read(0, 10)[0]) == ["a10"]
    assert reader.size_bytes() > before
    appender.close()
    assert_dense(reader)


def test_consumer_groups_commit_and_read_back(root: Path, reader: EmbeddedLogReader) -> None:
    assert reader.committed("billing") == {}
    assert reader.groups() == []

    reader.commit("billing", {0: 3, 1: 4})
    reader.commit("warehouse", {0: 8})
    assert reader.committed("billing") == {0: 3, 1: 4}
    assert reader.committed("warehouse") == {0: 8}

    # committing some partitions again moves only those, and only for that group
    reader.commit("billing", {0: 10})
    assert reader.committed("billing") == {0: 10, 1: 4}
    assert reader.committed("warehouse") == {0: 8}
    assert reader.groups() == ["billing", "warehouse"]

    # offsets survive a new connection
    other = EmbeddedLogReader(root)
    assert other.committed("billing") == {0: 10, 1: 4}
    assert other.committed("warehouse") == {0: 8}
    assert other.committed("unknown") == {}
    other.close()


def test_consumer_resumes_from_its_committed_offset(reader: EmbeddedLogReader) -> None:
    reader.commit("etl", {0: 4})
    start = reader.committed("etl")[0]
    batches = read_all(reader, 0, start)
    rest = [i for b in batches for i in ids_of(b)][start - batches[0].base_offset :]
    assert rest == [f"a{i}" for i in range(4, 10)]


def test_group_offsets_and_appends_do_not_disturb_each_other(root: Path) -> None:
    appender = SegmentAppender(root, settings(partitions=3))
    r = EmbeddedLogReader(root)
    for i in range(20):
        appender.commit([[run_of(1, [f"n{i}"])]])
        r.commit("g", {1: r.end_offsets()[1]})
    assert r.committed("g") == {1: 24}
    assert r.end_offsets()[1] == 24
    appender.close()
    r.close()


def test_another_process_reads_committed_data(root: Path) -> None:
    appender = SegmentAppender(root, settings(partitions=3))
    appender.commit([[run_of(2, ["from-parent"])]])  # the appender stays open
    EmbeddedLogReader(root).commit("ext", {0: 7})

    script = (
        "import json, sys\n"
        "from pathlib import Path\n"
        "from headwater.log.embedded import EmbeddedLogReader\n"
        "r = EmbeddedLogReader(Path(sys.argv[1]))\n"
        "out = {'ends': r.end_offsets(), 'committed': r.committed('ext'),\n"
        "       'p0': [json.loads(x.message)['messageId'] for b in r.read(0, 0)\n"
        "              for x in b.records],\n"
        "       'p2': [json.loads(x.message)['messageId'] for b in r.read(2, 0)\n"
        "              for x in b.records]}\n"
        "r.commit('ext', {2: 1})\n"
        "print(json.dumps(out))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script, str(root)],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    out = json.loads(proc.stdout)
    assert out["ends"] == [10, 4, 1]
    assert out["committed"] == {"0": 7}
    assert out["p0"] == [f"a{i}" for i in range(10)]
    assert out["p2"] == ["from-parent"]
    appender.close()

    # and what the other process committed is visible here
    r = EmbeddedLogReader(root)
    assert r.committed("ext") == {0: 7, 2: 1}
    r.close()


def test_reading_across_many_segments(tmp_path: Path) -> None:
    """More segments than the reader keeps open at once are all readable, in any order."""
    root = tmp_path / "log"
    appender = SegmentAppender(root, settings(partitions=2, segment_bytes=600))
    for i in range(60):
        appender.commit([[run_of(i % 2, [f"s{i}"], pad=300)]])
    appender.close()
    assert len(segment_files(root)) > 20

    r = EmbeddedLogReader(root)
    assert partition_ids(r, 0) == [f"s{i}" for i in range(0, 60, 2)]
    # random access back and forth over the segments
    for offset in (29, 0, 15, 3, 28, 10, 1):
        assert ids_of(r.read(1, offset)[0]) == [f"s{2 * offset + 1}"]
    assert partition_ids(r, 1) == [f"s{i}" for i in range(1, 60, 2)]
    r.close()


def test_reader_of_a_missing_log_says_so(tmp_path: Path) -> None:
    with pytest.raises(LogLayoutError, match="no log at"):
        EmbeddedLogReader(tmp_path / "nowhere")


def test_consumers_reading_the_same_batches_share_one_decoding(root: Path) -> None:
    """Several consumer groups of one reader (a router's lanes of several destinations) read
    each batch within moments: with `recent_bytes`, it is read and decoded once."""
    sharing = EmbeddedLogReader(root, recent_bytes=1 << 20)
    try:
        first = sharing.read(0, 0)
        again = sharing.read(0, 3)
        assert [b.records for b in again] == [b.records for b in first[1:]]
        assert all(a.records is b.records for a, b in zip(again, first[1:], strict=True))
        unstamped = sharing.read(0, 0, stamped=False)  # decoded as asked, not as the stamped
        assert all(u.records is not f.records for u, f in zip(unstamped, first, strict=True))
    finally:
        sharing.close()


def test_a_reader_keeps_no_decoded_batches_unless_asked(reader: EmbeddedLogReader) -> None:
    one, two = reader.read(0, 0), reader.read(0, 0)
    assert [b.records for b in one] == [b.records for b in two]
    assert all(a.records is not b.records for a, b in zip(one, two, strict=True))
