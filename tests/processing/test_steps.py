"""The processor's pure parts: `ProfileKey`, `outputs_of`, `Item`, `StageMetrics`."""

from __future__ import annotations

import json

import pytest

from headwater.log.records import decode_runs, partition_for
from headwater.processing.runtime import (
    FAILED,
    PROCESSED,
    Item,
    StageMetrics,
    outputs_of,
    producer_name,
)
from headwater.processing.steps import ProfileKey
from tests.processing._helpers import message


def keyed(*raws: bytes, source: str = "src") -> list[Item]:
    items = [Item(source, raw) for raw in raws]
    ProfileKey()(items)
    return items


# -- ProfileKey ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "key"),
    [
        ({"messageId": "m", "userId": "u", "anonymousId": "a"}, "u"),
        ({"messageId": "m", "anonymousId": "a"}, "a"),
        ({"messageId": "m", "userId": None, "anonymousId": "a"}, "a"),
        ({"messageId": "m", "userId": "", "anonymousId": "a"}, "a"),
        ({"messageId": "m"}, "m"),
        ({"messageId": "m", "userId": "", "anonymousId": ""}, "m"),
        ({"messageId": "m", "userId": None, "anonymousId": None}, "m"),
        ({"messageId": "m", "userId": 42}, "42"),
        ({"messageId": "m", "userId": 0}, "0"),
        ({"messageId": "m", "anonymousId": 7}, "7"),
        ({"messageId": 123}, "123"),
        ({"messageId": "m", "userId": "u", "extra": {"nested": [1, 2]}}, "u"),
    ],
)
def test_profile_key_prefers_user_then_anonymous_then_message_id(
    body: dict[str, object], key: str
) -> None:
    [item] = keyed(json.dumps(body).encode())
    assert (item.key, item.outcome, item.reason) == (key, "", "")


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"",
        b"[1, 2]",
        b'"a string"',
        b"17",
        b"null",
        b'{"messageId": "m", "userId": {"id": 1}}',
        b'{"messageId": "m", "userId": true}',
        b'{"messageId": ["m"]}',
        b'{"messageId": "m", "userId": "u"',
    ],
)
def test_profile_key_unreadable_message_fails_as_invalid(raw: bytes) -> None:
    [item] = keyed(raw)
    assert (item.outcome, item.reason, item.key) == (FAILED, "invalid_message", "")


def test_profile_key_without_any_identifier_fails() -> None:
    [item] = keyed(b'{"type": "track", "event": "E"}')
    assert (item.outcome, item.reason, item.key) == (FAILED, "no_identifier", "")


def test_profile_key_leaves_stopped_items_alone() -> None:
    stopped = Item("src", b"not json")
    stopped.stop("dropped", "duplicate")
    fine = Item("src", message("m1", user="u1"))
    ProfileKey()([stopped, fine])
    assert (stopped.outcome, stopped.reason, stopped.key) == ("dropped", "duplicate", "")
    assert (fine.key, fine.outcome) == ("u1", "")


def test_profile_key_keeps_a_key_the_reader_already_knew() -> None:
    item = Item("src", b"not even json", key="profile-1")  # a stamped record's profile key
    ProfileKey()([item])
    assert (item.key, item.outcome, item.reason) == ("profile-1", "", "")


def test_profile_key_one_bad_item_does_not_affect_the_others() -> None:
    items = keyed(message("m1", user="u1"), b"{", message("m2", anon="a2"), b"[]")
    assert [(i.key, i.reason) for i in items] == [
        ("u1", ""),
        ("", "invalid_message"),
        ("a2", ""),
        ("", "invalid_message"),
    ]


def test_profile_key_is_idempotent() -> None:
    items = keyed(message("m1", user="u1"), message("m2"), b"x")
    before = [(i.key, i.outcome, i.reason) for i in items]
    ProfileKey()(items)
    assert [(i.key, i.outcome, i.reason) for i in items] == before


# -- Item, producer_name ------------------------------------------------------------------------


def test_item_stop_sets_outcome_and_reason() -> None:
    item = Item("src", b"{}")
    assert (item.key, item.outcome, item.reason) == ("", "", "")
    item.stop(FAILED, "why")
    assert (item.outcome, item.reason) == (FAILED, "why")


def test_producer_name_is_per_stage_and_partition() -> None:
    assert producer_name("processor", 3) == "processor.3"
    assert producer_name("a", 1) != producer_name("a", 2) != producer_name("b", 1)


# -- outputs_of ---------------------------------------------------------------------------------


def decoded(runs_payload: bytes) -> tuple[str, bytes | None, list[str]]:
    [(source, stamp, messages)] = decode_runs(runs_payload_as_batch(runs_payload))
    return source, stamp, [m["messageId"] for m in json.loads(messages)]


def runs_payload_as_batch(payload: bytes) -> bytes:
    return b"\x91" + payload  # a one-run batch: MessagePack fixarray of 1


def test_outputs_of_groups_by_partition_and_source_and_skips_stopped() -> None:
    n = 4
    items: list[Item] = []
    for i in range(40):
        source = "src_a" if i % 3 else "src_b"
        items.append(Item(source, message(f"m{i}", user=f"u{i % 9}"), key=f"u{i % 9}"))
    items[5].stop(FAILED, "invalid_message")
    items[17].stop("dropped", "duplicate")

    runs = outputs_of(items, n)

    expected: dict[tuple[int, str], list[str]] = {}
    for i, item in enumerate(items):
        if item.outcome:
            continue
        expected.setdefault((partition_for(item.key, n), item.source_id), []).append(f"m{i}")
    got: dict[tuple[int, str], list[str]] = {}
    for run in runs:
        source, stamp, ids = decoded(bytes(run.payload))
        assert stamp is None
        assert run.count == len(ids)
        assert (run.partition, source) not in got, "one run per (partition, source)"
        got[(run.partition, source)] = ids
    assert got == expected  # ids in their original order within each group
    assert sum(r.count for r in runs) == 38


def test_outputs_of_keeps_message_bytes_unchanged() -> None:
    raw = b'{"messageId":"m1",  "userId":"u1", "z": 1.50}'
    [run] = outputs_of([Item("s", raw, key="u1")], 3)
    [(_source, _stamp, messages)] = decode_runs(runs_payload_as_batch(bytes(run.payload)))
    assert messages == b"[" + raw + b"]"
    assert run.partition == partition_for("u1", 3)


def test_outputs_of_nothing_to_write() -> None:
    stopped = Item("s", b"{}")
    stopped.stop(FAILED, "x")
    assert outputs_of([], 4) == []
    assert outputs_of([stopped], 4) == []


def test_outputs_of_one_partition_log() -> None:
    items = [Item("s", message(f"m{i}"), key=f"k{i}") for i in range(10)]
    [run] = outputs_of(items, 1)
    assert (run.partition, run.count) == (0, 10)


# -- StageMetrics -------------------------------------------------------------------------------


def test_stage_metrics_counts_per_source_outcome_reason() -> None:
    metrics = StageMetrics("processor")
    a = [Item("s1", b"", outcome=PROCESSED) for _ in range(3)]
    b = [Item("s2", b"", outcome=FAILED, reason="invalid_message") for _ in range(2)]
    written = [Item("s1", b"") for _ in range(2)]  # no outcome: written to the output
    metrics.count(a + b)
    metrics.count(a[:1])
    metrics.count(written)
    assert metrics.counts == {
        ("s1", PROCESSED, ""): 6,
        ("s2", FAILED, "invalid_message"): 2,
    }
    assert metrics.total() == 8
    assert metrics.total(PROCESSED) == 6
    assert metrics.total(FAILED) == 2
    assert metrics.total("dropped") == 0
    assert sorted(metrics.snapshot().stage) == [
        ("processor", "s1", PROCESSED, "", 6),
        ("processor", "s2", FAILED, "invalid_message", 2),
    ]
