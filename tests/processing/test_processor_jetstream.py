"""The processor and the stage runtime on the real JetStream, in process.

Every test has its own prefix (streams and lease bucket), deleted afterwards even on failure.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import nats
from nats.aio.client import Client as NATS

from headwater.config import Config, load_config
from headwater.log.jetstream import JetStreamLog, JetStreamSettings, Names, ensure_log
from headwater.log.jetstream.leases import read_leases
from headwater.paths import DataPaths
from headwater.processing.processor import STAGE, run_processor
from headwater.processing.runtime import (
    FAILED,
    PROCESSED,
    StageMetrics,
    StageRunner,
    StageSpec,
    producer_name,
)
from tests.processing._helpers import (
    SOURCE,
    Inputs,
    SinkWrapper,
    caught_up,
    check_output,
    id_counts,
    jetstream_prefix,
    message,
    read_all,
    valid_steps,
    wait_for,
    write_batches,
    write_input,
)
from tests.support.jetstream import NATS_URL, jetstream_config, namespace_settings

PARTITIONS = 4


def config_for(tmp_path: Path, prefix: str) -> Config:
    path = tmp_path / "headwater.yaml"
    path.write_text(jetstream_config(prefix, partitions=PARTITIONS, lease_ttl="2s"))
    return load_config(path)


@contextlib.asynccontextmanager
async def logs(
    settings: JetStreamSettings,
) -> AsyncIterator[tuple[NATS, JetStreamLog, JetStreamLog]]:
    nc = await nats.connect(NATS_URL)
    try:
        js = nc.jetstream()
        for name in ("ingest", "events"):
            await ensure_log(js, settings, name)
        yield nc, JetStreamLog("ingest", nc, settings, js), JetStreamLog("events", nc, settings, js)
    finally:
        await nc.close()


async def fill(ingest: JetStreamLog, inputs: Inputs, tag: str, batches: int = 3) -> None:
    for p in range(ingest.partitions):
        msgs = await write_batches(ingest, p, f"{tag}{p}", batches, 10)
        inputs.setdefault(p, []).extend((SOURCE, m) for m in msgs)


class Processor:
    """`run_processor` as a task of this event loop."""

    def __init__(self, config: Config, root: Path, member: str) -> None:
        self.stop = asyncio.Event()
        self.metrics = StageMetrics(STAGE)
        self.paths = DataPaths(root)
        self.task = asyncio.get_running_loop().create_task(
            run_processor(config, self.paths, self.stop, member=member, metrics=self.metrics)
        )

    async def shutdown(self, timeout: float = 15.0) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.shield(self.task), timeout)


async def stop_all(*processors: Processor) -> None:
    for proc in processors:
        proc.stop.set()
    for proc in processors:
        if not proc.task.done():
            with contextlib.suppress(Exception):
                await asyncio.wait_for(asyncio.shield(proc.task), 15)
        if not proc.task.done():
            proc.task.cancel()


def test_processor_on_jetstream_writes_every_message_once(tmp_path: Path) -> None:
    async def main(prefix: str) -> None:
        config = config_for(tmp_path, prefix)
        settings = JetStreamSettings.from_config(config)
        async with logs(settings) as (nc, ingest, events):
            inputs: Inputs = {}
            await fill(ingest, inputs, "before")
            bad = [b"[1]", b'{"messageId": "x", "userId": {"a": 1}}']
            await write_input(ingest, 3, [*bad, message("after-bad", anon="anon-9")])
            inputs[3].append((SOURCE, message("after-bad", anon="anon-9")))

            proc = Processor(config, tmp_path / "data", "member-1")
            try:
                await fill(ingest, inputs, "during")  # while it runs
                await wait_for(lambda: caught_up(ingest, STAGE), timeout=20)
                await check_output(events, inputs)
                valid = sum(len(v) for v in inputs.values())

                async def counted() -> bool:
                    return proc.metrics.total() == valid + len(bad)

                await wait_for(counted)  # counted just after the commit
                assert proc.metrics.total(PROCESSED) == valid
                assert proc.metrics.counts[(SOURCE, FAILED, "invalid_message")] == 2
                bucket = Names(prefix).leases_bucket
                owners = await read_leases(nc.jetstream(), bucket, STAGE)
                assert owners == dict.fromkeys(range(PARTITIONS), "member-1")

                await proc.shutdown()
                assert await read_leases(nc.jetstream(), bucket, STAGE) == {}  # handed back
                assert list(proc.paths.metrics_dir.iterdir())  # its counters were flushed
                await check_output(events, inputs)  # stopping wrote nothing more
            finally:
                await stop_all(proc)

    with jetstream_prefix() as prefix:
        asyncio.run(main(prefix))


def test_two_processors_share_the_partitions_and_hand_over_on_stop(tmp_path: Path) -> None:
    async def main(prefix: str) -> None:
        config = config_for(tmp_path, prefix)
        settings = JetStreamSettings.from_config(config)
        bucket = Names(prefix).leases_bucket
        async with logs(settings) as (nc, ingest, events):
            inputs: Inputs = {}
            a = Processor(config, tmp_path / "a", "member-a")
            b = Processor(config, tmp_path / "b", "member-b")
            try:
                await fill(ingest, inputs, "one")

                async def split() -> bool:
                    owners = await read_leases(nc.jetstream(), bucket, STAGE)
                    return owners == {0: "member-a", 1: "member-b", 2: "member-a", 3: "member-b"}

                await wait_for(split, timeout=10)
                await fill(ingest, inputs, "two")
                await wait_for(lambda: caught_up(ingest, STAGE), timeout=20)
                await check_output(events, inputs)

                # b stops cleanly while more arrives: a takes its partitions over
                await asyncio.gather(b.shutdown(), fill(ingest, inputs, "three"))

                async def all_a() -> bool:
                    owners = await read_leases(nc.jetstream(), bucket, STAGE)
                    return owners == dict.fromkeys(range(PARTITIONS), "member-a")

                await wait_for(all_a, timeout=10)
                await fill(ingest, inputs, "four")
                await wait_for(lambda: caught_up(ingest, STAGE), timeout=20)
                await check_output(events, inputs)
            finally:
                await stop_all(a, b)

    with jetstream_prefix() as prefix:
        asyncio.run(main(prefix))


def spec(source: JetStreamLog, sink: object) -> StageSpec:
    return StageSpec(
        "stage",
        valid_steps(),
        source,
        sink,  # type: ignore[arg-type]
        merge_units=False,  # as the processor on JetStream
        max_busy_partitions=PARTITIONS,  # every partition can be caught mid-append
        fetch_timeout=0.1,
    )


def test_runner_crash_after_output_append_replays_nothing_twice_on_jetstream() -> None:
    """Per-batch units (`Nats-Msg-Id` = producer:seq): a fresh runner after a crash between the
    output append and the commit appends the same ids again, and JetStream drops them."""

    async def main(prefix: str) -> None:
        settings = namespace_settings(prefix, partitions=PARTITIONS)
        async with logs(settings) as (_nc, ingest, events):
            inputs: Inputs = {}
            await fill(ingest, inputs, "p", batches=2)
            sink = SinkWrapper(events)
            sink.hang_after_store = True
            crashed = StageRunner(spec(ingest, sink))
            for p in range(PARTITIONS):
                crashed.assign(p)
            producers = {producer_name("stage", p) for p in range(PARTITIONS)}

            async def every_partition_appended() -> bool:
                return {producer for producer, _seq in sink.stored} == producers

            await wait_for(every_partition_appended, timeout=10)
            await asyncio.sleep(0.1)
            assert await ingest.committed("stage") == dict.fromkeys(range(PARTITIONS), 0)
            before = id_counts(await read_all(events))
            assert before and set(before.values()) == {1}
            await crashed.stop()  # the process dies here: outputs stored, nothing committed

            fresh = StageRunner(spec(ingest, events))
            for p in range(PARTITIONS):
                fresh.assign(p)
            try:
                await wait_for(lambda: caught_up(ingest, "stage"), timeout=10)
            finally:
                await fresh.stop()
            assert fresh.metrics.total(PROCESSED) == 2 * 10 * PARTITIONS  # all replayed...
            await check_output(events, inputs)  # ...and what was stored is there once

    with jetstream_prefix() as prefix:
        asyncio.run(main(prefix))
