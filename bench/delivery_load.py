"""The delivery benchmark's load (`delivery.py`): a raw asyncio HTTP/1.1 client, the gateway
requests of a paced run, the open-loop (`paced`) and closed-loop (`blast`) senders, and the
end-to-end latency of one destination's events (`latencies`, `percentile`)."""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httptools
from delivery_setup import SENT_AT, TEMPLATES
from gateway import AUTHORIZATION

# --- a raw HTTP/1.1 client ----------------------------------------------------------------------


class RawConnection(asyncio.Protocol):
    """One keep-alive connection; one request at a time. Records when the answer was complete
    (`time.time()`), so that a late wake-up of the awaiting task is not counted."""

    def __init__(self) -> None:
        self.parser = httptools.HttpResponseParser(self)
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future[tuple[int, float]] | None = None
        self.lost: Exception | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.lost = exc or ConnectionError("connection closed")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)

    def data_received(self, data: bytes) -> None:
        self.parser.feed_data(data)

    def on_message_complete(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result((self.parser.get_status_code(), time.time()))

    async def request(self, data: bytes) -> tuple[int, float]:
        if self.transport is None:
            raise self.lost or ConnectionError("not connected")
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(data)
        return await self.waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(port: int) -> RawConnection:
    _t, conn = await asyncio.get_running_loop().create_connection(RawConnection, "127.0.0.1", port)
    return conn


def post_bytes(path: str, body: bytes, headers: str = "") -> bytes:
    return (
        f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-length: {len(body)}\r\n{headers}\r\n"
    ).encode() + body


# --- the gateway's requests ---------------------------------------------------------------------


class Requests:
    """`POST /v1/batch` requests of `size` track messages. A messageId says which request it
    came in: `<8 random hex>-<run salt>-4<index in request>-a<3 random hex>-<request index>`."""

    def __init__(self, size: int, salt: int) -> None:
        self.size = size
        self.salt = salt
        self.rng = random.Random(salt)
        self.head = (
            "POST /v1/batch HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: text/plain\r\n"
            f"authorization: {AUTHORIZATION}\r\n"
        )

    def http(self, i: int) -> bytes:
        rng = self.rng
        parts = []
        for j in range(self.size):
            before, after = TEMPLATES[(i * self.size + j) % len(TEMPLATES)]
            r = rng.getrandbits(44)
            mid = f"{r >> 12:08x}-{self.salt:04x}-4{j:03x}-a{r & 0xFFF:03x}-{i:012x}"
            parts.append(before + mid.encode() + after)
        body = b'{"batch":[' + b",".join(parts) + b'],"sentAt":"' + SENT_AT.encode() + b'"}'
        return (self.head + f"content-length: {len(body)}\r\n\r\n").encode() + body

    def request_of(self, message_id: str) -> int | None:
        """The request index of one of this run's messageIds (None: not one of them)."""
        if len(message_id) != 36 or message_id[9:13] != f"{self.salt:04x}":
            return None
        return int(message_id[24:], 16)


@dataclass
class Sent:
    """What the load generator saw of each request (times are `time.time()` seconds)."""

    sent: list[float] = field(default_factory=list)
    acked: list[float] = field(default_factory=list)
    status: list[int] = field(default_factory=list)
    behind_max_s: float = 0.0  # how late the open loop ever was with a request
    wall_s: float = 0.0

    def extend(self, n: int) -> None:
        self.sent += [0.0] * n
        self.acked += [0.0] * n
        self.status += [0] * n


# --- sending ------------------------------------------------------------------------------------


async def paced(
    port: int, reqs: Requests, count: int, rate_eps: float, connections: int = 32
) -> Sent:
    """Open loop: request i is due at t0 + i / (rate / size), sent on a free connection (the
    lateness is recorded), bounded by the schedule plus 30 s."""
    loop = asyncio.get_running_loop()
    out = Sent()
    out.extend(count)
    pool: asyncio.Queue[RawConnection] = asyncio.Queue()
    conns = [await connect(port) for _ in range(connections)]
    for c in conns:
        pool.put_nowait(c)
    interval = reqs.size / rate_eps
    tasks: set[asyncio.Task[None]] = set()

    async def one(i: int, conn: RawConnection, data: bytes) -> None:
        out.sent[i] = time.time()
        try:
            out.status[i], out.acked[i] = await conn.request(data)
        except (ConnectionError, OSError):
            out.status[i] = -1
            conn = await connect(port)
            conns.append(conn)
        pool.put_nowait(conn)

    t0 = loop.time()
    limit = t0 + count * interval + 30.0
    try:
        for i in range(count):
            data = reqs.http(i)
            due = t0 + i * interval
            now = loop.time()
            if due > now:
                await asyncio.sleep(due - now)
            try:  # every connection busy: wait for one, not past the limit
                conn = await asyncio.wait_for(pool.get(), max(0.01, limit - loop.time()))
            except TimeoutError:
                break
            now = loop.time()
            out.behind_max_s = max(out.behind_max_s, now - due)
            task = loop.create_task(one(i, conn, data))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
        if tasks:
            await asyncio.wait(tasks, timeout=30.0)
    finally:
        for c in conns:
            c.close()
    out.wall_s = loop.time() - t0
    return out


async def blast(port: int, reqs: Requests, count: int, max_s: float, connections: int) -> Sent:
    """Closed loop: `connections` connections sending back to back, `count` requests or
    `max_s` seconds, whichever comes first."""
    out = Sent()
    out.extend(count)
    nxt = 0
    t0 = time.perf_counter()
    conns = [await connect(port) for _ in range(connections)]

    async def worker(conn: RawConnection) -> None:
        nonlocal nxt
        while nxt < count and time.perf_counter() - t0 < max_s:
            i = nxt
            nxt += 1
            data = reqs.http(i)
            out.sent[i] = time.time()
            out.status[i], out.acked[i] = await conn.request(data)

    try:
        await asyncio.gather(*(worker(c) for c in conns))
    finally:
        for c in conns:
            c.close()
    out.wall_s = time.perf_counter() - t0
    done = nxt
    del out.sent[done:], out.acked[done:], out.status[done:]
    return out


# --- end-to-end latency -------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(len(values) * q))]


@dataclass
class LatencyRun:
    """The end-to-end latency of one destination's events in one paced run."""

    label: str
    rate_eps: float
    events: int  # measured events acknowledged by the gateway
    arrived: int = 0
    missing: int = 0
    not_acked: int = 0
    p50_ms: float = float("nan")
    p95_ms: float = float("nan")
    p99_ms: float = float("nan")
    max_ms: float = float("nan")
    ack_p50_ms: float = float("nan")
    ack_p99_ms: float = float("nan")
    behind_max_s: float = 0.0
    received: dict[str, Any] = field(default_factory=dict)
    other: dict[str, Any] = field(default_factory=dict)  # the other destination's receiver
    cpu_cores: dict[str, float] = field(default_factory=dict)  # per process, while sending
    problem: str = ""

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def latencies(
    label: str,
    reqs: Requests,
    sent: Sent,
    arrivals: dict[str, float],
    first: int,
    rate_eps: float,
) -> LatencyRun:
    """Per event of the requests from index `first` on: arrival (ms) - its request's ack."""
    measured = range(first, len(sent.status))
    ok = [i for i in measured if sent.status[i] == 200]
    run = LatencyRun(label, rate_eps, len(ok) * reqs.size)
    run.not_acked = (len(measured) - len(ok)) * reqs.size
    run.behind_max_s = sent.behind_max_s
    acks = [(sent.acked[i] - sent.sent[i]) * 1000 for i in ok]
    run.ack_p50_ms, run.ack_p99_ms = percentile(acks, 0.5), percentile(acks, 0.99)
    wanted = set(ok)
    e2e = []
    for mid, at in arrivals.items():
        i = reqs.request_of(mid)
        if i is not None and i in wanted:
            e2e.append(at - sent.acked[i] * 1000)
    run.arrived = len(e2e)
    run.missing = run.events - run.arrived
    run.p50_ms, run.p95_ms = percentile(e2e, 0.5), percentile(e2e, 0.95)
    run.p99_ms, run.max_ms = percentile(e2e, 0.99), max(e2e, default=float("nan"))
    if run.not_acked:
        run.problem = f"{run.not_acked:,} measured events not acknowledged with 200"
    elif run.missing:
        run.problem = f"{run.missing:,} acknowledged events never reached the receiver"
    return run
