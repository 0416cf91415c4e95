"""The wire format between gateway workers and the log server: length-prefixed frames (binary
requests, MessagePack responses), split correctly however the bytes arrive, and where the
server's socket lives."""

from __future__ import annotations

import os
import stat
import struct
from pathlib import Path

import pytest

from headwater.log.embedded.protocol import (
    LENGTH_SIZE,
    MAX_FRAME,
    FrameReader,
    decode_requests,
    encode_request,
    encode_requests,
    encode_response,
    response_decoder,
    socket_path,
)
from headwater.log.records import Run
from tests.log._helpers import run_of


def _collect() -> tuple[FrameReader, list[bytes]]:
    frames: list[bytes] = []
    return FrameReader(lambda view: frames.append(bytes(view))), frames


def test_request_round_trips() -> None:
    runs = [run_of(0, ["a", "b"]), run_of(5, ["c"]), Run(7, b"\x00\xff" * 10, 3)]
    wire = bytes(encode_request(42, runs))
    (length,) = struct.unpack_from("<I", wire)
    assert length == len(wire) - LENGTH_SIZE
    [(request_id, decoded)] = decode_requests(wire[LENGTH_SIZE:])
    assert request_id == 42
    assert [(r.partition, bytes(r.payload), r.count) for r in decoded] == [
        (r.partition, bytes(r.payload), r.count) for r in runs
    ]


def test_several_requests_travel_in_one_frame() -> None:
    requests = [(i, [run_of(i % 4, [f"m{i}"])]) for i in range(5)]
    wire = b"".join(encode_requests(requests))
    decoded = decode_requests(wire[LENGTH_SIZE:])
    assert [request_id for request_id, _runs in decoded] == list(range(5))
    assert [runs[0].partition for _id, runs in decoded] == [0, 1, 2, 3, 0]


@pytest.mark.parametrize("cut", [1, 5, 20])
def test_a_malformed_request_frame_is_a_value_error(cut: int) -> None:
    wire = encode_request(1, [run_of(0, ["a", "b"])])[LENGTH_SIZE:]
    with pytest.raises(ValueError):
        decode_requests(wire[:-cut])
    with pytest.raises(ValueError):
        decode_requests(wire + b"junk")


def test_response_round_trips() -> None:
    failed = [(3, 503, "log_unavailable", "the log's disk is nearly full", 30)]
    wire = bytes(encode_response([1, 2, 4], failed))
    assert struct.unpack_from("<I", wire)[0] == len(wire) - LENGTH_SIZE
    ok, bad = response_decoder.decode(wire[LENGTH_SIZE:])
    assert ok == [1, 2, 4]
    assert [tuple(f) for f in bad] == failed


def test_frames_split_across_any_chunking() -> None:
    requests = [encode_request(i, [run_of(i % 3, [f"m{i}"] * (i + 1))]) for i in range(20)]
    stream = b"".join(bytes(r) for r in requests)
    for chunk in (1, 3, 7, 64, len(stream)):
        reader, frames = _collect()
        for at in range(0, len(stream), chunk):
            reader.feed(stream[at : at + chunk])
        assert [decode_requests(f)[0][0] for f in frames] == list(range(20))


def test_a_partial_frame_waits_for_the_rest() -> None:
    wire = bytes(encode_response([9], []))
    reader, frames = _collect()
    reader.feed(wire[:2])  # not even the whole length
    reader.feed(wire[2:-1])
    assert frames == []
    reader.feed(wire[-1:] + wire)  # the end of one and a whole second one
    assert [response_decoder.decode(f)[0] for f in frames] == [[9], [9]]


def test_an_empty_frame_is_delivered() -> None:
    reader, frames = _collect()
    reader.feed(b"\x00\x00\x00\x00")
    assert frames == [b""]


def test_an_oversized_frame_is_refused() -> None:
    reader, frames = _collect()
    with pytest.raises(ValueError, match="over the limit"):
        reader.feed(struct.pack("<I", MAX_FRAME + 1) + b"x")
    assert frames == []
    # exactly the limit is allowed (and waits for its bytes)
    ok, frames_ok = _collect()
    ok.feed(struct.pack("<I", MAX_FRAME))
    assert frames_ok == []


def test_socket_lives_in_the_data_dirs_run_folder(tmp_path: Path) -> None:
    root = tmp_path / "data" / "log" / "ingest"
    assert socket_path(root) == str(tmp_path.resolve() / "data" / "run" / "ingest.sock")


def test_a_too_long_socket_path_moves_to_a_private_temp_dir(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60) / "data"
    a = socket_path(deep / "log" / "ingest")
    b = socket_path(deep / "log" / "other")
    assert len(a) < 100
    assert a != b
    assert a == socket_path(deep / "log" / "ingest")  # stable: workers and server agree
    folder = Path(a).parent
    assert folder.name == f"headwater-{os.getuid()}"
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
