"""No acknowledged event is ever lost: SIGKILL every Headwater process under load, restart,
and find every acknowledged message in the log."""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter

import httpx

from tests.support.server import WRITE_KEY, HeadwaterServer, basic

CLIENTS = 8
MAX_REQUESTS_PER_CLIENT = 2000
LOAD_SECONDS = 3.0


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
    time.sleep(LOAD_SECONDS)
    fresh_server.kill()  # mid-load, no warning, every process
    stop.set()
    for t in threads:
        t.join(30)
    assert len(acked) > 1000, "the load did not get going"

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
