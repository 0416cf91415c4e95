"""The on-disk frame of a record batch, and recovery of frames the index does not know yet.

A segment file is a sequence of frames, one per record batch:

    magic "HWB1" | partition u32 | base_offset u64 | count u32 | length u32 | created_ms u64
    | checksum u64 (xxh3-64 of the payload) | payload (length bytes: the record batch)

The index is committed without its own fsync; only the segment is fsynced before an
acknowledgement. After a power loss the index may therefore miss the last commits, and
`recover_tail` re-indexes them from the frames (checked by magic, checksum and offset continuity).
Writers always write at the index's end of the segment, so a frame left by a writer that died
before committing is overwritten by the next commit and never accumulates.
"""

from __future__ import annotations

import os
import sqlite3
import struct
from dataclasses import dataclass

import xxhash

MAGIC = b"HWB1"
_HEADER = struct.Struct("<4sIQIIQQ")
HEADER_SIZE = _HEADER.size


@dataclass(frozen=True, slots=True)
class FrameHeader:
    partition: int
    base_offset: int
    count: int
    length: int
    created_ms: int
    checksum: int


def encode_header(
    partition: int, base_offset: int, count: int, chunks: list[bytes | memoryview], created_ms: int
) -> tuple[bytes, int]:
    """The header for a payload made of `chunks`, and the payload's length."""
    digest = xxhash.xxh3_64()
    length = 0
    for chunk in chunks:
        digest.update(chunk)
        length += len(chunk)
    header = _HEADER.pack(
        MAGIC, partition, base_offset, count, length, created_ms, digest.intdigest()
    )
    return header, length


def decode_header(data: bytes) -> FrameHeader | None:
    """The header at the start of `data`, or None if it is not one."""
    if len(data) < HEADER_SIZE:
        return None
    magic, partition, base, count, length, created, checksum = _HEADER.unpack_from(data)
    if magic != MAGIC:
        return None
    return FrameHeader(partition, base, count, length, created, checksum)


def recover_tail(conn: sqlite3.Connection, fd: int, segment: int, indexed_end: int) -> int:
    """Index the valid frames found after `indexed_end` in `segment`; returns the new end.

    Runs inside the caller's write transaction, under the log's write lock.
    """
    size = os.fstat(fd).st_size
    next_offsets = dict(conn.execute("SELECT partition, next_offset FROM partitions"))
    position = indexed_end
    rows = []
    while position + HEADER_SIZE <= size:
        header = decode_header(os.pread(fd, HEADER_SIZE, position))
        if header is None or next_offsets.get(header.partition) != header.base_offset:
            break
        payload_at = position + HEADER_SIZE
        if payload_at + header.length > size:
            break
        payload = os.pread(fd, header.length, payload_at)
        if xxhash.xxh3_64_intdigest(payload) != header.checksum:
            break
        end = header.base_offset + header.count
        rows.append(
            (
                header.partition,
                end,
                header.count,
                header.created_ms,
                segment,
                payload_at,
                header.length,
            )
        )
        next_offsets[header.partition] = end
        position = payload_at + header.length
    if rows:
        conn.executemany("INSERT INTO batches VALUES(?,?,?,?,?,?,?)", rows)
        conn.executemany(
            "UPDATE partitions SET next_offset=? WHERE partition=?",
            [(end, p) for p, end in next_offsets.items()],
        )
        conn.execute(
            "UPDATE segments SET bytes=?, last_ms=max(last_ms, ?) WHERE segment=?",
            (position, max(row[3] for row in rows), segment),
        )
    return position
