"""Headwater's roles as separate processes: `up` (every role, the processor as its child),
`gateway` and `processor` on JetStream, a clean handover between processors, and a processor
whose NATS server cannot be reached."""

from __future__ import annotations

import time
import uuid
from collections import Counter
from pathlib import Path

from tests.support.fleet import Fleet, Gateway, Role, wait_until


def _ids(run: str, n: int, start: int = 0) -> list[str]:
    return [f"{run}-{i}" for i in range(start, start + n)]


def _message_ids(fleet: Fleet, log: str, run: str, data: Path | None = None) -> Counter[str]:
    return Counter(
        m["messageId"]
        for m in fleet.messages(log, data=data)
        if str(m.get("messageId", "")).startswith(run)
    )


def _send(gateway: Gateway, ids: list[str], per_batch: int = 50) -> None:
    for i in range(0, len(ids), per_batch):
        assert gateway.send(ids[i : i + per_batch]) == 200


def test_up_runs_the_processor_as_a_child(tmp_path: Path) -> None:
    """Embedded `headwater up`: what the gateway acknowledges reaches `events`, stamped, and
    `status` shows the processor group caught up on `ingest`."""
    with Fleet(tmp_path, jetstream=False) as fleet:
        data = tmp_path / "up-data"
        up = fleet.gateway("up", data=data)
        run = uuid.uuid4().hex[:10]
        ids = _ids(run, 120)
        _send(up, ids)

        assert wait_until(
            lambda: set(_message_ids(fleet, "events", run, data)) == set(ids), timeout=20
        ), "the embedded processor did not write every event to `events`"
        events = [m for m in fleet.messages("events", data=data) if m["messageId"] in set(ids)]
        assert Counter(m["messageId"] for m in events) == Counter(ids)
        for m in events:
            assert m["type"] == "track" and m["event"] == "Test"
            assert m["receivedAt"] and m["timestamp"] == m["receivedAt"]  # no client clock
            assert m["version"] == 2 and m["context"]["ip"] == "127.0.0.1"

        def caught_up() -> bool:
            rows = [r for r in fleet.status(data=data) if r["log"] == "ingest"]
            return bool(rows) and all(
                r["committed"].get("processor") == r["end"] and r["lag"]["processor"] == 0
                for r in rows
            )

        assert wait_until(caught_up, timeout=10), fleet.status(data=data)
        rows = [r for r in fleet.status(data=data) if r["log"] == "ingest"]
        assert sum(r["end"] - r["start"] for r in rows) >= len(ids)  # offsets count records
        assert {r["owner"] for r in rows} == {"embedded processor"}  # its lock is held
        assert up.terminate() == 0


def test_gateway_alone_fills_ingest_and_a_processor_drains_it(tmp_path: Path) -> None:
    with Fleet(tmp_path, partitions=4, lease_ttl="3s") as fleet:
        gateway = fleet.gateway()
        run = uuid.uuid4().hex[:10]
        ids = _ids(run, 200)
        _send(gateway, ids)

        assert _message_ids(fleet, "ingest", run) == Counter(ids)  # acknowledged means stored
        time.sleep(1.0)  # nothing moves them on: no processor runs, so no events log yet
        assert "no events log" in fleet.headwater_fails("tail", "--log", "events", "--no-follow")
        assert {r["log"] for r in fleet.status()} == {"ingest"}
        rows = [r for r in fleet.status() if r["log"] == "ingest"]
        assert sum(r["end"] for r in rows) > 0
        assert all(r["owner"] is None and "processor" not in r["committed"] for r in rows)

        processor = fleet.processor()
        assert wait_until(  # the processor creates the events log as it starts
            lambda: {r["log"] for r in fleet.status()} == {"ingest", "events"}, timeout=20
        ), processor.output()[-3000:]
        assert wait_until(
            lambda: set(_message_ids(fleet, "events", run)) == set(ids), timeout=20
        ), processor.output()[-3000:]
        assert _message_ids(fleet, "events", run) == Counter(ids)

        def drained() -> bool:
            rows = [r for r in fleet.status() if r["log"] == "ingest"]
            return all(r["lag"].get("processor") == 0 and processor.owns(r["owner"]) for r in rows)

        assert wait_until(drained, timeout=10), fleet.status()
        assert processor.terminate() == 0
        assert fleet.leases() == {}  # a clean stop gives its leases up


def _stop_one_of_two(fleet: Fleet, wait: float) -> tuple[Role, float]:
    """Two processors share the partitions; SIGTERM one. The other, and how long after the
    stop it owned every partition (`wait` at most)."""
    leaving, staying = fleet.processor(), fleet.processor()

    def shared(leases: dict[int, str]) -> bool:
        return (
            len(leases) == 4
            and sum(leaving.owns(o) for o in leases.values()) == 2
            and sum(staying.owns(o) for o in leases.values()) == 2
        )

    leases = fleet.wait_leases(shared, timeout=20)
    assert shared(leases), leases
    stopped = time.monotonic()
    assert leaving.terminate(timeout=10) == 0
    leases = fleet.wait_leases(
        lambda ls: len(ls) == 4 and all(staying.owns(o) for o in ls.values()), timeout=wait
    )
    handover = time.monotonic() - stopped
    assert len(leases) == 4 and all(staying.owns(o) for o in leases.values()), leases
    return staying, handover


def test_a_stopped_processor_hands_its_partitions_over(tmp_path: Path) -> None:
    """SIGTERM: the processor exits 0, its partitions move to the other, whose work continues
    where the first one left off (nothing lost, nothing twice)."""
    with Fleet(tmp_path, partitions=4, lease_ttl="3s") as fleet:
        gateway = fleet.gateway()
        run = uuid.uuid4().hex[:10]
        before = _ids(run, 100)
        _send(gateway, before)
        staying, handover = _stop_one_of_two(fleet, wait=8)  # TTL + two renewal periods + slack
        print(f"\nhandover after SIGTERM (lease TTL 3 s): {handover:.2f}s")
        after = _ids(run, 100, start=100)
        _send(gateway, after)
        assert wait_until(
            lambda: set(_message_ids(fleet, "events", run)) == set(before + after), timeout=20
        ), staying.output()[-3000:]
        assert _message_ids(fleet, "events", run) == Counter(before + after)  # each once


def test_a_clean_stop_hands_over_before_the_leases_expire(tmp_path: Path) -> None:
    """`release_all` promises a clean stop hands over at once: within a renewal period (2 s
    with an 8 s TTL), long before an expiry would free the leases."""
    with Fleet(tmp_path, partitions=4, lease_ttl="8s") as fleet:
        _staying, handover = _stop_one_of_two(fleet, wait=5)
        assert handover < 5.0, f"handover took {handover:.1f}s: as slow as a lease expiry"


UNREACHABLE = "nats://127.0.0.1:1"


def _unreachable_processor(tmp_path: Path) -> tuple[Fleet, Role]:
    fleet = Fleet(tmp_path, nats_url=UNREACHABLE)
    fleet.prefix = None  # nothing is created on the real server: nothing to remove
    return fleet, fleet.processor()


def test_processor_without_nats_keeps_retrying(tmp_path: Path) -> None:
    fleet, processor = _unreachable_processor(tmp_path)
    with fleet:
        time.sleep(3.0)
        assert processor.alive(), f"it gave up: {processor.output()[-3000:]}"


def test_processor_without_nats_logs_no_tracebacks(tmp_path: Path) -> None:
    fleet, processor = _unreachable_processor(tmp_path)
    with fleet:
        time.sleep(3.0)
        assert processor.alive()
        output = processor.output()
        assert "Traceback" not in output, output[-2000:]


def test_processor_without_nats_stops_on_sigterm(tmp_path: Path) -> None:
    fleet, processor = _unreachable_processor(tmp_path)
    with fleet:
        time.sleep(1.5)
        assert processor.alive()
        assert processor.terminate(timeout=5) is not None, "still running 5 s after SIGTERM"
