"""Record batches (`headwater.log.records`) and the stamped records readers rebuild from them
(`headwater.events.stored`)."""

from __future__ import annotations

import json
import logging

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from headwater.events.stamp import Stamp, encode_stamp
from headwater.events.stored import records_of_run
from headwater.log.records import (
    Record,
    RecordBatch,
    batch_header,
    decode_batch,
    decode_runs,
    encode_batch,
    encode_run,
    join_runs,
    partition_for,
)
from tests.unit._helpers import RECEIVED, RECEIVED_JSON, stored_bytes, verdict

STAMP = encode_stamp(Stamp(RECEIVED, None, "1.2.3.4"))


def msg(n: int) -> bytes:
    return json.dumps({"type": "track", "userId": f"u{n}", "event": "E", "n": n}).encode()


# -- partition_for -------------------------------------------------------------------------------


def test_partition_for_is_pinned() -> None:
    # these values must never change: a message's partition is part of the on-disk layout
    got = {k: partition_for(k, 16) for k in ["", "a", "msg-1", "é"]}
    assert got == {"": 2, "a": 15, "msg-1": 2, "é": 3}
    assert partition_for("msg-1", 2**64 - 1) == 11236230856888323538


def test_partition_for_with_one_partition() -> None:
    assert {partition_for(f"k{i}", 1) for i in range(50)} == {0}


@given(st.text(), st.integers(1, 1024))
def test_partition_for_is_stable_and_in_range(key: str, partitions: int) -> None:
    p = partition_for(key, partitions)
    assert 0 <= p < partitions
    assert partition_for(key, partitions) == p


def test_partition_for_spreads_keys() -> None:
    counts = [0] * 8
    for i in range(4000):
        counts[partition_for(f"hw-{i}", 8)] += 1
    assert min(counts) > 350


# -- encoding runs and batches -------------------------------------------------------------------


def test_a_run_round_trips_and_is_stamped() -> None:
    payload = join_runs([encode_run("src_1", STAMP, [msg(1), memoryview(msg(2))])])
    records = decode_batch(payload)
    assert [r.source_id for r in records] == ["src_1", "src_1"]
    outs = [json.loads(r.message) for r in records]
    assert [o["n"] for o in outs] == [1, 2]
    assert all(o["receivedAt"] == RECEIVED_JSON for o in outs)
    assert all(o["context"] == {"ip": "1.2.3.4"} for o in outs)


def test_runs_of_several_sources_keep_order_and_source() -> None:
    runs = [
        encode_run("src_a", STAMP, [msg(1), msg(2)]),
        encode_run("src_b", None, [b'{"final":true}']),
        encode_run("src_a", encode_stamp(Stamp(RECEIVED, path_type="track")), [msg(3)]),
    ]
    records = decode_batch(join_runs(runs))
    assert [r.source_id for r in records] == ["src_a", "src_a", "src_b", "src_a"]
    assert records[2].message == b'{"final":true}'  # unstamped runs hold final messages
    assert [json.loads(r.message).get("n") for r in records] == [1, 2, None, 3]


def test_decode_runs_leaves_messages_undecoded() -> None:
    run = encode_run("src_1", STAMP, [msg(1), msg(2)])
    ((source_id, stamp, messages),) = decode_runs(join_runs([run]))
    assert (source_id, stamp) == ("src_1", STAMP)
    assert messages == b"[" + msg(1) + b"," + msg(2) + b"]"


@pytest.mark.parametrize("runs", [0, 1, 15, 16, 17, 300, 65535, 65536])
def test_batch_header_is_a_msgpack_array_header(runs: int) -> None:
    header = batch_header(runs)
    assert msgspec.msgpack.decode(header + msgspec.msgpack.encode(None) * runs) == [None] * runs


def test_join_runs_with_many_runs() -> None:
    runs = [encode_run(f"s{i}", None, [b'{"i":%d}' % i]) for i in range(70_000)]
    records = decode_batch(join_runs(runs))
    assert len(records) == 70_000
    assert records[-1] == Record("s69999", b'{"i":69999}')


def test_encode_batch_round_trips_final_records() -> None:
    records = [Record("a", b'{"x":1.10}'), Record("b", b"{}"), Record("a", b'{"y":[1]}')]
    assert decode_batch(encode_batch(records)) == records
    assert decode_batch(encode_batch([])) == []


def test_garbage_is_not_a_batch() -> None:
    with pytest.raises(msgspec.DecodeError):
        decode_batch(b"\x00\x01garbage")


def test_record_batch_end_offset() -> None:
    batch = RecordBatch(partition=3, base_offset=100, records=[], count=7)
    assert batch.end_offset == 107


# -- records_of_run ------------------------------------------------------------------------------


def test_records_of_run_without_a_stamp_passes_messages_through() -> None:
    messages = b'[{"a":1}, {"b":"x"}]'
    assert records_of_run("s", None, messages) == [
        Record("s", b'{"a":1}'),
        Record("s", b'{"b":"x"}'),
    ]


def test_a_stored_message_that_no_longer_validates_is_passed_through(
    caplog: pytest.LogCaptureFixture,
) -> None:
    bad = b'{"type":"track","userId":"u"}'  # no event: the gateway would have dropped it
    good = msg(1)
    with caplog.at_level(logging.ERROR, logger="headwater.events.stored"):
        records = records_of_run("s", STAMP, b"[" + bad + b"," + good + b",5]")
    assert records[0] == Record("s", bad)
    assert json.loads(records[1].message)["receivedAt"] == RECEIVED_JSON
    assert records[2] == Record("s", b"5")
    assert sum("no longer validates" in r.getMessage() for r in caplog.records) == 2


def test_stored_message_is_the_same_through_strict_and_lenient_decoding() -> None:
    strict = b'{"type":"identify","userId":"u","traits":{"a":1}}'
    lenient = b'{"type":"identify","userId":"u","traits":{"a":1},"extra":true}'
    out_strict, out_lenient = (json.loads(m) for m in stored_bytes([strict, lenient]))
    assert out_lenient.pop("extra") is True
    assert out_strict == out_lenient


# -- what the gateway accepts, every reader sees stamped -----------------------------------------

_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**20), 10**20),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=5),
    st.sampled_from(["", "2024-05-01T11:00:00Z", "track", "identify", "group"]),
)
_values = st.one_of(
    _scalars,
    st.lists(_scalars, max_size=2),
    st.dictionaries(st.sampled_from(["ip", "a"]), _scalars, max_size=2),
)
_fields = st.sampled_from(
    [
        "type",
        "event",
        "name",
        "category",
        "groupId",
        "previousId",
        "userId",
        "anonymousId",
        "properties",
        "traits",
        "context",
        "integrations",
        "messageId",
        "timestamp",
        "originalTimestamp",
        "sentAt",
        "writeKey",
        "_metadata",
        "custom",
        "channel",
        "version",
        "receivedAt",
    ]
)


@given(
    st.dictionaries(_fields, _values, max_size=8),
    st.sampled_from([None, "track", "identify", "group", "alias", "page"]),
    st.sampled_from([None, "2024-05-01T11:59:30Z", 5]),
    st.sampled_from([None, b'{"ip":"2.2.2.2"}', b'{"a":1}', b"null"]),
)
def test_every_accepted_message_is_stamped_by_readers(
    message: dict[str, object],
    path_type: str | None,
    sent_at: object,
    context: bytes | None,
) -> None:
    if isinstance(message.get("type"), list | dict):
        return  # crashes validation, see test_validate.test_a_list_or_object_type_...
    if verdict(message, path_type=path_type) != "ok":
        return
    (out,) = (
        json.loads(m)
        for m in stored_bytes(
            [message], sent_at=sent_at, ip="1.1.1.1", context=context, path_type=path_type
        )
    )
    assert out["version"] == 2
    assert out["receivedAt"] == RECEIVED_JSON
    assert "timestamp" in out
    assert "writeKey" not in out
    assert "ip" in out["context"]
    if "custom" in message:
        assert out["custom"] == message["custom"]
    for field in ("properties", "traits", "_metadata", "channel"):
        if field in message:
            assert out[field] == message[field]
