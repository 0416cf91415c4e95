"""The accounting in Redis, shared by every gateway and processor of a fleet.

One hash per (source, grain, bucket) for outcomes and one for violations (fields join the key
parts with a unit separator), expiring with their grain's retention; samples in a capped list
per violation, with a set per source naming those lists; marks in one hash. A stage's counts
and its mark move in one script, so they are atomic.
"""

from __future__ import annotations

from typing import Any

from headwater.accounting.store import (
    GRAINS,
    NO_MARK,
    Mark,
    OutcomeRow,
    Retention,
    SampleRow,
    ViolationRow,
)
from headwater.accounting.tally import SAMPLES_PER_VIOLATION, Tally

SEP = "\x1f"
MAX_BUCKETS = 20_000  # one query reads at most this many buckets

# ARGV: marks hash, mark field, expected ('' for none), new mark, sample cap, then triples
# (key, field, increment, ttl ms) as groups of four, then '|', then samples as (list, index
# set, payload, ttl ms) groups of four.
RECORD = """
local marks, field, expected, new, cap = ARGV[1], ARGV[2], ARGV[3], ARGV[4], tonumber(ARGV[5])
if field ~= '' then
  local current = redis.call('HGET', marks, field)
  if expected == '' then
    if current then return 0 end
  elseif current ~= expected then
    return 0
  end
  redis.call('HSET', marks, field, new)
end
local i = 6
while ARGV[i] ~= '|' do
  redis.call('HINCRBY', ARGV[i], ARGV[i + 1], ARGV[i + 2])
  redis.call('PEXPIRE', ARGV[i], ARGV[i + 3])
  i = i + 4
end
i = i + 1
while ARGV[i] do
  redis.call('LPUSH', ARGV[i], ARGV[i + 2])
  redis.call('LTRIM', ARGV[i], 0, cap - 1)
  redis.call('PEXPIRE', ARGV[i], ARGV[i + 3])
  redis.call('SADD', ARGV[i + 1], ARGV[i])
  redis.call('PEXPIRE', ARGV[i + 1], ARGV[i + 3])
  i = i + 4
end
return 1
"""


class RedisAccountingStore:
    """Accounting under `<prefix>:acct:`; Redis expires what is past retention."""

    def __init__(self, client: Any, prefix: str, retention: Retention) -> None:
        self.client = client
        self.prefix = f"{prefix}:acct:"
        self.retention = retention
        self._script = client.register_script(RECORD)

    def _bucket_key(self, kind: str, source_id: str, grain: int, bucket: int) -> str:
        return f"{self.prefix}{kind}:{source_id}:{grain}:{bucket}"

    def mark(self, stage: str, partition: int) -> int:
        value = self.client.hget(self.prefix + "marks", f"{stage}:{partition}")
        return NO_MARK if value is None else int(value)

    def record(self, tally: Tally, mark: Mark | None = None) -> bool:
        args: list[Any] = [self.prefix + "marks"]
        if mark is None:
            args += ["", "", ""]
        else:
            expected = "" if mark.expected == NO_MARK else str(mark.expected)
            args += [f"{mark.stage}:{mark.partition}", expected, str(mark.new)]
        args.append(SAMPLES_PER_VIOLATION)
        for kind, counts in (("o", tally.outcomes), ("v", tally.violations)):
            for (src, minute, a, b, c), n in counts.items():
                for grain in GRAINS:
                    key = self._bucket_key(kind, src, grain, minute - minute % grain)
                    args += [key, SEP.join((a, b, c)), n, self.retention.of(grain) + grain]
        args.append("|")
        ttl = self.retention.hour_ms
        for s in tally.samples:
            listed = f"{self.prefix}s:{s.source_id}:{SEP.join((s.event, s.type, s.field))}"
            payload = SEP.join((str(s.at_ms), s.payload.decode("utf-8", "replace")))
            args += [listed, f"{self.prefix}sk:{s.source_id}", payload, ttl]
        return bool(self._script(keys=[], args=args))

    def _hashes(self, kind: str, source_id: str, from_ms: int, to_ms: int, grain: int) -> Any:
        first = from_ms - from_ms % grain
        if first < from_ms:
            first += grain
        buckets = range(first, to_ms, grain)
        if len(buckets) > MAX_BUCKETS:
            raise ValueError(f"at most {MAX_BUCKETS} buckets per query")
        pipe = self.client.pipeline(transaction=False)
        for bucket in buckets:
            pipe.hgetall(self._bucket_key(kind, source_id, grain, bucket))
        return zip(buckets, pipe.execute(), strict=True)

    def outcomes(self, source_id: str, from_ms: int, to_ms: int, grain: int) -> list[OutcomeRow]:
        rows = []
        for bucket, fields in self._hashes("o", source_id, from_ms, to_ms, grain):
            for name, n in fields.items():
                stage, outcome, reason = name.decode().split(SEP)
                rows.append(OutcomeRow(bucket, stage, outcome, reason, int(n)))
        rows.sort(key=lambda r: (r.bucket_ms, r.stage, r.outcome, r.reason))
        return rows

    def violations(
        self, source_id: str, from_ms: int, to_ms: int, grain: int
    ) -> list[ViolationRow]:
        totals: dict[tuple[str, str, str], int] = {}
        for _bucket, fields in self._hashes("v", source_id, from_ms, to_ms, grain):
            for name, n in fields.items():
                event, vtype, vfield = name.decode().split(SEP)
                totals[(event, vtype, vfield)] = totals.get((event, vtype, vfield), 0) + int(n)
        return [ViolationRow(e, t, f, n) for (e, t, f), n in totals.items()]

    def samples(self, source_id: str) -> list[SampleRow]:
        lists = sorted(self.client.smembers(f"{self.prefix}sk:{source_id}"))
        pipe = self.client.pipeline(transaction=False)
        for name in lists:
            pipe.lrange(name, 0, -1)
        rows = []
        head = len(f"{self.prefix}s:{source_id}:")
        for name, entries in zip(lists, pipe.execute(), strict=True):
            event, vtype, vfield = name.decode()[head:].split(SEP)
            for entry in entries:
                at_ms, payload = entry.decode().split(SEP, 1)
                rows.append(SampleRow(event, vtype, vfield, int(at_ms), payload.encode()))
        rows.sort(key=lambda r: -r.at_ms)
        return rows

    def expire(self, now_ms: int) -> None:
        return None  # every key carries its own expiry

    def close(self) -> None:
        self.client.close()
