"""The dedupe benchmark: memory per remembered messageId, and claims per second.

    .venv/bin/python bench/dedupe.py [--ids 10000000] [--redis-ids 1000000]

(1) The embedded store (segment files): claims `--ids` distinct random UUID v4 messageIds, in
    chunks of 10,000 as the processor does, and reports the process's resident memory before
    and after (VmRSS) and per remembered id, the files' size on disk, and claims per second.
(2) The Redis store on the real server: claims `--redis-ids` ids and reports the server's
    `used_memory` per key and claims per second. Its keys are deleted at the end.
Baseline for the ratio: a Python `set` holding the same ids (what "remember them in RAM" costs).
"""

from __future__ import annotations

import argparse
import random
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis

from headwater.processing.dedupe import FileDedupeStore
from headwater.processing.dedupe.redis_store import RedisDedupeStore

CHUNK = 10_000
MAX_BYTES_PER_ID = 64.0  # the bar: RAM per remembered messageId at 10 million ids


def rss_bytes() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def ids(n: int, salt: int) -> list[str]:
    """`n` random version-4 UUIDs, as client libraries make messageIds (random, so that no
    store gets to insert them in order)."""
    rng = random.Random(salt)
    out = []
    for _ in range(n):
        h = f"{rng.getrandbits(128):032x}"
        out.append(f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}")
    return out


def bench_embedded(n: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as d:
        store = FileDedupeStore(Path(d) / "dedupe", window_ms=7 * 86_400_000)
        before = rss_bytes()
        now = int(time.time() * 1000)
        started = time.perf_counter()
        duplicates = 0
        for start in range(0, n, CHUNK):
            batch = ids(min(CHUNK, n - start), start)
            claims = [(m, f"0:{start}:{i}") for i, m in enumerate(batch)]
            duplicates += sum(store.claim(claims, now))
        elapsed = time.perf_counter() - started
        after = rss_bytes()
        size = sum(p.stat().st_size for p in Path(d).rglob("*") if p.is_file())
        store.close()
    return {
        "ids": n,
        "duplicates": duplicates,
        "rss_growth_bytes": after - before,
        "rss_bytes_per_id": (after - before) / n,
        "disk_bytes_per_id": size / n,
        "claims_per_s": n / elapsed,
    }


def bench_set(n: int) -> dict[str, float]:
    before = rss_bytes()
    seen: set[str] = set()
    for start in range(0, n, CHUNK):
        seen.update(ids(min(CHUNK, n - start), start))
    grown = rss_bytes() - before
    del seen
    return {"ids": n, "rss_bytes_per_id": grown / n}


def bench_redis(n: int, url: str) -> dict[str, float]:
    client = redis.Redis.from_url(url)
    prefix = f"hwbench-{uuid.uuid4().hex[:8]}"
    store = RedisDedupeStore(client, prefix, window_ms=3_600_000)
    before = int(client.info("memory")["used_memory"])
    started = time.perf_counter()
    try:
        for start in range(0, n, CHUNK):
            batch = ids(min(CHUNK, n - start), start)
            store.claim([(m, f"0:{start}:{i}") for i, m in enumerate(batch)], 0)
        elapsed = time.perf_counter() - started
        used = int(client.info("memory")["used_memory"]) - before
    finally:
        delete_redis_prefix(client, prefix)
    return {"ids": n, "server_bytes_per_id": used / n, "claims_per_s": n / elapsed}


def delete_redis_prefix(client: redis.Redis, prefix: str) -> None:
    """Delete every key under `prefix:` (what a benchmark left in Redis)."""
    keys = list(client.scan_iter(f"{prefix}:*", count=10_000))
    for start in range(0, len(keys), 10_000):
        client.delete(*keys[start : start + 10_000])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ids", type=int, default=10_000_000)
    p.add_argument("--redis-ids", type=int, default=1_000_000)
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    args = p.parse_args()
    # The embedded store first: memory freed by the others could hide what it allocates.
    print(f"embedded store, {args.ids:,} distinct ids ...", flush=True)
    sq = bench_embedded(args.ids)
    print(f"Redis store, {args.redis_ids:,} distinct ids ...", flush=True)
    rd = bench_redis(args.redis_ids, args.redis)
    print(f"python set of {min(args.ids, 2_000_000):,} ids (baseline) ...", flush=True)
    base = bench_set(min(args.ids, 2_000_000))
    print()
    print(f"{'store':<22}{'ids':>12}{'RAM B/id':>10}{'disk B/id':>11}{'claims/s':>12}{'vs set':>8}")
    print(
        f"{'python set (baseline)':<22}{base['ids']:>12,}{base['rss_bytes_per_id']:>10.1f}"
        f"{'-':>11}{'-':>12}{'1.00x':>8}"
    )
    print(
        f"{'embedded (files)':<22}{sq['ids']:>12,}{sq['rss_bytes_per_id']:>10.1f}"
        f"{sq['disk_bytes_per_id']:>11.1f}{sq['claims_per_s']:>12,.0f}"
        f"{sq['rss_bytes_per_id'] / base['rss_bytes_per_id']:>7.2f}x"
    )
    print(
        f"{'Redis (server RAM)':<22}{rd['ids']:>12,}{rd['server_bytes_per_id']:>10.1f}"
        f"{'-':>11}{rd['claims_per_s']:>12,.0f}"
        f"{rd['server_bytes_per_id'] / base['rss_bytes_per_id']:>7.2f}x"
    )
    ok = sq["duplicates"] == 0 and sq["rss_bytes_per_id"] <= MAX_BYTES_PER_ID
    print()
    print(
        f"[{'PASS' if sq['duplicates'] == 0 else 'FAIL'}] no false duplicate among "
        f"{sq['ids']:,} distinct ids: {sq['duplicates']}"
    )
    print(
        f"[{'PASS' if sq['rss_bytes_per_id'] <= MAX_BYTES_PER_ID else 'FAIL'}] RAM per "
        f"remembered id (embedded) <= {MAX_BYTES_PER_ID:.0f} B: {sq['rss_bytes_per_id']:.1f} B"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
