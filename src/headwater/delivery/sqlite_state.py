"""The embedded delivery state: retry jobs and dead letters in one SQLite file (WAL).

Every write is one `BEGIN IMMEDIATE` transaction; one connection serves every thread, behind a
lock. Ids come from AUTOINCREMENT, so an id is never given twice (a router may still hold the
id of a job another call finished). Table layout: see `headwater.delivery.states`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from headwater.delivery.state import DeadLetter, RetryJob
from headwater.delivery.states import (
    COLUMNS,
    counts,
    dead_letter_of,
    job_of,
    job_row,
    with_ids,
)

SCHEMA = """
CREATE TABLE IF NOT EXISTS delivery_jobs(
    id INTEGER PRIMARY KEY AUTOINCREMENT, destination TEXT NOT NULL, due_ms INTEGER NOT NULL,
    attempts INTEGER NOT NULL, first_ms INTEGER NOT NULL, reason TEXT NOT NULL, status INTEGER,
    order_key TEXT NOT NULL, message_id TEXT NOT NULL, event BLOB NOT NULL, request BLOB,
    response BLOB);
CREATE INDEX IF NOT EXISTS delivery_jobs_due ON delivery_jobs(destination, due_ms, id);
CREATE INDEX IF NOT EXISTS delivery_jobs_key ON delivery_jobs(destination, order_key);
CREATE UNIQUE INDEX IF NOT EXISTS delivery_jobs_message ON delivery_jobs(destination, message_id);
CREATE TABLE IF NOT EXISTS delivery_dead_letters(
    id INTEGER PRIMARY KEY AUTOINCREMENT, destination TEXT NOT NULL, attempts INTEGER NOT NULL,
    first_ms INTEGER NOT NULL, failed_ms INTEGER NOT NULL, reason TEXT NOT NULL, status INTEGER,
    order_key TEXT NOT NULL, message_id TEXT NOT NULL, event BLOB NOT NULL, request BLOB,
    response BLOB);
CREATE INDEX IF NOT EXISTS delivery_dead_letters_dest ON delivery_dead_letters(destination, id);
"""

BUSY_TIMEOUT_S = 30.0  # another process (the CLI) may hold the write lock for a moment
CACHE_KIB = 65_536  # SQLite's page cache: big adds touch many index pages

_TEMPLATES = {
    # one job per (destination, messageId): a replayed unit keeps no second one
    "add": "INSERT OR IGNORE INTO delivery_jobs({insert}) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
    "due": "SELECT {job} FROM delivery_jobs WHERE destination = ? AND due_ms <= ?"
    " ORDER BY due_ms, id LIMIT ?",
    # an ordered destination's: only each profile's first job (the others wait behind it)
    "first_due": "SELECT {job} FROM delivery_jobs AS j WHERE destination = ? AND due_ms <= ?"
    " AND id = (SELECT min(id) FROM delivery_jobs WHERE destination = j.destination"
    " AND order_key = j.order_key) ORDER BY due_ms, id LIMIT ?",
    "expire": "INSERT INTO delivery_dead_letters(destination, attempts, first_ms, failed_ms,"
    " reason, status, order_key, message_id, event, request, response)"
    " SELECT destination, ?, first_ms, ?, ?, ?, order_key, message_id, event, ?, ?"
    " FROM delivery_jobs WHERE id = ?",
    "dead": "SELECT {dead} FROM delivery_dead_letters WHERE id > ?",
    "redrive": "INSERT OR IGNORE INTO delivery_jobs({insert})"
    " SELECT destination, ?, 0, ?, reason, status, order_key, message_id, event, request,"
    " response FROM delivery_dead_letters WHERE destination = ?",
    "pending": "SELECT destination, count(*) FROM delivery_jobs",
    "dead_count": "SELECT destination, count(*) FROM delivery_dead_letters",
}
Q = {name: template.format(**COLUMNS) for name, template in _TEMPLATES.items()}


class SqliteDeliveryState:
    """`DeliveryState` in the SQLite file at `path` (created if missing)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._conn = sqlite3.connect(
            path, timeout=BUSY_TIMEOUT_S, isolation_level=None, check_same_thread=False
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        with self._write() as conn:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    conn.execute(statement)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, committed when the block ends (rolled back if it raises)."""
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise

    def add(self, jobs: list[RetryJob]) -> list[RetryJob]:
        """Keep `jobs` (their `id` is ignored; one job per destination and messageId: a job
        already kept is not added again); returns them with their jobs' ids."""
        if not jobs:
            return []
        with self._write() as conn:
            conn.executemany(Q["add"], [job_row(j) for j in jobs])
            found: dict[tuple[str, str], int] = {}
            wanted = sorted({(j.destination_id, j.event.message_id) for j in jobs})
            for start in range(0, len(wanted), 400):
                chunk = wanted[start : start + 400]
                pairs = ",".join(["(?,?)"] * len(chunk))
                for dest, mid, id_ in conn.execute(
                    f"WITH w(d, m) AS (VALUES {pairs}) SELECT j.destination, j.message_id, j.id "  # noqa: S608 - placeholders only
                    "FROM w CROSS JOIN delivery_jobs AS j ON j.destination = w.d "
                    "AND j.message_id = w.m",
                    [x for pair in chunk for x in pair],
                ):
                    found[(dest, mid)] = id_
        return with_ids(jobs, (found[(j.destination_id, j.event.message_id)] for j in jobs))

    def keep(self, jobs: list[RetryJob]) -> None:
        """`add` without finding the ids."""
        if jobs:
            with self._write() as conn:
                conn.executemany(Q["add"], [job_row(j) for j in jobs])

    def due(
        self, destination_id: str, now_ms: int, limit: int, first_of_key: bool = False
    ) -> list[RetryJob]:
        """Up to `limit` jobs of the destination due at `now_ms`, the earliest first."""
        with self._lock:
            rows = self._conn.execute(
                Q["first_due" if first_of_key else "due"],
                (destination_id, now_ms, limit),
            ).fetchall()
        return [job_of(r) for r in rows]

    def next_due_ms(self, destination_id: str) -> int | None:
        """When the destination's earliest job is due (None: no job)."""
        with self._lock:
            (due,) = self._conn.execute(
                "SELECT min(due_ms) FROM delivery_jobs WHERE destination = ?", (destination_id,)
            ).fetchone()
        return int(due) if due is not None else None

    def waiting_keys(self, destination_id: str) -> dict[str, int]:
        """The order keys with a job of the destination waiting, and the first job of each."""
        with self._lock:
            rows = self._conn.execute(
                "SELECT order_key, min(id) FROM delivery_jobs WHERE destination = ? "
                "GROUP BY order_key",
                (destination_id,),
            ).fetchall()
        return {key: int(first) for key, first in rows}

    def finish(self, ids: list[int]) -> None:
        """Forget these jobs."""
        if ids:
            with self._write() as conn:
                conn.executemany("DELETE FROM delivery_jobs WHERE id = ?", [(i,) for i in ids])

    def reschedule(self, jobs: list[RetryJob]) -> None:
        """Store the new attempts, due time, reason and samples of these jobs (by id)."""
        if not jobs:
            return
        with self._write() as conn:
            conn.executemany(
                "UPDATE delivery_jobs SET attempts = ?, due_ms = ?, reason = ?, status = ?,"
                " request = ?, response = ? WHERE id = ?",
                [
                    (j.attempts, j.due_ms, j.reason, j.status, j.request, j.response, j.id)
                    for j in jobs
                ],
            )

    def expire(self, jobs: list[RetryJob], now_ms: int) -> None:
        """Turn these jobs (by id) into dead letters failed at `now_ms`."""
        if not jobs:
            return
        with self._write() as conn:
            conn.executemany(
                Q["expire"],
                [
                    (j.attempts, now_ms, j.reason, j.status, j.request, j.response, j.id)
                    for j in jobs
                ],
            )
            conn.executemany("DELETE FROM delivery_jobs WHERE id = ?", [(j.id,) for j in jobs])

    def pending(self, destination_id: str | None = None) -> dict[str, int]:
        """Jobs per destination (those without any are left out)."""
        return self._counts("pending", destination_id)

    def dead_letters(
        self, destination_id: str | None = None, limit: int = 100, after_id: int = 0
    ) -> list[DeadLetter]:
        """Dead letters with `id > after_id`, oldest first (all destinations, or one)."""
        query = Q["dead"]
        params: tuple[int | str, ...] = (after_id,)
        if destination_id is not None:
            query += " AND destination = ?"
            params += (destination_id,)
        with self._lock:
            rows = self._conn.execute(f"{query} ORDER BY id LIMIT ?", (*params, limit)).fetchall()
        return [dead_letter_of(r) for r in rows]

    def dead_count(self, destination_id: str | None = None) -> dict[str, int]:
        """Dead letters per destination (those without any are left out)."""
        return self._counts("dead_count", destination_id)

    def redrive(self, destination_id: str, ids: list[int] | None, now_ms: int) -> int:
        """Turn these dead letters (None: all of the destination's) back into jobs due now."""
        with self._write() as conn:
            if ids is None:
                conn.execute(Q["redrive"] + " ORDER BY id", (now_ms, now_ms, destination_id))
                cur = conn.execute(
                    "DELETE FROM delivery_dead_letters WHERE destination = ?", (destination_id,)
                )
            else:
                chosen = [(destination_id, i) for i in sorted(set(ids))]
                conn.executemany(
                    Q["redrive"] + " AND id = ?", [(now_ms, now_ms, *c) for c in chosen]
                )
                cur = conn.executemany(
                    "DELETE FROM delivery_dead_letters WHERE destination = ? AND id = ?", chosen
                )
            return cur.rowcount

    def delete_dead(self, destination_id: str, ids: list[int] | None) -> int:
        """Delete these dead letters (None: all of the destination's); returns how many."""
        with self._write() as conn:
            if ids is None:
                cur = conn.execute(
                    "DELETE FROM delivery_dead_letters WHERE destination = ?", (destination_id,)
                )
            else:
                cur = conn.executemany(
                    "DELETE FROM delivery_dead_letters WHERE destination = ? AND id = ?",
                    [(destination_id, i) for i in set(ids)],
                )
            return cur.rowcount

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def _counts(self, name: str, destination_id: str | None) -> dict[str, int]:
        query = Q[name]
        with self._lock:
            if destination_id is None:
                rows = self._conn.execute(f"{query} GROUP BY destination").fetchall()
            else:
                rows = self._conn.execute(
                    f"{query} WHERE destination = ? GROUP BY destination", (destination_id,)
                ).fetchall()
        return counts(rows)
