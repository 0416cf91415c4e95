"""The embedded store's own machinery: fingerprints that collide, merges of fresh claims,
reloading after a restart, and expiry by rows."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from headwater.processing.dedupe import SqliteDedupeStore, fingerprints, sqlite_store

WINDOW_MS = 10_000
T0 = 1_700_000_000_000


def test_ids_sharing_a_fingerprint_are_told_apart_by_the_stored_id(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_store, "fingerprint", lambda _m: 42)  # every id collides
    store = SqliteDedupeStore(tmp_path / "d.db", WINDOW_MS)
    ids = [f"id-{i}" for i in range(50)]
    assert store.claim([(m, f"0:1:{i}") for i, m in enumerate(ids)], T0) == [False] * 50
    again = store.claim([(m, f"0:2:{i}") for i, m in enumerate(ids)], T0 + 1)
    assert again == [True] * 50  # each one a duplicate of itself, not of another id
    assert store.claim([("id-7", "0:1:7"), ("id-new", "0:3:0")], T0 + 2) == [False, False]
    store.close()


def test_claims_survive_merges_and_a_restart(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fingerprints, "MERGE_AT", 7)  # merge every few claims
    path = tmp_path / "d.db"
    store = SqliteDedupeStore(path, WINDOW_MS)
    for batch in range(20):
        claims = [(f"m-{batch}-{i}", f"0:{batch}:{i}") for i in range(5)]
        assert store.claim(claims, T0 + batch) == [False] * 5
    store.close()

    store = SqliteDedupeStore(path, WINDOW_MS)  # reloads the fingerprints from disk
    assert store.count() == 100
    seen = store.claim(
        [(f"m-{b}-{i}", f"1:0:{b * 5 + i}") for b in range(20) for i in range(5)], T0 + 30
    )
    assert seen == [True] * 100
    own = store.claim([("m-3-2", "0:3:2")], T0 + 31)  # a replay finds its own claim
    assert own == [False]
    store.close()


def test_expiry_forgets_whole_old_calls_and_the_ids_can_be_claimed_anew(tmp_path: Path) -> None:
    store = SqliteDedupeStore(tmp_path / "d.db", WINDOW_MS)
    store.claim([("old-1", "0:1:0"), ("old-2", "0:1:1")], T0)
    store.claim([("new-1", "0:2:0")], T0 + WINDOW_MS)
    assert store.expire(T0 + WINDOW_MS + 1) == 2
    assert store.count() == 1
    assert store.claim([("old-1", "0:9:0"), ("new-1", "0:9:1")], T0 + WINDOW_MS + 2) == [
        False,
        True,
    ]
    store.close()
    reopened = SqliteDedupeStore(tmp_path / "d.db", WINDOW_MS)
    assert reopened.claim([("old-1", "0:9:9")], T0 + WINDOW_MS + 3) == [True]
    assert reopened.expire(T0 + 3 * WINDOW_MS) == 2  # whatever was claimed, past the window
    assert reopened.count() == 0
    reopened.close()


def test_claims_of_the_earlier_layout_are_kept(tmp_path: Path) -> None:
    path = tmp_path / "d.db"
    old = sqlite3.connect(path)
    old.execute(
        "CREATE TABLE claims(id TEXT PRIMARY KEY, position TEXT NOT NULL, ms INTEGER NOT NULL) "
        "WITHOUT ROWID"
    )
    old.executemany("INSERT INTO claims VALUES(?,?,?)", [("a", "0:1:0", T0), ("b", "0:1:1", T0)])
    old.commit()
    old.close()
    store = SqliteDedupeStore(path, WINDOW_MS)
    assert store.count() == 2
    assert store.claim([("a", "0:5:0"), ("b", "0:1:1"), ("c", "0:5:2")], T0 + 1) == [
        True,
        False,
        False,
    ]
    store.close()


def test_what_expiry_keeps_in_memory_stays_small_however_many_calls(tmp_path: Path) -> None:
    store = SqliteDedupeStore(tmp_path / "d.db", WINDOW_MS)
    for call in range(5000):  # a call every 20 ms, for 100 s: 10 windows
        store.claim([(f"m-{call}", f"0:{call}:0")], T0 + call * 20)
        if call % 500 == 0:
            store.expire(T0 + call * 20)
    assert len(store._stretches) <= 1000 + 1
    store.expire(T0 + 5000 * 20)
    assert 0 < store.count() <= WINDOW_MS // 20 + 1  # about one window of claims is left
    store.close()
