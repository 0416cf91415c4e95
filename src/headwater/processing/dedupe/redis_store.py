"""The Redis dedupe store: one key per claim, `SET NX PX window`, in one script per chunk."""

from __future__ import annotations

from typing import Any

CHUNK = 500

# For each key: claim it for ARGV[i+1] if free (expiring after the window), else report whether
# another position holds it. Atomic per call, so two processes never both claim one id.
CLAIM = """
local out = {}
local ttl = ARGV[1]
for i, key in ipairs(KEYS) do
  local position = ARGV[i + 1]
  if redis.call('SET', key, position, 'NX', 'PX', ttl) then
    out[i] = 0
  elseif redis.call('GET', key) == position then
    out[i] = 0
  else
    out[i] = 1
  end
end
return out
"""


class RedisDedupeStore:
    """Claims as Redis keys `<prefix>:dedupe:<messageId>`; Redis expires them (`window_ms`)."""

    waits = True

    def __init__(self, client: Any, prefix: str, window_ms: int) -> None:
        self.client = client
        self.prefix = f"{prefix}:dedupe:"
        self.window_ms = window_ms
        self._script = client.register_script(CLAIM)

    def claim(self, claims: list[tuple[str, str]], now_ms: int) -> list[bool]:
        result: list[bool] = []
        for start in range(0, len(claims), CHUNK):
            chunk = claims[start : start + CHUNK]
            keys = [self.prefix + mid for mid, _pos in chunk]
            answers = self._script(keys=keys, args=[self.window_ms, *(p for _m, p in chunk)])
            result.extend(bool(a) for a in answers)
        return result

    def expire(self, now_ms: int) -> int:
        return 0  # Redis expires keys by itself

    def close(self) -> None:
        self.client.close()
