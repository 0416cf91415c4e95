"""Partition leases on the real NATS server: ownership moves, and is never shared.

Every test has a bucket under its own prefix (deleted afterwards) and a short TTL (2 s, so a
renewal period of 0.5 s). A monitor samples every member's `holds()` and `read_leases` all the
time and records any moment at which two members held one partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from typing import Any, cast

import nats
from nats.aio.client import Client as NATS

from headwater.log.jetstream import Names
from headwater.log.jetstream.leases import LeaseManager, lease_bucket, read_leases
from tests.processing._helpers import jetstream_prefix
from tests.support.jetstream import NATS_URL

STAGE = "processor"
PARTITIONS = 4
TTL = 2.0
PERIOD = TTL / 4
# A dead member's leases expire after one TTL and the survivor takes them at its next round
# (TTL + PERIOD, 2.5 s, on a quiet machine). The server's expiry and the survivor's rounds
# both lag on a loaded two-core machine (CI once went past TTL + 2 periods), so the bound
# leaves three more periods (two TTLs in all).
TAKEOVER_BOUND = TTL + 4 * PERIOD


class Member:
    """One stage process as far as leases go: its connection, manager and run task."""

    def __init__(self, name: str, nc: NATS, manager: LeaseManager) -> None:
        self.name = name
        self.nc = nc
        self.manager = manager
        self.stop = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.acquired: list[int] = []
        self.lost: list[int] = []

    def start(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self.manager.run(self.stop))

    async def crash(self) -> None:
        """Stop renewing abruptly: no `release_all`, the connection just goes.

        On Python 3.11 `asyncio.wait_for` (inside nats-py) returns a result that arrived
        together with the cancellation instead of raising it, so cancel until it is done."""
        assert self.task is not None
        while not self.task.done():
            self.task.cancel()
            await asyncio.wait({self.task}, timeout=0.05)
        await self.nc.close()

    async def leave(self) -> None:
        """A clean stop: finish the round, give every lease up, leave the group."""
        self.stop.set()
        if self.task is not None:
            await self.task
        await self.manager.release_all()
        await self.nc.close()


async def member(prefix: str, name: str) -> Member:
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    bucket = Names(prefix).leases_bucket
    kv = await lease_bucket(js, bucket, TTL, 1)
    m = Member(name, nc, cast(LeaseManager, None))
    m.manager = LeaseManager(
        js, kv, bucket, STAGE, name, PARTITIONS, TTL, m.acquired.append, m.lost.append
    )
    return m


class Monitor:
    """Samples `holds()` of every member and the bucket's leases, recording violations."""

    def __init__(self, nc: NATS, bucket: str, members: list[Member]) -> None:
        self.js = nc.jetstream()
        self.bucket = bucket
        self.members = members
        self.violations: list[str] = []
        self.samples = 0
        self.stopped = False

    async def run(self) -> None:
        while not self.stopped:  # a flag, not cancel(): see Member.crash
            owners = await read_leases(self.js, self.bucket, STAGE)
            names = {m.name for m in self.members}
            for p in range(PARTITIONS):
                holders = [m.name for m in self.members if m.manager.holds(p)]
                if len(holders) > 1:
                    self.violations.append(f"partition {p} held by {holders}")
                if holders and owners.get(p) not in (None, holders[0]):
                    self.violations.append(f"{holders} holds {p} but the lease says {owners}")
                if p in owners and owners[p] not in names:
                    self.violations.append(f"unknown owner {owners[p]} of {p}")
            self.samples += 1
            await asyncio.sleep(0.02)


async def until(condition: Callable[[], bool], timeout: float) -> float:
    """Seconds until `condition()` held (fails after `timeout`)."""
    start = time.monotonic()
    while not condition():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout}s")
        await asyncio.sleep(0.01)
    return time.monotonic() - start


def owns(m: Member, partitions: set[int]) -> Callable[[], bool]:
    return lambda: (
        set(m.manager.owned) == partitions and all(m.manager.holds(p) for p in partitions)
    )


async def with_two_members(prefix: str, scenario: Callable[[Member, Member, Monitor], Any]) -> None:
    """Start member a, let it own everything, start member b, wait for the split, run
    `scenario(a, b, monitor)`; no moment of shared ownership is allowed throughout."""
    watcher = await nats.connect(NATS_URL)
    members: list[Member] = []
    monitor_task: asyncio.Task[None] | None = None
    try:
        a = await member(prefix, "member-a")
        members.append(a)
        monitor = Monitor(watcher, Names(prefix).leases_bucket, members)
        a.start()
        await until(owns(a, {0, 1, 2, 3}), 2 * PERIOD + 1)
        monitor_task = asyncio.get_running_loop().create_task(monitor.run())
        assert await read_leases(watcher.jetstream(), monitor.bucket, STAGE) == dict.fromkeys(
            range(PARTITIONS), "member-a"
        )
        assert sorted(a.acquired) == [0, 1, 2, 3]

        b = await member(prefix, "member-b")
        members.append(b)
        b.start()
        await until(lambda: owns(a, {0, 2})() and owns(b, {1, 3})(), 4 * PERIOD + 1)
        assert a.manager.members == b.manager.members == ["member-a", "member-b"]
        assert sorted(a.lost) == [1, 3]
        assert sorted(b.acquired) == [1, 3]
        assert await read_leases(watcher.jetstream(), monitor.bucket, STAGE) == {
            0: "member-a",
            1: "member-b",
            2: "member-a",
            3: "member-b",
        }

        await scenario(a, b, monitor)
        await asyncio.sleep(0.05)
        assert monitor.samples > 10
        assert monitor.violations == []
    finally:
        if monitor_task is not None:
            monitor.stopped = True
            await asyncio.wait({monitor_task}, timeout=5)
        for m in members:
            if not m.nc.is_closed:
                with contextlib.suppress(Exception):
                    await m.leave()
        await watcher.close()


def test_assignment_is_deterministic_and_even() -> None:
    def manager(name: str, partitions: int) -> LeaseManager:
        none = cast(Any, None)
        return LeaseManager(none, none, "b", STAGE, name, partitions, TTL, print, print)

    members = ["m-c", "m-a", "m-b"]
    first = manager("m-a", 8).assignment(members)
    assert first == manager("m-c", 8).assignment(list(reversed(members)))
    assert first == manager("m-b", 8).assignment(sorted(members))
    assert first == {"m-a": {0, 3, 6}, "m-b": {1, 4, 7}, "m-c": {2, 5}}
    for n_members in range(1, 6):
        names = [f"m{i}" for i in range(n_members)]
        for partitions in (1, 4, 7, 16):
            result = manager("m0", partitions).assignment(names)
            shares = [len(s) for s in result.values()]
            assert sorted(p for s in result.values() for p in s) == list(range(partitions))
            assert max(shares) - min(shares) <= 1
    assert manager("x", 4).assignment([]) == {}
    assert manager("x", 4).assignment(["x"]) == {"x": {0, 1, 2, 3}}


def test_a_second_member_splits_the_partitions_without_sharing_any() -> None:
    async def scenario(a: Member, b: Member, monitor: Monitor) -> None:
        # stable: the split stays as it is over several rounds
        samples = monitor.samples
        await asyncio.sleep(3 * PERIOD)
        assert owns(a, {0, 2})() and owns(b, {1, 3})()
        assert monitor.samples > samples
        assert a.manager.assignment(a.manager.members) == b.manager.assignment(b.manager.members)

    with jetstream_prefix() as prefix:
        asyncio.run(with_two_members(prefix, scenario))


def test_a_crashed_member_is_taken_over_within_ttl_and_two_periods() -> None:
    took: list[float] = []

    async def scenario(a: Member, b: Member, monitor: Monitor) -> None:
        await b.crash()
        took.append(await until(owns(a, {0, 1, 2, 3}), TAKEOVER_BOUND))
        assert a.manager.members == ["member-a"]
        assert sorted(a.acquired) == [0, 1, 1, 2, 3, 3]
        assert b.lost == []  # b died: it called nothing
        assert not any(b.manager.holds(p) for p in range(PARTITIONS))
        owners = await read_leases(monitor.js, monitor.bucket, STAGE)
        assert owners == dict.fromkeys(range(PARTITIONS), "member-a")

    with jetstream_prefix() as prefix:
        asyncio.run(with_two_members(prefix, scenario))
    assert took and took[0] <= TAKEOVER_BOUND


def test_a_clean_stop_releases_its_leases_at_once() -> None:
    async def scenario(a: Member, b: Member, monitor: Monitor) -> None:
        await b.leave()
        assert sorted(b.lost) == [1, 3]
        owners = await read_leases(monitor.js, monitor.bucket, STAGE)
        assert owners == {0: "member-a", 2: "member-a"}  # b's leases are gone at once
        await until(owns(a, {0, 1, 2, 3}), TAKEOVER_BOUND)

    with jetstream_prefix() as prefix:
        asyncio.run(with_two_members(prefix, scenario))


def test_a_clean_stop_hands_over_at_the_next_tick() -> None:
    """The departed member must not be listed any more: its member key is purged (a delete
    marker would keep it in the stream's subjects, and its partitions unowned, for a TTL)."""

    async def scenario(a: Member, b: Member, monitor: Monitor) -> None:
        await b.leave()
        await until(owns(a, {0, 1, 2, 3}), 2 * PERIOD + 0.2)

    with jetstream_prefix() as prefix:
        asyncio.run(with_two_members(prefix, scenario))


def test_all_members_stopping_leaves_no_lease() -> None:
    async def scenario(a: Member, b: Member, monitor: Monitor) -> None:
        await b.leave()
        await a.leave()
        assert await read_leases(monitor.js, monitor.bucket, STAGE) == {}

    with jetstream_prefix() as prefix:
        asyncio.run(with_two_members(prefix, scenario))
