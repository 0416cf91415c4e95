"""Where the accounting lives: SQLite under the data directory, or Redis (`state.backend`).

Every count is written twice, at minute and at hour grain; minute rows are kept for
`accounting.minute_retention` (48 h) and hour rows for `accounting.retention` (90 d), so the
store stays bounded whatever the traffic. Day views add up hour rows.

A stage's counts are exact under replay: each input partition has a mark (the input offset its
counts reach), and `record` adds a unit's counts only if the mark is still where the caller
last saw it, moving it in the same transaction.
"""

from __future__ import annotations

import sqlite3
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from headwater.accounting.tally import HOUR_MS, MINUTE_MS, SAMPLES_PER_VIOLATION, Tally
from headwater.config import Config, parse_duration
from headwater.paths import DataPaths

GRAINS = (MINUTE_MS, HOUR_MS)
NO_MARK = -1


@dataclass(frozen=True, slots=True)
class Mark:
    """Move `(stage, partition)`'s mark from `expected` to `new` along with the counts."""

    stage: str
    partition: int
    expected: int
    new: int


@dataclass(frozen=True, slots=True)
class OutcomeRow:
    bucket_ms: int
    stage: str
    outcome: str
    reason: str
    count: int


@dataclass(frozen=True, slots=True)
class ViolationRow:
    event: str
    type: str
    field: str
    count: int


@dataclass(frozen=True, slots=True)
class SampleRow:
    event: str
    type: str
    field: str
    at_ms: int
    payload: bytes


class AccountingStore(Protocol):
    """Counts of outcomes and violations per source over time."""

    def mark(self, stage: str, partition: int) -> int:
        """How far `stage`'s counts of input `partition` reach (`NO_MARK`: nowhere yet)."""
        ...

    def record(self, tally: Tally, mark: Mark | None = None) -> bool:
        """Add `tally`; with `mark`, only if the mark is still `mark.expected` (False if not)."""
        ...

    def outcomes(self, source_id: str, from_ms: int, to_ms: int, grain: int) -> list[OutcomeRow]:
        """Rows with `from_ms <= bucket < to_ms` at `grain` (`MINUTE_MS` or `HOUR_MS`)."""
        ...

    def violations(
        self, source_id: str, from_ms: int, to_ms: int, grain: int
    ) -> list[ViolationRow]: ...

    def samples(self, source_id: str) -> list[SampleRow]:
        """The newest few messages of each violation (newest first)."""
        ...

    def expire(self, now_ms: int) -> None:
        """Drop what is past retention."""
        ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class Retention:
    minute_ms: int
    hour_ms: int

    @classmethod
    def from_config(cls, config: Config) -> Retention:
        a = config.accounting
        return cls(
            int(parse_duration(a.minute_retention) * 1000),
            int(parse_duration(a.retention) * 1000),
        )

    def of(self, grain: int) -> int:
        return self.minute_ms if grain == MINUTE_MS else self.hour_ms


SCHEMA = """
CREATE TABLE IF NOT EXISTS outcomes(
    source_id TEXT, grain INTEGER, bucket INTEGER, stage TEXT, outcome TEXT, reason TEXT,
    n INTEGER NOT NULL,
    PRIMARY KEY(source_id, grain, bucket, stage, outcome, reason)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS violations(
    source_id TEXT, grain INTEGER, bucket INTEGER, event TEXT, type TEXT, field TEXT,
    n INTEGER NOT NULL,
    PRIMARY KEY(source_id, grain, bucket, event, type, field)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS samples(
    source_id TEXT, event TEXT, type TEXT, field TEXT, at_ms INTEGER, payload BLOB);
CREATE INDEX IF NOT EXISTS samples_by_key ON samples(source_id, event, type, field, at_ms);
CREATE TABLE IF NOT EXISTS marks(
    stage TEXT, partition INTEGER, position INTEGER NOT NULL,
    PRIMARY KEY(stage, partition)) WITHOUT ROWID;
"""


class SqliteAccountingStore:
    """The accounting in one SQLite file, shared by the gateway workers and the processor."""

    def __init__(self, path: Path, retention: Retention) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.retention = retention
        self._conn = sqlite3.connect(
            path, isolation_level=None, check_same_thread=False, timeout=30.0
        )
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.executescript(SCHEMA)
        self._lock = threading.Lock()  # one connection, used from the stage's worker threads

    def mark(self, stage: str, partition: int) -> int:
        with self._lock:
            return self._mark(stage, partition)

    def _mark(self, stage: str, partition: int) -> int:
        row = self._conn.execute(
            "SELECT position FROM marks WHERE stage=? AND partition=?", (stage, partition)
        ).fetchone()
        return NO_MARK if row is None else int(row[0])

    def record(self, tally: Tally, mark: Mark | None = None) -> bool:
        with self._lock:
            return self._record(tally, mark)

    def _record(self, tally: Tally, mark: Mark | None) -> bool:
        conn = self._conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            if mark is not None:
                if self._mark(mark.stage, mark.partition) != mark.expected:
                    conn.execute("ROLLBACK")
                    return False
                conn.execute(
                    "INSERT OR REPLACE INTO marks VALUES(?,?,?)",
                    (mark.stage, mark.partition, mark.new),
                )
            for table, counts in (("outcomes", tally.outcomes), ("violations", tally.violations)):
                if not counts:
                    continue
                cols = "stage, outcome, reason" if table == "outcomes" else "event, type, field"
                conn.executemany(
                    f"INSERT INTO {table}(source_id, grain, bucket, {cols}, n) "
                    "VALUES(?,?,?,?,?,?,?) ON CONFLICT DO UPDATE SET n = n + excluded.n",
                    [
                        (src, grain, minute - minute % grain, a, b, c, n)
                        for (src, minute, a, b, c), n in counts.items()
                        for grain in GRAINS
                    ],
                )
            self._add_samples(tally)
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return True

    def _add_samples(self, tally: Tally) -> None:
        if not tally.samples:
            return
        conn = self._conn
        conn.executemany(
            "INSERT INTO samples VALUES(?,?,?,?,?,?)",
            [(s.source_id, s.event, s.type, s.field, s.at_ms, s.payload) for s in tally.samples],
        )
        keys = {(s.source_id, s.event, s.type, s.field) for s in tally.samples}
        conn.executemany(
            "DELETE FROM samples WHERE rowid IN (SELECT rowid FROM samples WHERE source_id=? "
            "AND event=? AND type=? AND field=? ORDER BY at_ms DESC LIMIT -1 OFFSET ?)",
            [(*key, SAMPLES_PER_VIOLATION) for key in keys],
        )

    def outcomes(self, source_id: str, from_ms: int, to_ms: int, grain: int) -> list[OutcomeRow]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT bucket, stage, outcome, reason, n FROM outcomes WHERE source_id=? AND "
                "grain=? AND bucket>=? AND bucket<? ORDER BY bucket, stage, outcome, reason",
                (source_id, grain, from_ms, to_ms),
            ).fetchall()
        return [OutcomeRow(*row) for row in rows]

    def violations(
        self, source_id: str, from_ms: int, to_ms: int, grain: int
    ) -> list[ViolationRow]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT event, type, field, sum(n) FROM violations WHERE source_id=? AND grain=? "
                "AND bucket>=? AND bucket<? GROUP BY event, type, field",
                (source_id, grain, from_ms, to_ms),
            ).fetchall()
        return [ViolationRow(*row) for row in rows]

    def samples(self, source_id: str) -> list[SampleRow]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT event, type, field, at_ms, payload FROM samples WHERE source_id=? "
                "ORDER BY at_ms DESC",
                (source_id,),
            ).fetchall()
        return [SampleRow(e, t, f, at, bytes(p)) for e, t, f, at, p in rows]

    def expire(self, now_ms: int) -> None:
        r = self.retention
        with self._lock, self._conn:
            for table in ("outcomes", "violations"):
                for grain in GRAINS:
                    self._conn.execute(
                        f"DELETE FROM {table} WHERE grain=? AND bucket<?",  # noqa: S608
                        (grain, now_ms - r.of(grain)),
                    )
            self._conn.execute("DELETE FROM samples WHERE at_ms<?", (now_ms - r.hour_ms,))

    def close(self) -> None:
        self._conn.close()


def open_accounting(config: Config, paths: DataPaths) -> AccountingStore:
    """The store `state.backend` names: SQLite under the data directory, or Redis."""
    retention = Retention.from_config(config)
    if config.state.backend == "redis":
        import redis

        from headwater.accounting.redis_store import RedisAccountingStore

        client = redis.Redis.from_url(config.state.url, socket_timeout=10)
        return RedisAccountingStore(client, config.state.prefix, retention)
    return SqliteAccountingStore(paths.root / "state" / "accounting.db", retention)
