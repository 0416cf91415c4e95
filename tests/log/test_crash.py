"""Crashes: writers killed with SIGKILL mid-run. Every acknowledged record is in the log
exactly once afterwards, nothing is stored twice, and offsets stay dense."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import msgspec
import pytest

from headwater.log.base import LogUnavailable
from headwater.log.embedded import EmbeddedLogReader, LogClient, SegmentAppender, ServerSettings
from headwater.log.embedded.protocol import socket_path
from headwater.log.records import partition_for
from tests.log._helpers import all_ids, assert_dense, partition_ids, run_of, settings

pytestmark = pytest.mark.slow

PARTITIONS = 4

# Appends batches of three records (ids "<tag>-<batch>-<n>") spread over the partitions, and
# prints each batch number once `commit` has returned, i.e. once it is acknowledged.
APPENDER = """
import sys
from pathlib import Path
from headwater.log.embedded import SegmentAppender
from headwater.log.embedded.appender import AppendSettings
from headwater.log.records import partition_for
from tests.log._helpers import run_of

root, tag, first = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
appender = SegmentAppender(
    root, AppendSettings(partitions=4, segment_bytes=8192, min_free_disk_bytes=0)
)
for batch in range(first, first + 5000):
    ids = [f"{tag}-{batch}-{n}" for n in range(3)]
    groups = [[run_of(partition_for(i, 4), [i], pad=40)] for i in ids]
    appender.commit(groups)
    print(batch, flush=True)
"""


class Child:
    """A child process whose acknowledged batch numbers are collected from its stdout."""

    def __init__(self, args: list[str], cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, *args],
            cwd=cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.acked: list[int] = []
        self._reader = threading.Thread(target=self._collect, daemon=True)
        self._reader.start()

    def _collect(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.endswith(b"\n"):  # a line cut by the kill was not acknowledged
                self.acked.append(int(line))

    def wait_for(self, count: int, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while len(self.acked) < count:
            assert self.proc.poll() is None, "the writer exited early"
            assert time.monotonic() < deadline, "the writer is too slow"
            time.sleep(0.005)

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        self._reader.join(10)


@pytest.fixture
def children() -> Iterator[list[Child]]:
    started: list[Child] = []
    yield started
    for child in started:
        child.kill()


def _check(root: Path, acked: dict[str, list[int]]) -> None:
    """Every acknowledged batch is stored exactly once; nothing is stored twice."""
    reopened = SegmentAppender(root, settings(partitions=PARTITIONS))  # recovers, like a restart
    reopened.close()
    counts = all_ids(root)
    for tag, batches in acked.items():
        for batch in batches:
            for n in range(3):
                assert counts[f"{tag}-{batch}-{n}"] == 1, f"lost {tag}-{batch}-{n}"
    assert max(counts.values(), default=1) == 1
    reader = EmbeddedLogReader(root)
    assert_dense(reader)
    for p in range(PARTITIONS):
        assert all(partition_for(i, PARTITIONS) == p for i in partition_ids(reader, p))
    reader.close()


def test_killed_appenders_lose_nothing_acknowledged(tmp_path: Path, children: list[Child]) -> None:
    """Two appender processes share one log; both are killed mid-run, three times over."""
    root = tmp_path / "log"
    repo = Path(__file__).resolve().parents[2]
    acked: dict[str, list[int]] = {"a": [], "b": []}
    for round_ in range(3):
        first = round_ * 5000
        pair = [Child(["-c", APPENDER, str(root), tag, str(first)], cwd=repo) for tag in ("a", "b")]
        children.extend(pair)
        pair[0].wait_for(60 + 20 * round_)
        pair[1].wait_for(40)
        for child in pair:
            child.kill()
        acked["a"].extend(pair[0].acked)
        acked["b"].extend(pair[1].acked)
        _check(root, acked)
    assert len(acked["a"]) >= 3 * 60


def _start_server(root: Path, repo: Path, log: Path) -> subprocess.Popen[bytes]:
    payload = msgspec.json.encode(
        ServerSettings(
            root=str(root),
            partitions=PARTITIONS,
            segment_bytes=16384,
            max_group_bytes=4096,
            min_free_disk_bytes=0,
        )
    ).decode()
    with open(log, "ab") as err:
        return subprocess.Popen(
            [sys.executable, "-m", "headwater.log.embedded", payload],
            cwd=repo,
            stdout=subprocess.DEVNULL,
            stderr=err,
        )


def test_killed_log_server_loses_nothing_acknowledged(tmp_path: Path) -> None:
    root = tmp_path / "data" / "log" / "ingest"
    repo = Path(__file__).resolve().parents[2]
    log = tmp_path / "logd.err"
    acked: list[str] = []
    refused: list[str] = []
    procs = [_start_server(root, repo, log)]

    async def main() -> None:
        client = LogClient(socket_path(root), 1 << 24, reconnect_every=0.05)
        client.start(asyncio.get_running_loop())
        assert await client.wait_connected(10), log.read_text()

        async def worker(n: int, first: int) -> None:
            for i in range(first, first + 100_000):
                ids = [f"w{n}-{i}-{j}" for j in range(3)]
                by_p: dict[int, list[str]] = {}
                for x in ids:
                    by_p.setdefault(partition_for(x, PARTITIONS), []).append(x)
                runs = [run_of(p, group, pad=40) for p, group in by_p.items()]
                try:
                    await client.append(runs, sum(len(r.payload) for r in runs))
                except LogUnavailable:
                    refused.extend(ids)
                    return
                acked.extend(ids)

        for round_ in range(2):
            workers = [asyncio.create_task(worker(n, round_ * 100_000)) for n in range(16)]
            target = len(acked) + 600
            while len(acked) < target:
                await asyncio.sleep(0.005)
            os.kill(procs[-1].pid, signal.SIGKILL)
            # every append in flight fails promptly; none hangs
            await asyncio.wait_for(asyncio.gather(*workers), 5)
            procs[-1].wait(10)
            procs.append(_start_server(root, repo, log))  # recovers at open
            assert await client.wait_connected(10), log.read_text()
        client.close()

    try:
        asyncio.run(asyncio.wait_for(main(), 40))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(10)
            if proc.poll() is None:
                proc.kill()
                proc.wait()

    assert len(refused) == 2 * 16 * 3
    counts = all_ids(root)
    missing = [i for i in acked if counts[i] != 1]
    assert not missing, f"{len(missing)} acknowledged records lost, e.g. {missing[:3]}"
    assert max(counts.values()) == 1
    reader = EmbeddedLogReader(root)
    assert_dense(reader)
    assert sum(reader.end_offsets()) == sum(counts.values())
    reader.close()
