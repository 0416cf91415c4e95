"""No acknowledged event is ever lost: SIGKILL every Headwater process under load, restart,
and find every acknowledged message in the log."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import httpx

from tests.support.server import WRITE_KEY, HeadwaterServer, basic

CLIENTS = 8
MAX_REQUESTS_PER_CLIENT = 2000
ACKED_BEFORE_KILL = 3000  # messages; the kill comes once this many are acknowledged
LOAD_SECONDS = 20.0  # at most


def _load(
    server: HeadwaterServer, run: str, client_no: int, acked: list[str], stop: threading.Event
) -> None:
    headers = {"Authorization": basic(WRITE_KEY)}
    with httpx.Client(base_url=server.url, timeout=5.0) as http:
        for n in range(MAX_REQUESTS_PER_CLIENT):
            if stop.is_set():
                return
            ids = [f"{run}-{client_no}-{n}-{i}" for i in range(20)]
            body = {
                "batch": [
                    {"type": "track", "event": "Load", "userId": f"u{i}", "messageId": mid}
                    for i, mid in enumerate(ids)
                ]
            }
            try:
                r = http.post("/v1/batch", json=body, headers=headers)
            except httpx.HTTPError:
                return  # the server is gone: whatever was not acknowledged may be lost
            if r.status_code == 200:
                acked.extend(ids)


def test_sigkill_under_load_loses_no_acknowledged_message(fresh_server: HeadwaterServer) -> None:
    fresh_server.workers = 2
    fresh_server.start()
    run = uuid.uuid4().hex[:8]
    acked: list[str] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=_load, args=(fresh_server, run, c, acked, stop))
        for c in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + LOAD_SECONDS
    while len(acked) < ACKED_BEFORE_KILL and time.monotonic() < deadline:
        time.sleep(0.05)
    fresh_server.kill()  # mid-load, no warning, every process
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acked) >= ACKED_BEFORE_KILL, "the load did not get going"

    fresh_server.start()  # recovery happens here
    stored = Counter(
        m["messageId"] for m in fresh_server.messages() if m["messageId"].startswith(run)
    )
    missing = [mid for mid in acked if mid not in stored]
    assert missing == [], f"{len(missing)} acknowledged messages lost, e.g. {missing[:3]}"
    assert all(n == 1 for n in stored.values())

    # and the restarted server keeps accepting
    with fresh_server.client() as http:
        r = http.post(
            "/v1/track",
            json={"userId": "u", "event": "After", "messageId": run},
            headers={"Authorization": basic(WRITE_KEY)},
        )
    assert r.status_code == 200


def test_killing_only_the_supervisor_leaves_no_orphans(fresh_server: HeadwaterServer) -> None:
    """`kill -9` of `headwater up` alone (say, the OOM killer): its workers and log server stop
    by themselves, so the port and the data directory are free for a restart."""
    fresh_server.workers = 2
    fresh_server.start()
    assert fresh_server.proc is not None
    children = _all_descendants(fresh_server.proc.pid)
    assert len(children) >= 3  # two gateway workers and the log server
    os.kill(fresh_server.proc.pid, signal.SIGKILL)
    fresh_server.proc.wait()
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and any(_alive(pid) for pid in children):
        time.sleep(0.2)
    assert not [pid for pid in children if _alive(pid)], "orphaned Headwater processes"
    fresh_server.start()  # same port, same data directory
    with fresh_server.client() as http:
        r = http.post(
            "/v1/track",
            json={"userId": "u", "event": "Back"},
            headers={"Authorization": basic(WRITE_KEY)},
        )
    assert r.status_code == 200


def _all_descendants(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            out.append(int(child))
            out.extend(_all_descendants(int(child)))
    return out


def _alive(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status
