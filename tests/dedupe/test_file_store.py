"""The embedded store's own machinery: fingerprints that collide, runs of fingerprints that
merge, reloading after a restart, a write cut short by a crash, expiry by segment files, and
moving a store of the earlier SQLite layouts."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from headwater.config import load_config
from headwater.paths import DataPaths
from headwater.processing.dedupe import FileDedupeStore, file_store, fingerprints
from headwater.processing.dedupe.store import open_dedupe_store

WINDOW_MS = 10_000
T0 = 1_700_000_000_000


def test_ids_sharing_a_fingerprint_are_told_apart_by_the_stored_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(file_store, "fingerprints", lambda ids: [42] * len(ids))  # all collide
    store = FileDedupeStore(tmp_path / "d", WINDOW_MS)
    ids = [f"id-{i}" for i in range(150)]  # more than two frames
    assert store.claim([(m, f"0:1:{i}") for i, m in enumerate(ids)], T0) == [False] * 150
    again = store.claim([(m, f"0:2:{i}") for i, m in enumerate(ids)], T0 + 1)
    assert again == [True] * 150  # each one a duplicate of itself, not of another id
    assert store.claim([("id-7", "0:1:7"), ("id-new", "0:3:0")], T0 + 2) == [False, False]
    store.close()


def test_claims_survive_merges_of_runs_and_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fingerprints, "MERGE_AT", 7)  # a new run every few claims
    path = tmp_path / "d"
    store = FileDedupeStore(path, WINDOW_MS)
    for batch in range(40):
        claims = [(f"m-{batch}-{i}", f"0:{batch}:{i}") for i in range(5)]
        assert store.claim(claims, T0 + batch) == [False] * 5
    assert 1 < store._index.runs() <= 4  # merged as it went, not one run per seal
    seen = store.claim([(f"m-{b}-0", f"2:0:{b}") for b in range(40)], T0 + 50)
    assert seen == [True] * 40
    store.close()

    store = FileDedupeStore(path, WINDOW_MS)  # reloads the fingerprints from disk
    assert store.count() == 200
    seen = store.claim(
        [(f"m-{b}-{i}", f"1:0:{b * 5 + i}") for b in range(40) for i in range(5)], T0 + 60
    )
    assert seen == [True] * 200
    own = store.claim([("m-3-2", "0:3:2")], T0 + 61)  # a replay finds its own claim
    assert own == [False]
    store.close()


def test_a_write_cut_short_is_cut_off_and_the_claims_before_it_are_kept(tmp_path: Path) -> None:
    store = FileDedupeStore(tmp_path / "d", WINDOW_MS)
    store.claim([("a", "0:1:0"), ("b", "0:1:1")], T0)
    store.claim([("c", "0:2:0")], T0 + 1)
    store.close()
    (segment,) = sorted((tmp_path / "d").iterdir())
    whole = segment.read_bytes()
    segment.write_bytes(whole[:-3])  # the last frame lost its end (a crash mid-write)
    store = FileDedupeStore(tmp_path / "d", WINDOW_MS)
    assert store.count() == 2
    assert store.claim([("a", "0:9:0"), ("c", "0:9:1")], T0 + 2) == [True, False]
    store.close()
    store = FileDedupeStore(tmp_path / "d", WINDOW_MS)  # the cut file and the new claims load
    assert store.count() == 3
    assert store.claim([("c", "0:9:2")], T0 + 3) == [True]
    store.close()


def test_a_corrupt_frame_ends_its_segment_there(tmp_path: Path) -> None:
    store = FileDedupeStore(tmp_path / "d", WINDOW_MS)
    store.claim([("a", "0:1:0")], T0)
    store.claim([("b", "0:2:0")], T0 + 1)
    store.close()
    (segment,) = sorted((tmp_path / "d").iterdir())
    data = bytearray(segment.read_bytes())
    data[-2] ^= 0xFF  # a flipped byte in the last frame: its checksum fails
    segment.write_bytes(bytes(data))
    store = FileDedupeStore(tmp_path / "d", WINDOW_MS)
    assert store.claim([("a", "0:9:0"), ("b", "0:9:1")], T0 + 2) == [True, False]
    store.close()


def test_expiry_deletes_whole_old_segments_and_the_ids_can_be_claimed_anew(
    tmp_path: Path,
) -> None:
    store = FileDedupeStore(tmp_path / "d", WINDOW_MS)
    store.claim([("old-1", "0:1:0"), ("old-2", "0:1:1")], T0)
    store.claim([("new-1", "0:2:0")], T0 + WINDOW_MS)
    assert store.segments() == 2
    assert store.expire(T0 + WINDOW_MS + 1) == 2
    assert store.count() == 1
    assert len(list((tmp_path / "d").iterdir())) == 1
    assert store.claim([("old-1", "0:9:0"), ("new-1", "0:9:1")], T0 + WINDOW_MS + 2) == [
        False,
        True,
    ]
    store.close()
    reopened = FileDedupeStore(tmp_path / "d", WINDOW_MS)
    assert reopened.claim([("old-1", "0:9:9")], T0 + WINDOW_MS + 3) == [True]
    assert reopened.expire(T0 + 3 * WINDOW_MS) == 2  # whatever was claimed, past the window
    assert reopened.count() == 0
    assert list((tmp_path / "d").iterdir()) == []
    assert reopened.claim([("new-1", "0:9:3")], T0 + 3 * WINDOW_MS) == [False]  # after all went
    reopened.close()


def test_a_claim_past_the_window_found_before_expiry_is_claimed_anew(tmp_path: Path) -> None:
    store = FileDedupeStore(tmp_path / "d", WINDOW_MS)
    store.claim([("m", "0:1:0")], T0)
    late = T0 + WINDOW_MS + 1  # not expired yet: the store checks the claim's time
    assert store.claim([("m", "0:2:0")], late) == [False]
    assert store.claim([("m", "0:3:0"), ("m", "0:2:0")], late + 1) == [True, False]
    store.close()


def test_segments_stay_few_however_many_calls(tmp_path: Path) -> None:
    store = FileDedupeStore(tmp_path / "d", WINDOW_MS)
    for call in range(5000):  # a call every 20 ms, for 100 s: 10 windows
        store.claim([(f"m-{call}", f"0:{call}:0")], T0 + call * 20)
        if call % 500 == 0:
            store.expire(T0 + call * 20)
    store.expire(T0 + 5000 * 20)
    assert store.segments() <= file_store.SEGMENTS_PER_WINDOW + 1
    assert len(list((tmp_path / "d").iterdir())) == store.segments()
    assert 0 < store.count() <= WINDOW_MS // 20 + WINDOW_MS // file_store.SEGMENTS_PER_WINDOW
    store.close()


@pytest.mark.parametrize("layout", ["claims_log", "claims"])
def test_claims_of_the_earlier_sqlite_layouts_are_moved(tmp_path: Path, layout: str) -> None:
    paths = DataPaths(tmp_path / "data")
    db = paths.root / "state" / "dedupe.db"
    db.parent.mkdir(parents=True)
    old = sqlite3.connect(db)
    if layout == "claims":
        old.execute(
            "CREATE TABLE claims(id TEXT PRIMARY KEY, position TEXT NOT NULL, ms INTEGER NOT NULL)"
        )
        rows = [("a", "0:1:0", T0), ("b", "0:1:1", T0 + 5)]
        old.executemany("INSERT INTO claims VALUES(?,?,?)", rows)
    else:
        old.execute(
            "CREATE TABLE claims_log(row INTEGER PRIMARY KEY, fp INTEGER NOT NULL, "
            "id TEXT NOT NULL, position TEXT NOT NULL, ms INTEGER NOT NULL)"
        )
        rows2 = [(1, 7, "a", "0:1:0", T0), (2, 8, "b", "0:1:1", T0 + 5)]
        old.executemany("INSERT INTO claims_log VALUES(?,?,?,?,?)", rows2)
    old.commit()
    old.close()
    (tmp_path / "headwater.yaml").write_text("dedupe: {window: 10s}\nworkspaces: []\n")
    config = load_config(tmp_path / "headwater.yaml")
    store = open_dedupe_store(config, paths)
    assert isinstance(store, FileDedupeStore)
    assert not db.exists()
    assert store.count() == 2
    assert store.claim([("a", "0:5:0"), ("b", "0:1:1"), ("c", "0:5:2")], T0 + 6) == [
        True,
        False,
        False,
    ]
    # each claim kept its own time: "a" (T0) has left the window, "b" (T0 + 5) has not
    assert store.claim([("a", "0:6:0"), ("b", "0:6:1")], T0 + WINDOW_MS + 1) == [False, True]
    store.close()
