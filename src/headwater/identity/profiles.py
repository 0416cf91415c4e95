"""Profiles: traits, recent events and group links, next to the identity graph.

Written in the transaction that writes the graph (`sqlite_writer`), under the
profile a message resolved to at the time. A profile merged since keeps its rows: reading a
profile gathers the rows of every profile merged into it (`members`), so a merge rewrites
nothing. Traits: for each name, the value set last (by the time its message was received;
processing order on a tie) wins, and `null` removes the trait.
"""

from __future__ import annotations

import sqlite3
from typing import Any

import msgspec

from headwater.events.stored import records_of_run
from headwater.identity.event_batches import (
    BATCHES_SCHEMA,
    Event,
    expire_batches,
    migrate_event_rows,
    oldest_event_seq,
    read_events,
)
from headwater.identity.event_runs import (
    RUNS_SCHEMA,
    add_run,
    drop_runs_below,
    event_seqs,
    profile_key,
)

PROFILE_SCHEMA = (
    RUNS_SCHEMA
    + BATCHES_SCHEMA
    + """
CREATE INDEX IF NOT EXISTS profiles_by_merge ON profiles(workspace, merged_into)
    WHERE merged_into IS NOT NULL;
CREATE TABLE IF NOT EXISTS profile_traits(
    workspace TEXT NOT NULL, profile TEXT NOT NULL, name TEXT NOT NULL, value BLOB NOT NULL,
    updated_ms INTEGER NOT NULL, seq INTEGER NOT NULL,
    PRIMARY KEY(workspace, profile, name)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS profile_links(
    workspace TEXT NOT NULL, profile TEXT NOT NULL, collection TEXT NOT NULL, id TEXT NOT NULL,
    first_ms INTEGER NOT NULL, PRIMARY KEY(workspace, profile, collection, id)) WITHOUT ROWID;
"""
)

LAST_MESSAGE_AMONG = 1000  # the last message received: the latest of the newest this many


class ProfileChange(msgspec.Struct):
    """What one resolved message brings to its profile."""

    profile_id: str
    message_id: str
    source_id: str
    at_ms: int
    message: bytes
    traits: dict[str, Any] = msgspec.field(default_factory=dict)
    group_id: str | None = None
    stamp: bytes | None = None  # the request's stamp, applied when the event is read


def expire_events(conn: sqlite3.Connection, workspace: str, before_ms: int) -> int:
    """Forget `workspace`'s recent events received before `before_ms` (by whole batches);
    returns how many went."""
    gone = expire_batches(conn, workspace, before_ms)
    drop_runs_below(conn, workspace, oldest_event_seq(conn, workspace))
    return gone


def _stamped(source_id: str, message: bytes, stamp: bytes | None) -> bytes:
    """An event as readers of the `events` log see it: the request's stamp applied."""
    if stamp is None:
        return message
    records = records_of_run(source_id, stamp, b"[" + message + b"]")
    return records[0].message if records else message


def migrate(conn: sqlite3.Connection) -> None:
    """What stores made by earlier versions lack: identifiers on profile rows, events in
    batches found by runs (not a row and an index entry each)."""
    columns = {row[1] for row in conn.execute("PRAGMA table_info(profiles)")}
    if "held" not in columns:  # a profile's identifiers on its row, not found by an index
        conn.execute("BEGIN IMMEDIATE")
        conn.execute("ALTER TABLE profiles ADD COLUMN held TEXT")
        conn.execute(
            "UPDATE profiles SET held = (SELECT json_group_array(json_array(i.kind, i.value, "
            "i.first_ms, i.message_id, i.source_id)) FROM identifiers AS i "
            "WHERE i.workspace = profiles.workspace AND i.profile = profiles.id)"
        )
        conn.execute("DROP INDEX IF EXISTS identifiers_by_profile")
        conn.execute("COMMIT")
    merge_index = conn.execute(
        "SELECT sql FROM sqlite_master WHERE name = 'profiles_by_merge'"
    ).fetchone()
    if merge_index is not None and "WHERE" not in merge_index[0]:  # only merged ones, now
        conn.execute("DROP INDEX profiles_by_merge")
        conn.executescript(PROFILE_SCHEMA)
    if conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'profile_events'").fetchone():
        conn.execute("BEGIN IMMEDIATE")
        migrate_event_rows(conn, add_run, profile_key)
        conn.execute("COMMIT")


def decode_held(held: str | bytes | None) -> list[tuple[str, str, int, str, str]]:
    """A profile row's identifiers: (type, value, first seen, first message, source)."""
    return [] if held is None else _decode_held(held)


_decode_held = msgspec.json.Decoder(list[tuple[str, str, int, str, str]]).decode


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
        return [
            (seq, _stamped(source_id, message, stamp))
            for seq, _at, _mid, source_id, message, stamp, _p in self._events(
                canonical, limit, before_seq
            )
        ]

    def _events(self, canonical: str, limit: int, before_seq: int | None = None) -> list[Event]:
        """(seq, received, message id, source, message, stamp, profile) of the profile's
        newest `limit` events older than `before_seq`."""
        members = set(self.members(canonical))
        ws = self.workspace
        out: list[Event] = []
        conn = self.conn
        began = not conn.in_transaction
        if began:
            conn.execute("BEGIN")  # one snapshot: runs merge and batches expire meanwhile
        try:
            seqs = event_seqs(conn, ws, [profile_key(ws, m) for m in members])
            if before_seq is not None:
                seqs = [s for s in seqs if s < before_seq]
            at = 0
            while len(out) < limit and at < len(seqs):
                chunk = seqs[at : at + max(limit - len(out), 16)]
                at += len(chunk)  # expired ones are gone; another profile's (a key shared) too
                out += [e for e in read_events(conn, ws, chunk) if e[6] in members]
        finally:
            if began:
                conn.execute("COMMIT")
        return out[:limit]

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
        rows = self._held(canonical)
        rows.sort(key=lambda r: (r[2], r[0], r[1]))
        return rows

    def _held(self, canonical: str) -> list[tuple[str, str, int, str, str]]:
        row = self.conn.execute(
            "SELECT held FROM profiles WHERE workspace = ? AND id = ?", (self.workspace, canonical)
        ).fetchone()
        return decode_held(row[0]) if row is not None else []

    def metadata(self, canonical: str) -> dict[str, Any] | None:
        """Created and updated times, first and last messages (None: no such profile)."""
        row = self.conn.execute(
            "SELECT created_ms FROM profiles WHERE workspace = ? AND id = ?",
            (self.workspace, canonical),
        ).fetchone()
        if row is None:
            return None
        members = self.members(canonical)
        held = self._held(canonical)  # the message that brought its first identifier
        first = min(((ms, m) for _k, _v, ms, m, _s in held), default=None)
        recent = self._events(canonical, LAST_MESSAGE_AMONG)  # received last, not processed last
        last = max(((at, seq, mid) for seq, at, mid, *_r in recent), default=None)
        return {
            "created_ms": int(row[0]),
            "updated_ms": int(last[0]) if last else int(row[0]),
            "first_message": {"id": first[1], "at_ms": int(first[0])} if first else None,
            "last_message": {"id": last[2], "at_ms": int(last[0])} if last else None,
            "merged_profiles": [m for m in members if m != canonical],
        }
