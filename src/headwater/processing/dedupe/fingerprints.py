"""Which rows of the claims table may hold a `messageId`: a 64-bit fingerprint per claim,
sorted in numpy arrays (16 bytes of RAM per remembered id), the newest in a dict until merged.

A fingerprint says "maybe" (the row must be read to compare the id), never "surely": two ids
sharing a fingerprint are told apart by the id stored on disk, so deduplication stays exact.
An id whose fingerprint is nowhere here was never claimed, which is the common case, answered
without touching the disk.
"""

from __future__ import annotations

import numpy as np
from xxhash import xxh3_64_intdigest

MERGE_AT = 1 << 17  # fresh fingerprints merged into the arrays at a time
_BIAS = 1 << 63  # fingerprints are stored as signed 64-bit integers (SQLite INTEGER)


def fingerprint(message_id: str) -> int:
    return xxh3_64_intdigest(message_id.encode()) - _BIAS


class FingerprintIndex:
    """Fingerprint -> rows, for every claim of the window."""

    def __init__(self) -> None:
        self._fps = np.empty(0, np.int64)  # sorted
        self._rows = np.empty(0, np.int64)  # the row of each fingerprint
        self._fresh: dict[int, int] = {}  # claims since the last merge
        self._shared: list[tuple[int, int]] = []  # fresh ones whose fingerprint was taken

    def __len__(self) -> int:
        return len(self._fps) + len(self._fresh) + len(self._shared)

    def load(self, fps: np.ndarray, rows: np.ndarray) -> None:
        """Start from these (unsorted) fingerprints and rows."""
        order = np.argsort(fps, kind="stable")
        self._fps, self._rows = fps[order], rows[order]
        self._fresh.clear()
        self._shared.clear()

    def candidates(self, fps: list[int]) -> dict[int, list[int]]:
        """The rows that may hold the id of `fps[i]`, by `i`; an index not in the answer is
        surely a new id."""
        fresh = self._fresh
        out = {i: [fresh[fp]] for i, fp in enumerate(fps) if fp in fresh}
        for fp, row in self._shared:
            for i in (i for i, f in enumerate(fps) if f == fp):
                out.setdefault(i, []).append(row)
        known = self._fps
        if len(known):
            wanted = np.fromiter(fps, np.int64, len(fps))
            order = np.argsort(wanted)  # sorted queries walk the array in order
            at = np.searchsorted(known, wanted[order])
            hit = known[np.minimum(at, len(known) - 1)] == wanted[order]
            for k in np.flatnonzero(hit).tolist():
                i, start = int(order[k]), int(at[k])
                end = int(np.searchsorted(known, known[start], "right"))
                out.setdefault(i, []).extend(self._rows[start:end].tolist())
        return out

    def add(self, fps: list[int], rows: list[int]) -> None:
        """Remember that `rows[i]` holds an id with fingerprint `fps[i]`."""
        fresh = self._fresh
        if fresh.keys().isdisjoint(fps) and len(set(fps)) == len(fps):
            fresh.update(zip(fps, rows, strict=True))  # the common case, in one C-level pass
        else:
            for fp, row in zip(fps, rows, strict=True):
                if fp in fresh:
                    self._shared.append((fp, row))
                else:
                    fresh[fp] = row
        if len(fresh) >= MERGE_AT:
            self._merge()

    def drop_rows_below(self, row: int) -> None:
        """Forget every row under `row` (expired claims)."""
        self._merge()
        keep = self._rows >= row
        self._fps, self._rows = self._fps[keep], self._rows[keep]

    def _merge(self) -> None:
        if not self._fresh and not self._shared:
            return
        n = len(self._fresh) + len(self._shared)
        new_fps = np.fromiter(self._fresh.keys(), np.int64, len(self._fresh))
        new_rows = np.fromiter(self._fresh.values(), np.int64, len(self._fresh))
        if self._shared:
            extra = np.array(self._shared, np.int64).reshape(-1, 2)
            new_fps = np.concatenate((new_fps, extra[:, 0]))
            new_rows = np.concatenate((new_rows, extra[:, 1]))
        order = np.argsort(new_fps, kind="stable")
        new_fps, new_rows = new_fps[order], new_rows[order]
        at = np.searchsorted(self._fps, new_fps)
        self._fps = np.insert(self._fps, at, new_fps)
        self._rows = np.insert(self._rows, at, new_rows)
        assert len(new_fps) == n
        self._fresh.clear()
        self._shared.clear()
