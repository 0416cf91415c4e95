"""Profiles' recent events, kept as batches: one row per workspace per transaction holding its
messages end to end and, beside them, what each is (profile, received, id, source, stamp,
where), as one segment per resolved unit.

Events are numbered in the order they are written (`seq`); a batch row is keyed by the number
of its first event, so finding an event is one search by key, and reading it a slice of the
row's blob. Writing a unit's events is one insert of two blobs: no per-event row, no
per-event index entry (`event_runs` says which events are a profile's). Old events go by whole
batches, once the newest event of a batch is past the retention.
"""

from __future__ import annotations

import base64
import sqlite3
from typing import Any

import msgspec

BATCHES_SCHEMA = """
CREATE TABLE IF NOT EXISTS profile_event_batches(
    first_seq INTEGER PRIMARY KEY, workspace TEXT NOT NULL, size INTEGER NOT NULL,
    last_ms INTEGER NOT NULL, meta BLOB NOT NULL, messages BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS profile_event_numbers(
    id INTEGER PRIMARY KEY CHECK (id = 0), next_seq INTEGER NOT NULL);
"""


class EventMeta(msgspec.Struct, array_like=True):
    """One event of a batch, but for its message: where that sits in the batch's blob."""

    profile: str
    at_ms: int
    message_id: str
    source_id: str
    stamp: int  # index into the batch's stamps, -1: none
    offset: int
    length: int


class BatchMeta(msgspec.Struct, array_like=True):
    """One unit's events in a batch: offsets count from the first byte of its messages."""

    stamps: list[bytes]
    events: list[EventMeta]

    def size(self) -> int:
        """The bytes its messages take."""
        return self.events[-1].offset + self.events[-1].length if self.events else 0


_encode = msgspec.msgpack.Encoder().encode
_decode_meta = msgspec.msgpack.Decoder(list[BatchMeta]).decode

Event = tuple[
    int, int, str, str, bytes, bytes | None, str
]  # seq, at, id, source, msg, stamp, profile


class BatchBuilder:
    """The events of one unit, gathered as the step resolves them."""

    def __init__(self) -> None:
        self.events: list[EventMeta] = []
        self.messages: list[bytes] = []
        self.stamps: dict[bytes, int] = {}
        self._offset = 0
        self.last_ms = 0

    def __len__(self) -> int:
        return len(self.events)

    def add(
        self,
        profile: str,
        at_ms: int,
        message_id: str,
        source_id: str,
        message: bytes,
        stamp: bytes | None,
    ) -> None:
        index = -1 if stamp is None else self.stamps.setdefault(stamp, len(self.stamps))
        self.events.append(
            EventMeta(profile, at_ms, message_id, source_id, index, self._offset, len(message))
        )
        self.messages.append(message)
        self._offset += len(message)
        self.last_ms = max(self.last_ms, at_ms)

    def meta(self) -> BatchMeta:
        return BatchMeta(list(self.stamps), self.events)


def write_batch(
    conn: sqlite3.Connection, workspace: str, first_seq: int, units: list[BatchBuilder]
) -> int:
    """Insert one batch of `units`' events (a segment each), the first numbered `first_seq`;
    returns the number of the next event."""
    size = sum(len(u) for u in units)
    conn.execute(
        "INSERT INTO profile_event_batches VALUES(?,?,?,?,?,?)",
        (
            first_seq,
            workspace,
            size,
            max(u.last_ms for u in units),
            _encode([u.meta() for u in units]),
            b"".join(m for u in units for m in u.messages),
        ),
    )
    return first_seq + size


def keep_event_numbers(conn: sqlite3.Connection, next_seq: int) -> None:
    """Remember the next event number: numbers are never given twice, even once every batch
    has expired."""
    conn.execute("INSERT OR REPLACE INTO profile_event_numbers VALUES(0, ?)", (next_seq,))


def next_event_seq(conn: sqlite3.Connection) -> int:
    """The number the next event written gets."""
    row = conn.execute(
        "SELECT max(coalesce((SELECT next_seq FROM profile_event_numbers), 1), coalesce(("
        "SELECT first_seq + size FROM profile_event_batches ORDER BY first_seq DESC LIMIT 1"
        "), 1))"
    ).fetchone()
    return int(row[0])


def oldest_event_seq(conn: sqlite3.Connection, workspace: str) -> int:
    """The number of `workspace`'s oldest kept event (none kept: the next one's; every event
    numbered below it is gone)."""
    row = conn.execute(
        "SELECT min(first_seq) FROM profile_event_batches WHERE workspace = ?", (workspace,)
    ).fetchone()
    return int(row[0]) if row[0] is not None else next_event_seq(conn)


def read_events(conn: sqlite3.Connection, workspace: str, seqs: list[int]) -> list[Event]:
    """The events numbered `seqs` that are still kept, in the order of `seqs`."""
    batches: dict[int, tuple[int, list[BatchMeta]] | None] = {}
    out: list[Event] = []
    for seq in seqs:
        row = conn.execute(
            "SELECT first_seq, size FROM profile_event_batches WHERE first_seq <= ? "
            "ORDER BY first_seq DESC LIMIT 1",
            (seq,),
        ).fetchone()
        if row is None or seq >= row[0] + row[1]:
            continue  # expired
        first = int(row[0])
        if first not in batches:
            meta = conn.execute(
                "SELECT meta FROM profile_event_batches WHERE first_seq = ? AND workspace = ?",
                (first, workspace),
            ).fetchone()
            batches[first] = (first, _decode_meta(meta[0])) if meta else None
        found = batches[first]
        if found is None:
            continue
        index, base = seq - first, 0
        for meta_of in found[1]:  # the unit's segment holding the event
            if index < len(meta_of.events):
                break
            index -= len(meta_of.events)
            base += meta_of.size()
        e = meta_of.events[index]
        with conn.blobopen("profile_event_batches", "messages", first, readonly=True) as blob:
            blob.seek(base + e.offset)
            message = blob.read(e.length)
        stamp = meta_of.stamps[e.stamp] if e.stamp >= 0 else None
        out.append((seq, e.at_ms, e.message_id, e.source_id, message, stamp, e.profile))
    return out


def expire_batches(conn: sqlite3.Connection, workspace: str, before_ms: int) -> int:
    """Forget `workspace`'s batches whose every event was received before `before_ms`;
    returns how many events went."""
    gone = conn.execute(
        "SELECT coalesce(sum(size), 0) FROM profile_event_batches "
        "WHERE workspace = ? AND last_ms < ?",
        (workspace, before_ms),
    ).fetchone()[0]
    conn.execute(
        "DELETE FROM profile_event_batches WHERE workspace = ? AND last_ms < ?",
        (workspace, before_ms),
    )
    return int(gone)


def migrate_event_rows(conn: sqlite3.Connection, add_run: Any, profile_key: Any) -> None:
    """Move events kept a row each (stores of an earlier layout) into batches and runs,
    keeping their numbers (inside the caller's transaction), then drop that table. Runs made
    from that table by a version in between are made again."""
    conn.execute("DELETE FROM profile_event_runs")
    rows = conn.execute(
        "SELECT seq, workspace, profile, at_ms, message_id, source_id, message, stamp "
        "FROM profile_events ORDER BY seq"
    ).fetchall()
    start = 0
    while start < len(rows):
        first, workspace = rows[start][0], rows[start][1]
        end = start + 1
        while (  # a batch: one workspace's events numbered one after the other
            end < len(rows)
            and end - start < 1000
            and rows[end][1] == workspace
            and rows[end][0] == first + (end - start)
        ):
            end += 1
        batch = BatchBuilder()
        for _seq, _ws, profile, at_ms, mid, source, message, stamp in rows[start:end]:
            text = message.encode() if isinstance(message, str) else bytes(message)
            kept = base64.b64decode(stamp) if isinstance(stamp, str) else stamp
            batch.add(profile, at_ms, mid, source, text, kept)
        keep_event_numbers(conn, write_batch(conn, workspace, first, [batch]))
        keys = [profile_key(workspace, e.profile) for e in batch.events]
        add_run(conn, workspace, keys, list(range(first, first + len(batch))))
        start = end
    conn.execute("DROP TABLE profile_events")
