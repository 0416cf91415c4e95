"""Records and record batches: the unit the log stores and every stage reads.

A record is one message as stored: its `messageId`, the id of the source it came from, and the
message itself as JSON bytes. Records travel in batches encoded as one MessagePack array, so a
batch of any size costs one write and one read. The encoding is the same for every log backend.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import msgspec
import xxhash


class Record(msgspec.Struct, array_like=True, frozen=True):
    """One stored message: `message` is the full JSON object as the gateway stamped it."""

    message_id: str
    source_id: str
    message: bytes


@dataclass(frozen=True, slots=True)
class RecordBatch:
    """Records read from one partition, the first at offset `base_offset`.

    `count` is how many offsets the batch spans; `records` is empty only for a batch that could
    not be decoded (counted and skipped by the reader).
    """

    partition: int
    base_offset: int
    records: list[Record]
    count: int

    @property
    def end_offset(self) -> int:
        """The offset just past the last record of this batch."""
        return self.base_offset + self.count


_record_encoder = msgspec.msgpack.Encoder()
_batch_decoder = msgspec.msgpack.Decoder(list[Record])


def partition_for(message_id: str, partitions: int) -> int:
    """The partition of a message: a stable hash of its `messageId` (never Python's `hash()`)."""
    return xxhash.xxh3_64_intdigest(message_id.encode()) % partitions


def encode_record(record: Record) -> bytes:
    """Encode one record; batches are built by joining encoded records (see `join_records`)."""
    return _record_encoder.encode(record)


def join_records(encoded: list[bytes]) -> bytes:
    """Build a record batch from already-encoded records without decoding them again."""
    n = len(encoded)
    if n < 16:
        header = bytes((0x90 | n,))
    elif n < 0x10000:
        header = b"\xdc" + struct.pack(">H", n)
    else:
        header = b"\xdd" + struct.pack(">I", n)
    return header + b"".join(encoded)


def decode_batch(payload: bytes | memoryview) -> list[Record]:
    """Decode a record batch into its records."""
    return _batch_decoder.decode(payload)
