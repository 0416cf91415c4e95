"""The embedded identity graph: one SQLite file, one transaction per unit of messages.

Tables (every row scoped by workspace):

- `identifiers`: each identifier, the profile it was attached to, when and by which message
  and source it was first seen;
- `profiles`: id, sequence number, creation time, the profile it was merged into (if any), and
  how many merges it took part in;
- `id_graph_updates`: every merge (profile, canonical profile, triggering message, time);
- `identity_journal`: what each resolved message brought (its identifiers, in the order they
  were resolved), from which `headwater identity rebuild` makes the same graph again.

A unit is resolved on a `Graph` that loads what it touches from here, then everything it
changed is written in one transaction with the journal entries, so the graph, the updates and
the journal never disagree, even after a crash.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

import msgspec

from headwater.identity.graph import Graph, GraphUpdate, Held, Message, Profile
from headwater.identity.identifiers import Ident
from headwater.identity.profiles import (
    PROFILE_SCHEMA,
    ProfileChange,
    ProfileReader,
    expire_events,
    migrate,
    write_changes,
)

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS identifiers(
    workspace TEXT NOT NULL, kind TEXT NOT NULL, value TEXT NOT NULL, profile TEXT NOT NULL,
    first_ms INTEGER NOT NULL, message_id TEXT NOT NULL, source_id TEXT NOT NULL,
    PRIMARY KEY(workspace, kind, value)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS identifiers_by_profile ON identifiers(workspace, profile);
CREATE TABLE IF NOT EXISTS profiles(
    workspace TEXT NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL,
    created_ms INTEGER NOT NULL, merged_into TEXT, merges INTEGER NOT NULL,
    PRIMARY KEY(workspace, id)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS id_graph_updates(
    seq INTEGER PRIMARY KEY, workspace TEXT NOT NULL, profile TEXT NOT NULL,
    canonical TEXT NOT NULL, message_id TEXT NOT NULL, at_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS identity_journal(
    seq INTEGER PRIMARY KEY, workspace TEXT NOT NULL, entry BLOB NOT NULL);
CREATE TABLE IF NOT EXISTS identity_sequences(
    workspace TEXT PRIMARY KEY, next_seq INTEGER NOT NULL);
"""

CHECKPOINT_EVERY_S = 1.0
CACHE_KIB = 262_144  # SQLite's page cache: 256 MiB, about a million profiles' identifiers


class JournalEntry(msgspec.Struct, array_like=True):
    """One resolved message, as the journal keeps it."""

    message_id: str
    source_id: str
    at_ms: int
    identifiers: list[tuple[str, str]]
    previous_id: str | None = None

    def message(self) -> Message:
        return Message(
            self.message_id,
            self.source_id,
            self.at_ms,
            [Ident(k, v) for k, v in self.identifiers],
            self.previous_id,
        )


_encode = msgspec.msgpack.Encoder().encode
_decode_entry = msgspec.msgpack.Decoder(JournalEntry).decode


class SqliteIdentityStore:
    """The identity graph of every workspace in one SQLite file."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        """Open (or create) the store at `path`; `readonly` for readers such as the Profile
        API, next to the processor that writes (the file must exist)."""
        self.path = path
        self._lock = threading.Lock()
        if readonly:
            uri = path.resolve().as_uri() + "?mode=ro"  # escaped: a path may hold '#' or '?'
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self._conn.execute("PRAGMA query_only=ON")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.execute("PRAGMA synchronous=NORMAL")
        self._conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
        self._conn.executescript(SCHEMA + PROFILE_SCHEMA)
        migrate(self._conn)
        # Commits do not checkpoint (a checkpoint fsyncs: 40 ms in a unit's commit); a thread
        # of the store's own does, every second, without blocking the writer.
        self._conn.execute("PRAGMA wal_autocheckpoint=0")
        self._stop = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_forever, name="identity-checkpoint", daemon=True
        )
        self._checkpointer.start()

    # -- a unit of work ------------------------------------------------------------------

    def graph(self, workspace: str, idents: Iterable[Ident] = ()) -> Graph:
        """A graph of `workspace` that loads from this store what resolution touches; the
        owners of `idents` are read at once."""
        row = self._conn.execute(
            "SELECT next_seq FROM identity_sequences WHERE workspace = ?", (workspace,)
        ).fetchone()
        graph = Graph(
            row[0] if row else 1,
            lambda ident: self.owner_of(workspace, ident),
            lambda pid: self._profile(workspace, pid),
        )
        wanted = list(dict.fromkeys(idents))
        for start in range(0, len(wanted), 300):
            chunk = wanted[start : start + 300]
            values = ",".join(["(?,?)"] * len(chunk))
            rows = self._conn.execute(  # CROSS JOIN: one primary-key search per wanted one
                f"WITH wanted(kind, value) AS (VALUES {values}) "  # noqa: S608 - placeholders only
                "SELECT i.kind, i.value, i.profile FROM wanted CROSS JOIN identifiers AS i "
                "ON i.workspace = ? AND i.kind = wanted.kind AND i.value = wanted.value",
                [*(x for ident in chunk for x in ident), workspace],
            ).fetchall()
            for kind, value, profile in rows:
                graph.owners[Ident(kind, value)] = profile
        graph.known_missing(i for i in wanted if i not in graph.owners)
        return graph

    def save(
        self,
        workspace: str,
        graph: Graph,
        journal: list[JournalEntry],
        changes: list[ProfileChange] | None = None,
    ) -> None:
        """Write what `graph` changed, its updates, the journal entries and what the messages
        bring to their profiles, in one transaction."""
        with self._lock:
            conn = self._conn
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._write(workspace, graph, journal)
                write_changes(conn, workspace, changes or [])
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise
        graph.changed_owners.clear()
        graph.changed_profiles.clear()
        graph.updates.clear()

    def _write(self, workspace: str, graph: Graph, journal: list[JournalEntry]) -> None:
        conn = self._conn
        rows = []
        for ident in graph.changed_owners:
            pid = graph.owners[ident]
            profile = graph.profiles.get(pid)
            held = profile.identifiers.get(ident) if profile is not None else None
            if held is None:  # merged away: its holder has it
                canonical = graph.profiles[graph.canonical(pid)]
                held = canonical.identifiers[ident]
                pid = canonical.id
            row = (ident.kind, ident.value, pid, held.first_ms, held.message_id, held.source_id)
            rows.append((workspace, *row))
        conn.executemany("INSERT OR REPLACE INTO identifiers VALUES(?,?,?,?,?,?,?)", rows)
        conn.executemany(
            "INSERT OR REPLACE INTO profiles VALUES(?,?,?,?,?,?)",
            [
                (workspace, p.id, p.seq, p.created_ms, p.merged_into, p.merges)
                for p in (graph.profiles[pid] for pid in graph.changed_profiles)
            ],
        )
        conn.executemany(
            "INSERT INTO id_graph_updates(workspace, profile, canonical, message_id, at_ms) "
            "VALUES(?,?,?,?,?)",
            [
                (workspace, u.profile_id, u.canonical_id, u.message_id, u.at_ms)
                for u in graph.updates
            ],
        )
        conn.executemany(
            "INSERT INTO identity_journal(workspace, entry) VALUES(?,?)",
            [(workspace, _encode(e)) for e in journal],
        )
        conn.execute(
            "INSERT OR REPLACE INTO identity_sequences VALUES(?,?)", (workspace, graph.next_seq)
        )

    # -- reads ----------------------------------------------------------------------------

    def owner_of(self, workspace: str, ident: Ident) -> str | None:
        """The canonical profile holding `ident` in `workspace` (None: none holds it)."""
        row = self._conn.execute(
            "SELECT profile FROM identifiers WHERE workspace = ? AND kind = ? AND value = ?",
            (workspace, ident.kind, ident.value),
        ).fetchone()
        return None if row is None else str(row[0])

    def _profile(self, workspace: str, pid: str) -> Profile | None:
        row = self._conn.execute(
            "SELECT seq, created_ms, merged_into, merges FROM profiles "
            "WHERE workspace = ? AND id = ?",
            (workspace, pid),
        ).fetchone()
        if row is None:
            return None
        profile = Profile(pid, row[0], row[1], row[2], row[3])
        for kind, value, first_ms, message_id, source_id in self._conn.execute(
            "SELECT kind, value, first_ms, message_id, source_id FROM identifiers "
            "INDEXED BY identifiers_by_profile WHERE workspace = ? AND profile = ?",
            (workspace, pid),
        ):
            profile.identifiers[Ident(kind, value)] = Held(first_ms, message_id, source_id)
        return profile

    def current_profile(self, workspace: str, pid: str) -> str | None:
        """The canonical profile that profile `pid` is now (None: no such profile)."""
        for _ in range(10_000):
            row = self._conn.execute(
                "SELECT merged_into FROM profiles WHERE workspace = ? AND id = ?", (workspace, pid)
            ).fetchone()
            if row is None:
                return None
            if row[0] is None:
                return pid
            pid = row[0]
        raise RuntimeError(f"identity graph: a cycle of merges through {pid}")

    def updates(self, workspace: str) -> list[GraphUpdate]:
        """Every merge of `workspace`, in order."""
        return [
            GraphUpdate(*row)
            for row in self._conn.execute(
                "SELECT profile, canonical, message_id, at_ms FROM id_graph_updates "
                "WHERE workspace = ? ORDER BY seq",
                (workspace,),
            )
        ]

    def journal(self, workspace: str | None = None) -> Iterable[tuple[str, JournalEntry]]:
        """(workspace, entry) of every resolved message, in the order it was resolved."""
        query = "SELECT workspace, entry FROM identity_journal"
        args: tuple[str, ...] = ()
        if workspace is not None:
            query += " WHERE workspace = ?"
            args = (workspace,)
        for ws, entry in self._conn.execute(query + " ORDER BY seq", args):
            yield ws, _decode_entry(entry)

    def journal_workspaces(self) -> list[str]:
        """The workspaces with journaled messages."""
        rows = self._conn.execute("SELECT DISTINCT workspace FROM identity_journal ORDER BY 1")
        return [str(r[0]) for r in rows]

    def journal_size(self) -> int:
        return int(self._conn.execute("SELECT count(*) FROM identity_journal").fetchone()[0])

    def partition(self, workspace: str) -> set[frozenset[Ident]]:
        """The graph as a set of profiles, each the set of its identifiers (to compare
        graphs)."""
        groups: dict[str, set[Ident]] = {}
        for kind, value, profile in self._conn.execute(
            "SELECT kind, value, profile FROM identifiers WHERE workspace = ?", (workspace,)
        ):
            groups.setdefault(profile, set()).add(Ident(kind, value))
        return {frozenset(g) for g in groups.values()}

    def reader(self, workspace: str) -> ProfileReader:
        """Reads of `workspace`'s profiles."""
        return ProfileReader(self._conn, workspace)

    def expire(self, workspace: str, before_ms: int) -> int:
        """Forget `workspace`'s events received before `before_ms`; returns how many went."""
        with self._lock:
            return expire_events(self._conn, workspace, before_ms)

    def _checkpoint_forever(self) -> None:
        conn = sqlite3.connect(self.path, isolation_level=None)
        try:
            while not self._stop.wait(CHECKPOINT_EVERY_S):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error as exc:
                    log.warning("identity store: checkpoint failed: %s", exc)
        finally:
            conn.close()

    def close(self) -> None:
        checkpointer = getattr(self, "_checkpointer", None)
        if checkpointer is not None:
            self._stop.set()
            checkpointer.join()
        self._conn.close()
