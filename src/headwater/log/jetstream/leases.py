"""Partition ownership among the processes of one stage, by leases in a JetStream KV bucket.

Every member writes `<stage>.members.<id>` and, for each partition it owns,
`<stage>.lease.<p>` (value: its id). The bucket's TTL (`log.lease_ttl`) removes what is not
renewed, so the keys of a process that died vanish within one TTL. Every `ttl / 4` each member
renews its keys, lists the live members, and computes the same assignment everyone computes
(partition `p` goes to the `p % n`-th member by id): it gives up leases it should no longer hold
and takes free leases it should hold. Taking is `create` (fails if anyone holds the key) and
renewing is `update` against the revision last written (fails if the key moved), so two members
never hold one lease. A member that cannot renew a lease within the TTL treats it as lost and
stops processing that partition before anyone else can take it over (its local deadline is
shorter than the server's TTL).

Rebalancing after a member dies therefore takes at most about one TTL plus one renewal period
(6 s + 1.5 s with the default TTL).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable

from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import (
    APIError,
    BucketNotFoundError,
    KeyNotFoundError,
    KeyWrongLastSequenceError,
    NotFoundError,
)
from nats.js.kv import KeyValue

log = logging.getLogger(__name__)

SAFETY_MARGIN = 0.75  # a lease counts as held for this share of the TTL after its last renewal


async def lease_bucket(js: JetStreamContext, bucket: str, ttl: float, replicas: int) -> KeyValue:
    """The leases bucket, created with `ttl` if missing."""
    try:
        return await js.key_value(bucket)
    except BucketNotFoundError:
        return await js.create_key_value(
            bucket=bucket, ttl=ttl, history=1, replicas=replicas, description="partition leases"
        )


class LeaseManager:
    """Holds this process's share of a stage's partitions; calls back when it changes."""

    def __init__(
        self,
        js: JetStreamContext,
        kv: KeyValue,
        bucket: str,
        stage: str,
        member: str,
        partitions: int,
        ttl: float,
        on_acquired: Callable[[int], None],
        on_lost: Callable[[int], object],
    ) -> None:
        self.js = js
        self.kv = kv
        self.bucket = bucket
        self.stage = stage
        self.member = member
        self.partitions = partitions
        self.ttl = ttl
        self.on_acquired = on_acquired
        self.on_lost = on_lost
        self.owned: dict[int, int] = {}  # partition -> revision of our lease
        self._renewed: dict[int, float] = {}
        self._member_rev: int | None = None
        self.members: list[str] = []

    @property
    def period(self) -> float:
        return self.ttl / 4

    def holds(self, partition: int) -> bool:
        """Whether this member may still act on `partition` (its lease is surely alive)."""
        renewed = self._renewed.get(partition)
        return (
            partition in self.owned
            and renewed is not None
            and time.monotonic() - renewed < self.ttl * SAFETY_MARGIN
        )

    async def run(self, stop: asyncio.Event) -> None:
        """Keep renewing and rebalancing until `stop` is set (then call `release_all`, after
        stopping the work on the partitions)."""
        while not stop.is_set():
            try:
                await self.tick()
            except (NatsError, APIError, TimeoutError) as exc:
                log.warning("lease round failed (%s); retrying", exc)
                self._drop_expired()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), self.period)

    async def tick(self) -> None:
        """One round: renew, look at the members, give up and take leases."""
        await self._heartbeat()
        for p in list(self.owned):
            await self._renew(p)
        self.members = await self._live_members()
        mine = self.assignment(self.members).get(self.member, set())
        for p in sorted(set(self.owned) - mine):
            await self._release(p)
        for p in sorted(mine - set(self.owned)):
            await self._acquire(p)

    def assignment(self, members: list[str]) -> dict[str, set[int]]:
        """Which partitions each member should own (the same on every member)."""
        ordered = sorted(members)
        result: dict[str, set[int]] = {m: set() for m in ordered}
        if ordered:
            for p in range(self.partitions):
                result[ordered[p % len(ordered)]].add(p)
        return result

    async def release_all(self) -> None:
        """Give up every lease and leave the group (a clean stop hands over at once)."""
        for p in list(self.owned):
            with contextlib.suppress(NatsError, APIError, TimeoutError):
                await self._release(p)
        # Purged, not deleted: a delete marker would still list this member until the TTL.
        subject = f"$KV.{self.bucket}.{self._member_key(self.member)}"
        with contextlib.suppress(NatsError, APIError, TimeoutError, NotFoundError):
            await self.js.purge_stream(f"KV_{self.bucket}", subject=subject)

    # -- internals -----------------------------------------------------------------------------

    def _member_key(self, member: str) -> str:
        return f"{self.stage}.members.{member}"

    def _lease_key(self, partition: int) -> str:
        return f"{self.stage}.lease.{partition}"

    async def _heartbeat(self) -> None:
        self._member_rev = await self.kv.put(self._member_key(self.member), b"1")

    async def _live_members(self) -> list[str]:
        # One stream-info request lists the live member keys (no consumer, unlike kv.keys()).
        prefix = f"$KV.{self.bucket}.{self.stage}.members."
        info = await self.js.stream_info(f"KV_{self.bucket}", subjects_filter=f"{prefix}>")
        subjects = info.state.subjects or {}
        members = {subject[len(prefix) :] for subject in subjects}
        members.add(self.member)
        return sorted(members)

    async def _acquire(self, partition: int) -> None:
        key = self._lease_key(partition)
        try:
            rev = await self.kv.create(key, self.member.encode())
        except KeyWrongLastSequenceError:
            return  # someone else holds it; it will expire or be given up
        except APIError as exc:
            if exc.err_code == 10071:  # wrong last sequence, as the server names it
                return
            raise
        self.owned[partition] = rev
        self._renewed[partition] = time.monotonic()
        log.info("%s now owns %s partition %d", self.member, self.stage, partition)
        self.on_acquired(partition)

    async def _renew(self, partition: int) -> None:
        started = time.monotonic()
        try:
            rev = await self.kv.update(
                self._lease_key(partition), self.member.encode(), last=self.owned[partition]
            )
        except (KeyWrongLastSequenceError, KeyNotFoundError):
            self._lose(partition)
            return
        except APIError as exc:
            if exc.err_code == 10071:
                self._lose(partition)
                return
            raise
        self.owned[partition] = rev
        self._renewed[partition] = started

    async def _release(self, partition: int) -> None:
        rev = self.owned.get(partition)
        self._lose(partition)
        if rev is not None:
            with contextlib.suppress(KeyWrongLastSequenceError, KeyNotFoundError):
                await self.kv.delete(self._lease_key(partition), last=rev)

    def _lose(self, partition: int) -> None:
        if self.owned.pop(partition, None) is not None:
            self._renewed.pop(partition, None)
            log.info("%s no longer owns %s partition %d", self.member, self.stage, partition)
            self.on_lost(partition)

    def _drop_expired(self) -> None:
        for p in [p for p in self.owned if not self.holds(p)]:
            self._lose(p)


async def read_leases(
    js: JetStreamContext, bucket: str, stage: str = "processor"
) -> dict[int, str]:
    """Who holds each partition's lease now (for `headwater status`)."""
    try:
        kv = await js.key_value(bucket)
    except BucketNotFoundError:
        return {}
    prefix = f"$KV.{bucket}.{stage}.lease."
    info = await js.stream_info(f"KV_{bucket}", subjects_filter=f"{prefix}>")
    owners: dict[int, str] = {}
    for subject in info.state.subjects or {}:
        suffix = subject[len(prefix) :]
        if not suffix.isdigit():
            continue
        try:
            entry = await kv.get(f"{stage}.lease.{suffix}")
        except KeyNotFoundError:
            continue
        if entry.value:
            owners[int(suffix)] = entry.value.decode()
    return owners
