"""The request bodies the benchmark sends: Segment track messages as analytics-python sends them.

Deterministic (seeded) so that every run sends the same bytes; every message in a body has its own
messageId. wrk repeats the same body for every request, which is fine: the gateway does not
deduplicate (that is a later, downstream stage).
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

BATCH_SIZE = 100
_EVENTS = ["Order Completed", "Product Added", "Checkout Started", "Product Viewed"]
_CURRENCIES = ["USD", "EUR", "GBP"]
_LIBRARY = {"name": "analytics-python", "version": "2.3.4"}


@dataclass(frozen=True)
class Scenario:
    """One workload: which path, which body, how many events each request carries."""

    name: str
    path: str
    body: bytes
    events_per_request: int


def _iso(ts: datetime) -> str:
    return ts.isoformat(timespec="microseconds")


def track_message(rng: random.Random, ts: datetime) -> dict[str, Any]:
    """One track message, keys in the order analytics-python's `Client.track` produces them."""
    return {
        "integrations": {},
        "anonymousId": None,
        "properties": {
            "revenue": round(rng.uniform(5, 500), 2),
            "currency": rng.choice(_CURRENCIES),
        },
        "timestamp": _iso(ts),
        "context": {"library": dict(_LIBRARY)},
        "userId": f"user-{rng.randrange(1_000_000):06d}",
        "type": "track",
        "event": rng.choice(_EVENTS),
        "messageId": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
    }


def _dumps(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def single_body(seed: int = 1) -> bytes:
    """A single track message for POST /v1/track (about 300 bytes)."""
    rng = random.Random(seed)
    now = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)
    msg = track_message(rng, now)
    msg["sentAt"] = _iso(now + timedelta(milliseconds=120))
    return _dumps(msg)


def batch_body(n: int = BATCH_SIZE, seed: int = 2) -> bytes:
    """A batch of `n` track messages for POST /v1/batch with a batch-level sentAt (about 31 KB)."""
    rng = random.Random(seed)
    start = datetime(2026, 1, 15, 10, 0, tzinfo=UTC)
    batch = [track_message(rng, start + timedelta(milliseconds=37 * i)) for i in range(n)]
    return _dumps({"batch": batch, "sentAt": _iso(start + timedelta(seconds=5))})


def scenarios() -> list[Scenario]:
    """The two workloads: (a) single events, (b) 100-event batches."""
    return [
        Scenario("single", "/v1/track", single_body(), 1),
        Scenario("batch100", "/v1/batch", batch_body(), BATCH_SIZE),
    ]


def write_bodies(directory: Path) -> dict[str, Path]:
    """Write each scenario's body to a file wrk's Lua script reads; name -> path."""
    paths = {}
    for sc in scenarios():
        path = directory / f"{sc.name}.json"
        path.write_bytes(sc.body)
        paths[sc.name] = path
    return paths


if __name__ == "__main__":
    s, b = single_body(), batch_body()
    print(f"single: {len(s)} bytes\n{s.decode()}\nbatch: {len(b)} bytes")
