"""The two questions the accounting answers, shaped for the admin API and the CLI:
"where did my events go?" (`overview`) and "what breaks my tracking plan?" (`violations`)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import msgspec

from headwater.accounting.store import AccountingStore
from headwater.accounting.tally import DAY_MS, HOUR_MS, MINUTE_MS, now_ms

GRANULARITIES = {"minute": MINUTE_MS, "hour": HOUR_MS, "day": DAY_MS}
DEFAULT_SPAN = {"minute": HOUR_MS, "hour": DAY_MS, "day": 30 * DAY_MS}
WINDOWS = {"1h": HOUR_MS, "24h": DAY_MS, "7d": 7 * DAY_MS}
MAX_POINTS = 10_000
MAX_BUCKETS = 20_000  # stored rows (minutes or hours) one query may read
LATEST_MS = 253_402_300_800_000  # 10000-01-01

# How outcomes add up into the overview's summary (Segment's Delivery Overview steps).
SUMMARY = {
    ("ingest", "received"): "successfully_received",
    ("ingest", "failed"): "failed_on_ingest",
    ("processor", "duplicate"): "filtered_at_source",
    ("processor", "blocked"): "filtered_at_source",
    ("processor", "failed"): "failed_processing",
    ("processor", "processed"): "stored",
}
DESTINATION_STAGE = "destination:"  # a destination's stage: "destination:<name>"
# how a destination's outcomes add up (an event awaiting retry later ends in one of the others)
DESTINATION_SUMMARY = {
    "filtered": "filtered_at_destination",
    "awaiting_retry": "pending_retry",
    "discarded": "failed_delivery",
    "expired": "failed_delivery",
    "delivered": "delivered",
}


def _summary_group(stage: str, outcome: str) -> str | None:
    if stage.startswith(DESTINATION_STAGE):
        return DESTINATION_SUMMARY.get(outcome)
    return SUMMARY.get((stage, outcome))


class ViewError(ValueError):
    """A query the accounting cannot answer as asked (bad time, granularity or window)."""


def iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat().replace("+00:00", "Z")


def parse_time(value: str, what: str) -> int:
    """Milliseconds from ISO 8601 (naive means UTC) or Unix seconds (year 1970 to 9999)."""
    text = value.strip()
    try:
        ms = int(float(text) * 1000)
    except (ValueError, OverflowError):
        try:
            dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
        except ValueError:
            raise ViewError(f"{what}: not a time: {value!r} (ISO 8601 or Unix seconds)") from None
        if dt.tzinfo is None:
            dt = dt.replace(tzinfo=UTC)
        ms = int(dt.timestamp() * 1000)
    if not 0 <= ms < LATEST_MS:
        raise ViewError(f"{what}: {value!r} is out of range (1970 to 9999)")
    return ms


def overview(
    store: AccountingStore,
    source: dict[str, Any],
    *,
    start: str | None = None,
    end: str | None = None,
    granularity: str = "minute",
    clock_ms: int | None = None,
) -> dict[str, Any]:
    """Counts of every stage and outcome of `source` from `start` to `end`, per bucket."""
    if granularity not in GRANULARITIES:
        raise ViewError(f"granularity must be one of {', '.join(GRANULARITIES)}")
    step = GRANULARITIES[granularity]
    now = now_ms() if clock_ms is None else clock_ms
    to_ms = now + 1 if end is None else parse_time(end, "to")
    from_ms = to_ms - DEFAULT_SPAN[granularity] if start is None else parse_time(start, "from")
    if from_ms >= to_ms:
        raise ViewError("from must be before to")
    from_ms -= from_ms % step  # whole buckets
    if (to_ms - from_ms) // step > MAX_POINTS:
        raise ViewError(f"at most {MAX_POINTS} {granularity}s per query; narrow from/to")
    grain = MINUTE_MS if step == MINUTE_MS else HOUR_MS
    if (to_ms - from_ms) // grain > MAX_BUCKETS:
        raise ViewError(f"at most {MAX_BUCKETS:,} {'minutes' if grain == MINUTE_MS else 'hours'}")
    series: dict[tuple[int, str, str, str], int] = {}
    for row in store.outcomes(source["id"], from_ms, to_ms, grain):
        key = (row.bucket_ms - row.bucket_ms % step, row.stage, row.outcome, row.reason)
        series[key] = series.get(key, 0) + row.count
    totals: dict[tuple[str, str, str], int] = {}
    summary = dict.fromkeys([*SUMMARY.values(), *DESTINATION_SUMMARY.values()], 0)
    destinations: dict[str, dict[str, int]] = {}
    for (_b, stage, outcome, reason), n in series.items():
        totals[(stage, outcome, reason)] = totals.get((stage, outcome, reason), 0) + n
        group = _summary_group(stage, outcome)
        if group is not None:
            summary[group] += n
        if stage.startswith(DESTINATION_STAGE):
            counts = destinations.setdefault(stage[len(DESTINATION_STAGE) :], {})
            counts[outcome] = counts.get(outcome, 0) + n
    return {
        "source": source,
        "from": iso(from_ms),
        "to": iso(to_ms),
        "granularity": granularity,
        "summary": summary,
        "destinations": dict(sorted(destinations.items())),
        "totals": [
            {"stage": s, "outcome": o, "reason": r, "count": n}
            for (s, o, r), n in sorted(totals.items())
        ],
        "series": [
            {"time": iso(b), "stage": s, "outcome": o, "reason": r, "count": n}
            for (b, s, o, r), n in sorted(series.items())
        ],
    }


def violations(
    store: AccountingStore,
    source: dict[str, Any],
    *,
    window: str = "24h",
    clock_ms: int | None = None,
) -> dict[str, Any]:
    """Violations of `source`'s tracking plan in the last `window`: counts and samples."""
    if window not in WINDOWS:
        raise ViewError(f"window must be one of {', '.join(WINDOWS)}")
    now = now_ms() if clock_ms is None else clock_ms
    grain = MINUTE_MS if window == "1h" else HOUR_MS
    from_ms = now - WINDOWS[window]
    from_ms -= from_ms % grain
    rows = store.violations(source["id"], from_ms, now + 1, grain)
    samples: dict[tuple[str, str, str], list[dict[str, Any]]] = {}
    for s in store.samples(source["id"]):
        if s.at_ms >= from_ms:
            samples.setdefault((s.event, s.type, s.field), []).append(
                {"received_at": iso(s.at_ms), "message": _payload(s.payload)}
            )
    found = [
        {
            "event": r.event,
            "type": r.type,
            "field": r.field,
            "count": r.count,
            "samples": samples.get((r.event, r.type, r.field), []),
        }
        for r in sorted(rows, key=lambda r: (-r.count, r.event, r.type, r.field))
    ]
    return {
        "source": source,
        "window": window,
        "from": iso(from_ms),
        "to": iso(now),
        "total": sum(r.count for r in rows),
        "violations": found,
    }


def _payload(data: bytes) -> Any:
    """A sample as JSON, or as text if it was cut short."""
    try:
        return msgspec.json.decode(data)
    except msgspec.DecodeError:
        return data.decode("utf-8", "replace")
