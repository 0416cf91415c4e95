"""The log server and its asyncio client, as gateway workers use them: concurrent appends are
acknowledged once durable and readable, backpressure, unreachable or stopping servers fail
fast with `LogUnavailable`, the client reconnects, one server per log."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from headwater.log.base import LogBackpressure, LogError, LogUnavailable
from headwater.log.embedded import EmbeddedLogReader, LogClient, LogServer, ServerSettings
from headwater.log.embedded.protocol import encode_request, socket_path
from headwater.log.embedded.server import AlreadyRunning
from headwater.log.embedded.store import LogLayoutError
from headwater.log.records import Run, partition_for
from tests.log._helpers import all_ids, assert_dense, partition_ids, run_of

T = TypeVar("T")
PARTITIONS = 4


class RunningServer:
    """A `LogServer` serving in a background thread."""

    def __init__(self, root: Path, **kwargs: Any) -> None:
        kwargs.setdefault("partitions", PARTITIONS)
        kwargs.setdefault("min_free_disk_bytes", 0)
        self.server = LogServer(ServerSettings(root=str(root), **kwargs))
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        try:
            self.server.serve()
        except BaseException as exc:  # kept for the test to look at
            self.error = exc

    def stop(self) -> None:
        self.server.stop()
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as wake:
            wake.connect(self.server.path)  # wakes its poll, so it stops at once
        self.thread.join(10)
        assert not self.thread.is_alive(), "the log server did not stop"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "data" / "log" / "ingest"


@pytest.fixture
def server(root: Path) -> Iterator[RunningServer]:
    srv = RunningServer(root, max_group_bytes=4096)
    yield srv
    srv.stop()


def arun(coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


async def connect(root: Path, max_pending_bytes: int = 1 << 24) -> LogClient:
    client = LogClient(socket_path(root), max_pending_bytes, reconnect_every=0.05)
    client.start(asyncio.get_running_loop())
    assert await client.wait_connected(5)
    assert client.healthy
    return client


def runs_for(ids: list[str], pad: int = 0) -> list[Run]:
    """The runs of one request: its messages grouped by partition, as the gateway does."""
    by_partition: dict[int, list[str]] = {}
    for i in ids:
        by_partition.setdefault(partition_for(i, PARTITIONS), []).append(i)
    return [run_of(p, group, pad) for p, group in sorted(by_partition.items())]


async def append(client: LogClient, ids: list[str], pad: int = 0) -> None:
    runs = runs_for(ids, pad)
    await client.append(runs, sum(len(r.payload) for r in runs))


def test_concurrent_appends_are_all_durable_and_readable(root: Path, server: RunningServer) -> None:
    tasks, per_task = 40, 10

    async def main() -> None:
        client = await connect(root)
        reader = EmbeddedLogReader(root)

        async def worker(n: int) -> None:
            for i in range(per_task):
                ids = [f"t{n}-{i}-{j}" for j in range(3)]
                await append(client, ids)
                # acknowledged means readable at once, by anyone
                assert reader.end_offsets()[partition_for(ids[0], PARTITIONS)] > 0

        await asyncio.gather(*(worker(n) for n in range(tasks)))
        assert client.pending_bytes == 0
        client.close()
        reader.close()

    arun(main())
    counts = all_ids(root)
    assert len(counts) == tasks * per_task * 3
    assert set(counts.values()) == {1}
    reader = EmbeddedLogReader(root)
    assert_dense(reader)
    for p in range(PARTITIONS):
        ids = partition_ids(reader, p)
        assert all(partition_for(i, PARTITIONS) == p for i in ids)
        for n in range(tasks):  # each task's requests stay in order
            mine = [int(i.split("-")[1]) for i in ids if i.startswith(f"t{n}-")]
            assert mine == sorted(mine)
    reader.close()
    # requests in flight together shared commits
    assert server.server.appender.commits < tasks * per_task


def test_backpressure_while_others_are_in_flight(root: Path, server: RunningServer) -> None:
    one = sum(len(r.payload) for r in runs_for(["bp-0"]))

    async def main() -> None:
        tight = await connect(root, max_pending_bytes=3 * one)
        roomy = await connect(root)
        outcomes = await asyncio.gather(
            *(append(tight, [f"bp-{i}"]) for i in range(8)),
            *(append(roomy, [f"free-{i}"]) for i in range(8)),
            return_exceptions=True,
        )
        tight_out, roomy_out = outcomes[:8], outcomes[8:]
        assert tight_out[:3] == [None, None, None]
        for exc in tight_out[3:]:
            assert isinstance(exc, LogBackpressure)
            assert isinstance(exc, LogError)
            assert (exc.status, exc.code, exc.retry_after) == (429, "overloaded", 1)
        assert roomy_out == [None] * 8  # the other client is not held back
        assert tight.pending_bytes == 0
        await append(tight, ["bp-after"])  # room again once acknowledged
        tight.close()
        roomy.close()

    arun(main())
    counts = all_ids(root)
    assert {i for i in counts if i.startswith("bp-")} == {"bp-0", "bp-1", "bp-2", "bp-after"}
    assert len([i for i in counts if i.startswith("free-")]) == 8


def test_no_server_fails_at_once(root: Path) -> None:
    async def main() -> None:
        client = LogClient(socket_path(root), 1 << 20, reconnect_every=0.05)
        client.start(asyncio.get_running_loop())
        assert not await client.wait_connected(0.2)
        assert not client.healthy
        started = time.monotonic()
        with pytest.raises(LogUnavailable) as info:
            await append(client, ["nobody"])
        assert time.monotonic() - started < 0.1
        assert info.value.status == 503
        assert info.value.retry_after >= 1
        client.close()

    arun(main())


def test_server_side_failure_reaches_the_client(root: Path) -> None:
    srv = RunningServer(root, min_free_disk_bytes=1 << 62)  # the disk is always "full"

    async def main() -> None:
        client = await connect(root)
        with pytest.raises(LogUnavailable) as info:
            await append(client, ["full-0", "full-1"])
        err = info.value
        assert (err.status, err.code, err.retry_after) == (503, "log_unavailable", 30)
        assert "disk" in str(err)
        assert client.healthy  # the connection stays up
        assert client.pending_bytes == 0
        client.close()

    try:
        arun(main())
    finally:
        srv.stop()
    assert all_ids(root) == {}


def test_stopping_server_fails_pending_appends_and_client_reconnects(root: Path) -> None:
    srv = RunningServer(root, max_group_bytes=2048)
    acked: list[str] = []
    refused: list[str] = []

    async def main() -> None:
        client = await connect(root)

        async def worker(n: int) -> None:
            for i in range(10_000):
                ids = [f"s{n}-{i}-a", f"s{n}-{i}-b"]
                try:
                    await append(client, ids)
                except LogUnavailable:
                    refused.extend(ids)
                    return
                acked.extend(ids)

        workers = [asyncio.create_task(worker(n)) for n in range(20)]
        while len(acked) < 200:
            await asyncio.sleep(0.01)
        await asyncio.to_thread(srv.stop)
        # every pending append finished (acknowledged or refused), none hangs
        await asyncio.wait_for(asyncio.gather(*workers), 5)
        assert len(refused) == 2 * 20
        assert not client.healthy
        with pytest.raises(LogUnavailable):
            await append(client, ["while-down"])

        new = RunningServer(root)
        try:
            assert await client.wait_connected(5)
            await append(client, ["after-restart"])
        finally:
            client.close()
            await asyncio.to_thread(new.stop)

    arun(main())
    counts = all_ids(root)
    assert all(counts[i] == 1 for i in acked)
    assert counts["after-restart"] == 1
    assert "while-down" not in counts
    assert max(counts.values()) == 1  # refused ones may be stored, but never twice
    reader = EmbeddedLogReader(root)
    assert_dense(reader)
    reader.close()


def test_connection_dropped_with_appends_pending_fails_them(tmp_path: Path) -> None:
    """A server that goes away without answering: pending appends fail, they do not hang."""
    path = str(tmp_path / "fake.sock")

    async def main() -> None:
        received = asyncio.Event()

        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.read(1)
            received.set()
            await asyncio.sleep(0.1)
            w.close()

        fake = await asyncio.start_unix_server(handle, path)
        client = LogClient(path, 1 << 20, reconnect_every=0.05)
        client.start(asyncio.get_running_loop())
        assert await client.wait_connected(5)
        pending = [asyncio.create_task(append(client, [f"p{i}"])) for i in range(5)]
        await received.wait()
        assert client.pending_bytes > 0
        results = await asyncio.wait_for(asyncio.gather(*pending, return_exceptions=True), 5)
        assert all(isinstance(r, LogUnavailable) for r in results)
        assert client.pending_bytes == 0
        client.close()
        fake.close()
        await fake.wait_closed()

    arun(main())


def test_garbage_from_the_server_fails_pending_appends(tmp_path: Path) -> None:
    path = str(tmp_path / "fake.sock")

    async def main() -> None:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.read(1)
            w.write(b"\x05\x00\x00\x00not-msgpack")
            await w.drain()
            await asyncio.sleep(5)

        fake = await asyncio.start_unix_server(handle, path)
        client = LogClient(path, 1 << 20, reconnect_every=10)
        client.start(asyncio.get_running_loop())
        assert await client.wait_connected(5)
        with pytest.raises(LogUnavailable):
            await asyncio.wait_for(append(client, ["g"]), 5)
        client.close()
        fake.close()

    arun(main())


def test_a_server_that_never_answers_fails_appends_after_the_ack_timeout(tmp_path: Path) -> None:
    """Alive but stuck (say, a hung fsync): appends fail with 503 instead of hanging."""
    path = str(tmp_path / "fake.sock")

    async def main() -> None:
        async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            await r.read(1 << 16)
            await asyncio.sleep(30)  # reads the request, never acknowledges it

        fake = await asyncio.start_unix_server(handle, path)
        client = LogClient(path, 1 << 20, reconnect_every=0.05, ack_timeout=0.5)
        client.start(asyncio.get_running_loop())
        assert await client.wait_connected(5)
        started = asyncio.get_running_loop().time()
        with pytest.raises(LogUnavailable):
            await asyncio.wait_for(append(client, ["stuck"]), 5)
        assert asyncio.get_running_loop().time() - started < 2
        assert client.pending_bytes == 0
        client.close()
        fake.close()

    arun(main())


def test_a_second_server_on_the_same_log_is_refused(root: Path, server: RunningServer) -> None:
    with pytest.raises(AlreadyRunning, match="already writing the log"):
        LogServer(ServerSettings(root=str(root), partitions=PARTITIONS))

    async def main() -> None:  # the first one is undisturbed (socket and all)
        client = await connect(root)
        await append(client, ["still-served"])
        client.close()

    arun(main())
    assert all_ids(root) == {"still-served": 1}


def test_a_new_server_can_start_once_the_first_stopped(root: Path) -> None:
    first = RunningServer(root)
    first.stop()
    second = RunningServer(root)

    async def main() -> None:
        client = await connect(root)
        await append(client, ["second"])
        client.close()

    try:
        arun(main())
    finally:
        second.stop()
    assert all_ids(root) == {"second": 1}


def test_interval_fsync_server_acks_and_syncs_in_the_background(root: Path) -> None:
    srv = RunningServer(root, fsync="interval", fsync_interval_ms=50)

    async def main() -> None:
        client = await connect(root)
        await append(client, ["iv-0", "iv-1"])
        assert all_ids(root) == {"iv-0": 1, "iv-1": 1}
        deadline = time.monotonic() + 2
        while srv.server.appender.needs_sync:
            assert time.monotonic() < deadline, "the interval fsync never ran"
            await asyncio.sleep(0.02)
        client.close()

    try:
        arun(main())
    finally:
        srv.stop()


def test_server_runs_retention_and_keeps_the_log_bounded(root: Path) -> None:
    srv = RunningServer(root, segment_bytes=2048, retention_max_bytes=8192, retention_every_s=0.1)

    async def main() -> None:
        client = await connect(root)
        for i in range(100):
            await append(client, [f"r{i}"], pad=300)
        reader = EmbeddedLogReader(root)
        assert reader.size_bytes() > 8192
        deadline = time.monotonic() + 3
        while reader.size_bytes() > 8192:
            assert time.monotonic() < deadline, "the server never ran retention"
            await asyncio.sleep(0.05)
        assert sum(reader.start_offsets()) > 0
        assert sum(reader.end_offsets()) == 100
        assert_dense(reader)
        reader.close()
        client.close()

    try:
        arun(main())
    finally:
        srv.stop()


def test_a_request_for_a_nonexistent_partition_does_not_kill_the_server(
    root: Path, server: RunningServer
) -> None:
    bad = Run(PARTITIONS + 5, run_of(0, ["bad"]).payload, 1)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as raw:
        raw.connect(socket_path(root))
        raw.sendall(encode_request(1, [bad]))
        raw.settimeout(5)
        with contextlib.suppress(OSError):
            raw.recv(4096)  # an error reply, or the connection closed
    time.sleep(0.2)
    assert server.thread.is_alive(), f"the log server died: {server.error!r}"

    async def main() -> None:
        client = await connect(root)
        await append(client, ["good"])
        client.close()

    arun(main())
    assert all_ids(root) == {"good": 1}


def test_a_server_that_failed_to_open_the_log_releases_it(root: Path) -> None:
    RunningServer(root).stop()  # creates a log with PARTITIONS partitions
    with pytest.raises(LogLayoutError):
        LogServer(ServerSettings(root=str(root), partitions=PARTITIONS * 2))
    srv = RunningServer(root)  # actual: AlreadyRunning
    srv.stop()
