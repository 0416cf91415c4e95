"""The embedded identity graph: one SQLite file, one transaction per unit of messages.

Tables (every row scoped by workspace):

- `identifiers`: each identifier, the profile it was attached to, when and by which message
  and source it was first seen;
- `profiles`: id, sequence number, creation time, the profile it was merged into (if any), how
  many merges it took part in, and its identifiers (JSON: what resolution reads of it, in one
  row);
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
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import msgspec

from headwater.identity.graph import Graph, GraphUpdate, Held, Message, Profile
from headwater.identity.identifiers import Ident
from headwater.identity.owners import Owners
from headwater.identity.profiles import (
    PROFILE_SCHEMA,
    ProfileChange,
    ProfileReader,
    decode_held,
    expire_events,
    migrate,
)
from headwater.identity.sqlite_writer import WriteJob, Writer, add_changes

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS identifiers(
    workspace TEXT NOT NULL, kind TEXT NOT NULL, value TEXT NOT NULL, profile TEXT NOT NULL,
    first_ms INTEGER NOT NULL, message_id TEXT NOT NULL, source_id TEXT NOT NULL,
    PRIMARY KEY(workspace, kind, value)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS profiles(
    workspace TEXT NOT NULL, id TEXT NOT NULL, seq INTEGER NOT NULL,
    created_ms INTEGER NOT NULL, merged_into TEXT, merges INTEGER NOT NULL, held TEXT,
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


_decode_entry = msgspec.msgpack.Decoder(JournalEntry).decode  # entries of earlier stores
_decode_json_entry = msgspec.json.Decoder(JournalEntry).decode


def _connect(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA synchronous=NORMAL")
    conn.execute(f"PRAGMA cache_size=-{CACHE_KIB}")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    return conn


def _copy(p: Profile) -> Profile:
    return Profile(p.id, p.seq, p.created_ms, p.merged_into, p.merges, dict(p.identifiers))


def _held_rows(profile: Profile) -> list[tuple[str, str, int, str, str]]:
    """A profile's identifiers as its row keeps them."""
    return [
        (i.kind, i.value, h.first_ms, h.message_id, h.source_id)
        for i, h in profile.identifiers.items()
    ]


def _owner_rows(graph: Graph) -> list[tuple[str, str, str, int, str, str]]:
    """(type, value, profile, first seen, message, source) of each identifier `graph` gave
    an owner to (the canonical one: an identifier of a profile merged away is its holder's)."""
    rows = []
    for ident in graph.changed_owners:
        pid = graph.owners[ident]
        profile = graph.profiles.get(pid)
        held = profile.identifiers.get(ident) if profile is not None else None
        if held is None:  # merged away: its holder has it
            canonical = graph.profiles[graph.canonical(pid)]
            held = canonical.identifiers[ident]
            pid = canonical.id
        rows.append((ident.kind, ident.value, pid, held.first_ms, held.message_id, held.source_id))
    return rows


class SqliteIdentityStore:
    """The identity graph of every workspace in one SQLite file.

    A writer (the processor's) keeps every identifier's owner in memory (`Owners`) and
    writes in a thread of its own (`Writer`): `stage` applies a resolved unit to memory at
    once and returns a future that completes when the unit is committed; `save` waits for
    it. Reads (`graph`'s profiles, the methods below) see what is committed plus, for the
    writer, what is staged."""

    def __init__(self, path: Path, *, readonly: bool = False) -> None:
        """Open (or create) the store at `path`; `readonly` for readers such as the Profile
        API, next to the processor that writes (the file must exist)."""
        self.path = path
        self._writer: Writer | None = None
        if readonly:
            uri = path.resolve().as_uri() + "?mode=ro"  # escaped: a path may hold '#' or '?'
            self._conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
            self._conn.execute("PRAGMA query_only=ON")
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        self._conn = _connect(path)
        self._conn.execute("PRAGMA journal_mode=WAL")
        self._conn.executescript(SCHEMA + PROFILE_SCHEMA)
        migrate(self._conn)
        self._lock = threading.Lock()  # memory shared by the staging and the writing threads
        self._snapshot = path.with_name(path.name + ".index.npz")  # the owners, at close
        self._owners = Owners.open(self._conn, self._snapshot)
        self._pending: dict[tuple[str, str], tuple[int, Profile]] = {}  # staged, not written
        self._next_seq: dict[str, int] = {}
        self._staged = 0
        self._writer = Writer(_connect(path), self._written)
        self._generation = self._writer.generation
        # Commits do not checkpoint (a checkpoint fsyncs: 40 ms in a unit's commit); a thread
        # of the store's own does, every second, without blocking the writer.
        self._stop = threading.Event()
        self._checkpointer = threading.Thread(
            target=self._checkpoint_forever, name="identity-checkpoint", daemon=True
        )
        self._checkpointer.start()

    # -- a unit of work ------------------------------------------------------------------

    def graph(self, workspace: str, idents: Iterable[Ident] = ()) -> Graph:
        """A graph of `workspace` that loads from this store what resolution touches; the
        owners of `idents` are read at once."""
        if self._writer is not None and self._writer.generation != self._generation:
            self._reload()  # a write failed: memory is ahead of the file
        graph = Graph(
            self._sequence(workspace),
            lambda ident: self.owner_of(workspace, ident),
            lambda pid: self._profile(workspace, pid),
        )
        graph.load_profiles = lambda pids: self._profiles(workspace, pids)
        wanted = list(dict.fromkeys(idents))
        if self._writer is not None:
            owners = graph.owners
            missing = []
            for ident, pid in zip(wanted, self._owners.get(workspace, wanted), strict=True):
                if pid is None:
                    missing.append(ident)
                else:
                    owners[ident] = pid
            graph.known_missing(missing)
            return graph
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

    def stage(
        self,
        workspace: str,
        graph: Graph,
        journal: list[JournalEntry],
        changes: list[ProfileChange] | None = None,
    ) -> Future[Any]:
        """Apply what `graph` changed to memory now, and hand it, its updates, the journal
        entries and what the messages bring to their profiles to the writer; the future
        completes once they are committed, in one transaction."""
        writer = self._writer
        if writer is None:
            raise RuntimeError(f"identity store {self.path} is open read-only")
        job = WriteJob(workspace, self._generation)
        owners = _owner_rows(graph)
        job.identifiers = owners
        job.profiles = [
            (p.id, p.seq, p.created_ms, p.merged_into, p.merges, _held_rows(p))
            for p in (graph.profiles[pid] for pid in graph.changed_profiles)
        ]
        job.updates = [(u.profile_id, u.canonical_id, u.message_id, u.at_ms) for u in graph.updates]
        job.journal = journal
        job.next_seq = graph.next_seq
        add_changes(job, changes or [])
        with self._lock:
            self._staged += 1
            job.number = self._staged
            for pid in graph.changed_profiles:
                self._pending[(workspace, pid)] = (job.number, graph.profiles[pid])
            self._owners.set(workspace, [(kind, value, pid) for kind, value, pid, *_r in owners])
        self._next_seq[workspace] = graph.next_seq
        graph.changed_owners.clear()
        graph.changed_profiles.clear()
        graph.updates.clear()
        return writer.submit(job)

    def save(
        self,
        workspace: str,
        graph: Graph,
        journal: list[JournalEntry],
        changes: list[ProfileChange] | None = None,
    ) -> None:
        """`stage`, and wait until it is committed."""
        self.stage(workspace, graph, journal, changes).result()

    def _written(self, job: WriteJob) -> None:
        """In the writer's thread: `job` is committed, reads find its profiles there."""
        with self._lock:
            for row in job.profiles:
                key = (job.workspace, row[0])
                staged = self._pending.get(key)
                if staged is not None and staged[0] == job.number:
                    del self._pending[key]

    def _reload(self) -> None:
        """Memory again as the file holds it (after a failed write)."""
        assert self._writer is not None
        log.warning("identity store: reloading the graph after a failed write")
        with self._lock:
            self._generation = self._writer.generation
            self._pending.clear()
            self._next_seq.clear()
            self._owners = Owners.read(self._conn)

    def _sequence(self, workspace: str) -> int:
        seq = self._next_seq.get(workspace) if self._writer is not None else None
        if seq is None:
            row = self._conn.execute(
                "SELECT next_seq FROM identity_sequences WHERE workspace = ?", (workspace,)
            ).fetchone()
            seq = int(row[0]) if row else 1
        return seq

    # -- reads ----------------------------------------------------------------------------

    def owner_of(self, workspace: str, ident: Ident) -> str | None:
        """The canonical profile holding `ident` in `workspace` (None: none holds it)."""
        if self._writer is not None:
            return self._owners.get(workspace, [ident])[0]
        row = self._conn.execute(
            "SELECT profile FROM identifiers WHERE workspace = ? AND kind = ? AND value = ?",
            (workspace, ident.kind, ident.value),
        ).fetchone()
        return None if row is None else str(row[0])

    def _profiles(self, workspace: str, pids: list[str]) -> dict[str, Profile]:
        """The profiles `pids` that exist, read at once (staged ones from memory)."""
        found: dict[str, Profile] = {}
        rest = []
        for pid in pids:
            staged = self._pending.get((workspace, pid)) if self._writer is not None else None
            if staged is None:
                rest.append(pid)
            else:
                found[pid] = _copy(staged[1])
        for start in range(0, len(rest), 500):
            chunk = rest[start : start + 500]
            for pid, seq, created_ms, merged_into, merges, held in self._conn.execute(
                "SELECT id, seq, created_ms, merged_into, merges, held FROM profiles "  # noqa: S608 - placeholders only
                f"WHERE workspace = ? AND id IN ({','.join('?' * len(chunk))})",
                (workspace, *chunk),
            ):
                profile = Profile(pid, seq, created_ms, merged_into, merges)
                profile.identifiers = {
                    Ident(k, v): Held(ms, m, s) for k, v, ms, m, s in decode_held(held)
                }
                found[pid] = profile
        return found

    def _profile(self, workspace: str, pid: str) -> Profile | None:
        return self._profiles(workspace, [pid]).get(pid)

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
            yield ws, (_decode_json_entry if isinstance(entry, str) else _decode_entry)(entry)

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
        if self._writer is None:
            raise RuntimeError(f"identity store {self.path} is open read-only")
        job = WriteJob(workspace, self._generation)
        job.other = lambda conn: expire_events(conn, workspace, before_ms)
        return int(self._writer.submit(job).result())

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
        """Write what is staged, keep a snapshot of the owner index, close."""
        if self._writer is not None:
            self._writer.close()
            self._stop.set()
            self._checkpointer.join()
            if self._writer.generation == self._generation:  # memory matches the file
                try:
                    self._owners.save(
                        self._conn, self.path.with_name(self.path.name + ".index.npz")
                    )
                except OSError as exc:
                    log.warning("identity store: could not keep the index snapshot: %s", exc)
        self._conn.close()
