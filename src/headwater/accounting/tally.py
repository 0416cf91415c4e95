"""What one unit of work adds to the accounting: counts keyed by source, minute and outcome."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

MINUTE_MS = 60_000
HOUR_MS = 3_600_000
DAY_MS = 86_400_000
SAMPLES_PER_VIOLATION = 5
SAMPLE_MAX_BYTES = 4096

# Stages and outcomes as the overview shows them.
INGEST = "ingest"  # the gateway: `received` (stored in the log) or `failed` (reason)
RECEIVED = "received"
FAILED = "failed"


def minute_of(ms: int) -> int:
    return ms - ms % MINUTE_MS


def now_ms() -> int:
    return time.time_ns() // 1_000_000


OutcomeKey = tuple[str, int, str, str, str]  # source, minute, stage, outcome, reason
ViolationKey = tuple[str, int, str, str, str]  # source, minute, event, type, field


@dataclass
class Sample:
    """One message that broke a rule, as it arrived (cut at `SAMPLE_MAX_BYTES`)."""

    source_id: str
    event: str
    type: str
    field: str
    at_ms: int
    payload: bytes


@dataclass
class Tally:
    """Counts to add to the store in one go."""

    outcomes: dict[OutcomeKey, int] = field(default_factory=dict)
    violations: dict[ViolationKey, int] = field(default_factory=dict)
    samples: list[Sample] = field(default_factory=list)
    _sampled: dict[tuple[str, str, str, str], int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.outcomes or self.violations)

    def outcome(
        self, source_id: str, at_ms: int, stage: str, outcome: str, reason: str, n: int = 1
    ) -> None:
        key = (source_id, minute_of(at_ms), stage, outcome, reason)
        self.outcomes[key] = self.outcomes.get(key, 0) + n

    def violation(
        self, source_id: str, at_ms: int, event: str, vtype: str, vfield: str, payload: bytes
    ) -> None:
        """Count one violation; keep the message as a sample if this key has few so far."""
        key = (source_id, minute_of(at_ms), event, vtype, vfield)
        self.violations[key] = self.violations.get(key, 0) + 1
        skey = (source_id, event, vtype, vfield)
        taken = self._sampled.get(skey, 0)
        if taken < SAMPLES_PER_VIOLATION:
            self._sampled[skey] = taken + 1
            self.samples.append(
                Sample(source_id, event, vtype, vfield, at_ms, payload[:SAMPLE_MAX_BYTES])
            )

    def merge(self, other: Tally) -> None:
        for key, n in other.outcomes.items():
            self.outcomes[key] = self.outcomes.get(key, 0) + n
        for vkey, n in other.violations.items():
            self.violations[vkey] = self.violations.get(vkey, 0) + n
        self.samples.extend(other.samples)
