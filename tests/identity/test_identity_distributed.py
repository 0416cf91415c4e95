"""Identity resolution distributed: two processors on the real JetStream resolving into one
graph in the real Redis.

Each person browses from three devices and signs up on each, and their messages are spread
over every partition, so the two processors (owning partitions apart) merge the same people
at the same moment. No limit rule can bind (one user id and one email per person), so the
graph must be one profile per person whatever the order, and a rebuild of the journal the
processors wrote must give it back with the same profile ids.
"""

from __future__ import annotations

import asyncio
import json
import random
from pathlib import Path

import redis

from headwater.config import load_config
from headwater.control.store import stable_id
from headwater.identity.identifiers import Ident
from headwater.identity.redis_store import RedisIdentityStore
from headwater.identity.resolver import rebuild
from headwater.log.jetstream import JetStreamSettings
from headwater.processing.processor import STAGE
from tests.processing._helpers import caught_up, jetstream_prefix, read_all, wait_for
from tests.processing._helpers import write_input as write_run
from tests.processing.test_processor_distributed import two_roots, wait_both_own
from tests.processing.test_processor_jetstream import PARTITIONS, Processor, logs, stop_all
from tests.support.jetstream import jetstream_config
from tests.support.redis import REDIS_URL, redis_prefix

WS = "dist"
WEB = stable_id("src", WS, "web")
PEOPLE = 30
DEVICES = 3


def config_text(log_prefix: str, state_prefix: str) -> str:
    return jetstream_config(log_prefix, partitions=PARTITIONS, lease_ttl="2s") + (
        f"state: {{backend: redis, url: '{REDIS_URL}', prefix: {state_prefix}}}\n"
        "dedupe: {enabled: false}\n"
        "workspaces:\n"
        f"  - name: {WS}\n"
        "    identity: {enabled: true}\n"
        "    sources:\n"
        "      - name: web\n"
    )


def stream(rng: random.Random) -> list[dict[str, object]]:
    """Every person's browsing and sign-ups, each person's in order, people interleaved."""
    per_person = []
    for k in range(PEOPLE):
        mine: list[dict[str, object]] = []
        for d in range(DEVICES):
            anon = f"a-{k}-{d}"
            mine.append({"type": "track", "event": "Viewed", "anonymousId": anon})
            mine.append(
                {
                    "type": "identify",
                    "userId": f"u-{k}",
                    "anonymousId": anon,
                    "traits": {"email": f"p{k}@example.com", "device": d},
                }
            )
        per_person.append(mine)
    out = []
    while any(per_person):
        mine = rng.choice([m for m in per_person if m])
        out.append(mine.pop(0))
    for i, m in enumerate(out):
        m["messageId"] = f"m{i}"
    return out


def person(k: int) -> frozenset[Ident]:
    ids = {Ident("user_id", f"u-{k}"), Ident("email", f"p{k}@example.com")}
    return frozenset(ids | {Ident("anonymous_id", f"a-{k}-{d}") for d in range(DEVICES)})


def test_two_processors_resolve_the_same_people_into_one_graph(tmp_path: Path) -> None:
    async def main(client: redis.Redis, state_prefix: str, log_prefix: str) -> None:
        path = tmp_path / "headwater.yaml"
        path.write_text(config_text(log_prefix, state_prefix))
        config = load_config(path)
        settings = JetStreamSettings.from_config(config)
        roots = two_roots(tmp_path, config)
        messages = stream(random.Random(5))
        async with logs(settings) as (nc, ingest, events):
            procs = [Processor(config, root, f"m{i}") for i, root in enumerate(roots)]
            try:
                await wait_both_own(nc, log_prefix)
                for start in range(0, len(messages), 4):  # small runs, round the partitions
                    run = [json.dumps(m).encode() for m in messages[start : start + 4]]
                    await write_run(ingest, (start // 4) % PARTITIONS, run, source=WEB)
                await wait_for(lambda: caught_up(ingest, STAGE), timeout=60)
                stored = [r for rs in (await read_all(events)).values() for r in rs]
            finally:
                await stop_all(*procs)

        store = RedisIdentityStore(client, f"{state_prefix}:identity:")
        assert store.partition(WS) == {person(k) for k in range(PEOPLE)}
        # every message left stamped with a profile that is (or was merged into) its person's
        assert len(stored) == len(messages)
        for record in stored:
            message = json.loads(record.message)
            k = int(str(message["anonymousId"]).split("-")[1])
            now = store.current_profile(WS, message["profileId"])
            assert now == store.owner_of(WS, Ident("user_id", f"u-{k}"))
        # the journal the two wrote, replayed in its order, makes the same graph, same ids
        target = RedisIdentityStore(client, f"{state_prefix}:rebuilt:")
        assert rebuild(store, target) == store.journal_size() > PEOPLE
        assert target.partition(WS) == store.partition(WS)
        for k in range(PEOPLE):
            for ident in person(k):
                assert target.owner_of(WS, ident) == store.owner_of(WS, ident)

    with redis_prefix() as (client, state_prefix), jetstream_prefix() as log_prefix:
        asyncio.run(main(client, state_prefix, log_prefix))
