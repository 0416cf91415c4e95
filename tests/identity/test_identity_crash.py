"""Identity resolution survives SIGKILL: every acknowledged message comes out resolved, each
person is one profile, nobody shares one, nothing is journaled twice, and the journal rebuilds
the same graph."""

from __future__ import annotations

import random
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from headwater.identity.identifiers import Ident
from headwater.identity.sqlite_store import SqliteIdentityStore
from tests.support.fleet import wait_until
from tests.support.server import HeadwaterServer, basic

KEY = "wk_identity_crash"
CONFIG = f"""
log: {{partitions: 4}}
workspaces:
  - name: acme
    identity: {{enabled: true}}
    sources:
      - name: web
        write_keys: [{KEY}]
"""
USERS = 40
CLIENTS = 4
ACKED_BEFORE_KILL = 1500
LOAD_SECONDS = 15.0


def _load(
    server: HeadwaterServer, client: int, acked: list[dict[str, str]], stop: threading.Event
) -> None:
    rng = random.Random(client)
    with httpx.Client(base_url=server.url, timeout=5.0) as http:
        for n in range(1000):
            if stop.is_set():
                return
            batch = []
            for i in range(10):
                user, device = rng.randrange(USERS), rng.randrange(2)
                message = {"messageId": f"c{client}-{n}-{i}", "anonymousId": f"a-{user}-{device}"}
                if rng.random() < 0.3:
                    message |= {"type": "identify", "userId": f"u-{user}"}
                else:
                    message |= {"type": "track", "event": "Viewed"}
                batch.append(message)
            try:
                r = http.post(
                    "/v1/batch", json={"batch": batch}, headers={"Authorization": basic(KEY)}
                )
            except httpx.HTTPError:
                return
            if r.status_code == 200:
                acked.extend(batch)


def test_sigkill_mid_resolution_leaves_one_consistent_graph(tmp_path: Path) -> None:
    server = HeadwaterServer(tmp_path, CONFIG)
    server.start()
    acked: list[dict[str, str]] = []
    stop = threading.Event()
    threads = [
        threading.Thread(target=_load, args=(server, c, acked, stop)) for c in range(CLIENTS)
    ]
    for t in threads:
        t.start()
    deadline = time.monotonic() + LOAD_SECONDS
    while len(acked) < ACKED_BEFORE_KILL and time.monotonic() < deadline:
        time.sleep(0.05)
    server.kill()  # every process at once, the processor mid-unit
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) >= 200, "the load did not get going"
    server.start()
    try:
        wanted = {m["messageId"] for m in acked}
        assert wait_until(lambda: wanted <= server.by_message_id("events").keys(), 60), (
            "not every message came out"
        )
    finally:
        server.stop()
    stored = server.by_message_id("events")
    store = SqliteIdentityStore(server.data / "state" / "identity.db")
    try:
        for m in acked:  # each resolved; its profile, as merged since, holds its anonymous id
            profile = stored[m["messageId"]]["profileId"]
            owner = store.owner_of("acme", Ident("anonymous_id", m["anonymousId"]))
            assert store.current_profile("acme", str(profile)) == owner
        people: dict[str, set[str | None]] = {}
        for m in acked:
            if m["type"] == "identify":  # the user and this device are one profile
                owner = store.owner_of("acme", Ident("user_id", m["userId"]))
                assert owner == store.owner_of("acme", Ident("anonymous_id", m["anonymousId"]))
                people.setdefault(str(owner), set()).add(m["userId"])
        assert all(len(users) == 1 for users in people.values()), "two people share a profile"
        journaled = [entry.message_id for _ws, entry in store.journal()]
        assert len(journaled) == len(set(journaled)), "a message was journaled twice"
    finally:
        store.close()
    rebuilt = subprocess.run(
        [sys.executable, "-m", "headwater.cli.main", "identity", "rebuild",
         "--config", str(server.config_path), "--data", str(server.data)],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert rebuilt.returncode == 0, rebuilt.stdout + rebuilt.stderr
    assert "the same" in rebuilt.stdout
