"""The window edge, with a controllable clock (embedded store), and Redis's own expiry."""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import redis

from headwater.processing.dedupe import FileDedupeStore
from headwater.processing.dedupe.redis_store import RedisDedupeStore

T0 = 1_700_000_000_000


def test_embedded_claims_count_until_the_window_ends_and_then_not(tmp_path: Path) -> None:
    store = FileDedupeStore(tmp_path / "d", window_ms=7 * 86_400_000)
    try:
        assert store.claim([("m1", "0:1:0")], T0) == [False]
        last_in = T0 + 7 * 86_400_000  # the claim is exactly window old: still remembered
        assert store.claim([("m1", "0:2:0")], last_in) == [True]
        first_out = last_in + 1
        assert store.claim([("m1", "0:3:0")], first_out) == [False]  # forgotten: claimed anew
        assert store.claim([("m1", "0:4:0")], first_out + 1) == [True]
    finally:
        store.close()


def test_embedded_expire_forgets_old_claims_and_keeps_recent_ones(tmp_path: Path) -> None:
    store = FileDedupeStore(tmp_path / "d", window_ms=1000)
    try:
        store.claim([(f"old-{i}", "0:1:0") for i in range(100)], T0)
        store.claim([(f"new-{i}", "0:2:0") for i in range(50)], T0 + 900)
        assert store.expire(T0 + 1500) == 100
        assert store.count() == 50
        assert store.claim([("new-1", "9:9:9")], T0 + 1500) == [True]
    finally:
        store.close()


def test_embedded_claims_survive_a_restart(tmp_path: Path) -> None:
    store = FileDedupeStore(tmp_path / "d", window_ms=60_000)
    store.claim([("m1", "0:1:0")], T0)
    store.close()
    again = FileDedupeStore(tmp_path / "d", window_ms=60_000)
    try:
        assert again.claim([("m1", "0:1:0"), ("m1", "0:2:0")], T0 + 10) == [False, True]
    finally:
        again.close()


def test_redis_claims_expire_with_the_window() -> None:
    client = redis.Redis.from_url("redis://127.0.0.1:6379/0")
    prefix = f"hwtest-{uuid.uuid4().hex[:10]}"
    store = RedisDedupeStore(client, prefix, window_ms=300)
    try:
        assert store.claim([("m1", "0:1:0")], 0) == [False]
        assert store.claim([("m1", "0:2:0")], 0) == [True]
        assert 0 < client.pttl(f"{prefix}:dedupe:m1") <= 300
        time.sleep(0.45)
        assert store.claim([("m1", "0:3:0")], 0) == [False]
    finally:
        client.delete(f"{prefix}:dedupe:m1")
        store.close()
