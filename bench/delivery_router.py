"""Part 1 of the delivery benchmark (`delivery.py`), webhook throughput: the `events` log
preloaded as the processor writes it, one `headwater router` timed until its group has committed
the end offsets, the same request bodies POSTed by an aiohttp loop and by a raw client (the
baselines), and the summary of a router's py-spy profile (`--profile`)."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
from delivery_load import RawConnection, connect, post_bytes
from delivery_setup import (
    PARTITIONS,
    SENT_AT,
    SOURCE_ID,
    TEMPLATES,
    config_text,
    group_of,
    run_loop,
    start_receiver,
    stop_all,
    wait_received,
    webhook,
)
from gateway import SETTLE_S
from pipeline_logs import wait_consumed
from pipeline_report import ConsumerRun
from servers import VENV_BIN, _spawn
from xxhash import xxh3_64_intdigest

from headwater.config import Config, load_config
from headwater.delivery.destinations.http import idempotency_key, json_array
from headwater.delivery.model import Event
from headwater.events.stamp import Stamp, encode_stamp
from headwater.log.factory import open_logs
from headwater.log.records import Run
from headwater.paths import DataPaths
from headwater.processing.runtime import Item, outputs_of
from headwater.processing.steps import ProfileKey

REQUEST_EVENTS = 100  # what one gateway request carries in the preloaded log
UNIT_RECORDS = 4096  # what one processor unit reads from one partition at most
IN_FLIGHT = 8  # the webhook's default `max_in_flight`
ROUTER_TIMEOUT_S = 120.0


# --- the preloaded `events` log -----------------------------------------------------------------


def random_id(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def processor_units(n: int, seed: int) -> list[list[Run]]:
    """`n` messages as the processor appends them to `events`: gateway requests of 100 (each
    its own stamp, a millisecond apart, spread over the ingest partitions by messageId), read
    back by processor units of up to 4,096 records of one partition, keyed by profile
    (`ProfileKey`) and grouped by `outputs_of` (a run per partition, source and stamp); each
    unit is one append."""
    rng = random.Random(seed)
    start = datetime.now(UTC) - timedelta(minutes=5)
    pending: list[list[Item]] = [[] for _ in range(PARTITIONS)]
    units: list[list[Run]] = []
    step = ProfileKey()

    def flush(p: int) -> None:
        items, pending[p] = pending[p], []
        step(items)
        units.append(outputs_of(items, PARTITIONS))

    for k, first in enumerate(range(0, n, REQUEST_EVENTS)):
        received = start + timedelta(milliseconds=k)
        stamp = encode_stamp(Stamp(received, SENT_AT, "127.0.0.1"))
        for i in range(first, min(first + REQUEST_EVENTS, n)):
            before, after = TEMPLATES[i % len(TEMPLATES)]
            mid = random_id(rng)
            p = xxh3_64_intdigest(mid.encode()) % PARTITIONS  # the gateway's partition
            pending[p].append(Item(SOURCE_ID, before + mid.encode() + after, stamp=stamp))
            if len(pending[p]) >= UNIT_RECORDS:
                flush(p)
    for p in range(PARTITIONS):
        if pending[p]:
            flush(p)
    return units


async def preload_events(config: Config, paths: DataPaths, units: list[list[Run]]) -> list[int]:
    async with open_logs(config, paths, ("events",)) as logs:
        events = logs["events"]
        for runs in units:
            await events.append(runs)
        return await events.end_offsets()


async def read_stamped(config: Config, paths: DataPaths) -> tuple[list[Event], float]:
    """Every message of `events` as a router reads it (stamped), and the seconds it took."""
    out: list[Event] = []
    t = time.perf_counter()
    async with open_logs(config, paths, ("events",), create=False) as logs:
        events = logs["events"]
        ends = await events.end_offsets()
        for p, end in enumerate(ends):
            offset = 0
            while offset < end:
                batches = await events.read(p, offset, 4096)
                if not batches:
                    break
                for batch in batches:
                    out.extend(Event("", r.source_id, 0, "", r.message) for r in batch.records)
                offset = batches[-1].end_offset
    return out, time.perf_counter() - t


# --- 1. throughput ------------------------------------------------------------------------------


@dataclass
class RouterRun(ConsumerRun):
    """One router (or baseline) delivering the preloaded log to one receiver."""

    batch_size: int = 0
    received: dict[str, Any] = field(default_factory=dict)


def bench_router(
    workdir: Path,
    data: Path,
    config: Config,
    batch_size: int,
    n: int,
    ends: list[int],
    profile: Path | None,
) -> RouterRun:
    """One `headwater router` with one webhook (a fresh destination, so a fresh group) until it
    has committed the end offsets of `events`."""
    name = f"hook-{batch_size}"
    label = f"router, batch_size {batch_size}"
    receiver = start_receiver(workdir, f"receiver-{batch_size}")
    servers = [receiver]
    run = RouterRun(label, n, None, batch_size=batch_size)
    try:
        conf = workdir / f"router-{batch_size}.yaml"
        conf.write_text(config_text([webhook(name, receiver.port, batch_size=batch_size)]))
        cmd = [str(VENV_BIN / "headwater"), "router", "--config", str(conf), "--data", str(data)]
        if profile is not None:
            profile.mkdir(parents=True, exist_ok=True)
            out = profile / f"router-{batch_size}.txt"
            cmd = [str(VENV_BIN / "py-spy"), "record", "--format", "raw", "--rate", "250",
                   "--idle", "-o", str(out), "--", *cmd]  # fmt: skip
        time.sleep(SETTLE_S)
        print(f"{label}: delivering {n:,} events", flush=True)
        started = time.perf_counter()
        router = _spawn(f"router-{batch_size}", cmd, workdir)
        servers.append(router)
        progress = run_loop(
            wait_consumed(
                config,
                DataPaths(data),
                group_of(name),
                started,
                timeout=ROUTER_TIMEOUT_S,
                alive=lambda: router.proc.poll() is None,
                poll_s=0.02,
                log="events",
            )
        )
        if profile is not None:  # py-spy writes its file when the router ends on SIGINT
            for pid in _children_of(router.proc.pid):
                os.kill(pid, signal.SIGINT)
            router.proc.wait(30)
        run.record(progress, ends)
        run.received = wait_received(receiver, n, 5.0)
        if progress.done_s is None:
            run.problem = f"did not reach the end offsets:\n{router.log_tail()}"
        elif run.received["unique"] != n:
            run.problem = f"the receiver has {run.received['unique']:,} of {n:,} messageIds"
    finally:
        stop_all(servers)
    _print_run(run)
    return run


def _children_of(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(c) for c in text.split()]


def _print_run(run: RouterRun) -> None:
    if run.problem:
        print(f"  FAILED: {run.problem}", file=sys.stderr)
        return
    steady = run.steady_events_per_s
    extra = f", {steady:,.0f}/s after the first commit" if steady else ""
    first = f", first commit {run.first_commit_s:.2f} s" if run.first_commit_s else ""
    print(f"    {run.events_per_s:,.0f} events/s ({run.seconds:.2f} s{first}{extra}); "
          f"receiver: {run.received.get('requests', 0):,} requests, "
          f"{run.received.get('duplicates', 0):,} duplicates", flush=True)  # fmt: skip


def batch_bodies(events: list[Event], size: int) -> list[tuple[bytes, str]]:
    """The webhook's request bodies for `events` and their Idempotency-Keys."""
    out = []
    for i in range(0, len(events), size):
        chunk = events[i : i + size]
        out.append((json_array(e.message for e in chunk), idempotency_key(chunk)))
    return out


def bench_client(
    workdir: Path, label: str, bodies: list[tuple[bytes, str]], n: int, size: int, raw: bool
) -> RouterRun:
    """The same bodies POSTed by `IN_FLIGHT` workers: aiohttp (as the webhook's pool), or a raw
    keep-alive client (the receiver's ceiling)."""
    receiver = start_receiver(workdir, f"receiver-{label.replace(' ', '-')}")
    run = RouterRun(label, n, None, batch_size=size)
    try:
        time.sleep(SETTLE_S)
        print(f"{label}: {len(bodies):,} requests of {size}", flush=True)
        url = receiver.base_url + "/in"
        seconds = run_loop(
            _post_raw(receiver.port, bodies) if raw else _post_aiohttp(url, bodies)
        )  # fmt: skip
        run.seconds = seconds
        run.received = wait_received(receiver, n, 5.0)
        if run.received["unique"] != n:
            run.problem = f"the receiver has {run.received['unique']:,} of {n:,} messageIds"
    finally:
        stop_all([receiver])
    _print_run(run)
    return run


async def _post_aiohttp(url: str, bodies: list[tuple[bytes, str]]) -> float:
    todo = list(reversed(bodies))
    connector = aiohttp.TCPConnector(limit=IN_FLIGHT)
    timeout = aiohttp.ClientTimeout(total=10.0)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def worker() -> None:
            while todo:
                body, key = todo.pop()
                headers = {"Content-Type": "application/json", "Idempotency-Key": key}
                async with session.post(url, data=body, headers=headers) as r:
                    await r.read()
                    if r.status != 200:
                        raise RuntimeError(f"baseline: HTTP {r.status}")

        t = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(IN_FLIGHT)))
        return time.perf_counter() - t


async def _post_raw(port: int, bodies: list[tuple[bytes, str]]) -> float:
    requests = [
        post_bytes("/in", body, f"content-type: application/json\r\nidempotency-key: {key}\r\n")
        for body, key in bodies
    ]
    todo = list(reversed(requests))
    conns = [await connect(port) for _ in range(IN_FLIGHT)]

    async def worker(conn: RawConnection) -> None:
        while todo:
            status, _at = await conn.request(todo.pop())
            if status != 200:
                raise RuntimeError(f"raw baseline: HTTP {status}")

    t = time.perf_counter()
    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        for c in conns:
            c.close()
    return time.perf_counter() - t


def part_throughput(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    data = workdir / "throughput-data"
    conf_path = workdir / "throughput.yaml"
    conf_path.write_text(config_text([]))
    config = load_config(conf_path)
    paths = DataPaths(data)
    print(f"throughput: building {args.events:,} events as the processor writes them", flush=True)
    units = processor_units(args.events, seed=int(time.time()))
    t = time.perf_counter()
    ends = run_loop(preload_events(config, paths, units))
    preload_s = time.perf_counter() - t
    runs_per_unit = sum(len(u) for u in units) / max(1, len(units))
    print(f"  {sum(ends):,} events in {len(units)} appends ({runs_per_unit:,.0f} runs each), "
          f"loaded in {preload_s:.1f} s", flush=True)  # fmt: skip
    if sum(ends) != args.events:
        raise RuntimeError(f"preloaded {sum(ends)} events, expected {args.events}")
    events, read_s = run_loop(read_stamped(config, paths))
    print(f"  reading and stamping them in-process: {len(events) / read_s:,.0f} events/s",
          flush=True)  # fmt: skip
    sample = json.loads(events[0].message)
    runs: list[RouterRun] = []
    for size in args.batch_sizes:
        runs.append(bench_router(workdir, data, config, size, args.events, ends, args.profile))
        bodies = batch_bodies(events, size)
        label = f"aiohttp loop, {size}"
        runs.append(bench_client(workdir, label, bodies, args.events, size, False))
        runs.append(bench_client(workdir, f"raw client, {size}", bodies, args.events, size, True))
    return {
        "events": args.events,
        "appends": len(units),
        "runs_per_append": runs_per_unit,
        "message_bytes": sum(len(e.message) for e in events) / max(1, len(events)),
        "sample_message": sample,
        "preload_s": preload_s,
        "read_and_stamp_events_per_s": len(events) / read_s,
        "runs": [r.to_json() for r in runs],
        "_runs": runs,
    }


# --- profile summary ----------------------------------------------------------------------------


# Where a router's main thread spends its samples, by the first of these frames its stack holds.
PROFILE_GROUPS = [
    ("start-up (imports, routes, stores)", ["_find_and_load", "make_routes", "open_accounting"]),
    ("logging (a line per request)", ["logging/__init__"]),
    ("HTTP client (aiohttp, yarl, multidict)", ["aiohttp/", "yarl/", "multidict/"]),
    ("reading + stamping the log", ["EmbeddedConsumer.fetch", "decode_batch"]),
    ("committing offsets (write lock, SQLite)", ["EmbeddedConsumer.commit"]),
    ("filters (DestinationFilter.check)", ["DestinationFilter.check"]),
    ("event heads (router._event)", ["_event ("]),
    ("counting (Tally, metrics)", ["Tally.", "count (", "observe (", "add_counts", "settle_first"]),
    ("request bodies (json_array, Idempotency-Key)", ["json_array", "idempotency_key"]),
    ("threads: accounting and state writes", ["to_thread", "_account", "state.keep"]),
]


def summarize_profile(path: Path, top: int = 12) -> str:
    """The router's main thread in a py-spy raw profile taken with `--idle`: samples per group
    of `PROFILE_GROUPS`, idle (the event loop waiting) and the top leaf frames of the rest."""
    groups: Counter[str] = Counter()
    leaves: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if "cli/delivery.py" not in stack or not n.isdigit():
            continue  # not the router's main thread (its worker threads are mostly idle)
        count = int(n)
        total += count
        frames = stack.split(";")
        if frames[-1].startswith("router (") and "cli/delivery.py" in frames[-1]:
            groups["event loop: idle or in uvloop (socket I/O)"] += count
            continue
        for name, keys in PROFILE_GROUPS:
            if any(k in stack for k in keys):
                groups[name] += count
                break
        else:
            groups["other"] += count
            leaves[frames[-1]] += count
    if not total:
        return f"{path.name}: no samples of the router's main thread"
    lines = [f"{path.name}: {total} samples of the router's main thread"]
    lines += [f"  {c / total:6.1%}  {name}" for name, c in groups.most_common()]
    lines.append("  other, by leaf frame:")
    lines += [f"    {c / total:6.1%}  {f}" for f, c in leaves.most_common(top)]
    return "\n".join(lines)
