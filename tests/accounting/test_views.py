"""The delivery overview and the violations view (`headwater.accounting.views`), on a SQLite
store with a fixed clock."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from headwater.accounting import views
from headwater.accounting.redis_store import RedisAccountingStore
from headwater.accounting.store import AccountingStore, Retention, SqliteAccountingStore
from headwater.accounting.tally import DAY_MS, HOUR_MS, MINUTE_MS, SAMPLE_MAX_BYTES, Tally
from tests.support.redis import redis_prefix

RETENTION = Retention(minute_ms=48 * HOUR_MS, hour_ms=90 * DAY_MS)
SOURCE = {"id": "src_web", "workspace": "acme", "name": "web"}
OTHER = {"id": "src_app", "workspace": "acme", "name": "app"}
DESTINATION_GROUPS = ("filtered_at_destination", "pending_retry", "failed_delivery", "delivered")
SUMMARY_GROUPS = {
    "successfully_received",
    "failed_on_ingest",
    "filtered_at_source",
    "stored",
    "failed_processing",
    "filtered_at_destination",
    "pending_retry",
    "failed_delivery",
    "delivered",
}


def ms(text: str) -> int:
    """Milliseconds of an ISO time in UTC, e.g. `ms("2024-03-10T12:30:15")`."""
    return int(datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp() * 1000)


NOW = ms("2024-03-10T12:30:15")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteAccountingStore]:
    s = SqliteAccountingStore(tmp_path / "accounting.db", RETENTION)
    yield s
    s.close()


def count(
    store: AccountingStore,
    at_ms: int,
    stage: str,
    outcome: str,
    reason: str = "",
    n: int = 1,
    source: dict[str, str] = SOURCE,
) -> None:
    tally = Tally()
    tally.outcome(source["id"], at_ms, stage, outcome, reason, n)
    store.record(tally)


def violate(
    store: AccountingStore,
    at_ms: int,
    event: str = "Signed Up",
    vtype: str = "type",
    vfield: str = "properties.plan",
    payload: bytes = b"{}",
    n: int = 1,
    source: dict[str, str] = SOURCE,
) -> None:
    tally = Tally()
    for _ in range(n):
        tally.violation(source["id"], at_ms, event, vtype, vfield, payload)
    store.record(tally)


def points(result: dict[str, Any]) -> list[tuple[str, str, str, str, int]]:
    return [
        (p["time"], p["stage"], p["outcome"], p["reason"], p["count"]) for p in result["series"]
    ]


def received_in(result: dict[str, Any]) -> int:
    return int(result["summary"]["successfully_received"])


# Overview


def test_the_summary_groups_outcomes_as_the_delivery_overview(
    store: SqliteAccountingStore,
) -> None:
    at = NOW - 5 * MINUTE_MS
    count(store, at, "ingest", "received", n=10)
    count(store, at, "ingest", "received", "forwarded", n=2)
    count(store, at, "ingest", "failed", "invalid_json", n=3)
    count(store, at, "ingest", "failed", "too_large", n=1)
    count(store, at, "processor", "duplicate", "message_id_seen", n=4)
    count(store, at, "processor", "blocked", "unplanned_event", n=2)
    count(store, at, "processor", "blocked", "violation", n=1)
    count(store, at, "processor", "processed", n=5)
    count(store, at, "processor", "failed", "no_identifier", n=6)
    count(store, at, "ingest", "received", n=1000, source=OTHER)

    result = views.overview(store, SOURCE, clock_ms=NOW)

    assert result["source"] == SOURCE
    assert result["granularity"] == "minute"
    assert result["summary"] == {
        "successfully_received": 12,
        "failed_on_ingest": 4,
        "filtered_at_source": 7,
        "stored": 5,
        "failed_processing": 6,
        **dict.fromkeys(DESTINATION_GROUPS, 0),
    }


def test_an_empty_overview_still_has_every_group(store: SqliteAccountingStore) -> None:
    result = views.overview(store, SOURCE, clock_ms=NOW)

    assert result["summary"] == dict.fromkeys(SUMMARY_GROUPS, 0)
    assert result["totals"] == []
    assert result["series"] == []


def test_totals_add_up_every_bucket_and_keep_reasons_apart(store: SqliteAccountingStore) -> None:
    count(store, NOW - 30 * MINUTE_MS, "ingest", "failed", "invalid_json", n=2)
    count(store, NOW - 20 * MINUTE_MS, "ingest", "failed", "invalid_json", n=3)
    count(store, NOW - 10 * MINUTE_MS, "ingest", "failed", "too_large", n=1)
    count(store, NOW - 10 * MINUTE_MS, "ingest", "received", n=8)
    count(store, NOW, "ingest", "received", n=1)

    result = views.overview(store, SOURCE, clock_ms=NOW)

    assert result["totals"] == [
        {"stage": "ingest", "outcome": "failed", "reason": "invalid_json", "count": 5},
        {"stage": "ingest", "outcome": "failed", "reason": "too_large", "count": 1},
        {"stage": "ingest", "outcome": "received", "reason": "", "count": 9},
    ]
    assert result["summary"]["failed_on_ingest"] == 6
    assert received_in(result) == 9


def test_the_minute_series_has_a_point_per_minute_and_outcome(
    store: SqliteAccountingStore,
) -> None:
    count(store, ms("2024-03-10T12:10:05"), "ingest", "received", n=2)
    count(store, ms("2024-03-10T12:10:55"), "ingest", "received", n=3)
    count(store, ms("2024-03-10T12:10:30"), "processor", "processed", n=5)
    count(store, ms("2024-03-10T12:12:00"), "ingest", "failed", "invalid_json")

    result = views.overview(store, SOURCE, granularity="minute", clock_ms=NOW)

    assert points(result) == [
        ("2024-03-10T12:10:00Z", "ingest", "received", "", 5),
        ("2024-03-10T12:10:00Z", "processor", "processed", "", 5),
        ("2024-03-10T12:12:00Z", "ingest", "failed", "invalid_json", 1),
    ]


def test_the_hour_series_sums_the_minutes_of_each_hour(store: SqliteAccountingStore) -> None:
    count(store, ms("2024-03-10T10:00:00"), "ingest", "received", n=1)
    count(store, ms("2024-03-10T10:59:59"), "ingest", "received", n=2)
    count(store, ms("2024-03-10T11:15:00"), "ingest", "received", n=4)
    count(store, ms("2024-03-10T12:29:00"), "ingest", "received", n=8)

    result = views.overview(store, SOURCE, granularity="hour", clock_ms=NOW)

    assert points(result) == [
        ("2024-03-10T10:00:00Z", "ingest", "received", "", 3),
        ("2024-03-10T11:00:00Z", "ingest", "received", "", 4),
        ("2024-03-10T12:00:00Z", "ingest", "received", "", 8),
    ]
    assert received_in(result) == 15


def test_the_day_series_adds_up_the_hour_rows_of_each_utc_day(
    store: SqliteAccountingStore,
) -> None:
    count(store, ms("2024-03-08T00:00:00"), "ingest", "received", n=1)
    count(store, ms("2024-03-08T13:20:00"), "ingest", "received", n=2)
    count(store, ms("2024-03-08T23:59:59"), "ingest", "received", n=4)
    count(store, ms("2024-03-09T00:00:00"), "ingest", "received", n=8)
    count(store, ms("2024-03-09T18:00:00"), "processor", "processed", n=8)
    count(store, ms("2024-03-10T12:00:00"), "ingest", "received", n=16)

    result = views.overview(store, SOURCE, granularity="day", clock_ms=NOW)

    assert points(result) == [
        ("2024-03-08T00:00:00Z", "ingest", "received", "", 7),
        ("2024-03-09T00:00:00Z", "ingest", "received", "", 8),
        ("2024-03-09T00:00:00Z", "processor", "processed", "", 8),
        ("2024-03-10T00:00:00Z", "ingest", "received", "", 16),
    ]
    assert result["summary"]["stored"] == 8
    assert received_in(result) == 31


@pytest.mark.parametrize(
    ("granularity", "span_ms", "step_ms"),
    [("minute", HOUR_MS, MINUTE_MS), ("hour", DAY_MS, HOUR_MS), ("day", 30 * DAY_MS, DAY_MS)],
)
def test_the_default_span_ends_now(
    store: SqliteAccountingStore, granularity: str, span_ms: int, step_ms: int
) -> None:
    start = NOW + 1 - span_ms
    start -= start % step_ms
    count(store, NOW, "ingest", "received", n=1)  # now is in
    count(store, start, "ingest", "received", n=10)  # the first bucket is in
    count(store, start - step_ms, "ingest", "received", n=100)  # the one before is out
    count(store, NOW + step_ms, "ingest", "received", n=1000)  # the future is out

    result = views.overview(store, SOURCE, granularity=granularity, clock_ms=NOW)

    assert result["from"] == views.iso(start)
    assert result["to"] == views.iso(NOW + 1)
    assert received_in(result) == 11


def test_the_default_span_ends_at_to_when_only_to_is_given(store: SqliteAccountingStore) -> None:
    count(store, ms("2024-03-01T09:30:00"), "ingest", "received", n=1)
    count(store, ms("2024-03-01T08:59:00"), "ingest", "received", n=10)

    result = views.overview(store, SOURCE, end="2024-03-01T10:00:00Z", clock_ms=NOW)

    assert (result["from"], result["to"]) == ("2024-03-01T09:00:00Z", "2024-03-01T10:00:00Z")
    assert received_in(result) == 1


@pytest.mark.parametrize(
    ("start", "end"),
    [
        ("2024-03-10T11:00:00Z", "2024-03-10T12:00:00Z"),
        ("2024-03-10T11:00:00", "2024-03-10T12:00:00"),  # naive means UTC
        ("2024-03-10T13:00:00+02:00", "2024-03-10T14:00:00+02:00"),
        ("2024-03-10T11:00:00.000Z", " 2024-03-10T12:00:00Z "),
        (str(ms("2024-03-10T11:00:00") // 1000), str(ms("2024-03-10T12:00:00") // 1000)),
        (f"{ms('2024-03-10T11:00:00') / 1000:.1f}", f"{ms('2024-03-10T12:00:00') / 1000:.3f}"),
    ],
)
def test_from_and_to_accept_iso_8601_and_unix_seconds(
    store: SqliteAccountingStore, start: str, end: str
) -> None:
    count(store, ms("2024-03-10T10:59:00"), "ingest", "received", n=100)
    count(store, ms("2024-03-10T11:00:00"), "ingest", "received", n=1)
    count(store, ms("2024-03-10T11:59:59"), "ingest", "received", n=2)
    count(store, ms("2024-03-10T12:00:00"), "ingest", "received", n=1000)

    result = views.overview(store, SOURCE, start=start, end=end, clock_ms=NOW)

    assert (result["from"], result["to"]) == ("2024-03-10T11:00:00Z", "2024-03-10T12:00:00Z")
    assert received_in(result) == 3


def test_from_is_widened_to_whole_buckets(store: SqliteAccountingStore) -> None:
    count(store, ms("2024-03-10T09:05:00"), "ingest", "received", n=1)
    count(store, ms("2024-03-10T08:59:00"), "ingest", "received", n=10)

    result = views.overview(
        store,
        SOURCE,
        start="2024-03-10T09:40:00Z",
        end="2024-03-10T11:00:00Z",
        granularity="hour",
        clock_ms=NOW,
    )

    assert result["from"] == "2024-03-10T09:00:00Z"
    assert received_in(result) == 1


def test_the_overview_shows_only_its_source(store: SqliteAccountingStore) -> None:
    count(store, NOW, "ingest", "received", n=3)
    count(store, NOW, "ingest", "received", n=50, source=OTHER)
    count(store, NOW, "processor", "processed", n=50, source=OTHER)

    mine = views.overview(store, SOURCE, clock_ms=NOW)
    theirs = views.overview(store, OTHER, clock_ms=NOW)

    assert points(mine) == [("2024-03-10T12:30:00Z", "ingest", "received", "", 3)]
    assert (received_in(theirs), theirs["summary"]["stored"]) == (50, 50)
    assert theirs["source"] == OTHER


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"granularity": "week"}, "granularity"),
        ({"granularity": ""}, "granularity"),
        ({"start": "2024-03-10T12:00:00Z", "end": "2024-03-10T12:00:00Z"}, "before"),
        ({"start": "2024-03-10T12:00:00Z", "end": "2024-03-10T11:00:00Z"}, "before"),
        ({"start": "2024-03-10T13:00:00Z"}, "before"),  # from after the default to (now)
        ({"start": "0", "end": str(10_001 * 60)}, "at most"),
        ({"start": "0", "end": str(10_001 * 3600), "granularity": "hour"}, "at most"),
        ({"start": "0", "end": str(10_001 * 86400), "granularity": "day"}, "at most"),
        ({"start": "yesterday"}, "not a time"),
        ({"end": "2024-13-01T00:00:00Z"}, "not a time"),
        ({"start": ""}, "not a time"),
        ({"start": "nan"}, "not a time"),
    ],
)
def test_an_overview_that_cannot_be_answered_raises_a_view_error(
    store: SqliteAccountingStore, kwargs: dict[str, str], message: str
) -> None:
    with pytest.raises(views.ViewError, match=message):
        views.overview(store, SOURCE, clock_ms=NOW, **kwargs)


def test_as_many_points_as_allowed_is_fine(store: SqliteAccountingStore) -> None:
    count(store, 0, "ingest", "received", n=2)

    result = views.overview(store, SOURCE, start="0", end=str(views.MAX_POINTS * 60), clock_ms=NOW)

    assert points(result) == [("1970-01-01T00:00:00Z", "ingest", "received", "", 2)]


@pytest.mark.parametrize(
    ("start", "end"),
    [("inf", None), ("-inf", None), (None, "1e400"), ("1e15", "1.0000000001e15")],
)
def test_a_time_out_of_range_raises_a_view_error(
    store: SqliteAccountingStore, start: str | None, end: str | None
) -> None:
    with pytest.raises(views.ViewError):
        views.overview(store, SOURCE, start=start, end=end, clock_ms=NOW)


@pytest.fixture
def redis_store() -> Iterator[RedisAccountingStore]:
    with redis_prefix() as (client, prefix):
        yield RedisAccountingStore(client, prefix, RETENTION)


def test_a_day_overview_answers_on_redis_as_on_sqlite(
    store: SqliteAccountingStore, redis_store: RedisAccountingStore
) -> None:
    asked = {"start": "2022-01-01T00:00:00Z", "end": "2024-01-01T00:00:00Z"}
    for s in (store, redis_store):
        count(s, ms("2023-12-31T10:00:00"), "ingest", "received", n=3)
    expected = views.overview(store, SOURCE, granularity="day", clock_ms=NOW, **asked)
    assert received_in(expected) == 3

    result = views.overview(redis_store, SOURCE, granularity="day", clock_ms=NOW, **asked)

    assert result == expected


def test_a_day_overview_longer_than_the_rows_one_query_reads_is_a_view_error(
    store: SqliteAccountingStore, redis_store: RedisAccountingStore
) -> None:
    asked = {"start": "2021-01-01T00:00:00Z", "end": "2024-01-01T00:00:00Z"}  # 26,280 hours
    for s in (store, redis_store):
        with pytest.raises(views.ViewError, match="hours"):
            views.overview(s, SOURCE, granularity="day", clock_ms=NOW, **asked)


# Violations


def test_each_window_counts_what_happened_in_it(store: SqliteAccountingStore) -> None:
    violate(store, NOW, event="now")
    violate(store, ms("2024-03-10T11:31:00"), event="59 minutes ago")
    violate(store, NOW - 2 * HOUR_MS, event="2 hours ago")
    violate(store, NOW - 3 * DAY_MS, event="3 days ago")
    violate(store, NOW - 8 * DAY_MS, event="8 days ago")

    def events(window: str) -> set[str]:
        result = views.violations(store, SOURCE, window=window, clock_ms=NOW)
        return {v["event"] for v in result["violations"]}

    assert events("1h") == {"now", "59 minutes ago"}
    assert events("24h") == {"now", "59 minutes ago", "2 hours ago"}
    assert events("7d") == {"now", "59 minutes ago", "2 hours ago", "3 days ago"}


def test_the_1h_window_counts_whole_minutes(store: SqliteAccountingStore) -> None:
    # 1h before 12:30:15 is 11:30:15: the 11:30 minute is in, 11:29 is out even though it
    # is in the 11:00 hour.
    violate(store, ms("2024-03-10T11:29:59"), event="11:29")
    violate(store, ms("2024-03-10T11:30:00"), event="11:30")

    result = views.violations(store, SOURCE, window="1h", clock_ms=NOW)

    assert [v["event"] for v in result["violations"]] == ["11:30"]
    assert (result["from"], result["to"]) == ("2024-03-10T11:30:00Z", "2024-03-10T12:30:15Z")
    assert result["window"] == "1h"


def test_the_24h_and_7d_windows_count_whole_hours(store: SqliteAccountingStore) -> None:
    # 24h before 12:30:15 is 12:30:15 the day before: its whole 12:00 hour is in.
    violate(store, ms("2024-03-09T11:59:59"), event="11:59")
    violate(store, ms("2024-03-09T12:10:00"), event="12:10")
    violate(store, ms("2024-03-03T12:05:00"), event="7 days and 25 minutes ago")

    day = views.violations(store, SOURCE, window="24h", clock_ms=NOW)
    week = views.violations(store, SOURCE, window="7d", clock_ms=NOW)

    assert [v["event"] for v in day["violations"]] == ["12:10"]
    assert day["from"] == "2024-03-09T12:00:00Z"
    assert week["from"] == "2024-03-03T12:00:00Z"
    assert week["total"] == 3


def test_the_default_window_is_24h(store: SqliteAccountingStore) -> None:
    violate(store, NOW - 2 * HOUR_MS)
    violate(store, NOW - 2 * DAY_MS)

    result = views.violations(store, SOURCE, clock_ms=NOW)

    assert (result["window"], result["total"]) == ("24h", 1)


def test_violations_are_sorted_by_count_and_totalled(store: SqliteAccountingStore) -> None:
    violate(store, NOW - 10 * MINUTE_MS, "Signed Up", "type", "properties.plan", n=2)
    violate(store, NOW - 3 * HOUR_MS, "Signed Up", "type", "properties.plan", n=1)
    violate(store, NOW - 5 * MINUTE_MS, "Order Completed", "required", "properties.total", n=7)
    violate(store, NOW - 1 * MINUTE_MS, "identify", "type", "traits.email", n=1)
    violate(store, NOW - 1 * MINUTE_MS, "Cart Viewed", "type", "properties.items", n=1)
    violate(store, NOW, "Signed Up", "type", "properties.plan", n=50, source=OTHER)

    result = views.violations(store, SOURCE, window="24h", clock_ms=NOW)

    assert result["source"] == SOURCE
    assert [(v["event"], v["type"], v["field"], v["count"]) for v in result["violations"]] == [
        ("Order Completed", "required", "properties.total", 7),
        ("Signed Up", "type", "properties.plan", 3),
        ("Cart Viewed", "type", "properties.items", 1),  # ties by event name
        ("identify", "type", "traits.email", 1),
    ]
    assert result["total"] == 12
    assert views.violations(store, SOURCE, window="1h", clock_ms=NOW)["total"] == 11


def test_no_violations_is_an_empty_answer(store: SqliteAccountingStore) -> None:
    result = views.violations(store, SOURCE, window="7d", clock_ms=NOW)

    assert (result["total"], result["violations"]) == (0, [])


def test_each_violation_comes_with_its_samples(store: SqliteAccountingStore) -> None:
    first = b'{"event":"Signed Up","properties":{"plan":42}}'
    second = b'{"event":"Signed Up","properties":{"plan":true}}'
    cut = b'{"event":"Order Completed","properties":{"note":"' + b"x" * SAMPLE_MAX_BYTES
    violate(store, ms("2024-03-10T12:00:00"), "Signed Up", payload=first)
    violate(store, ms("2024-03-10T12:20:00"), "Signed Up", payload=second)
    violate(store, ms("2024-03-10T12:10:00"), "Order Completed", "required", "x", payload=cut)
    violate(store, ms("2024-03-10T12:10:00"), "Signed Up", payload=b"{}", source=OTHER)

    result = views.violations(store, SOURCE, window="1h", clock_ms=NOW)
    by_event = {v["event"]: v for v in result["violations"]}

    assert by_event["Signed Up"]["count"] == 2
    assert by_event["Signed Up"]["samples"] == [
        {
            "received_at": "2024-03-10T12:20:00Z",
            "message": {"event": "Signed Up", "properties": {"plan": True}},
        },
        {
            "received_at": "2024-03-10T12:00:00Z",
            "message": {"event": "Signed Up", "properties": {"plan": 42}},
        },
    ]
    # A sample cut short is no longer JSON: it is shown as text.
    (sample,) = by_event["Order Completed"]["samples"]
    assert sample["message"] == cut[:SAMPLE_MAX_BYTES].decode()


def test_samples_older_than_the_window_are_left_out(store: SqliteAccountingStore) -> None:
    violate(store, NOW - 3 * HOUR_MS, payload=b'{"when":"3h ago"}')
    violate(store, NOW - 10 * MINUTE_MS, payload=b'{"when":"10 min ago"}')

    hour = views.violations(store, SOURCE, window="1h", clock_ms=NOW)
    day = views.violations(store, SOURCE, window="24h", clock_ms=NOW)

    (row,) = hour["violations"]
    assert (row["count"], [s["message"] for s in row["samples"]]) == (1, [{"when": "10 min ago"}])
    (row,) = day["violations"]
    assert (row["count"], [s["message"] for s in row["samples"]]) == (
        2,
        [{"when": "10 min ago"}, {"when": "3h ago"}],
    )


@pytest.mark.parametrize("window", ["30d", "1d", "", "24H"])
def test_an_unknown_window_raises_a_view_error(store: SqliteAccountingStore, window: str) -> None:
    with pytest.raises(views.ViewError, match="window"):
        views.violations(store, SOURCE, window=window, clock_ms=NOW)


def test_destination_outcomes_add_up_per_destination_and_in_the_summary(
    store: SqliteAccountingStore,
) -> None:
    at = NOW - 5 * MINUTE_MS
    count(store, at, "destination:Hook", "delivered", n=7)
    count(store, at, "destination:Hook", "filtered", "integrations_disabled", n=2)
    count(store, at, "destination:Hook", "awaiting_retry", "http_503", n=3)
    count(store, at, "destination:Hook", "expired", "http_503", n=1)
    count(store, at, "destination:Mirror", "discarded", "http_400", n=4)
    count(store, at, "destination:Mirror", "delivered", n=5)

    result = views.overview(store, SOURCE, clock_ms=NOW)

    assert {k: result["summary"][k] for k in DESTINATION_GROUPS} == {
        "filtered_at_destination": 2,
        "pending_retry": 3,
        "failed_delivery": 5,
        "delivered": 12,
    }
    assert result["destinations"] == {
        "Hook": {"delivered": 7, "filtered": 2, "awaiting_retry": 3, "expired": 1},
        "Mirror": {"discarded": 4, "delivered": 5},
    }
