"""Scale-out on JetStream: two gateways and two processors share the load; SIGKILL one
processor mid-load and the other takes its partitions over, with every acknowledged event in
the `events` log exactly once."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx
import pytest

from tests.support.fleet import Fleet, Gateway, wait_until

PARTITIONS = 8
THREADS = 4
REQUESTS_PER_THREAD = 80
BATCH = 100  # 4 x 80 x 100 = 32,000 events at most
LOAD_SECONDS = 30.0  # at most
KILL_AFTER = 8_000  # acknowledged events before the kill
TAKEOVER_LIMIT = 10.0  # seconds, with the default lease TTL (6 s): the bar of the issue


def _load(
    gateways: list[Gateway],
    run: str,
    client: int,
    acked: list[str],
    attempted: list[str],
    stop: threading.Event,
    deadline: float,
) -> None:
    for n in range(REQUESTS_PER_THREAD):
        if stop.is_set() or time.monotonic() > deadline:
            return
        ids = [f"{run}-{client}-{n}-{i}" for i in range(BATCH)]
        attempted.extend(ids)
        try:
            status = gateways[(client + n) % len(gateways)].send(ids, event="Load")
        except httpx.HTTPError:
            continue  # not acknowledged: may or may not be stored
        if status == 200:
            acked.extend(ids)


@pytest.mark.slow
def test_sigkill_of_a_processor_under_load_loses_and_doubles_nothing(tmp_path: Path) -> None:
    with Fleet(tmp_path, partitions=PARTITIONS, lease_ttl="6s") as fleet:
        gateways = [fleet.gateway(), fleet.gateway()]
        victim, survivor = fleet.processor(), fleet.processor()

        def balanced(leases: dict[int, str]) -> bool:
            mine = [p for p, o in leases.items() if victim.owns(o)]
            theirs = [p for p, o in leases.items() if survivor.owns(o)]
            return len(mine) == len(theirs) == PARTITIONS // 2

        before = fleet.wait_leases(balanced, timeout=20)
        assert balanced(before), f"the processors did not share the partitions: {before}"

        run = uuid.uuid4().hex[:10]
        acked: list[str] = []
        attempted: list[str] = []
        stop = threading.Event()
        deadline = time.monotonic() + LOAD_SECONDS
        threads = [
            threading.Thread(
                target=_load, args=(gateways, run, c, acked, attempted, stop, deadline)
            )
            for c in range(THREADS)
        ]
        try:
            for t in threads:
                t.start()
            wait_until(
                lambda: len(acked) >= KILL_AFTER or not any(t.is_alive() for t in threads),
                timeout=LOAD_SECONDS,
                every=0.01,
            )
            acked_at_kill = len(acked)
            victim.kill()  # mid-load, no warning
            killed = time.monotonic()

            def survivor_owns_all(leases: dict[int, str]) -> bool:
                return len(leases) == PARTITIONS and all(survivor.owns(o) for o in leases.values())

            after = fleet.wait_leases(survivor_owns_all, timeout=20)
            takeover = time.monotonic() - killed
        except BaseException:
            stop.set()  # the load otherwise ends by itself, bounded in count and time
            raise
        finally:
            for t in threads:
                t.join(60)
        print(
            f"\nacked {len(acked)} of {len(attempted)} events ({acked_at_kill} before the kill); "
            f"the survivor owned every partition {takeover:.2f}s after the kill"
        )
        assert acked_at_kill >= KILL_AFTER, "the load did not get going before the kill"
        assert len(acked) > acked_at_kill, "the load ended before the kill"
        assert survivor_owns_all(after), f"no takeover within 20s: {after}"
        assert takeover < TAKEOVER_LIMIT, f"takeover took {takeover:.1f}s"
        assert survivor.alive()

        def caught_up() -> bool:
            rows = [r for r in fleet.status() if r["log"] == "ingest"]
            return len(rows) == PARTITIONS and all(
                r["lag"].get("processor") == 0 and survivor.owns(r["owner"]) for r in rows
            )

        assert wait_until(caught_up, timeout=30, every=0.5), fleet.status()

        events = Counter(m["messageId"] for m in fleet.messages("events"))
        missing = [mid for mid in acked if mid not in events]
        assert missing == [], f"{len(missing)} acknowledged events lost, e.g. {missing[:3]}"
        doubled = {mid: n for mid, n in events.items() if n > 1}
        assert doubled == {}, f"{len(doubled)} events stored twice, e.g. {list(doubled)[:3]}"
        unknown = set(events) - set(attempted)
        assert unknown == set(), f"events nobody sent: {sorted(unknown)[:3]}"
        assert len(set(acked)) == len(acked)
