"""Accounting adds up: a randomized mix of good, bad, duplicate, unplanned and violating
messages through a real `headwater up`, and the delivery overview of every source matches a
model of what should have happened to each message, reason by reason:

    received = stored + duplicate + blocked (by reason) + failed in processing

and failed on ingest counts every message the gateway refused, by reason.
"""

from __future__ import annotations

import random
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.support.server import ADMIN_TOKEN, HeadwaterServer, basic

WEB_KEY = "wk_acct_web"
APP_KEY = "wk_acct_app"
CONFIG = f"""
log: {{partitions: 4}}
workspaces:
  - name: acct
    tracking_plans:
      - name: shop
        rules:
          track:
            Order Completed:
              properties:
                properties:
                  type: object
                  properties:
                    revenue: {{type: number}}
                  required: [revenue]
            Product Viewed: {{}}
    sources:
      - name: web
        write_keys: [{WEB_KEY}]
        tracking_plan: shop
        enforcement: {{unplanned_events: block, violations: block, forward_blocked_to: quarantine}}
      - name: app
        write_keys: [{APP_KEY}]
      - name: quarantine
        write_keys: [wk_acct_quarantine]
"""
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}

# What the model expects per source: (stage, outcome, reason) -> count.
Expected = dict[str, Counter[tuple[str, str, str]]]


@pytest.fixture
def server(tmp_path: Path) -> Iterator[HeadwaterServer]:
    srv = HeadwaterServer(tmp_path, CONFIG)
    srv.start()
    yield srv
    srv.stop()


def _message(rng: random.Random, kind: str, mid: str) -> dict[str, Any]:
    msg: dict[str, Any] = {"type": "track", "userId": f"u{rng.randrange(50)}", "messageId": mid}
    match kind:
        case "planned":
            msg |= {"event": "Order Completed", "properties": {"revenue": rng.random() * 100}}
        case "viewed":
            msg |= {"event": "Product Viewed", "properties": {"sku": "s-1"}}
        case "unplanned":
            msg |= {"event": f"Unplanned {rng.randrange(3)}"}
        case "violation":
            msg |= {"event": "Order Completed", "properties": {"revenue": "lots"}}
        case "no_user":
            del msg["userId"]
            msg["event"] = "Order Completed"
        case "event_not_string":
            msg["event"] = 42
    return msg


def _send(
    client: httpx.Client, key: str, batch: list[dict[str, Any]], single: bool
) -> dict[str, Any]:
    auth = {"Authorization": basic(key)}
    if single:
        msg = dict(batch[0])
        path = f"/v1/{msg.pop('type')}"
        r = client.post(path, json=msg, headers=auth)
    else:
        r = client.post("/v1/batch", json={"batch": batch}, headers=auth)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _run(rng: random.Random, client: httpx.Client, requests: int) -> Expected:
    """Send `requests` random requests; return what the overview must show per source."""
    expected: Expected = {s: Counter() for s in ("web", "app", "quarantine")}
    accepted: list[tuple[str, dict[str, Any]]] = []  # (source, message) stored so far
    accepted_ids: set[str] = set()
    kinds = ["planned", "viewed", "unplanned", "violation", "no_user", "event_not_string"]
    for _ in range(requests):
        source = rng.choice(["web", "app"])
        single = rng.random() < 0.3
        batch: list[dict[str, Any]] = []
        for _ in range(1 if single else rng.randint(1, 20)):
            if accepted and rng.random() < 0.1:  # a client retry: an id already stored
                _src, earlier = rng.choice(accepted)
                batch.append(dict(earlier))
            else:
                batch.append(_message(rng, rng.choice(kinds), f"acct-{uuid.uuid4()}"))
        body = _send(client, WEB_KEY if source == "web" else APP_KEY, batch, single)
        dropped = {d["index"]: d["code"] for d in body.get("dropped", [])}
        seen_here: set[str] = set()
        for i, msg in enumerate(batch):
            exp = expected[source]
            if i in dropped:
                exp[("ingest", "failed", dropped[i])] += 1
                continue
            exp[("ingest", "received", "")] += 1
            mid = msg["messageId"]
            if mid in seen_here or mid in accepted_ids:
                exp[("processor", "duplicate", "message_id_seen")] += 1
                continue
            seen_here.add(mid)
            accepted.append((source, msg))
            accepted_ids.add(mid)
            outcome = _planned_outcome(source, msg)
            exp[("processor", *outcome)] += 1
            if outcome[0] == "blocked":  # forwarded to quarantine, which stores it
                expected["quarantine"][("ingest", "received", "forwarded")] += 1
                expected["quarantine"][("processor", "processed", "")] += 1
    return expected


def _planned_outcome(source: str, msg: dict[str, Any]) -> tuple[str, str]:
    if source != "web":
        return ("processed", "")
    if msg["event"] not in ("Order Completed", "Product Viewed"):
        return ("blocked", "unplanned_event")
    if msg["event"] == "Order Completed" and not isinstance(
        msg.get("properties", {}).get("revenue"), int | float
    ):
        return ("blocked", "violation")
    return ("processed", "")


def _overview(client: httpx.Client, source: str) -> dict[str, Any]:
    r = client.get(
        f"/admin/v1/sources/acct/{source}/overview",
        params={"granularity": "hour"},
        headers=ADMIN,
    )
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _totals(overview: dict[str, Any]) -> Counter[tuple[str, str, str]]:
    return Counter(
        {(t["stage"], t["outcome"], t["reason"]): t["count"] for t in overview["totals"]}
    )


@pytest.mark.parametrize("seed", [7, 2024])
def test_every_message_is_accounted_for(server: HeadwaterServer, seed: int) -> None:
    rng = random.Random(seed)
    with server.client() as client:
        expected = _run(rng, client, requests=150)
        deadline = time.monotonic() + 30
        while True:
            found = {s: _totals(_overview(client, s)) for s in expected}
            if found == expected or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert found == expected
        for source in expected:
            summary = _overview(client, source)["summary"]
            totals = found[source]
            assert (
                summary["successfully_received"]
                == totals[("ingest", "received", "")] + totals[("ingest", "received", "forwarded")]
            )
            # received = stored + every reason it was dropped for, after ingest
            assert summary["successfully_received"] == (
                summary["stored"] + summary["filtered_at_source"] + summary["failed_processing"]
            )
    kinds = Counter(k for exp in expected.values() for k in exp)
    assert kinds[("processor", "duplicate", "message_id_seen")]  # the mix really had them all
    assert kinds[("processor", "blocked", "violation")]
    assert kinds[("processor", "blocked", "unplanned_event")]
    assert kinds[("ingest", "failed", "no_user_anon_id")]
