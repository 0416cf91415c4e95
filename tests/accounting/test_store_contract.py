"""One contract for the accounting stores: SQLite (embedded) and the real Redis server.

Every test taking `store` runs on both. Retention is the one place the backends differ by
design: SQLite drops rows in `expire`, Redis gives every key its own expiry.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import redis

from headwater.accounting.redis_store import RedisAccountingStore
from headwater.accounting.store import (
    NO_MARK,
    AccountingStore,
    Mark,
    OutcomeRow,
    Retention,
    SampleRow,
    SqliteAccountingStore,
    ViolationRow,
)
from headwater.accounting.tally import (
    DAY_MS,
    HOUR_MS,
    MINUTE_MS,
    SAMPLE_MAX_BYTES,
    SAMPLES_PER_VIOLATION,
    Tally,
)
from tests.support.redis import REDIS_URL, redis_prefix

T0 = 1_699_999_200_000  # 2023-11-14T22:00:00Z, a whole hour
SECOND_MS = 1_000
RETENTION = Retention(minute_ms=2 * HOUR_MS, hour_ms=10 * DAY_MS)
SRC = "src_a"
OTHER = "src_b"
STAGE = "processor"


def sqlite_store(tmp_path: Path) -> SqliteAccountingStore:
    return SqliteAccountingStore(tmp_path / "state" / "accounting.db", RETENTION)


@dataclass
class RedisBackend:
    store: RedisAccountingStore
    client: Any  # a second client, to look at the keys the store wrote
    prefix: str


@pytest.fixture
def redis_backend() -> Iterator[RedisBackend]:
    with redis_prefix() as (client, prefix):
        store = RedisAccountingStore(redis.Redis.from_url(REDIS_URL), prefix, RETENTION)
        yield RedisBackend(store, client, prefix)
        store.close()


@pytest.fixture(params=["sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[AccountingStore]:
    if request.param == "sqlite":
        s: AccountingStore = sqlite_store(tmp_path)
        yield s
        s.close()
        return
    with redis_prefix() as (client, prefix):
        yield RedisAccountingStore(client, prefix, RETENTION)


def received(source: str, at_ms: int, n: int = 1) -> Tally:
    tally = Tally()
    tally.outcome(source, at_ms, "ingest", "received", "", n)
    return tally


def sorted_violations(rows: list[ViolationRow]) -> list[ViolationRow]:
    """The stores give violation rows in no particular order."""
    return sorted(rows, key=lambda r: (r.event, r.type, r.field))


def one_violation(source: str, at_ms: int, payload: bytes, event: str = "Signed Up") -> Tally:
    tally = Tally()
    tally.violation(source, at_ms, event, "type", "properties.plan", payload)
    return tally


# Outcomes


def test_recorded_outcomes_come_back_per_minute(store: AccountingStore) -> None:
    tally = Tally()
    tally.outcome(SRC, T0 + 5 * SECOND_MS, "ingest", "received", "", 2)
    tally.outcome(SRC, T0 + 50 * SECOND_MS, "ingest", "received", "", 1)  # the same minute
    tally.outcome(SRC, T0 + MINUTE_MS + 1, "ingest", "received", "", 4)
    tally.outcome(SRC, T0 + MINUTE_MS + 2, STAGE, "processed", "", 3)
    tally.outcome(SRC, T0 + MINUTE_MS + 3, STAGE, "duplicate", "message_id_seen")
    tally.outcome(SRC, T0 + 2 * MINUTE_MS, "ingest", "failed", "invalid_json", 5)
    assert store.record(tally) is True

    assert store.outcomes(SRC, T0, T0 + HOUR_MS, MINUTE_MS) == [
        OutcomeRow(T0, "ingest", "received", "", 3),
        OutcomeRow(T0 + MINUTE_MS, "ingest", "received", "", 4),
        OutcomeRow(T0 + MINUTE_MS, STAGE, "duplicate", "message_id_seen", 1),
        OutcomeRow(T0 + MINUTE_MS, STAGE, "processed", "", 3),
        OutcomeRow(T0 + 2 * MINUTE_MS, "ingest", "failed", "invalid_json", 5),
    ]


def test_the_hour_grain_sums_the_minutes_of_each_hour(store: AccountingStore) -> None:
    tally = Tally()
    tally.outcome(SRC, T0 + 1 * MINUTE_MS, "ingest", "received", "", 2)
    tally.outcome(SRC, T0 + 59 * MINUTE_MS, "ingest", "received", "", 3)
    tally.outcome(SRC, T0 + 30 * MINUTE_MS, "ingest", "failed", "too_large", 1)
    tally.outcome(SRC, T0 + HOUR_MS + 10 * MINUTE_MS, "ingest", "received", "", 7)
    tally.outcome(SRC, T0 + 3 * HOUR_MS, "ingest", "received", "", 1)
    store.record(tally)

    assert store.outcomes(SRC, T0, T0 + 4 * HOUR_MS, HOUR_MS) == [
        OutcomeRow(T0, "ingest", "failed", "too_large", 1),
        OutcomeRow(T0, "ingest", "received", "", 5),
        OutcomeRow(T0 + HOUR_MS, "ingest", "received", "", 7),
        OutcomeRow(T0 + 3 * HOUR_MS, "ingest", "received", "", 1),
    ]
    # The minute rows are still there beside the hour rows.
    minutes = store.outcomes(SRC, T0, T0 + 4 * HOUR_MS, MINUTE_MS)
    assert sum(r.count for r in minutes) == 2 + 3 + 1 + 7 + 1
    assert len(minutes) == 5


def test_recording_twice_adds_up(store: AccountingStore) -> None:
    store.record(received(SRC, T0 + 1, 2))
    store.record(received(SRC, T0 + 2, 5))
    store.record(received(SRC, T0 + 20 * MINUTE_MS, 1))

    assert store.outcomes(SRC, T0, T0 + HOUR_MS, MINUTE_MS) == [
        OutcomeRow(T0, "ingest", "received", "", 7),
        OutcomeRow(T0 + 20 * MINUTE_MS, "ingest", "received", "", 1),
    ]
    assert store.outcomes(SRC, T0, T0 + HOUR_MS, HOUR_MS) == [
        OutcomeRow(T0, "ingest", "received", "", 8)
    ]


def test_a_merged_tally_counts_as_both(store: AccountingStore) -> None:
    first = received(SRC, T0, 2)
    first.violation(SRC, T0, "Signed Up", "type", "properties.plan", b"{}")
    second = received(SRC, T0 + 1, 3)
    second.violation(SRC, T0 + 1, "Signed Up", "type", "properties.plan", b"{}")
    first.merge(second)
    store.record(first)

    assert store.outcomes(SRC, T0, T0 + MINUTE_MS, MINUTE_MS) == [
        OutcomeRow(T0, "ingest", "received", "", 5)
    ]
    assert store.violations(SRC, T0, T0 + MINUTE_MS, MINUTE_MS) == [
        ViolationRow("Signed Up", "type", "properties.plan", 2)
    ]


def test_other_sources_are_not_mixed_in(store: AccountingStore) -> None:
    tally = received(SRC, T0, 2)
    tally.outcome(OTHER, T0, "ingest", "received", "", 40)
    tally.outcome(OTHER, T0, "ingest", "failed", "invalid_json", 4)
    tally.violation(SRC, T0, "Signed Up", "type", "properties.plan", b'{"a":1}')
    tally.violation(OTHER, T0, "Order Completed", "required", "properties.total", b'{"b":2}')
    store.record(tally)

    for grain in (MINUTE_MS, HOUR_MS):
        assert store.outcomes(SRC, T0, T0 + HOUR_MS, grain) == [
            OutcomeRow(T0, "ingest", "received", "", 2)
        ]
        assert store.outcomes(OTHER, T0, T0 + HOUR_MS, grain) == [
            OutcomeRow(T0, "ingest", "failed", "invalid_json", 4),
            OutcomeRow(T0, "ingest", "received", "", 40),
        ]
        assert store.violations(SRC, T0, T0 + HOUR_MS, grain) == [
            ViolationRow("Signed Up", "type", "properties.plan", 1)
        ]
    assert store.outcomes("src_nobody", T0, T0 + HOUR_MS, MINUTE_MS) == []
    assert [s.payload for s in store.samples(SRC)] == [b'{"a":1}']
    assert [s.payload for s in store.samples(OTHER)] == [b'{"b":2}']


def test_from_and_to_are_half_open(store: AccountingStore) -> None:
    tally = Tally()
    for i in range(4):
        tally.outcome(SRC, T0 + i * MINUTE_MS, "ingest", "received", "", i + 1)
    tally.outcome(SRC, T0 + HOUR_MS, "ingest", "received", "", 100)
    store.record(tally)

    def buckets(from_ms: int, to_ms: int, grain: int) -> list[tuple[int, int]]:
        return [(r.bucket_ms, r.count) for r in store.outcomes(SRC, from_ms, to_ms, grain)]

    # `from` is in, `to` is out.
    assert buckets(T0 + MINUTE_MS, T0 + 3 * MINUTE_MS, MINUTE_MS) == [
        (T0 + MINUTE_MS, 2),
        (T0 + 2 * MINUTE_MS, 3),
    ]
    # A bucket that starts before `from` is out; one starting just before `to` is in.
    assert buckets(T0 + 1, T0 + 3 * MINUTE_MS + 1, MINUTE_MS) == [
        (T0 + MINUTE_MS, 2),
        (T0 + 2 * MINUTE_MS, 3),
        (T0 + 3 * MINUTE_MS, 4),
    ]
    assert buckets(T0 + MINUTE_MS, T0 + MINUTE_MS, MINUTE_MS) == []
    assert buckets(T0, T0 + HOUR_MS, HOUR_MS) == [(T0, 1 + 2 + 3 + 4)]
    assert buckets(T0 + 1, T0 + HOUR_MS + 1, HOUR_MS) == [(T0 + HOUR_MS, 100)]

    store.record(one_violation(SRC, T0 + 59 * MINUTE_MS, b"{}"))
    store.record(one_violation(SRC, T0 + HOUR_MS, b"{}"))
    assert [r.count for r in store.violations(SRC, T0, T0 + HOUR_MS, MINUTE_MS)] == [1]
    assert [r.count for r in store.violations(SRC, T0, T0 + HOUR_MS, HOUR_MS)] == [1]
    assert [r.count for r in store.violations(SRC, T0, T0 + HOUR_MS + 1, HOUR_MS)] == [2]
    assert store.violations(SRC, T0 + HOUR_MS + 1, T0 + 2 * HOUR_MS, MINUTE_MS) == []


# Marks


def test_a_mark_is_nowhere_at_first(store: AccountingStore) -> None:
    assert store.mark(STAGE, 0) == NO_MARK
    assert store.mark(STAGE, 7) == NO_MARK


def test_recording_with_the_expected_mark_moves_it_and_adds_the_counts(
    store: AccountingStore,
) -> None:
    assert store.record(received(SRC, T0, 3), Mark(STAGE, 0, NO_MARK, 10)) is True
    assert store.mark(STAGE, 0) == 10
    assert store.record(received(SRC, T0, 4), Mark(STAGE, 0, 10, 25)) is True
    assert store.mark(STAGE, 0) == 25
    assert store.outcomes(SRC, T0, T0 + MINUTE_MS, MINUTE_MS) == [
        OutcomeRow(T0, "ingest", "received", "", 7)
    ]


def test_a_stale_mark_adds_nothing(store: AccountingStore) -> None:
    first = received(SRC, T0, 3)
    first.violation(SRC, T0, "Signed Up", "type", "properties.plan", b"first")
    assert store.record(first, Mark(STAGE, 0, NO_MARK, 10)) is True

    replay = received(SRC, T0, 3)
    replay.outcome(SRC, T0 + HOUR_MS, STAGE, "processed", "", 3)
    replay.violation(SRC, T0, "Signed Up", "type", "properties.plan", b"replayed")
    # The caller still thinks there is no mark (a replay after a crash), or an older one.
    assert store.record(replay, Mark(STAGE, 0, NO_MARK, 10)) is False
    assert store.record(replay, Mark(STAGE, 0, 5, 10)) is False
    assert store.record(replay, Mark(STAGE, 0, 9, 20)) is False

    assert store.mark(STAGE, 0) == 10
    for grain in (MINUTE_MS, HOUR_MS):
        assert store.outcomes(SRC, T0, T0 + 2 * HOUR_MS, grain) == [
            OutcomeRow(T0, "ingest", "received", "", 3)
        ]
        assert store.violations(SRC, T0, T0 + HOUR_MS, grain) == [
            ViolationRow("Signed Up", "type", "properties.plan", 1)
        ]
    assert [s.payload for s in store.samples(SRC)] == [b"first"]


def test_a_mark_that_was_never_set_rejects_an_expected_position(store: AccountingStore) -> None:
    assert store.record(received(SRC, T0, 3), Mark(STAGE, 0, 10, 20)) is False
    assert store.mark(STAGE, 0) == NO_MARK
    assert store.outcomes(SRC, T0, T0 + HOUR_MS, MINUTE_MS) == []


def test_marks_of_other_partitions_and_stages_are_independent(store: AccountingStore) -> None:
    assert store.record(received(SRC, T0, 1), Mark(STAGE, 0, NO_MARK, 10)) is True
    assert store.mark(STAGE, 1) == NO_MARK
    assert store.mark("other-stage", 0) == NO_MARK

    assert store.record(received(SRC, T0, 2), Mark(STAGE, 1, NO_MARK, 500)) is True
    assert store.record(received(SRC, T0, 4), Mark("other-stage", 0, NO_MARK, 3)) is True
    assert store.mark(STAGE, 0) == 10
    assert store.mark(STAGE, 1) == 500
    assert store.mark("other-stage", 0) == 3

    # Moving one leaves the others where they were.
    assert store.record(received(SRC, T0, 8), Mark(STAGE, 1, 500, 600)) is True
    assert (store.mark(STAGE, 0), store.mark(STAGE, 1), store.mark("other-stage", 0)) == (
        10,
        600,
        3,
    )
    assert store.outcomes(SRC, T0, T0 + MINUTE_MS, MINUTE_MS) == [
        OutcomeRow(T0, "ingest", "received", "", 1 + 2 + 4 + 8)
    ]


def test_recording_without_a_mark_leaves_the_marks_alone(store: AccountingStore) -> None:
    store.record(received(SRC, T0, 1), Mark(STAGE, 0, NO_MARK, 10))
    assert store.record(received(SRC, T0, 1)) is True
    assert store.mark(STAGE, 0) == 10


# Violations and samples


def test_violations_are_counted_per_event_type_and_field(store: AccountingStore) -> None:
    tally = Tally()
    for at in (T0, T0 + 1, T0 + 2 * MINUTE_MS):
        tally.violation(SRC, at, "Signed Up", "type", "properties.plan", b"{}")
    tally.violation(SRC, T0 + 3 * MINUTE_MS, "Signed Up", "required", "properties.plan", b"{}")
    tally.violation(SRC, T0 + 4 * MINUTE_MS, "Signed Up", "type", "properties.seats", b"{}")
    tally.violation(SRC, T0 + 5 * MINUTE_MS, "identify", "type", "traits.email", b"{}")
    store.record(tally)
    store.record(one_violation(SRC, T0 + HOUR_MS, b"{}"))  # next hour

    expected = [
        ViolationRow("Signed Up", "required", "properties.plan", 1),
        ViolationRow("Signed Up", "type", "properties.plan", 3),
        ViolationRow("Signed Up", "type", "properties.seats", 1),
        ViolationRow("identify", "type", "traits.email", 1),
    ]
    for grain in (MINUTE_MS, HOUR_MS):
        assert sorted_violations(store.violations(SRC, T0, T0 + HOUR_MS, grain)) == expected
    # Only the buckets in range count.
    assert sorted_violations(store.violations(SRC, T0 + MINUTE_MS, T0 + HOUR_MS, MINUTE_MS)) == [
        ViolationRow("Signed Up", "required", "properties.plan", 1),
        ViolationRow("Signed Up", "type", "properties.plan", 1),
        ViolationRow("Signed Up", "type", "properties.seats", 1),
        ViolationRow("identify", "type", "traits.email", 1),
    ]
    assert sorted_violations(store.violations(SRC, T0, T0 + 2 * HOUR_MS, HOUR_MS)) == [
        ViolationRow("Signed Up", "required", "properties.plan", 1),
        ViolationRow("Signed Up", "type", "properties.plan", 4),
        ViolationRow("Signed Up", "type", "properties.seats", 1),
        ViolationRow("identify", "type", "traits.email", 1),
    ]


def test_at_most_a_few_samples_are_kept_per_violation_newest_first(
    store: AccountingStore,
) -> None:
    for i in range(SAMPLES_PER_VIOLATION + 3):
        store.record(one_violation(SRC, T0 + i * SECOND_MS, b'{"n":%d}' % i))
    store.record(one_violation(SRC, T0, b'{"other":true}', event="Order Completed"))

    samples = store.samples(SRC)
    signed_up = [s for s in samples if s.event == "Signed Up"]
    assert signed_up == [
        SampleRow("Signed Up", "type", "properties.plan", T0 + i * SECOND_MS, b'{"n":%d}' % i)
        for i in reversed(range(3, SAMPLES_PER_VIOLATION + 3))
    ]
    # Another violation keeps its own samples.
    assert [s for s in samples if s.event == "Order Completed"] == [
        SampleRow("Order Completed", "type", "properties.plan", T0, b'{"other":true}')
    ]
    assert [s.at_ms for s in samples] == sorted((s.at_ms for s in samples), reverse=True)
    # Every violation is counted, sampled or not.
    assert sorted_violations(store.violations(SRC, T0, T0 + HOUR_MS, MINUTE_MS)) == [
        ViolationRow("Order Completed", "type", "properties.plan", 1),
        ViolationRow("Signed Up", "type", "properties.plan", SAMPLES_PER_VIOLATION + 3),
    ]


def test_one_tally_samples_only_the_first_few_of_a_violation(store: AccountingStore) -> None:
    tally = Tally()
    for i in range(SAMPLES_PER_VIOLATION * 3):
        tally.violation(SRC, T0 + i, "Signed Up", "type", "properties.plan", b"%d" % i)
    store.record(tally)

    assert len(store.samples(SRC)) == SAMPLES_PER_VIOLATION
    assert store.violations(SRC, T0, T0 + MINUTE_MS, MINUTE_MS) == [
        ViolationRow("Signed Up", "type", "properties.plan", SAMPLES_PER_VIOLATION * 3)
    ]


def test_sample_payloads_round_trip(store: AccountingStore) -> None:
    payload = '{"event":"Signed Up","properties":{"plan":42,"name":"Zoë 東京 🚀"}}'.encode()
    tally = Tally()
    tally.violation(SRC, T0 + 123, "Signed Up", "type", "properties.plan", payload)
    tally.violation(SRC, T0 + 124, "Signed Up", "required", "userId", b"with\x1fseparator")
    store.record(tally)

    assert store.samples(SRC) == [
        SampleRow("Signed Up", "required", "userId", T0 + 124, b"with\x1fseparator"),
        SampleRow("Signed Up", "type", "properties.plan", T0 + 123, payload),
    ]


def test_long_samples_are_cut(store: AccountingStore) -> None:
    payload = b'{"properties":{"text":"' + b"x" * (3 * SAMPLE_MAX_BYTES) + b'"}}'
    store.record(one_violation(SRC, T0, payload))

    (sample,) = store.samples(SRC)
    assert sample.payload == payload[:SAMPLE_MAX_BYTES]
    assert len(sample.payload) == SAMPLE_MAX_BYTES


def test_a_sample_cut_inside_a_character_comes_back_byte_for_byte(
    store: AccountingStore,
) -> None:
    payload = b"a" * (SAMPLE_MAX_BYTES - 1) + "é and more".encode()
    store.record(one_violation(SRC, T0, payload))

    (sample,) = store.samples(SRC)
    assert len(sample.payload) <= SAMPLE_MAX_BYTES
    assert sample.payload == payload[:SAMPLE_MAX_BYTES]


def test_event_names_with_any_character_are_kept(store: AccountingStore) -> None:
    odd = "Signed\x1fUp: ü"
    store.record(one_violation(SRC, T0, b"{}", event=odd))
    store.record(one_violation(SRC, T0, b"{}", event="Plain"))

    assert sorted_violations(store.violations(SRC, T0, T0 + HOUR_MS, MINUTE_MS)) == [
        ViolationRow("Plain", "type", "properties.plan", 1),
        ViolationRow(odd, "type", "properties.plan", 1),
    ]
    assert sorted(s.event for s in store.samples(SRC)) == ["Plain", odd]


def test_the_newest_samples_are_kept_whatever_order_they_are_recorded_in(
    store: AccountingStore,
) -> None:
    newer = Tally()
    for i in range(SAMPLES_PER_VIOLATION):
        newer.violation(SRC, T0 + HOUR_MS + i, "Signed Up", "type", "properties.plan", b"new")
    store.record(newer)
    store.record(one_violation(SRC, T0, b"old"))  # recorded later, happened earlier

    samples = store.samples(SRC)
    assert [s.payload for s in samples] == [b"new"] * SAMPLES_PER_VIOLATION
    assert [s.at_ms for s in samples] == [
        T0 + HOUR_MS + i for i in reversed(range(SAMPLES_PER_VIOLATION))
    ]


# Retention


def test_expire_keeps_what_is_within_retention(store: AccountingStore) -> None:
    tally = received(SRC, T0, 2)
    tally.violation(SRC, T0, "Signed Up", "type", "properties.plan", b"{}")
    store.record(tally)

    store.expire(T0 + RETENTION.minute_ms)  # the minute bucket is exactly at the limit
    assert store.outcomes(SRC, T0, T0 + HOUR_MS, MINUTE_MS) == [
        OutcomeRow(T0, "ingest", "received", "", 2)
    ]
    assert store.outcomes(SRC, T0, T0 + HOUR_MS, HOUR_MS) == [
        OutcomeRow(T0, "ingest", "received", "", 2)
    ]
    assert len(store.violations(SRC, T0, T0 + HOUR_MS, MINUTE_MS)) == 1
    assert len(store.samples(SRC)) == 1


def test_sqlite_expire_drops_minute_rows_first_and_hour_rows_later(tmp_path: Path) -> None:
    store = sqlite_store(tmp_path)
    tally = received(SRC, T0, 2)
    tally.outcome(SRC, T0 + 90 * MINUTE_MS, "ingest", "received", "", 3)
    tally.violation(SRC, T0, "Signed Up", "type", "properties.plan", b"old")
    tally.violation(SRC, T0 + 90 * MINUTE_MS, "Signed Up", "type", "properties.plan", b"new")
    store.record(tally)
    everything = (T0 - DAY_MS, T0 + 30 * DAY_MS)

    # Past minute retention for the first minute only: its minute rows go, hour rows stay.
    store.expire(T0 + RETENTION.minute_ms + 1)
    assert store.outcomes(SRC, *everything, MINUTE_MS) == [
        OutcomeRow(T0 + 90 * MINUTE_MS, "ingest", "received", "", 3)
    ]
    assert store.violations(SRC, *everything, MINUTE_MS) == [
        ViolationRow("Signed Up", "type", "properties.plan", 1)
    ]
    assert store.outcomes(SRC, *everything, HOUR_MS) == [
        OutcomeRow(T0, "ingest", "received", "", 2),
        OutcomeRow(T0 + HOUR_MS, "ingest", "received", "", 3),
    ]
    assert store.violations(SRC, *everything, HOUR_MS) == [
        ViolationRow("Signed Up", "type", "properties.plan", 2)
    ]
    assert [s.payload for s in store.samples(SRC)] == [b"new", b"old"]

    # Past minute retention for everything, still within hour retention.
    store.expire(T0 + RETENTION.hour_ms)
    assert store.outcomes(SRC, *everything, MINUTE_MS) == []
    assert store.violations(SRC, *everything, MINUTE_MS) == []
    assert len(store.outcomes(SRC, *everything, HOUR_MS)) == 2
    assert len(store.samples(SRC)) == 2

    # Past hour retention for the first hour, then for everything.
    store.expire(T0 + RETENTION.hour_ms + 1)
    assert store.outcomes(SRC, *everything, HOUR_MS) == [
        OutcomeRow(T0 + HOUR_MS, "ingest", "received", "", 3)
    ]
    assert [s.payload for s in store.samples(SRC)] == [b"new"]
    store.expire(T0 + RETENTION.hour_ms + 2 * HOUR_MS)
    assert store.outcomes(SRC, *everything, HOUR_MS) == []
    assert store.violations(SRC, *everything, HOUR_MS) == []
    assert store.samples(SRC) == []
    store.close()


def test_redis_keys_carry_their_retention_as_ttl(redis_backend: RedisBackend) -> None:
    store, client, prefix = redis_backend.store, redis_backend.client, redis_backend.prefix
    tally = received(SRC, T0, 2)
    tally.violation(SRC, T0, "Signed Up", "type", "properties.plan", b"{}")
    assert store.record(tally, Mark(STAGE, 0, NO_MARK, 10)) is True
    store.expire(T0 + 100 * DAY_MS)  # a no-op on Redis: nothing is dropped by the call
    assert len(store.outcomes(SRC, T0, T0 + HOUR_MS, MINUTE_MS)) == 1

    ttls = {key.decode(): client.pttl(key) for key in client.scan_iter(f"{prefix}:*")}
    marks = f"{prefix}:acct:marks"
    assert ttls.pop(marks) == -1  # marks never expire, or a replay would count again
    minute_keys = {k: t for k, t in ttls.items() if f":{MINUTE_MS}:" in k}
    hour_keys = {k: t for k, t in ttls.items() if f":{HOUR_MS}:" in k}
    assert len(minute_keys) == 2  # outcomes and violations
    assert len(hour_keys) == 2
    assert len(ttls) > 4  # and the samples
    assert all(t > 0 for t in ttls.values()), ttls
    for ttl in minute_keys.values():
        assert RETENTION.minute_ms - MINUTE_MS < ttl <= RETENTION.minute_ms + MINUTE_MS
    for ttl in hour_keys.values():
        assert RETENTION.hour_ms - HOUR_MS < ttl <= RETENTION.hour_ms + HOUR_MS
    for key in set(ttls) - set(minute_keys) - set(hour_keys):
        assert RETENTION.minute_ms < ttls[key] <= RETENTION.hour_ms + HOUR_MS, key
