"""The accounting in Redis, shared by every gateway and processor of a fleet.

One hash per (source, grain, bucket) for outcomes and one for violations (fields are the key
parts as a JSON array, so any name round-trips), expiring with their grain's retention; samples
in a sorted set per violation scored by time and capped to the newest, with a hash per source
naming those sets; marks in one hash. A stage's counts and its mark move in one script, so
they are atomic.
"""

from __future__ import annotations

from typing import Any

import msgspec
from xxhash import xxh3_64_hexdigest

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
from headwater.accounting.views import MAX_BUCKETS, ViewError

# ARGV: marks hash, mark field, expected ('' for none), new mark, sample cap, then counts as
# (key, field, increment, ttl ms) groups of four, then '|', then samples as (sorted set, index
# hash, index field, time ms, member, ttl ms) groups of six.
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
  redis.call('ZADD', ARGV[i], ARGV[i + 3], ARGV[i + 4])
  redis.call('ZREMRANGEBYRANK', ARGV[i], 0, -cap - 1)
  redis.call('PEXPIRE', ARGV[i], ARGV[i + 5])
  redis.call('HSET', ARGV[i + 1], ARGV[i], ARGV[i + 2])
  redis.call('PEXPIRE', ARGV[i + 1], ARGV[i + 5])
  i = i + 6
end
return 1
"""


def _field(*parts: str) -> str:
    return msgspec.json.encode(parts).decode()


def _parts(data: bytes) -> tuple[str, str, str]:
    a, b, c = msgspec.json.decode(data, type=tuple[str, str, str])
    return a, b, c


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
                    args += [key, _field(a, b, c), n, self.retention.of(grain) + grain]
        args.append("|")
        ttl = self.retention.hour_ms
        for s in tally.samples:
            name = _field(s.event, s.type, s.field)
            listed = f"{self.prefix}s:{s.source_id}:{xxh3_64_hexdigest(name.encode())}"
            member = s.at_ms.to_bytes(8, "big") + s.payload  # distinct per time and payload
            args += [listed, f"{self.prefix}sk:{s.source_id}", name, s.at_ms, member, ttl]
        return bool(self._script(keys=[], args=args))

    def _hashes(self, kind: str, source_id: str, from_ms: int, to_ms: int, grain: int) -> Any:
        first = from_ms - from_ms % grain
        if first < from_ms:
            first += grain
        buckets = range(first, to_ms, grain)
        if len(buckets) > MAX_BUCKETS:
            raise ViewError(f"at most {MAX_BUCKETS} buckets per query; narrow from/to")
        pipe = self.client.pipeline(transaction=False)
        for bucket in buckets:
            pipe.hgetall(self._bucket_key(kind, source_id, grain, bucket))
        return zip(buckets, pipe.execute(), strict=True)

    def outcomes(self, source_id: str, from_ms: int, to_ms: int, grain: int) -> list[OutcomeRow]:
        rows = []
        for bucket, fields in self._hashes("o", source_id, from_ms, to_ms, grain):
            for name, n in fields.items():
                stage, outcome, reason = _parts(name)
                rows.append(OutcomeRow(bucket, stage, outcome, reason, int(n)))
        rows.sort(key=lambda r: (r.bucket_ms, r.stage, r.outcome, r.reason))
        return rows

    def violations(
        self, source_id: str, from_ms: int, to_ms: int, grain: int
    ) -> list[ViolationRow]:
        totals: dict[tuple[str, str, str], int] = {}
        for _bucket, fields in self._hashes("v", source_id, from_ms, to_ms, grain):
            for name, n in fields.items():
                event, vtype, vfield = _parts(name)
                totals[(event, vtype, vfield)] = totals.get((event, vtype, vfield), 0) + int(n)
        return [ViolationRow(e, t, f, n) for (e, t, f), n in totals.items()]

    def samples(self, source_id: str) -> list[SampleRow]:
        index = self.client.hgetall(f"{self.prefix}sk:{source_id}")
        sets = sorted(index)
        pipe = self.client.pipeline(transaction=False)
        for name in sets:
            pipe.zrange(name, 0, -1)
        rows = []
        for name, members in zip(sets, pipe.execute(), strict=True):
            event, vtype, vfield = _parts(index[name])
            for member in members:
                at_ms = int.from_bytes(member[:8], "big")
                rows.append(SampleRow(event, vtype, vfield, at_ms, bytes(member[8:])))
        rows.sort(key=lambda r: -r.at_ms)
        return rows

    def expire(self, now_ms: int) -> None:
        return None  # every key carries its own expiry

    def close(self) -> None:
        self.client.close()
