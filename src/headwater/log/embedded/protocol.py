"""The wire format between gateway workers and the log server (a Unix socket on this host).

Every frame is a little-endian u32 length followed by that many bytes.

- requests (worker -> server), binary so that runs are never copied on the way:
  `u32 n` then n times `u64 request_id, u32 runs` then runs times
  `u32 partition, u32 count, u32 length, <length bytes of run>`. Every request a worker made in
  one event-loop iteration travels in one frame, written with one `writev`.
- response (server -> worker), MessagePack:
  `[[ok request_id, ...], [[request_id, status, code, message, retry_after], ...]]`: one frame
  acknowledges every request of a connection that one commit made durable.
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

Request = tuple[int, list[Run]]
Failure = tuple[int, int, str, str, int]
Response = tuple[list[int], list[Failure]]

_HEAD = struct.Struct("<II")
_REQUEST = struct.Struct("<QI")
_RUN = struct.Struct("<III")
_encoder = msgspec.msgpack.Encoder()
response_decoder = msgspec.msgpack.Decoder(Response)


def encode_requests(requests: list[Request]) -> list[bytes | memoryview]:
    """The buffers of one frame carrying `requests`, in order (for `writelines`/`writev`)."""
    buffers: list[bytes | memoryview] = [b""]
    size = 4
    for request_id, runs in requests:
        buffers.append(_REQUEST.pack(request_id, len(runs)))
        size += _REQUEST.size
        for run in runs:
            buffers.append(_RUN.pack(run.partition, run.count, len(run.payload)))
            buffers.append(run.payload)
            size += _RUN.size + len(run.payload)
    buffers[0] = _HEAD.pack(size, len(requests))
    return buffers


def encode_request(request_id: int, runs: list[Run]) -> bytes:
    """A whole frame carrying one request."""
    return b"".join(encode_requests([(request_id, runs)]))


def decode_requests(frame: bytes) -> list[Request]:
    """The requests of a frame (its body, after the length); runs are views into `frame`."""
    view = memoryview(frame)
    end = len(frame)
    try:
        (count,) = struct.unpack_from("<I", frame, 0)
        offset = 4
        requests: list[Request] = []
        for _ in range(count):
            request_id, nruns = _REQUEST.unpack_from(frame, offset)
            offset += _REQUEST.size
            runs = []
            for _ in range(nruns):
                partition, records, length = _RUN.unpack_from(frame, offset)
                offset += _RUN.size
                if offset + length > end:
                    raise ValueError("a run goes past the end of its frame")
                runs.append(Run(partition, view[offset : offset + length], records))
                offset += length
            requests.append((request_id, runs))
    except struct.error as exc:
        raise ValueError(f"truncated request frame: {exc}") from None
    if offset != end:
        raise ValueError("bytes left over after the last request of a frame")
    return requests


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
