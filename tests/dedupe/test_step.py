"""Deduplication as a processor step: on embedded logs, across crashes, and exact at scale."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from pathlib import Path

import msgspec

from headwater.log.embedded.appender import AppendSettings
from headwater.log.embedded.log import EmbeddedLog
from headwater.log.records import Run, encode_run
from headwater.processing.dedupe import DUPLICATE, Dedupe, FileDedupeStore
from headwater.processing.runtime import PROCESSED, Item, StageRunner, StageSpec
from headwater.processing.steps import ProfileKey

GROUP = "processor"


def msg(mid: str, user: str = "u1") -> bytes:
    return msgspec.json.encode({"type": "track", "event": "E", "userId": user, "messageId": mid})


def ids_in(log_records: list[bytes]) -> Counter[str]:
    return Counter(msgspec.json.decode(m)["messageId"] for m in log_records)


async def everything(log: EmbeddedLog) -> list[bytes]:
    out: list[bytes] = []
    for p in range(log.partitions):
        offset = 0
        while batches := await log.read(p, offset):
            out += [r.message for b in batches for r in b.records]
            offset = batches[-1].end_offset
    return out


async def drain(runner: StageRunner, source: EmbeddedLog) -> None:
    for p in range(source.partitions):
        runner.assign(p)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        ends = await source.end_offsets()
        done = await source.committed(GROUP)
        if all(done.get(p, 0) >= e for p, e in enumerate(ends)):
            break
        await asyncio.sleep(0.02)
    await runner.stop()


def test_duplicates_end_as_duplicate_and_events_hold_each_id_once(tmp_path: Path) -> None:
    async def main() -> None:
        ingest = EmbeddedLog("ingest", tmp_path / "ingest", AppendSettings(partitions=2))
        events = EmbeddedLog("events", tmp_path / "events", AppendSettings(partitions=2))
        store = FileDedupeStore(tmp_path / "dedupe", window_ms=86_400_000)
        try:
            sent = [f"m{i}" for i in range(30)]
            retried = sent[5:10]  # a client retry: the same messages again, in a later batch
            await ingest.append([Run(0, encode_run("s", None, [msg(m) for m in sent]), 30)])
            await ingest.append([Run(0, encode_run("s", None, [msg(m) for m in retried]), 5)])
            twice_in_one = [msg("m40"), msg("m40")]
            await ingest.append([Run(1, encode_run("s", None, twice_in_one), 2)])
            spec = StageSpec(
                GROUP, [Dedupe(store), ProfileKey()], ingest, events, fetch_timeout=0.05
            )
            runner = StageRunner(spec)
            await drain(runner, ingest)
            assert ids_in(await everything(events)) == Counter([*sent, "m40"])
            counts = runner.metrics.counts
            assert counts[("s", DUPLICATE, "message_id_seen")] == 6
            assert counts[("s", PROCESSED, "")] == 31
        finally:
            await ingest.close()
            await events.close()
            store.close()

    asyncio.run(main())


def test_a_replay_after_a_crash_is_not_a_duplicate_of_itself(tmp_path: Path) -> None:
    """The output was appended but the commit never made it (the process died): the next
    processor reads the same messages again, and they still pass."""

    async def main() -> None:
        settings = AppendSettings(partitions=1)
        ingest = EmbeddedLog("ingest", tmp_path / "ingest", settings)
        events = EmbeddedLog("events", tmp_path / "events", settings)
        store = FileDedupeStore(tmp_path / "dedupe", window_ms=86_400_000)
        try:
            await ingest.append(
                [Run(0, encode_run("s", None, [msg(f"m{i}") for i in range(8)]), 8)]
            )
            batches = await ingest.read(0, 0)
            first = [
                Item(r.source_id, r.message, position=f"0:{batches[0].end_offset}:{i}")
                for i, r in enumerate(batches[0].records)
            ]
            Dedupe(store)(first)  # the crashed run claimed every id, then died before commit
            assert not any(i.outcome for i in first)
            runner = StageRunner(StageSpec(GROUP, [Dedupe(store), ProfileKey()], ingest, events))
            await drain(runner, ingest)
            assert ids_in(await everything(events)) == Counter(f"m{i}" for i in range(8))
            assert runner.metrics.total(DUPLICATE) == 0
        finally:
            await ingest.close()
            await events.close()
            store.close()

    asyncio.run(main())


def test_no_false_duplicate_among_a_million_distinct_ids(tmp_path: Path) -> None:
    store = FileDedupeStore(tmp_path / "dedupe", window_ms=86_400_000)
    try:
        step = Dedupe(store, clock_ms=lambda: 1_700_000_000_000)
        duplicates = 0
        for start in range(0, 1_000_000, 20_000):
            items = [
                Item(
                    "s",
                    b'{"messageId":"%08x-4d2c-4e1a-9d3f-%012x"}' % (start, i),
                    position=f"0:{start}:{i}",
                )
                for i in range(start, start + 20_000)
            ]
            step(items)
            duplicates += sum(1 for i in items if i.outcome)
        assert duplicates == 0
        assert store.count() == 1_000_000
    finally:
        store.close()
