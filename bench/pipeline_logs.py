"""Logs for the pipeline benchmark: configs, a JetStream namespace, preloading `ingest`, progress.

- `Namespace`: a stream/bucket prefix of the benchmark's own (`hwbench-<random>`, one sub-prefix
  per measurement) on the real NATS server; everything under it is deleted at the end.
- `stored_messages`: the messages of `ingest` as the gateway stores them: as the client sent
  them (the 100-event batch body of `payloads.py`, repeated with a unique messageId each), in
  runs of 12 (what one 100-event request leaves in each of 8 partitions) with the request's
  stamp, which every reader applies (`headwater.events.stored`), the processor included.
- `preload`: writes N of them to an `ingest` log through the Log API (`append`), as record
  batches of `batch_events` records per partition, so that the load is not what the processor
  benchmark measures.
- `wait_consumed`: polls a group's committed offsets on a log (`ingest` unless told) until they
  reach its end offsets.
- `in_process_rate`: the processor's own work (decode batch, key, re-encode runs) in a loop,
  without any log I/O: the ceiling the processor process is compared with.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import nats
from payloads import batch_body

from headwater.config import Config
from headwater.control.store import stable_id
from headwater.events.stamp import Stamp, encode_stamp
from headwater.events.stored import records_of_run
from headwater.log.factory import open_logs
from headwater.log.records import Run, decode_batch, encode_run, join_runs
from headwater.paths import DataPaths
from headwater.processing.runtime import Item, outputs_of
from headwater.processing.steps import ProfileKey

NATS_URL = "nats://127.0.0.1:4222"
SOURCE_ID = stable_id("src", "bench", "bench")  # the id the control plane gives it
TEMPLATE_BATCHES = 10  # 10 x 100 distinct messages, repeated with fresh messageIds
# Per log (divided among its partition streams). JetStream reserves a stream's max_bytes in the
# server's file store when the stream is created: the default (20GB per log) would reserve 40GB
# for `ingest` + `events`, more than a small NATS server may have left.
JETSTREAM_LOG_BYTES = "4GB"


# --- configuration ------------------------------------------------------------------------------


def config_text(
    write_key: str,
    partitions: int,
    *,
    prefix: str | None = None,
    url: str = "",
    dedupe: bool = False,
    plan: bool = False,
    redis: tuple[str, str] | None = None,
) -> str:
    """A headwater.yaml: one source with `write_key`; embedded log, or JetStream under `prefix`;
    the processor deduplicates only with `dedupe` (off: the pass-through the bar is about) and
    enforces a 20-rule tracking plan only with `plan`; `redis` (url, prefix) keeps the
    processor's state in Redis."""
    if prefix is None:
        log = f"log: {{partitions: {partitions}}}\n"
    else:
        log = (
            f"log: {{backend: jetstream, url: '{url}', partitions: {partitions}, replicas: 1, "
            f"prefix: {prefix}, retention: {{max_bytes: {JETSTREAM_LOG_BYTES}}}}}\n"
        )
    if redis is not None:
        log += f"state: {{backend: redis, url: '{redis[0]}', prefix: {redis[1]}}}\n"
    text = (
        log + f"dedupe: {{enabled: {str(dedupe).lower()}}}\n"
        "workspaces:\n"
        "  - name: bench\n"
        "    sources:\n"
        "      - name: bench\n"
        f"        write_keys: [{write_key}]\n"
    )
    if plan:
        text += (
            "        tracking_plan: bench\n"
            "        enforcement: {unplanned_events: allow, unplanned_properties: omit, "
            "violations: omit}\n"
            f"    tracking_plans:\n      - name: bench\n        rules: {json.dumps(PLAN_RULES)}\n"
        )
    return text


# Twenty track rules: the four events the benchmark sends (revenue and currency typed, revenue
# required) and sixteen it does not, plus a common rule.
_ORDER_RULE = {
    "properties": {
        "properties": {
            "type": "object",
            "properties": {
                "revenue": {"type": "number", "minimum": 0},
                "currency": {"type": "string", "enum": ["EUR", "USD", "GBP"]},
            },
            "required": ["revenue"],
        }
    }
}
_OTHER_RULE = {"properties": {"properties": {"type": "object"}}}
PLAN_RULES: dict[str, Any] = {
    "common": {"properties": {"userId": {"type": ["string", "null"]}}},
    "track": {
        **{
            e: _ORDER_RULE
            for e in ("Checkout Started", "Order Completed", "Product Added", "Product Viewed")
        },
        **{f"Other Event {i}": _OTHER_RULE for i in range(16)},
    },
}


# --- the JetStream namespace --------------------------------------------------------------------


@dataclass
class Namespace:
    """Everything the benchmark creates on NATS lives under `base` (`hwbench-<random>`)."""

    url: str = NATS_URL
    base: str = ""

    def __post_init__(self) -> None:
        self.base = self.base or f"hwbench-{uuid.uuid4().hex[:8]}"

    def prefix(self, name: str) -> str:
        """The prefix of one measurement (`hwbench-<random>-<name>`)."""
        return f"{self.base}-{name}"

    async def check(self) -> str:
        """The server's version (raises if NATS or JetStream does not answer)."""
        nc = await nats.connect(self.url, connect_timeout=3, max_reconnect_attempts=0)
        try:
            await nc.jetstream().account_info()
            v = nc.connected_server_version
            return f"{v.major}.{v.minor}.{v.patch}"
        finally:
            await nc.close()

    async def appended(self, prefix: str, log: str) -> int:
        """How many messages were ever stored in the streams of `log` under `prefix` (the sum
        of their last sequences: retention that drops old messages does not change it)."""
        nc = await nats.connect(self.url)
        try:
            return sum(
                int(info.state.last_seq or 0)
                for info in await nc.jetstream().streams_info()
                if (info.config.name or "").startswith(f"{prefix}-{log}-")
            )
        finally:
            await nc.close()

    async def purge(self, prefix: str | None = None) -> list[str]:
        """Delete every stream and KV bucket under `prefix` (default: the whole namespace)."""
        prefix = prefix or self.base
        nc = await nats.connect(self.url)
        deleted = []
        try:
            js = nc.jetstream()
            for info in await js.streams_info():
                name = info.config.name or ""
                if name.startswith((f"{prefix}-", f"KV_{prefix}-")):
                    await js.delete_stream(name)
                    deleted.append(name)
        finally:
            await nc.close()
        return deleted


# --- the messages -------------------------------------------------------------------------------


RECEIVED = datetime(2026, 1, 15, 10, 0, 5, 250_000, tzinfo=UTC)
RUN_EVENTS = 12  # what one 100-event request leaves in each of 8 partitions: one stamped run


def message_templates(first_seed: int) -> tuple[list[tuple[bytes, bytes]], str]:
    """`TEMPLATE_BATCHES` x 100 track messages as analytics-python sends them (the batch bodies
    of `payloads.py` from seed `first_seed` on), split around their messageId value (before,
    after), and the batches' `sentAt`."""
    out = []
    sent_at = ""
    for seed in range(first_seed, first_seed + TEMPLATE_BATCHES):
        body = json.loads(batch_body(seed=seed))
        sent_at = body["sentAt"]
        for msg in body["batch"]:
            raw = json.dumps(msg, separators=(",", ":")).encode()
            mid = f'"messageId":"{msg["messageId"]}"'.encode()
            before, found, after = raw.partition(mid)
            if not found:
                raise RuntimeError("a template message has no messageId")
            out.append((before + b'"messageId":"', b'"' + after))
    return out, sent_at


def _templates() -> tuple[list[tuple[bytes, bytes]], bytes]:
    """Messages as clients send them, split around their messageId value (before, after),
    and the stamp of the request they came in (its `sentAt`, address, receive time)."""
    out, sent_at = message_templates(100)
    return out, encode_stamp(Stamp(RECEIVED, sent_at, "127.0.0.1"))


def stored_messages(n: int, salt: int = 0) -> Iterator[bytes]:
    """`n` messages as the gateway stores them (as sent), each with a unique messageId: a
    random UUID v4, as client libraries make them (ids in order would flatter a store)."""
    templates, _stamp = _templates()
    k = len(templates)
    rng = random.Random(salt)
    for i in range(n):
        before, after = templates[i % k]
        h = b"%032x" % rng.getrandbits(128)
        yield b"%s%s-%s-4%s-a%s-%s%s" % (before, h[:8], h[8:12], h[13:16], h[17:20], h[20:], after)


def sample_message() -> dict[str, Any]:
    """One message as a reader of `ingest` sees it (stamped), decoded (for the report)."""
    _unused, stamp = _templates()
    raw = next(stored_messages(1))
    return dict(json.loads(records_of_run(SOURCE_ID, stamp, b"[" + raw + b"]")[0].message))


def payload_batches(n: int, partitions: int, batch_events: int) -> list[list[Run]]:
    """`n` messages as append groups: one run of `batch_events` messages per partition each
    (round-robin over the partitions, as evenly as the gateway's hashing spreads them)."""
    messages = stored_messages(n, salt=int(time.time()))
    _unused, stamp = _templates()
    groups: list[list[Run]] = []
    left = n
    while left > 0:
        runs = []
        for p in range(partitions):
            take = min(batch_events, left)
            if take <= 0:
                break
            left -= take
            while take > 0:  # one stamped run per request, as the gateway writes them
                chunk = [next(messages) for _ in range(min(RUN_EVENTS, take))]
                runs.append(Run(p, encode_run(SOURCE_ID, stamp, chunk), len(chunk)))
                take -= len(chunk)
        groups.append(runs)
    return groups


async def preload(
    config: Config, paths: DataPaths, groups: list[list[Run]], concurrency: int = 4
) -> list[int]:
    """Append every group to `ingest` (one record batch per run); returns the end offsets."""
    async with open_logs(config, paths, ("ingest",)) as logs:
        ingest = logs["ingest"]
        if config.log.backend == "embedded":
            for runs in groups:  # one commit (and fsync) per group
                await ingest.append(runs)
        else:  # publishes in flight at once, bounded
            sem = asyncio.Semaphore(concurrency)

            async def one(runs: list[Run]) -> None:
                async with sem:
                    await ingest.append(runs)

            await asyncio.gather(*(one(runs) for runs in groups))
        return await ingest.end_offsets()


@dataclass
class Progress:
    """When a stage's first commit and its last one (reaching the end offsets) were seen."""

    first_commit_s: float | None = None
    done_s: float | None = None
    committed_at_first: dict[int, int] | None = None
    committed: dict[int, int] | None = None
    polls: int = 0


async def wait_consumed(
    config: Config,
    paths: DataPaths,
    group: str,
    started: float,
    *,
    timeout: float,
    alive: Callable[[], bool],
    poll_s: float,
    log: str = "ingest",
) -> Progress:
    """Poll `group`'s committed offsets on `log` until they reach the end offsets.

    Times are seconds since `started` (a `time.perf_counter()` value). Stops early, with
    `done_s` None, when `alive()` turns false or `timeout` passes.
    """
    progress = Progress()
    async with open_logs(config, paths, (log,), create=False) as logs:
        consumed = logs[log]
        ends = await consumed.end_offsets()
        while time.perf_counter() - started < timeout and alive():
            committed = await consumed.committed(group)
            now = time.perf_counter() - started
            progress.polls += 1
            progress.committed = committed
            if progress.first_commit_s is None and any(v > 0 for v in committed.values()):
                progress.first_commit_s = now
                progress.committed_at_first = committed
            if all(committed.get(p, 0) >= end for p, end in enumerate(ends)):
                progress.done_s = now
                return progress
            await asyncio.sleep(poll_s)
    return progress


def processed_counts(metrics_dir: Path, stage: str) -> dict[str, int]:
    """Per outcome, the items `stage` counted in its metrics snapshots (written on stop)."""
    from headwater.observability.metrics import read_snapshots

    counts: dict[str, int] = {}
    for snap in read_snapshots(metrics_dir):
        for name, _source, outcome, _reason, n in snap.stage:
            if name == stage:
                counts[outcome] = counts.get(outcome, 0) + n
    return counts


def in_process_rate(groups: list[list[Run]], partitions: int) -> tuple[int, float]:
    """The processor's work on every stored batch without log I/O: decode the batch as stored
    (the reader), key each item (`ProfileKey`), re-encode the output runs (`outputs_of`).
    Returns (events, seconds)."""
    payloads = [join_runs([bytes(run.payload)]) for runs in groups for run in runs]
    step = ProfileKey()
    events = 0
    started = time.perf_counter()
    for payload in payloads:
        items = [
            Item(r.source_id, r.message, r.profile_key or "", stamp=r.stamp)
            for r in decode_batch(payload, stamped=False)
        ]
        step(items)
        runs = outputs_of(items, partitions)
        events += sum(run.count for run in runs)
    return events, time.perf_counter() - started
