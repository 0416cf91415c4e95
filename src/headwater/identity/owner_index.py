"""Which profile holds each identifier, in memory: a 128-bit fingerprint of (workspace, type,
value) and a profile number per identifier (24 bytes each), in sorted numpy runs, the newest
in a dict until they fill a run.

The embedded store keeps it next to its SQLite tables (loaded when the store opens, updated
after each commit), so resolving a message whose identifiers are known reads nothing from
disk. A merge points identifiers to another profile: the newer entry wins, in lookups and when
runs merge. 128 bits make two identifiers sharing a fingerprint a 1-in-10^25 event at a billion
identifiers, so a fingerprint stands for its identifier.

Runs merge like a binary counter with a ratio of four (as the dedupe index's do), so an entry
is copied a few times in its life and a lookup searches a handful of runs.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
from xxhash import xxh3_128_digest

MERGE_AT = 1 << 17  # fresh entries that make a new run
RUN_RATIO = 4
NONE = -1  # "no profile holds it"

Run = tuple[np.ndarray, np.ndarray, np.ndarray]  # (high halves, sorted; low halves; profile)


def ident_fingerprint(workspace: str, kind: str, value: str) -> bytes:
    """The 128-bit fingerprint of an identifier of `workspace` (16 bytes)."""
    return xxh3_128_digest(f"{workspace}\x1f{kind}\x1f{value}".encode())


def _halves(fps: list[bytes]) -> tuple[np.ndarray, np.ndarray]:
    both = np.frombuffer(b"".join(fps), np.int64).reshape(-1, 2)
    return both[:, 0], both[:, 1]


class OwnerIndex:
    """Fingerprint -> profile number, for every identifier of the store."""

    def __init__(self) -> None:
        self._runs: list[Run] = []  # oldest (largest) first
        self._fresh: dict[bytes, int] = {}  # entries since the last run was made

    def __len__(self) -> int:
        """Entries held (an identifier pointed elsewhere since may count twice until its
        runs merge)."""
        return sum(len(h) for h, _l, _p in self._runs) + len(self._fresh)

    def load(self, fps: list[bytes], profiles: Iterable[int]) -> None:
        """Start from these fingerprints (each once) and the profile number of each."""
        hi, lo = _halves(fps) if fps else (np.empty(0, np.int64), np.empty(0, np.int64))
        self.load_arrays(hi, lo, np.fromiter(profiles, np.int64, len(fps)))

    def load_arrays(self, hi: np.ndarray, lo: np.ndarray, profile: np.ndarray) -> None:
        """Start from the entries `arrays` gave (each fingerprint once)."""
        self._fresh = {}
        self._runs = []
        if len(hi):
            order = np.argsort(hi, kind="stable")  # unique entries: the high half will do
            self._runs = [(hi[order], np.ascontiguousarray(lo[order]), profile[order])]

    def arrays(self) -> Run:
        """Every entry (the newest for each fingerprint): high halves, low halves, profiles."""
        self._seal()
        while len(self._runs) >= 2:
            newer = self._runs.pop()
            self._runs.append(_merge(self._runs.pop(), newer))
        if not self._runs:
            return np.empty(0, np.int64), np.empty(0, np.int64), np.empty(0, np.int64)
        return self._runs[0]

    def set_many(self, fps: Iterable[bytes], profiles: Iterable[int]) -> None:
        """Point each of `fps` to its profile number (a later entry wins over an earlier)."""
        self._fresh.update(zip(fps, profiles, strict=True))
        if len(self._fresh) >= MERGE_AT:
            self._seal()

    def get_many(self, fps: list[bytes]) -> list[int]:
        """The profile number holding each of `fps` (`NONE`: none)."""
        fresh = self._fresh
        out = [fresh.get(fp, NONE) for fp in fps]
        todo = [i for i, p in enumerate(out) if p == NONE]
        for high, low, profile in reversed(self._runs):  # the newest first: it wins
            if not todo:
                break
            hi, lo = _halves([fps[i] for i in todo])
            order = np.argsort(hi)  # sorted queries walk the run in order
            at = np.minimum(np.searchsorted(high, hi[order]), len(high) - 1)
            found = np.full(len(todo), NONE, np.int64)
            found[order] = np.where(
                (high[at] == hi[order]) & (low[at] == lo[order]), profile[at], NONE
            )
            twins = np.flatnonzero((high[at] == hi[order]) & (low[at] != lo[order]))
            for k in twins.tolist():  # the same high half, another identifier: look further
                i = int(order[k])
                end = int(np.searchsorted(high, hi[i], "right"))
                for j in range(int(at[k]) + 1, end):
                    if low[j] == lo[i]:
                        found[i] = profile[j]
                        break
            for i, number in zip(todo, found.tolist(), strict=True):
                out[i] = number
            todo = [i for i in todo if out[i] == NONE]
        return out

    def runs(self) -> int:
        """How many sorted runs a lookup searches."""
        return len(self._runs)

    def _seal(self) -> None:
        """Make the fresh entries a run; merge runs that have become of a size."""
        fresh = self._fresh
        if not fresh:
            return
        hi, lo = _halves(list(fresh))
        profile = np.fromiter(fresh.values(), np.int64, len(fresh))
        order = np.lexsort((lo, hi))
        self._runs.append((hi[order], lo[order], profile[order]))
        self._fresh = {}
        runs = self._runs
        while len(runs) >= 2 and len(runs[-2][0]) <= RUN_RATIO * len(runs[-1][0]):
            newer = runs.pop()
            older = runs.pop()
            runs.append(_merge(older, newer))


def _merge(older: Run, newer: Run) -> Run:
    """One run of both; where both hold a fingerprint, the newer's profile."""
    hi = np.concatenate((older[0], newer[0]))
    lo = np.concatenate((older[1], newer[1]))
    profile = np.concatenate((older[2], newer[2]))
    order = np.lexsort((lo, hi))  # stable: of two equal entries, the newer comes second
    hi, lo, profile = hi[order], lo[order], profile[order]
    keep = np.ones(len(hi), bool)
    keep[:-1] = (hi[:-1] != hi[1:]) | (lo[:-1] != lo[1:])  # drop one followed by its twin
    return hi[keep], lo[keep], profile[keep]
