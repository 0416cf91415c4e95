"""Records and record batches: the unit the log stores and every stage reads.

A record is one message: the id of the source it came from and the message as JSON bytes.
A record batch is one MessagePack array of *runs*, `[source_id, stamp, messages]`, where
`messages` is a JSON array of messages and `stamp` is either nil (the messages are final) or the
request's encoded `Stamp` (the messages are as the client sent them; readers apply the stamp, see
`headwater.events.stored`). A gateway request becomes one run per partition it touches, and the
log concatenates runs from many requests into one batch without decoding them. The encoding is
the same for every log backend.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

import msgspec
import xxhash


class Record(msgspec.Struct, frozen=True, gc=False):
    """One stored message, as every reader sees it (stamped).

    `profile_key` is the message's profile key when the reader already knew it (see
    `headwater.events.stored`); None means "decode the message to find it". `stamp` is set
    only on records read unstamped (`decode_batch(..., stamped=False)`): the message is as the
    client sent it and `stamp` is its request's encoded `Stamp`, still to be applied.
    """

    source_id: str
    message: bytes
    profile_key: str | None = None
    stamp: bytes | None = None


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
    """Encoded messages of one source for one partition, ready to append."""

    partition: int
    payload: bytes | memoryview
    count: int


RunTuple = tuple[str, bytes | None, bytes]

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(list[RunTuple])


def partition_for(key: str, partitions: int) -> int:
    """The partition of a key: a stable hash (xxh3), never Python's `hash()`."""
    return xxhash.xxh3_64_intdigest(key.encode()) % partitions


def encode_run(
    source_id: str, stamp: bytes | None, messages: Sequence[bytes | memoryview]
) -> bytes:
    """Encode one source's messages (JSON objects, as bytes or buffers) for one partition."""
    return _encoder.encode((source_id, stamp, b"[" + b",".join(messages) + b"]"))


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


def decode_runs(payload: bytes | memoryview) -> list[RunTuple]:
    """The runs of a record batch, undecoded."""
    return _decoder.decode(payload)


def decode_batch(payload: bytes | memoryview, stamped: bool = True) -> list[Record]:
    """The records of a record batch, in order: stamped, or (`stamped=False`, for stages that
    only route messages) as stored, each with its request's stamp still to apply."""
    from headwater.events.schema import split_array
    from headwater.events.stored import records_of_run

    records: list[Record] = []
    for source_id, stamp, messages in decode_runs(payload):
        if stamped or stamp is None:
            records.extend(records_of_run(source_id, stamp, messages))
        else:
            records.extend(
                Record(source_id, bytes(raw), None, stamp) for raw in split_array(messages)
            )
    return records


def encode_batch(records: list[Record]) -> bytes:
    """Encode final records as one batch (for tools and tests, not the hot path)."""
    return join_runs([encode_run(r.source_id, None, [r.message]) for r in records])
