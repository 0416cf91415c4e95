"""Which recent events belong to which profile: sorted runs of (profile key, event number),
written once per transaction and merged as they grow, instead of an index entry per event.

Events are numbered in the order they are written (their `seq`, see `event_batches`). An index
on (profile, seq) would put each event on a random page of a large B-tree: at 1M profiles
that is a 4 KiB page written per event. Here a transaction adds one row to
`profile_event_runs` holding its events' (profile key, seq) pairs sorted, as two arrays of
little-endian int64; runs merge like a binary counter (a run absorbs the newer one while it
is at most four times its size), so an entry is rewritten a few times in its life, always
sequentially, and a profile's events are found by a binary search in each of a handful of
runs (read through SQLite's incremental blob I/O, a few bytes at a time).

A profile key is a 64-bit hash of (workspace, profile id): two profiles sharing one would see
each other's events listed, so the reader keeps only rows whose profile is the one asked for.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

import numpy as np
from xxhash import xxh3_64_intdigest

from headwater.identity.event_batches import oldest_event_seq

RUNS_SCHEMA = """
CREATE TABLE IF NOT EXISTS profile_event_runs(
    id INTEGER PRIMARY KEY, workspace TEXT NOT NULL, size INTEGER NOT NULL,
    last_seq INTEGER NOT NULL, keys BLOB NOT NULL, seqs BLOB NOT NULL);
"""

RUN_RATIO = 4
WINDOW = 512  # entries read at once once the binary search has narrowed to this many
_BIAS = 1 << 63


def profile_key(workspace: str, profile_id: str) -> int:
    """The run key of a profile (a signed 64-bit integer)."""
    return xxh3_64_intdigest(f"{workspace}\x1f{profile_id}".encode()) - _BIAS


def add_run(conn: sqlite3.Connection, workspace: str, keys: list[int], seqs: Sequence[int]) -> None:
    """Index events `seqs` of the profiles `keys` (inside the caller's transaction), then
    merge runs that have become of a size."""
    if not keys:
        return
    k = np.fromiter(keys, np.int64, len(keys))
    s = np.fromiter(seqs, np.int64, len(seqs))
    order = np.argsort(k, kind="stable")  # seq ascending within a key
    conn.execute(
        "INSERT INTO profile_event_runs(workspace, size, last_seq, keys, seqs) VALUES(?,?,?,?,?)",
        (workspace, len(keys), int(s.max()), k[order].tobytes(), s[order].tobytes()),
    )
    _merge_runs(conn, workspace)


def _merge_runs(conn: sqlite3.Connection, workspace: str) -> None:
    runs = conn.execute(
        "SELECT id, size FROM profile_event_runs WHERE workspace = ? ORDER BY id", (workspace,)
    ).fetchall()
    while len(runs) >= 2 and runs[-2][1] <= RUN_RATIO * runs[-1][1]:
        (older, _), (newer, _) = runs[-2], runs.pop()
        low = oldest_event_seq(conn, workspace)  # events below it expired: their entries go
        parts = [
            (np.frombuffer(keys, np.int64), np.frombuffer(seqs, np.int64))
            for keys, seqs in conn.execute(
                "SELECT keys, seqs FROM profile_event_runs WHERE id IN (?, ?) ORDER BY id",
                (older, newer),
            )
        ]
        k = np.concatenate([p[0] for p in parts])
        s = np.concatenate([p[1] for p in parts])
        keep = s >= low
        k, s = k[keep], s[keep]
        order = np.lexsort((s, k))
        conn.execute(
            "UPDATE profile_event_runs SET size = ?, last_seq = max(last_seq, "
            "(SELECT last_seq FROM profile_event_runs WHERE id = ?)), keys = ?, seqs = ? "
            "WHERE id = ?",
            (len(k), newer, k[order].tobytes(), s[order].tobytes(), older),
        )
        conn.execute("DELETE FROM profile_event_runs WHERE id = ?", (newer,))
        runs[-1] = (older, len(k))


def drop_runs_below(conn: sqlite3.Connection, workspace: str, seq: int) -> None:
    """Forget runs whose every event is older than `seq` (expired)."""
    conn.execute(
        "DELETE FROM profile_event_runs WHERE workspace = ? AND last_seq < ?", (workspace, seq)
    )


def event_seqs(conn: sqlite3.Connection, workspace: str, keys: list[int]) -> list[int]:
    """The numbers of every indexed event of the profiles `keys`, newest first (call inside
    a read transaction: runs merge meanwhile)."""
    found: list[int] = []
    runs = conn.execute(
        "SELECT id, size FROM profile_event_runs WHERE workspace = ? AND size > 0", (workspace,)
    ).fetchall()
    for run_id, size in runs:
        with (
            conn.blobopen("profile_event_runs", "keys", run_id, readonly=True) as key_blob,
            conn.blobopen("profile_event_runs", "seqs", run_id, readonly=True) as seq_blob,
        ):
            for key in keys:
                start, end = _span(key_blob, size, key)
                if end > start:
                    found += np.frombuffer(_read(seq_blob, start, end), np.int64).tolist()
    found.sort(reverse=True)
    return found


def _read(blob: sqlite3.Blob, start: int, end: int) -> bytes:
    """Entries [start, end) of a blob of int64s."""
    blob.seek(start * 8)
    return blob.read((end - start) * 8)


def _span(blob: sqlite3.Blob, size: int, key: int) -> tuple[int, int]:
    """Where `key` sits in a run's sorted keys: [start, end)."""
    lo, hi = 0, size
    while hi - lo > WINDOW:  # narrow to a window, reading one key per step
        mid = (lo + hi) // 2
        if int.from_bytes(_read(blob, mid, mid + 1), "little", signed=True) < key:
            lo = mid + 1
        else:
            hi = mid
    window = np.frombuffer(_read(blob, lo, hi), np.int64)
    start = end = lo + int(np.searchsorted(window, key, "left"))
    while end < size:  # what follows is >= key: count the equal ones, past windows if need be
        chunk = np.frombuffer(_read(blob, end, min(size, end + WINDOW)), np.int64)
        equal = int(np.searchsorted(chunk, key, "right"))
        end += equal
        if equal < len(chunk):
            break
    return start, end
