"""The JetStream backend behind the `Log` interface: streams per partition, durable consumers.

Offsets are stream sequences: the batch stored as message `n` of a partition's stream spans
offsets `n-1` to `n`, so a consumer that has processed it commits `n`. A consumer group's
committed offsets are the ack floors of its durable consumers (`<group>-<partition>`, one per
partition, acknowledging everything up to a message at once). Taking a partition over
recreates its consumer at the ack floor, so the new owner continues exactly after the last
commit, in order, without waiting for the old owner's deliveries to time out.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable

import msgspec
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg
from nats.errors import Error as NatsError
from nats.errors import TimeoutError as NatsTimeoutError
from nats.js import JetStreamContext
from nats.js import api as js_api
from nats.js.errors import APIError, NotFoundError

from headwater.log.base import LogUnavailable
from headwater.log.jetstream.streams import JetStreamSettings, Names
from headwater.log.records import RecordBatch, Run, batch_header, decode_batch

log = logging.getLogger(__name__)

PUBLISH_TIMEOUT_S = 5.0
PUBLISH_ATTEMPTS = 3
PAYLOAD_HEADROOM = 4096
ACK_WAIT_S = 300.0


async def publish(js: JetStreamContext, subject: str, payload: bytes, msg_id: str) -> js_api.PubAck:
    """Publish one message with `Nats-Msg-Id: msg_id`, retrying with the same id (so a retry
    after a lost acknowledgement stores nothing twice). Raises `LogUnavailable`."""
    error: Exception | None = None
    for attempt in range(PUBLISH_ATTEMPTS):
        try:
            future = await js.publish_async(subject, payload, headers={"Nats-Msg-Id": msg_id})
            return await asyncio.wait_for(future, PUBLISH_TIMEOUT_S)
        except (TimeoutError, NatsTimeoutError, NatsError, APIError) as exc:
            error = exc
            if isinstance(exc, APIError) and exc.code not in (None, 503):
                break  # the stream refused it (e.g. full): retrying the same will not help
            await asyncio.sleep(0.1 * (attempt + 1))
    raise LogUnavailable(f"JetStream did not store the batch: {error}", retry_after=1)


def split_payloads(runs: list[Run], partitions: int, max_payload: int) -> dict[int, list[bytes]]:
    """Per partition, record batches of at most `max_payload` bytes (a run never splits)."""
    by_partition: dict[int, list[list[bytes | memoryview]]] = {}
    sizes: dict[int, int] = {}
    for run in runs:
        if not 0 <= run.partition < partitions:
            raise ValueError(f"no partition {run.partition}: the log has {partitions}")
        groups = by_partition.setdefault(run.partition, [[]])
        size = len(run.payload)
        if groups[-1] and sizes.get(run.partition, 0) + size > max_payload:
            groups.append([])
            sizes[run.partition] = 0
        groups[-1].append(run.payload)
        sizes[run.partition] = sizes.get(run.partition, 0) + size
    return {
        p: [batch_header(len(g)) + b"".join(g) for g in groups]
        for p, groups in by_partition.items()
    }


class JetStreamLog:
    """One log on JetStream (its streams must exist: `ensure_log`)."""

    def __init__(
        self, name: str, nc: NATS, settings: JetStreamSettings, js: JetStreamContext | None = None
    ) -> None:
        self.name = name
        self.nc = nc
        self.js = js or nc.jetstream(publish_async_max_pending=20_000)
        self.settings = settings
        self.partitions = settings.partitions
        self.names = Names(settings.prefix)

    @property
    def max_payload(self) -> int:
        return max(64 * 1024, self.nc.max_payload - PAYLOAD_HEADROOM)

    async def append(self, runs: list[Run], producer: str | None = None, seq: int = 0) -> None:
        payloads = split_payloads(runs, self.partitions, self.max_payload)
        base = f"{producer}:{seq}" if producer is not None else uuid.uuid4().hex
        sends: list[Awaitable[js_api.PubAck]] = []
        for p, chunks in payloads.items():
            subject = self.names.subject(self.name, p)
            for i, payload in enumerate(chunks):
                sends.append(publish(self.js, subject, payload, f"{base}:{p}:{i}"))
        await asyncio.gather(*sends)

    async def produced(self, producer: str) -> int | None:
        return None  # JetStream keeps message ids, not marks: replays rely on the window

    async def read(
        self, partition: int, offset: int, max_records: int = 10_000
    ) -> list[RecordBatch]:
        stream = self.names.stream(self.name, partition)
        state = (await self.js.stream_info(stream)).state
        seq = max(offset + 1, state.first_seq or 1)
        batches: list[RecordBatch] = []
        total = 0
        while seq <= (state.last_seq or 0) and total < max_records:
            try:
                msg = await self.js.get_msg(stream, seq, direct=True)
            except NotFoundError:  # removed (retention) since: continue at the oldest
                state = (await self.js.stream_info(stream)).state
                if seq >= (state.first_seq or 1):
                    seq += 1
                else:
                    seq = state.first_seq or 1
                continue
            batch = _batch(partition, seq, msg.data or b"")
            batches.append(batch)
            total += len(batch.records)
            seq += 1
        return batches

    async def end_offsets(self) -> list[int]:
        return [int(s.last_seq or 0) for s in await self._states()]

    async def start_offsets(self) -> list[int]:
        return [max(0, int(s.first_seq or 1) - 1) for s in await self._states()]

    async def _states(self) -> list[js_api.StreamState]:
        return [
            (await self.js.stream_info(self.names.stream(self.name, p))).state
            for p in range(self.partitions)
        ]

    def consumer(self, group: str, partition: int, stamped: bool = True) -> JetStreamConsumer:
        return JetStreamConsumer(self, group, partition, stamped)

    async def committed(self, group: str) -> dict[int, int]:
        result: dict[int, int] = {}
        for p in range(self.partitions):
            try:
                info = await self.js.consumer_info(
                    self.names.stream(self.name, p), consumer_name(group, p)
                )
            except NotFoundError:
                continue
            result[p] = _floor(info)
        return result

    async def groups(self) -> list[str]:
        """The consumer groups with a consumer on this log."""
        found: set[str] = set()
        for p in range(self.partitions):
            stream = self.names.stream(self.name, p)
            for info in await self.js.consumers_info(stream):
                name = info.name or ""
                suffix = f"-{p}"
                if name.endswith(suffix):
                    found.add(name[: -len(suffix)])
        return sorted(found)

    async def close(self) -> None:
        return None  # the connection belongs to whoever opened it


def consumer_name(group: str, partition: int) -> str:
    return f"{group}-{partition}"


def _floor(info: js_api.ConsumerInfo) -> int:
    """A consumer's committed offset: its ack floor, or where it was created to start (a
    consumer recreated at the floor reports 0 until it acknowledges something)."""
    acked = int(info.ack_floor.stream_seq or 0) if info.ack_floor else 0
    start = int(info.config.opt_start_seq or 1) - 1 if info.config else 0
    return max(acked, start)


def _batch(partition: int, seq: int, data: bytes, stamped: bool = True) -> RecordBatch:
    try:
        records = decode_batch(data, stamped)
    except msgspec.DecodeError:
        log.error("unreadable batch in partition %d at offset %d; skipped", partition, seq)
        records = []
    return RecordBatch(partition, seq - 1, records, 1)


class JetStreamConsumer:
    """A group's durable pull consumer on one partition's stream."""

    def __init__(self, log: JetStreamLog, group: str, partition: int, stamped: bool = True) -> None:
        self._log = log
        self._stamped = stamped
        self.group = group
        self.partition = partition
        self._stream = log.names.stream(log.name, partition)
        self._name = consumer_name(group, partition)
        self._sub: JetStreamContext.PullSubscription | None = None
        self._delivered: dict[int, Msg] = {}
        self._early: list[Msg] = []

    async def open(self) -> int:
        js = self._log.js
        floor = 0
        try:
            info = await js.consumer_info(self._stream, self._name)
            floor = _floor(info)
            await js.delete_consumer(self._stream, self._name)
        except NotFoundError:
            pass
        config = js_api.ConsumerConfig(
            durable_name=self._name,
            deliver_policy=js_api.DeliverPolicy.BY_START_SEQUENCE,
            opt_start_seq=floor + 1,
            ack_policy=js_api.AckPolicy.ALL,
            ack_wait=ACK_WAIT_S,
            max_ack_pending=100_000,
            filter_subject=self._log.names.subject(self._log.name, self.partition),
        )
        await js.add_consumer(self._stream, config)
        self._sub = await js.pull_subscribe_bind(self._name, self._stream)
        self._delivered.clear()
        self._early = []
        return floor

    async def wait(self, timeout: float) -> bool:
        if self._early:
            return True
        self._early = await self._pull(1, timeout)  # kept undecoded until `fetch`
        return bool(self._early)

    async def _pull(self, n: int, timeout: float) -> list[Msg]:
        if self._sub is None:
            raise RuntimeError("open() the consumer first")
        try:
            return await self._sub.fetch(n, timeout=timeout)
        except (TimeoutError, NatsTimeoutError):
            return []

    async def fetch(self, max_batches: int, timeout: float) -> list[RecordBatch]:
        msgs, self._early = self._early, []
        if len(msgs) < max_batches:
            msgs += await self._pull(max_batches - len(msgs), 0.01 if msgs else timeout)
        batches = []
        for msg in msgs:
            seq = msg.metadata.sequence.stream
            self._delivered[seq] = msg
            batches.append(_batch(self.partition, seq, msg.data, self._stamped))
        return batches

    async def commit(self, offset: int) -> None:
        msg = self._delivered.get(offset)
        if msg is None:
            raise ValueError(f"offset {offset} was not fetched by this consumer")
        await msg.ack_sync(timeout=PUBLISH_TIMEOUT_S)
        for seq in [s for s in self._delivered if s <= offset]:
            del self._delivered[seq]

    async def close(self) -> None:
        if self._sub is not None:
            with contextlib.suppress(NatsError):
                await self._sub.unsubscribe()
            self._sub = None
