"""Two routers on the real JetStream, retry jobs in the real PostgreSQL: they share the
`events` partitions by lease, every event reaches the webhook, and when one router stops the
other takes its partitions over and delivers what was left (including its retry jobs)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import psycopg

from headwater.config import Config, load_config
from headwater.control.declarative import apply_config
from headwater.control.store import ControlStore, stable_id
from headwater.delivery.role import run_router
from headwater.events.stamp import Stamp, encode_stamp
from headwater.log.jetstream import JetStreamSettings
from headwater.log.jetstream.leases import read_leases
from headwater.log.jetstream.streams import Names
from headwater.log.records import Run, encode_run
from headwater.paths import DataPaths
from tests.delivery.receiver import Receiver, Reply
from tests.processing._helpers import jetstream_prefix, wait_for
from tests.processing.test_processor_jetstream import PARTITIONS, logs
from tests.support.jetstream import jetstream_config

PG_URL = "postgresql://root@127.0.0.1:5432/test"
WEB = stable_id("src", "fleet", "web")


@contextlib.contextmanager
def pg_schema() -> Iterator[str]:
    schema = f"hwtest_{uuid.uuid4().hex[:10]}"
    try:
        yield schema
    finally:
        with psycopg.connect(PG_URL, autocommit=True) as conn:
            conn.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")


def config_text(log_prefix: str, schema: str, url: str) -> str:
    return jetstream_config(log_prefix, partitions=PARTITIONS, lease_ttl="2s") + (
        f"delivery: {{backend: postgres, url: '{PG_URL}', schema: {schema}, "
        "retry_base: 100ms, retry_max: 300ms}\n"
        "workspaces:\n"
        "  - name: fleet\n"
        "    sources:\n"
        "      - name: web\n"
        "    destinations:\n"
        "      - name: Hook\n"
        "        type: webhook\n"
        f"        settings: {{url: '{url}', batch_size: 10, timeout: 2s, max_in_flight: 1}}\n"
    )


class RouterTask:
    """`run_router` as a task of this event loop."""

    def __init__(self, config: Config, root: Path, member: str) -> None:
        store = ControlStore(root / "control.db")
        apply_config(store, config)
        store.close()
        self.stop = asyncio.Event()
        self.task = asyncio.get_running_loop().create_task(
            run_router(config, DataPaths(root), self.stop, member=member)
        )

    async def shutdown(self) -> None:
        self.stop.set()
        await asyncio.wait_for(asyncio.shield(self.task), 20)


def received(rx: Receiver) -> Counter[str]:
    found: Counter[str] = Counter()
    for request in list(rx.requests):
        found.update(m["messageId"] for m in request.json())
    return found


def test_two_routers_share_the_partitions_and_one_takes_over_from_the_other(
    tmp_path: Path,
) -> None:
    calls = {"n": 0}

    def flaky(_request: object) -> Reply:  # every fifth request fails for now
        calls["n"] += 1
        return Reply(503) if calls["n"] % 5 == 0 else Reply(200, delay=0.05)

    async def main(log_prefix: str, schema: str, rx: Receiver) -> None:
        path = tmp_path / "headwater.yaml"
        path.write_text(config_text(log_prefix, schema, rx.url))
        config = load_config(path)
        settings = JetStreamSettings.from_config(config)
        now = datetime.now(UTC)
        stamp = encode_stamp(Stamp(now, now.isoformat(), "10.1.1.1"))
        async with logs(settings) as (nc, _ingest, events):
            routers = [RouterTask(config, tmp_path / f"r{i}", f"r{i}") for i in range(2)]
            try:

                async def both_own() -> bool:
                    owners = await read_leases(nc.jetstream(), Names(log_prefix).leases_bucket,
                                               "router")  # fmt: skip
                    return len(owners) == PARTITIONS and len(set(owners.values())) == 2

                await wait_for(both_own, timeout=20)
                sent: list[str] = []
                for p in range(PARTITIONS):
                    mids = [f"p{p}-{i}" for i in range(100)]
                    body = [json.dumps({"type": "track", "event": "E", "messageId": m,
                                        "userId": m}).encode() for m in mids]  # fmt: skip
                    await events.append([Run(p, encode_run(WEB, stamp, body), len(body))])
                    sent += mids

                async def half() -> bool:
                    return len(received(rx)) >= len(sent) // 2

                async def everything() -> bool:
                    return set(received(rx)) >= set(sent)

                await wait_for(half, timeout=20)
                await routers[0].shutdown()  # the other takes its partitions over
                for p in range(PARTITIONS):  # events r0 will never see, in its partitions too
                    mids = [f"p{p}-later-{i}" for i in range(50)]
                    body = [json.dumps({"type": "track", "event": "E", "messageId": m,
                                        "userId": m}).encode() for m in mids]  # fmt: skip
                    await events.append([Run(p, encode_run(WEB, stamp, body), len(body))])
                    sent += mids

                async def r1_owns_all() -> bool:
                    owners = await read_leases(nc.jetstream(), Names(log_prefix).leases_bucket,
                                               "router")  # fmt: skip
                    return set(owners.values()) == {"r1"} and len(owners) == PARTITIONS

                await wait_for(r1_owns_all, timeout=20)
                await wait_for(everything, timeout=30)
                assert set(received(rx)) == set(sent)
            finally:
                for r in routers:
                    r.stop.set()
                for r in routers:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(asyncio.shield(r.task), 20)

    with jetstream_prefix() as log_prefix, pg_schema() as schema, Receiver() as rx:
        rx.behave(flaky)
        asyncio.run(main(log_prefix, schema, rx))
