"""The processor distributed: two processors on the real JetStream sharing dedupe claims and
the delivery overview in the real Redis, with a tracking plan enforced.

Copies of one messageId are written to partitions the two processors own apart, so only the
shared claims can tell that the second copy is a duplicate.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from pathlib import Path

import redis
from nats.aio.client import Client as NATS

from headwater.accounting.redis_store import RedisAccountingStore
from headwater.accounting.store import Retention
from headwater.accounting.tally import DAY_MS, HOUR_MS
from headwater.config import Config, load_config
from headwater.control.declarative import apply_config
from headwater.control.store import ControlStore, stable_id
from headwater.log.jetstream import JetStreamSettings
from headwater.log.jetstream.leases import read_leases
from headwater.log.jetstream.streams import Names
from headwater.processing.processor import STAGE
from tests.processing._helpers import caught_up, id_counts, jetstream_prefix, read_all, wait_for
from tests.processing._helpers import write_input as write_run
from tests.processing.test_processor_jetstream import PARTITIONS, Processor, logs, stop_all
from tests.support.jetstream import jetstream_config
from tests.support.redis import REDIS_URL, redis_prefix

WEB = stable_id("src", "dist", "web")


def config_text(log_prefix: str, state_prefix: str) -> str:
    return jetstream_config(log_prefix, partitions=PARTITIONS, lease_ttl="2s") + (
        f"state: {{backend: redis, url: '{REDIS_URL}', prefix: {state_prefix}}}\n"
        "dedupe: {enabled: true}\n"
        "workspaces:\n"
        "  - name: dist\n"
        "    tracking_plans:\n"
        "      - name: p\n"
        "        rules: {track: {Planned: {}}}\n"
        "    sources:\n"
        "      - name: web\n"
        "        tracking_plan: p\n"
        "        enforcement: {unplanned_events: block}\n"
    )


def msg(mid: str, event: str = "Planned") -> bytes:
    return json.dumps(
        {"type": "track", "event": event, "messageId": mid, "userId": f"u-{mid}"}
    ).encode()


def two_roots(tmp_path: Path, config: Config) -> list[Path]:
    """Data directories of two processors, each with the file's control plane applied (what
    `headwater processor` does at start)."""
    roots = [tmp_path / "p1", tmp_path / "p2"]
    for root in roots:
        store = ControlStore(root / "control.db")
        apply_config(store, config)
        store.close()
    return roots


async def wait_both_own(nc: NATS, log_prefix: str) -> None:
    """Until the two processors own the partitions between them."""

    async def both_own() -> bool:
        owners = await read_leases(nc.jetstream(), Names(log_prefix).leases_bucket, STAGE)
        return len(owners) == PARTITIONS and len(set(owners.values())) == 2

    await wait_for(both_own, timeout=20)


def test_two_processors_share_claims_and_accounting_in_redis(tmp_path: Path) -> None:
    async def main(client: redis.Redis, state_prefix: str, log_prefix: str) -> None:
        path = tmp_path / "headwater.yaml"
        path.write_text(config_text(log_prefix, state_prefix))
        config = load_config(path)
        settings = JetStreamSettings.from_config(config)
        roots = two_roots(tmp_path, config)
        async with logs(settings) as (nc, ingest, events):
            procs = [Processor(config, root, f"m{i}") for i, root in enumerate(roots)]
            try:  # inputs are written once both own partitions
                await wait_both_own(nc, log_prefix)
                written: Counter[str] = Counter()
                planned: set[str] = set()
                for p in range(PARTITIONS):
                    batch = [msg(f"p{p}-{i}") for i in range(20)] + [msg(f"x{p}", "Unplanned")]
                    batch.append(msg("shared"))  # the same id in every partition
                    await write_run(ingest, p, batch, source=WEB)
                    written.update({f"p{p}-{i}": 1 for i in range(20)} | {f"x{p}": 1, "shared": 1})
                    planned.update(f"p{p}-{i}" for i in range(20))
                planned.add("shared")
                await wait_for(lambda: caught_up(ingest, STAGE), timeout=30)
                stored = id_counts(await read_all(events))
                assert stored == Counter(dict.fromkeys(planned, 1))  # one copy of "shared"

                now = int(time.time() * 1000)
                today = (now - DAY_MS, now + HOUR_MS)
                acct = RedisAccountingStore(client, state_prefix, Retention(HOUR_MS, HOUR_MS))
                rows = acct.outcomes(WEB, *today, HOUR_MS)
                totals = Counter({(r.stage, r.outcome, r.reason): r.count for r in rows})
                total = sum(written.values())
                assert totals == Counter(
                    {
                        ("ingest", "received", ""): total,
                        ("processor", "processed", ""): len(planned),
                        ("processor", "duplicate", "message_id_seen"): PARTITIONS - 1,
                        ("processor", "blocked", "unplanned_event"): PARTITIONS,
                    }
                )
                [row] = acct.violations(WEB, *today, HOUR_MS)
                assert (row.event, row.type, row.count) == ("Unplanned", "unplanned_event", 4)
            finally:
                await stop_all(*procs)

    with redis_prefix() as (client, state_prefix), jetstream_prefix() as log_prefix:
        asyncio.run(main(client, state_prefix, log_prefix))
