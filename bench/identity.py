"""The identity benchmark: one processor resolving identities and keeping profiles, next to the
pass-through processor in the same run, with `--profiles` profiles already in the graph; then
the Profile API's `/traits` latency at that size.

    .venv/bin/python bench/identity.py [--profiles 1000000] [--events 300000]
        [--new-share 0.05] [--new-device 0.05] [--requests 5000]
        [--backends embedded,redis] [--redis redis://127.0.0.1:6379/0]
        [--out bench/results/identity-latest.json] [--strict]

The graph is preloaded with `--profiles` profiles (a user id, an anonymous id and an email each,
two traits). The events are track calls: `--new-share` (5%) by anonymous visitors never seen
before, the others by known users, `--new-device` (5%) of those from a second device (an
anonymous id new to the graph the first time it is seen). Runs: pass-through (identity off,
the baseline), then identity on with the embedded store (preloaded, then opened and closed
once, as a processor that stopped cleanly leaves it: with its owner-index snapshot), then
with the Redis store (`state.backend: redis`, keys under a fresh prefix, deleted at the end).
After each identity run `headwater up` (one gateway worker) answers `--requests` sequential
`GET .../traits` for random known users over HTTP. Rates count from the processor's start;
the start-up (to its first commit) and the rate after it are printed too. Bars: 50,000
events/s embedded, 25,000 on Redis, /traits p99 under 20 ms.
"""

from __future__ import annotations

import argparse
import json
import random
import sqlite3
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import redis
from dedupe import delete_redis_prefix
from gateway import SETTLE_S
from pipeline import bench_processor
from pipeline_logs import RECEIVED, SOURCE_ID
from pipeline_report import PARTITIONS, ProcessorRun
from servers import ROOT, VENV_BIN, WRITE_KEY, _spawn, free_port

from headwater.events.stamp import Stamp, encode_stamp
from headwater.identity.graph import profile_id
from headwater.identity.redis_profiles import Keys, StoredProfile, encode, pair
from headwater.identity.sqlite_store import SqliteIdentityStore
from headwater.log.records import Run, encode_run

BARS = {"embedded_events_per_s": 50_000, "redis_events_per_s": 25_000, "traits_p99_ms": 20.0}
WORKSPACE = "bench"
TOKEN = "pat_bench_1"


def config_text(identity: bool, redis_state: tuple[str, str] | None = None) -> str:
    state = ""
    if redis_state is not None:
        state = f"state: {{backend: redis, url: '{redis_state[0]}', prefix: {redis_state[1]}}}\n"
    return (
        f"log: {{partitions: {PARTITIONS}}}\n"
        "dedupe: {enabled: false}\n" + state + "workspaces:\n"
        f"  - name: {WORKSPACE}\n"
        f"    access_tokens: [{TOKEN}]\n"
        f"    identity: {{enabled: {str(identity).lower()}}}\n"
        "    sources:\n"
        "      - name: bench\n"
        f"        write_keys: [{WRITE_KEY}]\n"
    )


def preload_graph(path: Path, profiles: int) -> float:
    """`profiles` profiles written straight into the store's tables, then the store opened
    and closed once (it reads the tables and keeps a snapshot of its owner index, as a
    processor that stopped cleanly leaves it); returns seconds."""
    t = time.perf_counter()
    SqliteIdentityStore(path).close()  # the tables
    conn = sqlite3.connect(path, isolation_level=None)
    ms = int(RECEIVED.timestamp() * 1000) - 86_400_000
    chunk = 50_000
    conn.execute("BEGIN")
    for start in range(0, profiles, chunk):
        ids = range(start, min(start + chunk, profiles))
        pids = [profile_id(f"seed-{k}", k + 1) for k in ids]
        rows = []
        profile_rows = []
        for k, pid in zip(ids, pids, strict=True):
            held = []
            for kind, value in (("user_id", f"u-{k}"), ("anonymous_id", f"a-{k}-0"),
                                ("email", f"u-{k}@example.com")):  # fmt: skip
                rows.append((WORKSPACE, kind, value, pid, ms, f"seed-{k}", SOURCE_ID))
                held.append((kind, value, ms, f"seed-{k}", SOURCE_ID))
            profile_rows.append((WORKSPACE, pid, k + 1, ms, json.dumps(held)))
        conn.executemany("INSERT INTO profiles VALUES(?,?,?,?,NULL,0,?)", profile_rows)
        conn.executemany("INSERT INTO identifiers VALUES(?,?,?,?,?,?,?)", rows)
        conn.executemany(
            "INSERT INTO profile_traits VALUES(?,?,?,?,?,0)",
            [
                (WORKSPACE, pid, name, json.dumps(value).encode(), ms)
                for k, pid in zip(ids, pids, strict=True)
                for name, value in (("plan", "pro" if k % 3 else "free"), ("visits", k % 97))
            ],
        )
    conn.execute("INSERT INTO identity_sequences VALUES(?,?)", (WORKSPACE, profiles + 1))
    conn.execute("COMMIT")
    conn.close()
    SqliteIdentityStore(path).close()  # as a processor stopping cleanly leaves it: a snapshot
    return time.perf_counter() - t


def preload_redis(url: str, prefix: str, profiles: int) -> float:
    """The same profiles as `preload_graph`, written into Redis under the identity store's
    keys (`prefix`: `state.prefix`); returns seconds."""
    t = time.perf_counter()
    client = redis.Redis.from_url(url)
    keys = Keys(f"{prefix}:identity:", WORKSPACE)
    ms = int(RECEIVED.timestamp() * 1000) - 86_400_000
    chunk = 20_000
    for start in range(0, profiles, chunk):
        pipe = client.pipeline(transaction=False)
        owners: dict[bytes, bytes] = {}
        for k in range(start, min(start + chunk, profiles)):
            pid = profile_id(f"seed-{k}", k + 1)
            held = [(kind, value, ms, f"seed-{k}", SOURCE_ID)
                    for kind, value in (("user_id", f"u-{k}"), ("anonymous_id", f"a-{k}-0"),
                                        ("email", f"u-{k}@example.com"))]  # fmt: skip
            for kind, value, *_rest in held:
                owners[pair(kind, value)] = pid.encode()
            stored = StoredProfile(k + 1, ms, None, 0, held)
            pipe.hset(keys.profile(pid), mapping={"v": 1, "m": "", "d": encode(stored)})
            plan = json.dumps("pro" if k % 3 else "free")
            pipe.hset(
                keys.traits(pid), mapping={"plan": f"{ms} 0 {plan}", "visits": f"{ms} 0 {k % 97}"}
            )
        pipe.hset(keys.owners, mapping=owners)
        pipe.execute()
    client.set(keys.seq, profiles + 1)
    client.close()
    return time.perf_counter() - t


def event_groups(
    events: int, profiles: int, new_share: float, new_device: float
) -> list[list[Run]]:
    """The events as append groups (one run of 12 per partition, as a gateway writes them)."""
    rng = random.Random(7)
    stamp = encode_stamp(Stamp(RECEIVED, RECEIVED.isoformat(), "127.0.0.1"))
    messages = []
    for i in range(events):
        mid = f"{rng.getrandbits(128):032x}"
        if rng.random() < new_share:
            who = f'"anonymousId":"v-{mid[:12]}"'
        else:
            k = rng.randrange(profiles)
            device = 1 if rng.random() < new_device else 0  # 1: a device new to the graph
            who = f'"userId":"u-{k}","anonymousId":"a-{k}-{device}"'
        messages.append(
            (
                f'{{"type":"track","event":"Product Viewed","messageId":"{mid}",{who},'
                f'"properties":{{"sku":"sku-{i % 5000}","price":{i % 300}.5}},'
                '"context":{"library":{"name":"analytics.js","version":"5.2.0"}},'
                '"timestamp":"2026-01-15T10:00:00.000Z"}'
            ).encode()
        )
    groups: list[list[Run]] = []
    at = 0
    while at < len(messages):
        runs = []
        for p in range(PARTITIONS):
            chunk = messages[at : at + 12]
            if not chunk:
                break
            runs.append(Run(p, encode_run(SOURCE_ID, stamp, chunk), len(chunk)))
            at += len(chunk)
        groups.append(runs)
    return groups


def traits_latency(workdir: Path, config: Path, data: Path, profiles: int, n: int) -> dict:
    port = free_port()
    cmd = [str(VENV_BIN / "headwater"), "up", "--config", str(config), "--data", str(data)]
    cmd += ["--port", str(port), "--workers", "1"]
    server = _spawn("headwater-up", cmd, workdir)
    try:
        server.wait_ready("/readyz", want=200)
        rng = random.Random(11)
        base = f"http://127.0.0.1:{port}/v1/spaces/{WORKSPACE}/collections/users/profiles"
        times = []
        with httpx.Client(auth=(TOKEN, "")) as http:
            for i in range(n + 200):
                url = f"{base}/user_id:u-{rng.randrange(profiles)}/traits"
                t = time.perf_counter()
                r = http.get(url)
                elapsed = time.perf_counter() - t
                if r.status_code != 200:
                    raise RuntimeError(f"{url}: {r.status_code} {r.text}")
                if i >= 200:  # after a warm-up
                    times.append(elapsed * 1000)
    finally:
        server.stop()
    times.sort()
    return {
        "requests": n,
        "p50_ms": times[len(times) // 2],
        "p95_ms": times[int(len(times) * 0.95)],
        "p99_ms": times[int(len(times) * 0.99)],
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--profiles", type=int, default=1_000_000)
    p.add_argument("--events", type=int, default=300_000)
    p.add_argument("--new-share", type=float, default=0.05)
    p.add_argument("--new-device", type=float, default=0.05)
    p.add_argument("--requests", type=int, default=5000)
    p.add_argument("--backends", default="embedded,redis", help="embedded, redis or both")
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "identity-latest.json")
    p.add_argument("--strict", action="store_true", help="exit 1 when a bar fails")
    args = p.parse_args(argv)
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    groups = event_groups(args.events, args.profiles, args.new_share, args.new_device)
    runs: list[ProcessorRun] = []
    latency: dict[str, dict] = {}
    prefix = f"hwbench-identity-{uuid.uuid4().hex[:8]}"
    try:
        with tempfile.TemporaryDirectory(prefix="hwbench-identity-") as tmp:
            workdir = Path(tmp)
            plan = [("pass-through", None)] + [(f"identity, {b}", b) for b in backends]
            for label, backend in plan:
                config = workdir / f"{len(runs)}.yaml"
                redis_state = (args.redis, prefix) if backend == "redis" else None
                config.write_text(config_text(backend is not None, redis_state))
                if backend is not None:
                    print(f"{label}: preloading {args.profiles:,} profiles", flush=True)
                    if backend == "redis":
                        took = preload_redis(args.redis, prefix, args.profiles)
                    else:
                        db = workdir / f"{label}-data" / "state" / "identity.db"
                        took = preload_graph(db, args.profiles)
                    print(f"  done in {took:.1f} s", flush=True)
                time.sleep(SETTLE_S)
                runs.append(bench_processor(label, workdir, config, groups, args))
                if backend is not None:
                    print(f"{label}: /traits, {args.requests:,} requests over HTTP", flush=True)
                    data = workdir / f"{label}-data"
                    latency[backend] = traits_latency(
                        workdir, config, data, args.profiles, args.requests
                    )
    finally:
        if "redis" in backends:
            delete_redis_prefix(redis.Redis.from_url(args.redis), prefix)
    return report(args, runs, latency)


def report(args: argparse.Namespace, runs: list[ProcessorRun], latency: dict[str, dict]) -> int:
    base = runs[0].events_per_s
    print(f"\none processor, {args.events:,} events, {args.profiles:,} profiles in the graph")
    print(
        f"{'run':<24}{'events/s':>10}{'seconds':>9}{'start-up s':>12}{'steady/s':>10}{'ratio':>7}"
    )
    for r in runs:
        ratio = f"{r.events_per_s / base:.2f}x" if base else "-"
        steady = f"{r.steady_events_per_s:,.0f}" if r.steady_events_per_s else "-"
        print(f"{r.label:<24}{r.events_per_s:>10,.0f}{(r.seconds or 0):>9.2f}"
              f"{(r.first_commit_s or 0):>12.2f}{steady:>10}{ratio:>7}")  # fmt: skip
    passed = True
    for r in runs[1:]:
        backend = r.label.split(", ")[1]
        bar = BARS[f"{backend}_events_per_s"]
        ok = r.events_per_s >= bar
        passed &= ok
        print(f"[{'PASS' if ok else 'FAIL'}] {r.label} >= {bar:,} events/s: {r.events_per_s:,.0f}")
    for backend, lat in latency.items():
        ok = lat["p99_ms"] < BARS["traits_p99_ms"]
        passed &= ok
        spread = f"p50 {lat['p50_ms']:.2f}, p95 {lat['p95_ms']:.2f}, p99 {lat['p99_ms']:.2f} ms"
        print(f"[{'PASS' if ok else 'FAIL'}] /traits ({backend}) p99 < 20 ms: {spread}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": "python bench/identity.py " + " ".join(sys.argv[1:]),
                "profiles": args.profiles,
                "events": args.events,
                "runs": [r.to_json() for r in runs],
                "traits": latency,
                "bars": BARS,
                "passed": passed,
            },
            indent=2,
        )
    )
    if any(r.problem for r in runs):
        return 1
    return 1 if args.strict and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
