"""The embedded dedupe store: claims appended to a SQLite table, found by fingerprint.

Real messageIds are random (UUID v4), and a B-tree keyed by a random value writes a page per
insert once it outgrows its cache. So claims are appended in arrival order (rows numbered by
the store: sequential writes, one small row each) and found through a `FingerprintIndex` in RAM
(16 bytes per claim). The disk is read only when a fingerprint matches (a duplicate, a replay,
or a fingerprint collision, which comparing the stored id tells apart). Claims older than the
window go in row order: rows are appended in time order, and the store remembers stretches of
rows with their first and last times (about a thousand per window).

WAL with `synchronous=NORMAL`: a claim lost to a power loss only lets a replayed duplicate
through once; it never makes a message a duplicate.
"""

from __future__ import annotations

import bisect
import sqlite3
import threading
from pathlib import Path

import numpy as np

from headwater.processing.dedupe.fingerprints import FingerprintIndex, fingerprint

LOAD_CHUNK = 100_000
INSERT_ROWS = 500  # rows per INSERT statement (5 variables each; SQLite allows 32766)

SCHEMA = """
CREATE TABLE IF NOT EXISTS claims_log(
    row INTEGER PRIMARY KEY, fp INTEGER NOT NULL, id TEXT NOT NULL,
    position TEXT NOT NULL, ms INTEGER NOT NULL);
"""


class SqliteDedupeStore:
    """Claims on disk in one SQLite file, looked up through fingerprints in RAM."""

    def __init__(self, path: Path, window_ms: int) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.window_ms = window_ms
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(SCHEMA)
        self._upgrade()
        self._lock = threading.Lock()  # one connection, used from the stage's worker threads
        self._index = FingerprintIndex()
        # Rows in stretches of time, in row order: [first row, first ms, last ms]; a stretch
        # spans at most a thousandth of the window, so there are about a thousand of them.
        self._stretches: list[list[int]] = []
        self._stretch_ms = max(1, window_ms // 1000)
        self._next_row = 1
        self._load()

    def _upgrade(self) -> None:
        """Move the claims of the earlier layout (a table keyed by the id) into the log."""
        conn = self._conn
        if not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'claims'").fetchone():
            return
        conn.execute("BEGIN IMMEDIATE")
        rows = conn.execute("SELECT id, position, ms FROM claims ORDER BY ms").fetchall()
        first = int(conn.execute("SELECT coalesce(max(row), 0) FROM claims_log").fetchone()[0])
        conn.executemany(
            "INSERT INTO claims_log VALUES(?,?,?,?,?)",
            [(first + 1 + i, fingerprint(m), m, p, ms) for i, (m, p, ms) in enumerate(rows)],
        )
        conn.execute("DROP TABLE claims")
        conn.execute("COMMIT")

    def _load(self) -> None:
        """Rebuild the fingerprints and the calls' first rows from the table."""
        blocks: list[np.ndarray] = []
        cursor = self._conn.execute("SELECT fp, row, ms FROM claims_log ORDER BY row")
        while chunk := cursor.fetchmany(LOAD_CHUNK):
            blocks.append(np.array(chunk, np.int64))
        if not blocks:
            return
        table = np.concatenate(blocks)
        fps, rows, ms = table[:, 0], table[:, 1], table[:, 2]
        firsts = np.concatenate(([0], np.flatnonzero(np.diff(ms)) + 1))  # a call's rows share ms
        for row, at in zip(rows[firsts].tolist(), ms[firsts].tolist(), strict=True):
            self._extend_stretches(row, at)
        self._next_row = int(rows[-1]) + 1
        self._index.load(fps, rows)

    def claim(self, claims: list[tuple[str, str]], now_ms: int) -> list[bool]:
        with self._lock:
            return self._claim(claims, now_ms)

    def _claim(self, claims: list[tuple[str, str]], now_ms: int) -> list[bool]:
        oldest = now_ms - self.window_ms
        fps = [fingerprint(mid) for mid, _pos in claims]
        maybe = self._index.candidates(fps)
        if not maybe and len({mid for mid, _pos in claims}) == len(claims):
            # the common case: every id is new, and once; claimed in one go
            first = self._next_row
            fresh = [
                (first + i, fp, mid, position, now_ms)
                for i, ((mid, position), fp) in enumerate(zip(claims, fps, strict=True))
            ]
            if fresh:
                self._write(fresh, [], now_ms)
            return [False] * len(claims)
        owners: dict[str, str] = {}  # id -> the position that holds it, as of this call
        stale: list[int] = []  # rows claimed before the window, claimed anew now
        new: list[tuple[int, int, str, str, int]] = []
        result: list[bool] = []
        for i, (mid, position) in enumerate(claims):
            owner = owners.get(mid)
            rows = maybe.get(i)
            if owner is None and rows:
                found = self._stored(rows, mid)
                if found is not None and found[2] >= oldest:
                    owner = owners[mid] = found[1]
                elif found is not None:
                    stale.append(found[0])
            if owner is not None:
                result.append(owner != position)
                continue
            owners[mid] = position
            new.append((self._next_row + len(new), fps[i], mid, position, now_ms))
            result.append(False)
        if new or stale:
            self._write(new, stale, now_ms)
        return result

    def _stored(self, rows: list[int], message_id: str) -> tuple[int, str, int] | None:
        """(row, position, ms) of the claim of `message_id` among `rows`, if one holds it."""
        marks = ",".join("?" * len(rows))
        found = self._conn.execute(
            f"SELECT row, position, ms FROM claims_log WHERE row IN ({marks}) AND id = ? "  # noqa: S608 - placeholders only
            "ORDER BY row DESC LIMIT 1",
            [*rows, message_id],
        ).fetchone()
        return None if found is None else (found[0], found[1], found[2])

    def _write(self, new: list[tuple[int, int, str, str, int]], stale: list[int], ms: int) -> None:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.executemany("DELETE FROM claims_log WHERE row = ?", [(r,) for r in stale])
            for start in range(0, len(new), INSERT_ROWS):  # a few big statements
                rows = new[start : start + INSERT_ROWS]
                values = ",".join(["(?,?,?,?,?)"] * len(rows))
                conn.execute(
                    f"INSERT INTO claims_log VALUES {values}",  # noqa: S608 - placeholders only
                    [v for row in rows for v in row],
                )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        if new:
            self._extend_stretches(new[0][0], ms)
            self._next_row = new[-1][0] + 1
            self._index.add([c[1] for c in new], [c[0] for c in new])

    def _extend_stretches(self, row: int, ms: int) -> None:
        """Rows from `row` on were claimed at `ms` (not before the last claims)."""
        last = self._stretches[-1] if self._stretches else None
        if last is None or ms - last[1] >= self._stretch_ms:
            self._stretches.append([row, ms, ms])
        else:
            last[2] = max(last[2], ms)

    def expire(self, now_ms: int) -> int:
        """Delete the claims older than the window, a whole stretch of rows at a time (a claim
        kept a little longer is harmless: its time is checked when it is found)."""
        with self._lock:
            cutoff_ms = now_ms - self.window_ms
            old = bisect.bisect_left(self._stretches, cutoff_ms, key=lambda s: s[2])
            if old == 0:
                return 0
            below = self._next_row if old == len(self._stretches) else self._stretches[old][0]
            cur = self._conn.execute("DELETE FROM claims_log WHERE row < ?", (below,))
            del self._stretches[:old]
            self._index.drop_rows_below(below)
            return cur.rowcount

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM claims_log").fetchone()[0])

    def close(self) -> None:
        self._conn.close()
