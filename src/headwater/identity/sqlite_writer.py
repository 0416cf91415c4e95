"""Writing resolved units to the embedded identity store: in a thread of its own, several units
per transaction (group commit), each table's rows in one statement.

A unit is resolved in memory (the owner index and the store's pending profiles see it at once,
so the next unit resolves on top of it) and handed here as a `WriteJob`. The writer takes every
job waiting, writes them in one transaction and then completes their futures: a unit's output
is written only after its future completes, so nothing is acknowledged that the store could
lose. Each table's rows go as one JSON array expanded by `json_each` inside SQLite: one
statement per table, so the thread holds the GIL for a few calls per transaction rather than
one per row (a row-by-row writer waits for the GIL behind the processing thread at every row).
"""

from __future__ import annotations

import logging
import queue
import sqlite3
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import msgspec

from headwater.identity.event_batches import (
    BatchBuilder,
    keep_event_numbers,
    next_event_seq,
    write_batch,
)
from headwater.identity.event_runs import add_run, profile_key
from headwater.identity.profiles import ProfileChange

log = logging.getLogger(__name__)

MAX_GROUP = 64  # jobs per transaction at most

_encode = msgspec.json.encode


@dataclass
class WriteJob:
    """What one resolved unit of one workspace writes."""

    workspace: str
    generation: int  # the store's generation it was resolved in (see `Writer.fail_before`)
    identifiers: list[tuple[str, str, str, int, str, str]] = field(default_factory=list)
    profiles: list[tuple[str, int, int, str | None, int, list[Any]]] = field(default_factory=list)
    updates: list[tuple[str, str, str, int]] = field(default_factory=list)
    journal: list[Any] = field(default_factory=list)  # JournalEntry structs
    next_seq: int | None = None
    traits: list[tuple[str, str, str, int, int]] = field(default_factory=list)  # JSON values
    events: BatchBuilder = field(default_factory=BatchBuilder)
    links: list[tuple[str, str, int]] = field(default_factory=list)
    other: Callable[[sqlite3.Connection], Any] | None = None  # e.g. expiring old events
    number: int = 0  # the order it was staged in
    event_keys: list[int] = field(default_factory=list)  # `event_runs.profile_key` of each
    first_seq: int = 0  # the number of its first event, once written
    done: Future[Any] = field(default_factory=Future)
    result: Any = None


def add_changes(job: WriteJob, changes: list[ProfileChange]) -> None:
    """The rows of what resolved messages bring to their profiles: traits (numbered in
    message order, to break ties of time), events and group links."""
    events = job.events
    for i, c in enumerate(changes, 1):
        if c.traits:
            job.traits += [
                (c.profile_id, name, _encode(value).decode(), c.at_ms, i)
                for name, value in c.traits.items()
            ]
        job.event_keys.append(profile_key(job.workspace, c.profile_id))
        events.add(c.profile_id, c.at_ms, c.message_id, c.source_id, c.message, c.stamp)
        if c.group_id:
            job.links.append((c.profile_id, c.group_id, c.at_ms))


# Each statement takes the group's rows as one JSON array of [workspace, rows] (of one job
# each, in the order they were staged) and expands them with two `json_each`.
_JOBS = "FROM json_each(?1) AS g, json_each(g.value->1) AS j"
_STATEMENTS = {
    "identifiers": "INSERT OR REPLACE INTO identifiers SELECT g.value->>0, j.value->>0, "
    f"j.value->>1, j.value->>2, j.value->>3, j.value->>4, j.value->>5 {_JOBS}",
    "profiles": "INSERT OR REPLACE INTO profiles(workspace, id, seq, created_ms, merged_into, "
    "merges, held) SELECT g.value->>0, j.value->>0, j.value->>1, j.value->>2, j.value->>3, "
    f"j.value->>4, j.value->5 {_JOBS}",
    "updates": "INSERT INTO id_graph_updates(workspace, profile, canonical, message_id, at_ms) "
    f"SELECT g.value->>0, j.value->>0, j.value->>1, j.value->>2, j.value->>3 {_JOBS}",
    "journal": "INSERT INTO identity_journal(workspace, entry) "
    f"SELECT g.value->>0, j.value {_JOBS}",
    # a later message's value replaces an earlier one's, not the reverse; `seq` orders the
    # messages of one time (the number of the job's first event, g.value->>2, plus the
    # message's place in the job)
    "traits": "INSERT INTO profile_traits SELECT g.value->>0, j.value->>0, j.value->>1, "
    f"j.value->>2, j.value->>3, g.value->>2 + j.value->>4 {_JOBS} WHERE true "
    "ON CONFLICT DO UPDATE SET value = excluded.value, updated_ms = excluded.updated_ms, "
    "seq = excluded.seq WHERE excluded.updated_ms >= profile_traits.updated_ms",
    "links": "INSERT OR IGNORE INTO profile_links SELECT g.value->>0, j.value->>0, 'groups', "
    f"j.value->>1, j.value->>2 {_JOBS}",
    "sequences": "INSERT OR REPLACE INTO identity_sequences SELECT key, value FROM json_each(?1)",
}


def write_group(conn: sqlite3.Connection, group: list[WriteJob], first_seq: int) -> int:
    """Write `group`'s jobs (inside the caller's transaction), their events numbered from
    `first_seq` on, a batch and a run per workspace; returns the next event number. A few
    statements whatever the group's size: the thread waits for the GIL after each."""
    seq = first_seq
    by_workspace: dict[str, list[WriteJob]] = {}
    for job in group:
        if job.events:
            by_workspace.setdefault(job.workspace, []).append(job)
    for jobs in by_workspace.values():  # a workspace's events numbered one after the other
        for job in jobs:
            job.first_seq = seq
            seq += len(job.events)
    for table in ("identifiers", "profiles", "updates", "journal", "links"):
        rows = [(job.workspace, found) for job in group if (found := getattr(job, table))]
        if rows:
            conn.execute(_STATEMENTS[table], (_encode(rows).decode(),))
    traits = [(job.workspace, job.traits, job.first_seq - 1) for job in group if job.traits]
    if traits:
        conn.execute(_STATEMENTS["traits"], (_encode(traits).decode(),))
    for workspace, jobs in by_workspace.items():
        write_batch(conn, workspace, jobs[0].first_seq, [job.events for job in jobs])
        keys: list[int] = []
        for job in jobs:
            keys += job.event_keys
        add_run(conn, workspace, keys, range(jobs[0].first_seq, jobs[0].first_seq + len(keys)))
    if seq != first_seq:
        keep_event_numbers(conn, seq)
    sequences = {job.workspace: job.next_seq for job in group if job.next_seq is not None}
    if sequences:
        conn.execute(_STATEMENTS["sequences"], (_encode(sequences).decode(),))
    for job in group:
        if job.other is not None:
            job.result = job.other(conn)
    return seq


class Writer:
    """The thread that writes jobs to `conn`, in order, several per transaction."""

    def __init__(self, conn: sqlite3.Connection, written: Callable[[WriteJob], None]) -> None:
        self._conn = conn
        self._written = written  # called (in this thread) for each job once committed
        self._next_event = next_event_seq(conn)  # the number of the next event written
        self._jobs: queue.SimpleQueue[WriteJob | None] = queue.SimpleQueue()
        self.generation = 0  # jobs of an earlier generation fail (a failure came before them)
        self._thread = threading.Thread(target=self._run, name="identity-writer", daemon=True)
        self._thread.start()

    def submit(self, job: WriteJob) -> Future[Any]:
        self._jobs.put(job)
        return job.done

    def fail_before(self, generation: int) -> None:
        """Jobs of generations before `generation` will fail rather than be written."""
        self.generation = generation

    def close(self) -> None:
        """Write what was submitted, then stop and close the connection."""
        self._jobs.put(None)
        self._thread.join()
        self._conn.close()

    def _run(self) -> None:
        stopping = False
        while not stopping:
            first = self._jobs.get()
            if first is None:
                return
            group = [first]
            while len(group) < MAX_GROUP:
                try:
                    job = self._jobs.get_nowait()
                except queue.Empty:
                    break
                if job is None:
                    stopping = True
                    break
                group.append(job)
            self._write(group)

    def _write(self, group: list[WriteJob]) -> None:
        stale = [j for j in group if j.generation != self.generation]
        for job in stale:
            job.done.set_exception(RuntimeError("identity store: an earlier write failed"))
        group = [j for j in group if j.generation == self.generation]
        if not group:
            return
        conn = self._conn
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                self._next_event = write_group(conn, group, self._next_event)
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                self._next_event = next_event_seq(conn)
                raise
        except Exception as exc:
            log.error("identity store: writing %d units failed: %s", len(group), exc)
            self.generation += 1  # what was resolved on top of these fails too
            for job in group:
                job.done.set_exception(exc)
            return
        for job in group:
            self._written(job)
            job.done.set_result(job.result)
