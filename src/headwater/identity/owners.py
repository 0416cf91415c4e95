"""Every identifier's owner, in memory, for the embedded store's writer: an `OwnerIndex` of
fingerprints to profile numbers, and the profile ids those numbers stand for.

Read from the tables when the store opens, or from the snapshot the store wrote when it last
closed (`<identity.db>.index.npz`) if the file still matches it: the last journaled message
and the number of identifiers (every change to the graph journals a message). The snapshot is
deleted once read, so after a crash the next open reads the tables.
"""

from __future__ import annotations

import logging
import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from headwater.identity.owner_index import NONE, OwnerIndex, ident_fingerprint

log = logging.getLogger(__name__)


class Owners:
    """Identifier -> the canonical profile holding it, for every workspace of a store."""

    def __init__(self) -> None:
        self.index = OwnerIndex()
        self.profile_ids: list[str] = []  # profile number -> profile id
        self.numbers: dict[str, int] = {}  # profile id -> profile number

    @classmethod
    def open(cls, conn: sqlite3.Connection, snapshot: Path) -> Owners:
        """From `snapshot` if it matches the file `conn` reads, else from the tables."""
        if snapshot.exists():
            try:
                found = cls._from_snapshot(conn, snapshot)
            except Exception as exc:
                log.warning("identity store: index snapshot %s unreadable: %s", snapshot, exc)
                found = None
            snapshot.unlink()  # a crash from here on leaves none to trust
            if found is not None:
                return found
        return cls.read(conn)

    @classmethod
    def read(cls, conn: sqlite3.Connection) -> Owners:
        """From the identifiers table."""
        owners = cls()
        fps: list[bytes] = []
        numbers: list[int] = []
        number = owners._number
        for workspace, kind, value, profile in conn.execute(
            "SELECT workspace, kind, value, profile FROM identifiers"
        ):
            fps.append(ident_fingerprint(workspace, kind, value))
            numbers.append(number(profile))
        owners.index.load(fps, numbers)
        return owners

    @classmethod
    def _from_snapshot(cls, conn: sqlite3.Connection, snapshot: Path) -> Owners | None:
        with np.load(snapshot) as saved:
            if not np.array_equal(saved["token"], _token(conn)):
                log.info("identity store: the index snapshot is out of date; reading the tables")
                return None
            owners = cls()
            owners.profile_ids = [b.decode() for b in saved["ids"].tolist()]
            owners.numbers = {pid: i for i, pid in enumerate(owners.profile_ids)}
            owners.index.load_arrays(saved["hi"], saved["lo"], saved["profile"])
        return owners

    def save(self, conn: sqlite3.Connection, snapshot: Path) -> None:
        """Write the snapshot the next open reads (flushed to disk before it is in place)."""
        hi, lo, profile = self.index.arrays()
        ids = np.array([i.encode() for i in self.profile_ids], dtype=bytes)
        partial = snapshot.with_name(snapshot.name + ".partial")
        with partial.open("wb") as out:
            np.savez(out, hi=hi, lo=lo, profile=profile, ids=ids, token=_token(conn))
            out.flush()
            os.fsync(out.fileno())
        partial.replace(snapshot)

    def get(self, workspace: str, idents: Iterable[tuple[str, str]]) -> list[str | None]:
        """The profile holding each of `idents` (None: none)."""
        ids = self.profile_ids
        numbers = self.index.get_many([ident_fingerprint(workspace, k, v) for k, v in idents])
        return [None if n == NONE else ids[n] for n in numbers]

    def set(self, workspace: str, rows: list[tuple[str, str, str]]) -> None:
        """Point each (type, value) of `rows` to its profile."""
        number = self._number
        self.index.set_many(
            [ident_fingerprint(workspace, kind, value) for kind, value, _p in rows],
            [number(pid) for _k, _v, pid in rows],
        )

    def _number(self, profile_id: str) -> int:
        number = self.numbers.get(profile_id)
        if number is None:
            number = self.numbers[profile_id] = len(self.profile_ids)
            self.profile_ids.append(profile_id)
        return number


def _token(conn: sqlite3.Connection) -> np.ndarray:
    journaled = conn.execute("SELECT coalesce(max(seq), 0) FROM identity_journal")
    count = conn.execute("SELECT count(*) FROM identifiers")
    return np.array([journaled.fetchone()[0], count.fetchone()[0]], np.int64)
