"""Where deduplication remembers which position first claimed each `messageId`.

A claim is `(message_id, position)`, the position being where the message sits in the input
log (partition, batch, index): the same message read again after a crash has the same position,
so it finds its own claim and is not a duplicate of itself. A different position claiming an
id that is remembered within the window is a duplicate. Memory stays bounded: the SQLite store
keeps its index on disk (the page cache is capped), Redis expires keys by itself.
"""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Protocol

from headwater.config import Config, parse_duration
from headwater.paths import DataPaths

CHUNK = 500  # ids per query (SQLite's variable limit is 32766; smaller keeps statements cheap)


class DedupeStore(Protocol):
    """Remembers claims for `window_ms`; one owner per key (the input is partitioned by it)."""

    def claim(self, claims: list[tuple[str, str]], now_ms: int) -> list[bool]:
        """For each (message_id, position), in order: True if another position claimed the id
        within the window (a duplicate); else False, and the id is now claimed by `position`."""
        ...

    def expire(self, now_ms: int) -> int:
        """Forget claims older than the window; returns how many went."""
        ...

    def close(self) -> None: ...


class SqliteDedupeStore:
    """Claims in one SQLite table (WAL, `synchronous=NORMAL`: a claim lost to a power loss only
    lets a replayed duplicate through once, it never makes a message a duplicate)."""

    def __init__(self, path: Path, window_ms: int, cache_kib: int = 4 * 1024) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.window_ms = window_ms
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(f"PRAGMA cache_size=-{int(cache_kib)}")
        self._conn.execute(
            "CREATE TABLE IF NOT EXISTS claims("
            "id TEXT PRIMARY KEY, position TEXT NOT NULL, ms INTEGER NOT NULL) WITHOUT ROWID"
        )
        self._conn.execute("CREATE INDEX IF NOT EXISTS claims_by_age ON claims(ms)")
        self._lock = threading.Lock()

    def claim(self, claims: list[tuple[str, str]], now_ms: int) -> list[bool]:
        with self._lock:  # one connection, used from the stage's worker threads
            return self._claim(claims, now_ms)

    def _claim(self, claims: list[tuple[str, str]], now_ms: int) -> list[bool]:
        oldest = now_ms - self.window_ms
        result: list[bool] = []
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for start in range(0, len(claims), CHUNK):
                result += self._claim_chunk(claims[start : start + CHUNK], now_ms, oldest)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return result

    def _claim_chunk(self, chunk: list[tuple[str, str]], now_ms: int, oldest: int) -> list[bool]:
        # One statement claims every new id (the common case); only the ids it could not insert
        # (claimed before, or twice in this chunk) are looked at again.
        conn = self._conn
        values = ",".join("(?,?,?)" for _ in chunk)
        params = [v for mid, position in chunk for v in (mid, position, now_ms)]
        inserted = {
            row[0]
            for row in conn.execute(
                f"INSERT INTO claims VALUES {values} ON CONFLICT(id) DO NOTHING RETURNING id",  # noqa: S608 - placeholders only
                params,
            )
        }
        if len(inserted) == len(chunk):
            return [False] * len(chunk)
        owners: dict[str, tuple[str, int]] = {}
        for mid, pos in chunk:  # an id twice in this chunk: its first position claimed it
            if mid in inserted:
                owners.setdefault(mid, (pos, now_ms))
        rest = list({mid for mid, _pos in chunk if mid not in inserted})
        marks = ",".join("?" * len(rest))
        for mid, position, ms in conn.execute(
            f"SELECT id, position, ms FROM claims WHERE id IN ({marks})",  # noqa: S608 - placeholders only
            rest,
        ):
            owners.setdefault(mid, (position, ms))
        result: list[bool] = []
        renew: list[tuple[str, str, int]] = []
        for mid, position in chunk:
            owner, ms = owners[mid]
            if ms < oldest:  # remembered, but from before the window: claim it anew
                owners[mid] = (position, now_ms)
                renew.append((mid, position, now_ms))
                result.append(False)
            else:
                result.append(owner != position)
        conn.executemany("INSERT OR REPLACE INTO claims VALUES(?,?,?)", renew)
        return result

    def expire(self, now_ms: int) -> int:
        with self._lock:
            cur = self._conn.execute("DELETE FROM claims WHERE ms < ?", (now_ms - self.window_ms,))
            return cur.rowcount

    def count(self) -> int:
        with self._lock:
            return int(self._conn.execute("SELECT count(*) FROM claims").fetchone()[0])

    def close(self) -> None:
        self._conn.close()


def open_dedupe_store(config: Config, paths: DataPaths) -> DedupeStore | None:
    """The store the configuration asks for (None: deduplication is off)."""
    if not config.dedupe.enabled:
        return None
    window_ms = int(parse_duration(config.dedupe.window) * 1000)
    if config.state.backend == "redis":
        import redis

        from headwater.processing.dedupe.redis_store import RedisDedupeStore

        client = redis.Redis.from_url(config.state.url, socket_timeout=10)
        return RedisDedupeStore(client, config.state.prefix, window_ms)
    return SqliteDedupeStore(paths.root / "state" / "dedupe.db", window_ms)
