"""Through `headwater up`: events from two devices and one sign-up land on one profile, and
the `events` log is partitioned by it."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from headwater.log.records import partition_for
from tests.support.fleet import wait_until
from tests.support.server import ADMIN_TOKEN, HeadwaterServer, basic

KEY = "wk_identity_1"
TOKEN = "pat_acme_1"
CONFIG = f"""
log: {{partitions: 4}}
workspaces:
  - name: acme
    access_tokens: [{TOKEN}]
    identity: {{enabled: true}}
    sources:
      - name: web
        write_keys: [{KEY}]
"""


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HeadwaterServer]:
    s = HeadwaterServer(tmp_path, CONFIG)
    s.start()
    yield s
    s.stop()


def events(server: HeadwaterServer) -> dict[str, dict[str, Any]]:
    """What the processor wrote, by messageId (`__partition`: where)."""
    return server.by_message_id("events")


def test_two_devices_and_a_sign_up_make_one_profile(server: HeadwaterServer) -> None:
    batch = [
        {"type": "page", "anonymousId": "laptop", "messageId": "m1", "name": "Home"},
        {"type": "screen", "anonymousId": "phone", "messageId": "m2", "name": "Feed"},
        {
            "type": "identify",
            "anonymousId": "laptop",
            "userId": "ada",
            "messageId": "m3",
            "traits": {"email": "ada@example.com", "plan": "free"},
        },
        {"type": "identify", "anonymousId": "phone", "userId": "ada", "messageId": "m4"},
        {"type": "track", "userId": "ada", "event": "Order Completed", "messageId": "m5"},
        {"type": "track", "anonymousId": "someone-else", "event": "Viewed", "messageId": "m6"},
    ]
    with server.client() as http:
        for message in batch:  # one request each, in order: resolution follows arrival
            r = http.post(
                "/v1/batch", json={"batch": [message]}, headers={"Authorization": basic(KEY)}
            )
            assert r.status_code == 200
            assert wait_until(lambda n=message["messageId"]: _has(server, n), 20)
    stored = {mid: (m["__partition"], m) for mid, m in events(server).items()}
    ada = stored["m5"][1]["profileId"]
    assert ada.startswith("use_")
    assert {stored[m][1]["profileId"] for m in ("m3", "m4", "m5")} == {ada}
    assert stored["m6"][1]["profileId"] != ada
    for partition, message in stored.values():
        assert partition == partition_for(message["profileId"], 4)

    # the Profile API and the CLI show one profile with both devices' histories
    base = "/v1/spaces/acme/collections/users/profiles"
    auth = {"Authorization": basic(TOKEN)}
    with server.client() as http:
        traits = http.get(f"{base}/email:ada@example.com/traits", headers=auth)
        assert traits.status_code == 200, traits.text
        assert traits.json()["traits"] == {"email": "ada@example.com", "plan": "free"}
        history = http.get(f"{base}/anonymous_id:phone/events", params={"limit": 100}, headers=auth)
        assert {e["messageId"] for e in history.json()["data"]} == {"m1", "m2", "m3", "m4", "m5"}
        ids = http.get(f"{base}/user_id:ada/external_ids", headers=auth).json()["data"]
        assert {(x["type"], x["id"]) for x in ids} == {
            ("anonymous_id", "laptop"),
            ("anonymous_id", "phone"),
            ("user_id", "ada"),
            ("email", "ada@example.com"),
        }
        refused = http.get(f"{base}/user_id:ada/traits", headers={"Authorization": basic("x")})
        assert refused.status_code == 401
        assert refused.json()["error"]["code"] == "authentication_error"
    shown = subprocess.run(
        [sys.executable, "-m", "headwater.cli.main", "profile", "user_id:ada", "--json",
         "--config", str(server.config_path), "--data", str(server.data)],
        capture_output=True, check=True, text=True,
    )  # fmt: skip
    answer = json.loads(shown.stdout)
    assert answer["profile_id"] == ada
    assert answer["traits"]["traits"]["plan"] == "free"


def _has(server: HeadwaterServer, message_id: str) -> bool:
    return message_id in events(server)


def test_a_source_made_later_through_the_admin_api_is_resolved(server: HeadwaterServer) -> None:
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with server.client() as http:
        made = http.post(
            "/admin/v1/sources",
            json={"workspace": "acme", "name": "ios", "write_keys": ["wk_identity_ios"]},
            headers=admin,
        )
        assert made.status_code in (200, 201), made.text
        sent = {"type": "track", "userId": "grace", "event": "Opened", "messageId": "ios-1"}
        r = http.post(
            "/v1/batch", json={"batch": [sent]}, headers={"Authorization": basic("wk_identity_ios")}
        )
        assert r.status_code == 200
    assert wait_until(lambda: _has(server, "ios-1"), 20)
    stored = events(server)["ios-1"]
    assert stored["profileId"].startswith("use_")  # the processor followed the control plane


PLAIN = f"""
log: {{partitions: 4}}
workspaces:
  - name: acme
    sources:
      - name: web
        write_keys: [{KEY}]
"""


def test_identity_turned_on_through_the_admin_api_applies_without_a_restart(
    tmp_path: Path,
) -> None:
    server = HeadwaterServer(tmp_path, PLAIN)
    server.start()
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    try:
        with server.client() as http:
            url = "/admin/v1/workspaces/acme/identity"
            assert http.get(url, headers=admin).json()["identity"]["enabled"] is False
            bad = http.put(url, json={"enabled": True, "max_merges": 0}, headers=admin)
            assert bad.status_code == 400 and bad.json()["code"] == "validation_error"
            before = {"type": "track", "userId": "ada", "event": "A", "messageId": "before"}
            r = http.post(
                "/v1/batch", json={"batch": [before]}, headers={"Authorization": basic(KEY)}
            )
            assert r.status_code == 200
            assert wait_until(lambda: _has(server, "before"), 20)
            on = http.put(
                url, json={"enabled": True, "types": {"email": {"limit": 2}}}, headers=admin
            )
            assert on.status_code == 200, on.text
            assert on.json()["identity"]["types"]["email"]["limit"] == 2
            assert http.get(url, headers=admin).json()["identity"]["enabled"] is True
            # the processor reads the control plane every 2 s: send until a message comes out
            # resolved (bounded: 40 messages, 20 s)
            resolved = None
            for n in range(40):
                m = {"type": "track", "userId": "ada", "event": "B", "messageId": f"after-{n}"}
                r = http.post(
                    "/v1/batch", json={"batch": [m]}, headers={"Authorization": basic(KEY)}
                )
                assert r.status_code == 200
                assert wait_until(lambda n=n: _has(server, f"after-{n}"), 20)
                found = events(server)[f"after-{n}"]
                if "profileId" in found:
                    resolved = found
                    break
                time.sleep(0.5)
    finally:
        server.stop()
    assert resolved is not None and resolved["profileId"].startswith("use_")
    stored = events(server)
    assert "profileId" not in stored["before"]  # identity was off
