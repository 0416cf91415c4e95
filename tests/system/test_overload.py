"""When the log cannot take more, clients are told to retry later and nothing is half-stored."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

from tests.support.server import CONFIG, WRITE_KEY, HeadwaterServer, basic


def _batch(run: str, n: int, size: int = 200) -> tuple[list[str], dict[str, object]]:
    ids = [f"{run}-{n}-{i}" for i in range(100)]
    body = {
        "batch": [
            {
                "type": "track",
                "event": "E",
                "userId": "u",
                "messageId": mid,
                "properties": {"pad": "x" * size},
            }
            for mid in ids
        ]
    }
    return ids, body


def test_writer_behind_gets_429_with_retry_after(tmp_path: Path) -> None:
    server = HeadwaterServer(tmp_path, config=CONFIG + "log: {max_pending_bytes: 64KB}\n")
    server.start()
    try:
        run = uuid.uuid4().hex[:8]
        statuses: Counter[int] = Counter()
        acked: list[str] = []
        refused: list[httpx.Response] = []
        lock = threading.Lock()

        def client(c: int) -> None:
            with httpx.Client(base_url=server.url, timeout=10) as http:
                for n in range(30):
                    ids, body = _batch(run, c * 1000 + n)
                    r = http.post(
                        "/v1/batch", json=body, headers={"Authorization": basic(WRITE_KEY)}
                    )
                    with lock:
                        statuses[r.status_code] += 1
                        if r.status_code == 200:
                            acked.extend(ids)
                        else:
                            refused.append(r)

        threads = [threading.Thread(target=client, args=(c,)) for c in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        assert set(statuses) <= {200, 429}, statuses
        assert statuses[429] > 0, "a 64 KB in-flight bound under 16 concurrent 30 KB batches"
        assert statuses[200] > 0
        for r in refused:
            assert r.headers["retry-after"] == "1"
            assert r.json()["code"] == "overloaded" and r.json()["message"]
        stored = Counter(
            m["messageId"] for m in server.messages() if m["messageId"].startswith(run)
        )
        assert set(stored) == set(acked), "a refused request must store nothing"
        assert all(n == 1 for n in stored.values())
    finally:
        server.stop()


def test_disk_below_floor_gets_503_and_stores_nothing(tmp_path: Path) -> None:
    server = HeadwaterServer(tmp_path, config=CONFIG + "log: {min_free_disk: 1000TB}\n")
    server.start()
    try:
        run = uuid.uuid4().hex[:8]
        ids, body = _batch(run, 0)
        with server.client() as http:
            r = http.post("/v1/batch", json=body, headers={"Authorization": basic(WRITE_KEY)})
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) > 0
        assert r.json()["code"] == "log_unavailable"
        assert "disk" in r.json()["message"]
        assert not [m for m in server.messages() if m["messageId"] in ids]
    finally:
        server.stop()


def test_log_server_down_gets_503_then_recovers(fresh_server: HeadwaterServer) -> None:
    fresh_server.start()
    run = uuid.uuid4().hex[:8]
    logd = [pid for pid in _children(fresh_server) if b"headwater.log.embedded" in _cmdline(pid)]
    assert len(logd) == 1
    os.kill(logd[0], signal.SIGKILL)
    saw_503 = False
    deadline = time.monotonic() + 20
    with fresh_server.client() as http:
        while time.monotonic() < deadline:
            r = http.post(
                "/v1/track",
                json={"userId": "u", "event": "E", "messageId": run},
                headers={"Authorization": basic(WRITE_KEY)},
            )
            if r.status_code == 503:
                saw_503 = True
                assert r.headers.get("retry-after")
                assert r.json()["code"] == "log_unavailable"
            elif r.status_code == 200:
                break
            time.sleep(0.05)
    assert saw_503, "while the log server is down, requests are refused with 503"
    assert r.status_code == 200, "the log server is restarted and the gateway reconnects"
    assert [m for m in fresh_server.messages() if m["messageId"] == run]


def _children(server: HeadwaterServer) -> list[int]:
    assert server.proc is not None
    text = Path(f"/proc/{server.proc.pid}/task/{server.proc.pid}/children").read_text()
    return [int(p) for p in text.split()]


def _cmdline(pid: int) -> bytes:
    return Path(f"/proc/{pid}/cmdline").read_bytes()


def test_gateway_memory_stays_bounded_under_overload(fresh_server: HeadwaterServer) -> None:
    """More clients at once than a worker takes requests (`max_concurrent_requests`, 100),
    each sending batches near the 500 KB limit as fast as it can: the gateway answers (200, or
    429 when the log is behind), its workers stay under 200 MB and the processor behind them
    (deduplicating, with 10k-message batches to read) under 288 MB (of which numpy, which holds
    the dedupe fingerprints, takes 16 MB as soon as it is imported)."""
    fresh_server.workers = 1
    fresh_server.start()
    run = uuid.uuid4().hex[:8]
    statuses: Counter[int] = Counter()
    lock = threading.Lock()
    stop = threading.Event()
    peak = processor_peak = 0.0

    def client(c: int) -> None:
        with httpx.Client(base_url=fresh_server.url, timeout=30) as http:
            for n in range(12):
                if stop.is_set():
                    return
                _ids, body = _batch(run, c * 1000 + n, size=4000)  # ~420 KB
                r = http.post("/v1/batch", json=body, headers={"Authorization": basic(WRITE_KEY)})
                with lock:
                    statuses[r.status_code] += 1

    threads = [threading.Thread(target=client, args=(c,)) for c in range(160)]
    for t in threads:
        t.start()
    deadline = time.monotonic() + 12
    while time.monotonic() < deadline and any(t.is_alive() for t in threads):
        peak = max(peak, _largest_worker_rss_mb(fresh_server))
        processor_peak = max(processor_peak, _largest_worker_rss_mb(fresh_server, b"processor"))
        time.sleep(0.1)
    stop.set()
    for t in threads:
        t.join(60)
    assert statuses[200] > 0
    assert set(statuses) <= {200, 429}, statuses
    assert 0 < peak < 200, f"a gateway worker reached {peak:.0f} MB"
    assert 0 < processor_peak < 288, f"the processor reached {processor_peak:.0f} MB"


def _largest_worker_rss_mb(server: HeadwaterServer, role: bytes = b"") -> float:
    """The largest RSS among `up`'s children: gateway workers, or those whose command line
    names `role` (the processor)."""
    largest = 0.0
    for pid in _children(server):
        cmdline = _cmdline(pid)
        if b"headwater.log.embedded" in cmdline:
            continue
        if (role and role not in cmdline) or (not role and b"processor" in cmdline):
            continue
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                largest = max(largest, int(line.split()[1]) / 1024)
    return largest
