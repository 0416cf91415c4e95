"""Where a `messageId` may have been claimed: a 64-bit fingerprint per claim with where the
claim sits on disk (16 bytes of RAM per remembered id), in sorted numpy runs, the newest in a
dict until they fill a run.

A fingerprint says "maybe" (the claim must be read to compare the id), never "surely": two ids
sharing a fingerprint are told apart by the id stored on disk, so deduplication stays exact.
An id whose fingerprint is nowhere here was never claimed, which is the common case, answered
without touching the disk.

Runs are merged like a binary counter with a ratio of four (a run absorbs the newer one while
it is at most four times its size), so a claim is copied a few times in its life, not once
per merge as with a single array, and a lookup searches a handful of runs.
"""

from __future__ import annotations

import numpy as np
from xxhash import xxh3_64_intdigest

MERGE_AT = 1 << 17  # fresh fingerprints that make a new run
RUN_RATIO = 4
_BIAS = 1 << 63  # fingerprints are signed 64-bit integers (numpy int64)

Run = tuple[np.ndarray, np.ndarray]  # (sorted fingerprints, the locator of each)


def fingerprint(message_id: str) -> int:
    return xxh3_64_intdigest(message_id.encode()) - _BIAS


def fingerprints(message_ids: list[str]) -> list[int]:
    """`fingerprint` of each id (one loop, no call per id)."""
    return [xxh3_64_intdigest(m.encode()) - _BIAS for m in message_ids]


class FingerprintIndex:
    """Fingerprint -> locators (where on disk), for every claim of the window."""

    def __init__(self) -> None:
        self._runs: list[Run] = []  # oldest (largest) first
        self._fresh: dict[int, int] = {}  # claims since the last run was made
        self._shared: list[tuple[int, int]] = []  # fresh ones whose fingerprint was taken

    def __len__(self) -> int:
        return sum(len(f) for f, _l in self._runs) + len(self._fresh) + len(self._shared)

    def load(self, fps: np.ndarray, locators: np.ndarray) -> None:
        """Start from these (unsorted) fingerprints and locators."""
        order = np.argsort(fps, kind="stable")
        self._runs = [(fps[order], locators[order])] if len(fps) else []
        self._fresh.clear()
        self._shared.clear()

    def candidates(self, fps: list[int]) -> dict[int, list[int]]:
        """The locators that may hold the id of `fps[i]`, by `i`; an index not in the answer
        is surely a new id."""
        fresh = self._fresh
        out = {}
        if not fresh.keys().isdisjoint(fps):  # checked in C; usually nothing is there
            out = {i: [fresh[fp]] for i, fp in enumerate(fps) if fp in fresh}
        for fp, locator in self._shared:
            for i in (i for i, f in enumerate(fps) if f == fp):
                out.setdefault(i, []).append(locator)
        if not self._runs:
            return out
        wanted = np.fromiter(fps, np.int64, len(fps))
        order = np.argsort(wanted)  # sorted queries walk each run in order
        wanted = wanted[order]
        for known, locators in self._runs:
            at = np.searchsorted(known, wanted)
            hit = known[np.minimum(at, len(known) - 1)] == wanted
            for k in np.flatnonzero(hit).tolist():
                i, start = int(order[k]), int(at[k])
                end = int(np.searchsorted(known, known[start], "right"))
                out.setdefault(i, []).extend(locators[start:end].tolist())
        return out

    def add(self, fps: list[int], locators: list[int], *, new_and_once: bool = False) -> None:
        """Remember that the claim at `locators[i]` has fingerprint `fps[i]`; `new_and_once`:
        the caller knows that no fingerprint of `fps` is here and none is twice in it."""
        fresh = self._fresh
        if new_and_once or (fresh.keys().isdisjoint(fps) and len(set(fps)) == len(fps)):
            fresh.update(zip(fps, locators, strict=True))  # the common case, in one C pass
        else:
            for fp, locator in zip(fps, locators, strict=True):
                if fp in fresh:
                    self._shared.append((fp, locator))
                else:
                    fresh[fp] = locator
        if len(fresh) >= MERGE_AT:
            self._seal()

    def clear(self) -> None:
        """Forget every claim."""
        self._runs = []
        self._fresh.clear()
        self._shared.clear()

    def drop_rows_below(self, locator: int) -> None:
        """Forget every locator under `locator` (expired claims)."""
        self._seal()
        runs = []
        for fps, locators in self._runs:
            keep = locators >= locator
            if keep.any():
                runs.append((fps[keep], locators[keep]))
        self._runs = runs

    def runs(self) -> int:
        """How many sorted runs a lookup searches."""
        return len(self._runs)

    def _seal(self) -> None:
        """Make the fresh claims a run; merge runs that have become of a size."""
        if not self._fresh and not self._shared:
            return
        fps = np.fromiter(self._fresh.keys(), np.int64, len(self._fresh))
        locators = np.fromiter(self._fresh.values(), np.int64, len(self._fresh))
        if self._shared:
            extra = np.array(self._shared, np.int64).reshape(-1, 2)
            fps = np.concatenate((fps, extra[:, 0]))
            locators = np.concatenate((locators, extra[:, 1]))
        order = np.argsort(fps, kind="stable")
        self._runs.append((fps[order], locators[order]))
        self._fresh.clear()
        self._shared.clear()
        runs = self._runs
        while len(runs) >= 2 and len(runs[-2][0]) <= RUN_RATIO * len(runs[-1][0]):
            newer = runs.pop()
            older = runs.pop()
            runs.append(_merge(older, newer))


def _merge(a: Run, b: Run) -> Run:
    fps = np.concatenate((a[0], b[0]))
    order = np.argsort(fps, kind="stable")  # timsort: two sorted runs merge in linear time
    return fps[order], np.concatenate((a[1], b[1]))[order]
