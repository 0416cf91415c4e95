"""Profiles: traits, recent events and group links, next to the identity graph.

Written in the transaction that writes the graph (`SqliteIdentityStore.save`), under the
profile a message resolved to at the time. A profile merged since keeps its rows: reading a
profile gathers the rows of every profile merged into it (`members`), so a merge rewrites
nothing. Traits: for each name, the value set last (by the time its message was received;
processing order on a tie) wins, and `null` removes the trait.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field
from typing import Any

import msgspec

from headwater.events.stored import records_of_run

PROFILE_SCHEMA = """
CREATE INDEX IF NOT EXISTS profiles_by_merge ON profiles(workspace, merged_into);
CREATE TABLE IF NOT EXISTS profile_traits(
    workspace TEXT NOT NULL, profile TEXT NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL,
    updated_ms INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY(workspace, profile, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS profile_events(
    seq INTEGER PRIMARY KEY, workspace TEXT NOT NULL, profile TEXT NOT NULL,
    at_ms INTEGER NOT NULL, message_id TEXT NOT NULL, source_id TEXT NOT NULL,
    message BLOB NOT NULL, stamp BLOB);
CREATE INDEX IF NOT EXISTS profile_events_by_profile ON profile_events(workspace, profile, seq);
CREATE TABLE IF NOT EXISTS profile_links(
    workspace TEXT NOT NULL, profile TEXT NOT NULL, collection TEXT NOT NULL, id TEXT NOT NULL,
    first_ms INTEGER NOT NULL, PRIMARY KEY(workspace, profile, collection, id)) WITHOUT ROWID;
"""

_encode = msgspec.json.encode


@dataclass
class ProfileChange:
    """What one resolved message brings to its profile."""

    profile_id: str
    message_id: str
    source_id: str
    at_ms: int
    message: bytes
    traits: dict[str, Any] = field(default_factory=dict)
    group_id: str | None = None
    stamp: bytes | None = None  # the request's stamp, applied when the event is read


def write_changes(conn: sqlite3.Connection, workspace: str, changes: list[ProfileChange]) -> None:
    """Write `changes` (inside the caller's transaction), in order."""
    if not changes:
        return
    seq = int(conn.execute("SELECT coalesce(max(seq), 0) FROM profile_events").fetchone()[0])
    traits = []
    for i, c in enumerate(changes):
        traits += [
            (workspace, c.profile_id, name, _encode(value), c.at_ms, seq + i)
            for name, value in c.traits.items()
        ]
    conn.executemany(  # a later message's value replaces an earlier one's, not the reverse
        "INSERT INTO profile_traits VALUES(?,?,?,?,?,?) ON CONFLICT DO UPDATE SET "
        "value = excluded.value, updated_ms = excluded.updated_ms, seq = excluded.seq "
        "WHERE excluded.updated_ms >= profile_traits.updated_ms",
        traits,
    )
    conn.executemany(
        "INSERT INTO profile_events(workspace, profile, at_ms, message_id, source_id, message, "
        "stamp) VALUES(?,?,?,?,?,?,?)",
        [
            (workspace, c.profile_id, c.at_ms, c.message_id, c.source_id, c.message, c.stamp)
            for c in changes
        ],
    )
    conn.executemany(
        "INSERT OR IGNORE INTO profile_links VALUES(?,?,'groups',?,?)",
        [(workspace, c.profile_id, c.group_id, c.at_ms) for c in changes if c.group_id],
    )


def expire_events(conn: sqlite3.Connection, workspace: str, before_ms: int) -> int:
    """Delete `workspace`'s recent events received before `before_ms`. Events are numbered in
    the order they were written, which is the order of their receipt times but for clock
    steps, so the cut is found by bisecting the numbers (no index on time to keep up)."""
    lo = int(conn.execute("SELECT coalesce(min(seq), 0) FROM profile_events").fetchone()[0])
    hi = int(conn.execute("SELECT coalesce(max(seq), 0) FROM profile_events").fetchone()[0]) + 1
    while lo < hi:  # the first event received at or after `before_ms`
        mid = (lo + hi) // 2
        row = conn.execute(
            "SELECT seq, at_ms FROM profile_events WHERE seq >= ? ORDER BY seq LIMIT 1", (mid,)
        ).fetchone()
        if row is None or row[1] >= before_ms:
            hi = mid
        else:
            lo = int(row[0]) + 1
    return conn.execute(
        "DELETE FROM profile_events WHERE seq < ? AND workspace = ?", (lo, workspace)
    ).rowcount


def _stamped(source_id: str, message: bytes, stamp: bytes | None) -> bytes:
    if stamp is None:
        return message
    records = records_of_run(source_id, stamp, b"[" + message + b"]")
    return records[0].message if records else message


def migrate(conn: sqlite3.Connection) -> None:
    """Columns that stores made by earlier versions lack."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(profile_events)")}
    if "stamp" not in columns:
        conn.execute("ALTER TABLE profile_events ADD COLUMN stamp BLOB")


class ProfileReader:
    """Reads of one workspace's profiles (what the Profile API and the CLI answer)."""

    def __init__(self, conn: sqlite3.Connection, workspace: str) -> None:
        self.conn = conn
        self.workspace = workspace

    def members(self, canonical: str) -> list[str]:
        """`canonical` and every profile merged into it, through every merge."""
        rows = self.conn.execute(
            "WITH RECURSIVE m(id) AS (SELECT ? UNION SELECT p.id FROM profiles AS p "
            "JOIN m ON p.workspace = ? AND p.merged_into = m.id) SELECT id FROM m",
            (canonical, self.workspace),
        ).fetchall()
        return [r[0] for r in rows]

    def _in(self, members: list[str]) -> str:
        return ",".join("?" * len(members))

    def traits(self, canonical: str) -> dict[str, Any]:
        members = self.members(canonical)
        best: dict[str, tuple[int, int, Any]] = {}
        for name, value, updated_ms, seq in self.conn.execute(
            "SELECT name, value, updated_ms, seq FROM profile_traits "  # noqa: S608 - placeholders only
            f"WHERE workspace = ? AND profile IN ({self._in(members)})",
            (self.workspace, *members),
        ):
            if name not in best or (updated_ms, seq) >= best[name][:2]:
                best[name] = (updated_ms, seq, value)
        out = {n: msgspec.json.decode(v) for n, (_u, _s, v) in sorted(best.items())}
        return {n: v for n, v in out.items() if v is not None}  # null removes a trait

    def events(
        self, canonical: str, limit: int, before_seq: int | None = None
    ) -> list[tuple[int, bytes]]:
        """(seq, message as stored readers see it: stamped) of recent events, newest first,
        older than `before_seq`."""
        members = self.members(canonical)
        return [
            (int(seq), _stamped(source_id, bytes(message), stamp))
            for seq, source_id, message, stamp in self.conn.execute(
                "SELECT seq, source_id, message, stamp FROM profile_events "  # noqa: S608 - placeholders only
                f"WHERE workspace = ? AND profile IN ({self._in(members)}) AND seq < ? "
                "ORDER BY seq DESC LIMIT ?",
                (self.workspace, *members, before_seq or 1 << 62, limit),
            )
        ]

    def links(self, canonical: str) -> list[tuple[str, str, int]]:
        """(collection, id, first seen) of the profile's links, oldest first."""
        members = self.members(canonical)
        rows = self.conn.execute(
            "SELECT collection, id, min(first_ms) FROM profile_links "  # noqa: S608 - placeholders only
            f"WHERE workspace = ? AND profile IN ({self._in(members)}) "
            "GROUP BY collection, id ORDER BY 3, 2",
            (self.workspace, *members),
        ).fetchall()
        return [(c, i, int(ms)) for c, i, ms in rows]

    def external_ids(self, canonical: str) -> list[tuple[str, str, int, str, str]]:
        """(type, value, first seen, first message, source) of every identifier, oldest
        first."""
        rows = self.conn.execute(
            "SELECT kind, value, first_ms, message_id, source_id FROM identifiers "
            "INDEXED BY identifiers_by_profile WHERE workspace = ? AND profile = ? "
            "ORDER BY first_ms, kind, value",
            (self.workspace, canonical),
        ).fetchall()
        return [(k, v, int(ms), m, s) for k, v, ms, m, s in rows]

    def metadata(self, canonical: str) -> dict[str, Any] | None:
        """Created and updated times, first and last messages (None: no such profile)."""
        row = self.conn.execute(
            "SELECT created_ms FROM profiles WHERE workspace = ? AND id = ?",
            (self.workspace, canonical),
        ).fetchone()
        if row is None:
            return None
        members = self.members(canonical)
        first = self.conn.execute(  # the message that brought its first identifier
            "SELECT first_ms, message_id FROM identifiers INDEXED BY identifiers_by_profile "
            "WHERE workspace = ? AND profile = ? ORDER BY first_ms LIMIT 1",
            (self.workspace, canonical),
        ).fetchone()
        last = self.conn.execute(
            "SELECT at_ms, message_id FROM profile_events "  # noqa: S608 - placeholders only
            f"WHERE workspace = ? AND profile IN ({self._in(members)}) "
            "ORDER BY at_ms DESC, seq DESC LIMIT 1",  # received last, not processed last
            (self.workspace, *members),
        ).fetchone()
        return {
            "created_ms": int(row[0]),
            "updated_ms": int(last[0]) if last else int(row[0]),
            "first_message": {"id": first[1], "at_ms": int(first[0])} if first else None,
            "last_message": {"id": last[1], "at_ms": int(last[0])} if last else None,
            "merged_profiles": [m for m in members if m != canonical],
        }
