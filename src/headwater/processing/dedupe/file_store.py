"""The embedded dedupe store: claims appended to segment files, found by fingerprint.

Real messageIds are random (UUID v4): an index keyed by them on disk writes a page per claim
once it outgrows its cache. So claims are appended in arrival order to segment files, one
write per call, and found through a `FingerprintIndex` in RAM (16 bytes per claim: a 64-bit
fingerprint and where the claim sits). The disk is read only when a fingerprint matches (a
duplicate, a replay, or a fingerprint collision, which comparing the stored id tells apart).

A segment holds the claims of a stretch of time (a 256th of the window); claims older than
the window go a whole segment file at a time, so expiry neither rewrites nor scans anything.
A segment is a sequence of frames of up to `FRAME_CLAIMS` claims:

    header: magic "HWC1", body length, xxh3 of the body, claim count, claim time (ms)
    body:   the claims' fingerprints (count x int64, little-endian), then MessagePack
            [[message_id, position], ...]

On open, every segment is read frame by frame (the fingerprints without decoding the claims);
a frame cut short or with a wrong checksum ends its segment there (a crash while writing).
Frames are not fsynced: a process crash loses nothing (the page cache has them); a power loss
may lose the newest claims, which can only let a replayed duplicate through once. It never
makes a message a duplicate.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import threading
from dataclasses import dataclass
from itertools import groupby
from operator import itemgetter
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from xxhash import xxh3_64_intdigest

from headwater.processing.dedupe.fingerprints import FingerprintIndex, fingerprints

log = logging.getLogger(__name__)

FRAME_CLAIMS = 64  # claims per frame: a duplicate's lookup reads and decodes one frame
SEGMENT_BYTES = 1 << 30  # a segment is closed at this size even within its stretch of time
SEGMENTS_PER_WINDOW = 256
HEADER = struct.Struct("<4sIQIq")
MAGIC = b"HWC1"
# Where a claim sits, as one int64: segment << 40 | frame offset << 8 | index in the frame.
SEGMENT_SHIFT, OFFSET_SHIFT = 40, 8
_NAME = re.compile(r"^claims-(\d{8})\.log$")

_encode = msgspec.msgpack.Encoder().encode
_decode = msgspec.msgpack.Decoder(list[tuple[str, str]]).decode


@dataclass
class Segment:
    """One segment file: its number, the time span of its claims, how many it holds."""

    number: int
    first_ms: int
    last_ms: int
    claims: int = 0
    size: int = 0


class FileDedupeStore:
    """Claims on disk in segment files under `directory`, looked up through fingerprints in
    RAM."""

    waits = False  # appends land in the page cache: claimed on the stage's own thread

    def __init__(self, directory: Path, window_ms: int) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self.window_ms = window_ms
        self._segment_ms = max(1, window_ms // SEGMENTS_PER_WINDOW)
        self._lock = threading.Lock()  # one writer; used from the stage's worker threads
        self._index = FingerprintIndex()
        self._segments: list[Segment] = []
        self._fd: int | None = None  # the newest segment, open for appends and reads
        self._readers: dict[int, int] = {}  # older segments opened for lookups
        self._load()

    # -- public interface ----------------------------------------------------------------

    def claim(self, claims: list[tuple[str, str]], now_ms: int) -> list[bool]:
        with self._lock:
            return self._claim(claims, now_ms)

    def expire(self, now_ms: int) -> int:
        """Delete the segments whose claims are all older than the window (a claim kept a
        little longer is harmless: its time is checked when it is found)."""
        with self._lock:
            cutoff_ms = now_ms - self.window_ms
            gone = 0
            while self._segments and self._segments[0].last_ms < cutoff_ms:
                seg = self._segments.pop(0)
                gone += seg.claims
                self._forget(seg)
            if gone and self._segments:
                self._index.drop_rows_below(self._segments[0].number << SEGMENT_SHIFT)
            elif gone:
                self._index.clear()
            return gone

    def count(self) -> int:
        """How many claims the store holds (expired ones not yet deleted included)."""
        with self._lock:
            return sum(s.claims for s in self._segments)

    def segments(self) -> int:
        """How many segment files the store holds."""
        with self._lock:
            return len(self._segments)

    def close(self) -> None:
        with self._lock:
            for fd in [*self._readers.values(), *([self._fd] if self._fd is not None else [])]:
                os.close(fd)
            self._readers.clear()
            self._fd = None

    def import_claims(self, rows: list[tuple[str, str, int]]) -> None:
        """Append claims (message_id, position, ms), in time order, each at its own time, and
        sync them (moving a store of another layout into this one)."""
        with self._lock:
            for ms, group in groupby(rows, key=itemgetter(2)):
                batch = [(m, p) for m, p, _ms in group]
                self._append(batch, fingerprints([m for m, _p in batch]), ms)
            if self._fd is not None:
                os.fsync(self._fd)

    # -- claiming -------------------------------------------------------------------------

    def _claim(self, claims: list[tuple[str, str]], now_ms: int) -> list[bool]:
        fps = fingerprints([mid for mid, _pos in claims])
        maybe = self._index.candidates(fps)
        if not maybe and len(set(fps)) == len(fps):
            # the common case: every id is new, and once (no fingerprint twice); in one go
            if claims:
                self._append(claims, fps, now_ms, new_and_once=True)
            return [False] * len(claims)
        oldest = now_ms - self.window_ms
        owners: dict[str, str] = {}  # id -> the position that holds it, as of this call
        new: list[tuple[str, str]] = []
        new_fps: list[int] = []
        result: list[bool] = []
        frames: dict[int, tuple[int, list[tuple[str, str]]]] = {}  # read during this call
        for i, (mid, position) in enumerate(claims):
            owner = owners.get(mid)
            locators = maybe.get(i)
            if owner is None and locators:
                found = self._stored(locators, mid, frames)
                if found is not None and found[1] >= oldest:
                    owner = owners[mid] = found[0]
            if owner is not None:
                result.append(owner != position)
                continue
            owners[mid] = position  # new, or claimed before the window: claimed anew
            new.append((mid, position))
            new_fps.append(fps[i])
            result.append(False)
        if new:
            self._append(new, new_fps, now_ms)
        return result

    def _stored(
        self,
        locators: list[int],
        message_id: str,
        frames: dict[int, tuple[int, list[tuple[str, str]]]],
    ) -> tuple[str, int] | None:
        """(position, ms) of the newest claim of `message_id` among `locators`, if any."""
        for locator in sorted(locators, reverse=True):
            frame_at = locator >> OFFSET_SHIFT
            frame = frames.get(frame_at)
            if frame is None:
                frame = frames[frame_at] = self._read_frame(frame_at)
            ms, entries = frame
            mid, position = entries[locator & 0xFF]
            if mid == message_id:
                return position, ms
        return None

    def _read_frame(self, frame_at: int) -> tuple[int, list[tuple[str, str]]]:
        number = frame_at >> (SEGMENT_SHIFT - OFFSET_SHIFT)
        offset = frame_at & ((1 << (SEGMENT_SHIFT - OFFSET_SHIFT)) - 1)
        fd = self._reader(number)
        head = os.pread(fd, HEADER.size, offset)
        _magic, length, _checksum, count, ms = HEADER.unpack(head)
        body = os.pread(fd, length, offset + HEADER.size)
        return ms, _decode(memoryview(body)[8 * count :])

    def _reader(self, number: int) -> int:
        last = self._segments[-1] if self._segments else None
        if last is not None and last.number == number and self._fd is not None:
            return self._fd
        fd = self._readers.get(number)
        if fd is None:
            fd = self._readers[number] = os.open(self._path(number), os.O_RDONLY)
        return fd

    def _append(
        self,
        claims: list[tuple[str, str]],
        fps: list[int],
        now_ms: int,
        *,
        new_and_once: bool = False,
    ) -> None:
        """Write `claims` (with their fingerprints) as frames, in one write, then index them."""
        seg = self._writable(now_ms)
        assert self._fd is not None
        parts: list[bytes] = []
        locators: list[int] = []
        offset = seg.size
        all_fps = np.fromiter(fps, np.int64, len(fps))
        for start in range(0, len(claims), FRAME_CLAIMS):
            chunk = claims[start : start + FRAME_CLAIMS]
            body = all_fps[start : start + len(chunk)].tobytes() + _encode(chunk)
            parts.append(HEADER.pack(MAGIC, len(body), xxh3_64_intdigest(body), len(chunk), now_ms))
            parts.append(body)
            base = (seg.number << SEGMENT_SHIFT) | (offset << OFFSET_SHIFT)
            locators.extend(range(base, base + len(chunk)))
            offset += HEADER.size + len(body)
        data = b"".join(parts)
        try:
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
        except BaseException:
            with contextlib.suppress(OSError):  # leave no partial frame for the next append
                os.ftruncate(self._fd, seg.size)
            raise
        seg.size = offset
        seg.claims += len(claims)
        seg.last_ms = max(seg.last_ms, now_ms)
        self._index.add(fps, locators, new_and_once=new_and_once)

    def _writable(self, now_ms: int) -> Segment:
        """The segment to append to at `now_ms`: the newest, or a new one once the newest
        spans its stretch of time or its size."""
        last = self._segments[-1] if self._segments else None
        if (
            last is not None
            and self._fd is not None
            and now_ms - last.first_ms < self._segment_ms
            and last.size < SEGMENT_BYTES
        ):
            return last
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        number = last.number + 1 if last is not None else 1
        if number >= 1 << 23:
            raise RuntimeError("dedupe store: segment numbers exhausted")
        self._fd = os.open(self._path(number), os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o644)
        seg = Segment(number, now_ms, now_ms, 0, os.fstat(self._fd).st_size)
        self._segments.append(seg)
        return seg

    # -- files ----------------------------------------------------------------------------

    def _path(self, number: int) -> Path:
        return self.directory / f"claims-{number:08d}.log"

    def _forget(self, seg: Segment) -> None:
        fd = self._readers.pop(seg.number, None)
        if fd is not None:
            os.close(fd)
        if self._fd is not None and not self._segments:  # it was the newest, open for appends
            os.close(self._fd)
            self._fd = None
        with contextlib.suppress(FileNotFoundError):
            self._path(seg.number).unlink()

    def _load(self) -> None:
        """Read every segment's frames: their fingerprints, where they sit, their times."""
        numbers = sorted(
            int(m.group(1)) for p in self.directory.iterdir() if (m := _NAME.match(p.name))
        )
        fps: list[np.ndarray] = []
        locators: list[np.ndarray] = []
        for number in numbers:
            seg = self._load_segment(number, fps, locators)
            if seg is not None:
                self._segments.append(seg)
            else:
                self._path(number).unlink()
        if fps:
            self._index.load(np.concatenate(fps), np.concatenate(locators))

    def _load_segment(
        self, number: int, fps: list[np.ndarray], locators: list[np.ndarray]
    ) -> Segment | None:
        data = self._path(number).read_bytes()
        seg = Segment(number, 0, 0)
        offset = 0
        while offset + HEADER.size <= len(data):
            magic, length, checksum, count, ms = HEADER.unpack_from(data, offset)
            body = memoryview(data)[offset + HEADER.size : offset + HEADER.size + length]
            if magic != MAGIC or len(body) < length or xxh3_64_intdigest(body) != checksum:
                break
            fps.append(np.frombuffer(body[: 8 * count], np.int64).copy())
            base = (number << SEGMENT_SHIFT) | (offset << OFFSET_SHIFT)
            locators.append(np.arange(base, base + count, dtype=np.int64))
            seg.first_ms = ms if seg.claims == 0 else min(seg.first_ms, ms)
            seg.last_ms = max(seg.last_ms, ms)
            seg.claims += count
            offset += HEADER.size + length
        if offset < len(data):
            log.warning(
                "dedupe store: %s ends with %d bytes of an unfinished write; cut off",
                self._path(number),
                len(data) - offset,
            )
            with open(self._path(number), "r+b") as f:
                f.truncate(offset)
        seg.size = offset
        return seg if seg.claims else None


def migrate_sqlite(path: Path, store: FileDedupeStore) -> int:
    """Move the claims of an earlier SQLite store at `path` (either of its layouts) into
    `store`, then delete it; returns how many claims moved."""
    import sqlite3

    conn = sqlite3.connect(path)
    try:
        tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        rows: list[Any] = []
        if "claims_log" in tables:
            rows += conn.execute("SELECT id, position, ms FROM claims_log ORDER BY row").fetchall()
        if "claims" in tables:
            rows += conn.execute("SELECT id, position, ms FROM claims ORDER BY ms").fetchall()
    finally:
        conn.close()
    rows.sort(key=lambda r: r[2])
    store.import_claims(rows)
    for suffix in ("", "-wal", "-shm"):
        with contextlib.suppress(FileNotFoundError):
            Path(f"{path}{suffix}").unlink()
    return len(rows)
