"""Records and record batches: the unit the log stores and every stage reads.

A record is one message as stored: the id of the source it came from and the message itself as
JSON bytes. A record batch is one MessagePack array of *runs*, each run being
`[source_id, [message, message, ...]]`: a request's messages for one partition are encoded as one
run by the gateway, and the log writer concatenates runs from many requests into one batch
without decoding them. The encoding is the same for every log backend.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

import msgspec
import xxhash


class Record(msgspec.Struct, frozen=True):
    """One stored message: `message` is the full JSON object as the gateway stamped it."""

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


@dataclass(frozen=True, slots=True)
class Run:
    """Encoded records of one source for one partition, ready to append."""

    partition: int
    payload: bytes
    count: int


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[tuple[str, list[bytes]]])


def partition_for(key: str, partitions: int) -> int:
    """The partition of a key: a stable hash (xxh3), never Python's `hash()`."""
    return xxhash.xxh3_64_intdigest(key.encode()) % partitions


def encode_run(source_id: str, messages: list[bytes]) -> bytes:
    """Encode one source's messages for one partition."""
    return _encoder.encode((source_id, messages))


def batch_header(runs: int) -> bytes:
    """The MessagePack array header that, followed by `runs` encoded runs, makes a batch."""
    if runs < 16:
        return bytes((0x90 | runs,))
    if runs < 0x10000:
        return b"\xdc" + struct.pack(">H", runs)
    return b"\xdd" + struct.pack(">I", runs)


def join_runs(runs: list[bytes]) -> bytes:
    """Build a record batch from encoded runs without decoding them again."""
    return batch_header(len(runs)) + b"".join(runs)


def decode_batch(payload: bytes | memoryview) -> list[Record]:
    """Decode a record batch into its records, in order."""
    return [Record(source, message) for source, messages in _decoder.decode(payload)
            for message in messages]


def encode_batch(records: list[Record]) -> bytes:
    """Encode records as one batch (one run per record; for tools and tests, not the hot path)."""
    return join_runs([encode_run(r.source_id, [r.message]) for r in records])
