"""What a router counts for `/metrics` and `headwater status`: each destination's outcomes,
and its end-to-end latency (received at the gateway -> accepted by the destination) as a
histogram, written as this process's metrics snapshot every second."""

from __future__ import annotations

import asyncio
import bisect
import logging
from pathlib import Path

from headwater.observability.metrics import DELIVERY_BUCKETS, Snapshot, write_snapshot

log = logging.getLogger(__name__)


class DeliveryMetrics:
    """Counters of one router process."""

    def __init__(self) -> None:
        self.outcomes: dict[tuple[str, str, str, str], int] = {}  # stage, source, outcome, reason
        self.latency: dict[str, tuple[list[int], list[float]]] = {}  # name -> (buckets, [sum])

    def count(self, stage: str, source_id: str, outcome: str, reason: str, n: int = 1) -> None:
        key = (stage, source_id, outcome, reason)
        self.outcomes[key] = self.outcomes.get(key, 0) + n

    def observe(self, destination: str, seconds: float) -> None:
        """One event accepted by `destination`, `seconds` after the gateway received it."""
        found = self.latency.get(destination)
        if found is None:
            found = self.latency[destination] = ([0] * (len(DELIVERY_BUCKETS) + 1), [0.0])
        found[0][bisect.bisect_left(DELIVERY_BUCKETS, seconds)] += 1
        found[1][0] += seconds

    def snapshot(self) -> Snapshot:
        return Snapshot(
            stage=[(*key, n) for key, n in self.outcomes.items()],
            delivery=[(name, list(b), s[0]) for name, (b, s) in self.latency.items()],
        )

    async def flush_forever(self, directory: Path, every: float = 1.0) -> None:
        """Write the snapshot every `every` seconds."""
        while True:
            await asyncio.sleep(every)
            try:
                write_snapshot(directory, self.snapshot())
            except OSError as exc:
                log.warning("cannot write delivery metrics: %s", exc)
