"""The wire format between gateway workers and the log server (a Unix socket on this host).

Every frame is a little-endian u32 length followed by that many bytes of MessagePack:

- requests: `[[request_id, [[partition, count, run], ...]], ...]`: every request a worker made
  in one event-loop iteration travels in one frame;
- response: `[[ok request_id, ...], [[request_id, status, code, message, retry_after], ...]]`:
  one frame acknowledges every request of a connection that one commit made durable.
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from collections.abc import Callable
from pathlib import Path

import msgspec

from headwater.log.records import Run

_LENGTH = struct.Struct("<I")
LENGTH_SIZE = _LENGTH.size
MAX_FRAME = 64 * 1024 * 1024

RunTuple = tuple[int, int, bytes]
Request = tuple[int, list[RunTuple]]
Failure = tuple[int, int, str, str, int]
Response = tuple[list[int], list[Failure]]

_encoder = msgspec.msgpack.Encoder()
request_decoder = msgspec.msgpack.Decoder(list[Request])
response_decoder = msgspec.msgpack.Decoder(Response)


def request_of(request_id: int, runs: list[Run]) -> Request:
    return request_id, [(r.partition, r.count, r.payload) for r in runs]


def encode_requests(requests: list[Request]) -> bytearray:
    """One frame carrying several requests."""
    buf = bytearray(LENGTH_SIZE)
    _encoder.encode_into(requests, buf, LENGTH_SIZE)
    _LENGTH.pack_into(buf, 0, len(buf) - LENGTH_SIZE)
    return buf


def encode_request(request_id: int, runs: list[Run]) -> bytearray:
    """A frame carrying one request."""
    return encode_requests([request_of(request_id, runs)])


def encode_response(ok: list[int], failed: list[Failure]) -> bytearray:
    buf = bytearray(LENGTH_SIZE)
    _encoder.encode_into((ok, failed), buf, LENGTH_SIZE)
    _LENGTH.pack_into(buf, 0, len(buf) - LENGTH_SIZE)
    return buf


class FrameReader:
    """Splits a byte stream into frames and hands each to a callback."""

    def __init__(self, on_frame: Callable[[memoryview], None]) -> None:
        self._buf = bytearray()
        self._on_frame = on_frame

    def feed(self, data: bytes) -> None:
        """Add received bytes; calls `on_frame` for each complete frame (the view is only
        valid during the call)."""
        buf = self._buf
        buf += data
        offset = 0
        end = len(buf)
        with memoryview(buf) as view:
            while end - offset >= LENGTH_SIZE:
                (n,) = _LENGTH.unpack_from(buf, offset)
                if n > MAX_FRAME:
                    raise ValueError(f"frame of {n} bytes is over the limit")
                if end - offset - LENGTH_SIZE < n:
                    break
                self._on_frame(view[offset + LENGTH_SIZE : offset + LENGTH_SIZE + n])
                offset += LENGTH_SIZE + n
        if offset:
            del buf[:offset]


def socket_path(log_root: Path) -> str:
    """The log server's socket: in the data dir, or a private temp dir if that path is too long
    for a Unix socket."""
    path = log_root.resolve().parent.parent / "run" / f"{log_root.name}.sock"
    if len(str(path)) < 100:
        return str(path)
    digest = hashlib.sha256(str(path).encode()).hexdigest()[:16]
    private = Path(tempfile.gettempdir()) / f"headwater-{os.getuid()}"
    private.mkdir(mode=0o700, exist_ok=True)
    return str(private / f"{digest}.sock")
