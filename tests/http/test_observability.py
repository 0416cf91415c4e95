"""Health endpoints and the Prometheus metrics an operator watches: requests by path and status,
messages accepted and dropped by reason, acknowledgement latency, log size."""

from __future__ import annotations

from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.http._helpers import (
    AUTH,
    assert_error,
    assert_ok,
    dropped,
    message,
    metric,
    new_id,
    scrape,
    stored_one,
    track,
)
from tests.support.server import OTHER_KEY, WRITE_KEY, HeadwaterServer, basic

REQUESTS = "headwater_gateway_requests_total"
ACCEPTED = "headwater_gateway_messages_accepted_total"
DROPPED = "headwater_gateway_messages_dropped_total"
ACK = "headwater_gateway_ack_latency_seconds"


def source_id(server: HeadwaterServer, key: str = WRITE_KEY) -> str:
    mid = new_id("sid")
    with server.client() as http:
        assert_ok(http.post("/v1/track", json=track(mid), headers={"Authorization": basic(key)}))
    return str(stored_one(server, mid)["__source_id"])


def test_health_and_readiness(server: HeadwaterServer) -> None:
    with server.client() as http:
        health = http.get("/healthz")
        ready = http.get("/readyz")
    assert health.status_code == 200
    assert health.json() == {"status": "ok"}
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready"}


def test_metrics_are_prometheus_text_with_every_family(server: HeadwaterServer) -> None:
    with server.client() as http:
        assert_ok(http.post("/v1/track", json=track(new_id()), headers=AUTH))
        r = http.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    types = {f.name: f.type for f in text_string_to_metric_families(r.text)}
    assert types["headwater_gateway_requests"] == "counter"
    assert types["headwater_gateway_messages_accepted"] == "counter"
    assert types["headwater_gateway_messages_dropped"] == "counter"
    assert types["headwater_gateway_ack_latency_seconds"] == "histogram"
    assert types["headwater_log_bytes"] == "gauge"
    assert metric(r.text, REQUESTS, path="/v1/track", status="200") >= 1


@pytest.mark.parametrize(
    ("path", "wrap", "headers", "status"),
    [
        ("/v1/track", False, AUTH, 200),
        ("/v1/t", False, {}, 401),
        ("/v1/batch", True, AUTH, 200),
        ("/v1/import", True, {"Authorization": basic("wk_unknown")}, 401),
    ],
)
def test_requests_are_counted_by_path_and_status(
    server: HeadwaterServer, path: str, wrap: bool, headers: dict[str, str], status: int
) -> None:
    with server.client() as http:
        before = metric(scrape(http), REQUESTS, path=path, status=str(status))
        for _ in range(3):
            body = {"batch": [track(new_id())]} if wrap else track(new_id())
            assert http.post(path, json=body, headers=headers).status_code == status
        after = metric(scrape(http), REQUESTS, path=path, status=str(status))
    assert after - before == 3


def test_bad_requests_are_counted_as_400(server: HeadwaterServer) -> None:
    with server.client() as http:
        before = metric(scrape(http), REQUESTS, path="/v1/batch", status="400")
        assert_error(http.post("/v1/batch", content=b"{", headers=AUTH), 400)
        assert_error(http.post("/v1/batch", json={"batch": []}, headers=AUTH), 400)
        after = metric(scrape(http), REQUESTS, path="/v1/batch", status="400")
    assert after - before == 2


def test_accepted_messages_are_counted_per_source(server: HeadwaterServer) -> None:
    web, app = source_id(server, WRITE_KEY), source_id(server, OTHER_KEY)
    with server.client() as http:
        before = scrape(http)
        batch = [track(new_id()) for _ in range(7)]
        assert_ok(http.post("/v1/batch", json={"batch": batch}, headers=AUTH))
        after = scrape(http)
    assert metric(after, ACCEPTED, source_id=web) - metric(before, ACCEPTED, source_id=web) == 7
    assert metric(after, ACCEPTED, source_id=app) == metric(before, ACCEPTED, source_id=app)


def test_dropped_messages_are_counted_by_reason(server: HeadwaterServer) -> None:
    web = source_id(server)
    batch = [
        message("track", new_id(), event=None),
        message("track", new_id(), event=None),
        message("group", new_id(), groupId=None),
        track(new_id()),
    ]
    with server.client() as http:
        before = scrape(http)
        r = http.post("/v1/batch", json={"batch": batch}, headers=AUTH)
        assert dropped(r) == {0: "event_not_defined", 1: "event_not_defined", 2: "id_required"}
        after = scrape(http)

    def delta(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert delta(DROPPED, source_id=web, reason="event_not_defined") == 2
    assert delta(DROPPED, source_id=web, reason="id_required") == 1
    assert delta(ACCEPTED, source_id=web) == 1


def unknown_key_drops(server: HeadwaterServer, body: dict[str, Any], headers: Any) -> float:
    with server.client() as http:
        before = metric(scrape(http), DROPPED, source_id="", reason="unknown_source")
        assert_error(http.post("/v1/batch", json=body, headers=headers), 401, "unknown_source")
        return metric(scrape(http), DROPPED, source_id="", reason="unknown_source") - before


def test_a_request_refused_for_an_unknown_body_key_is_counted_once(
    server: HeadwaterServer,
) -> None:
    body = {"batch": [track(new_id()) for _ in range(3)], "writeKey": "wk_unknown"}
    assert unknown_key_drops(server, body, {}) == 1


def test_a_request_refused_for_an_unknown_header_key_is_counted_once(
    server: HeadwaterServer,
) -> None:
    """The same count whether the key came in the header (body unread) or in the body."""
    body = {"batch": [track(new_id()) for _ in range(3)]}
    assert unknown_key_drops(server, body, {"Authorization": basic("wk_unknown")}) == 1


def test_ack_latency_histogram_counts_every_acknowledged_request(server: HeadwaterServer) -> None:
    with server.client() as http:
        before = metric(scrape(http), f"{ACK}_count")
        for _ in range(5):
            assert_ok(http.post("/v1/track", json=track(new_id()), headers=AUTH))
        text = scrape(http)
    count = metric(text, f"{ACK}_count")
    assert count - before == 5
    assert metric(text, f"{ACK}_sum") > 0
    buckets = {}
    for line in text.splitlines():
        if line.startswith(f"{ACK}_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets[float(le)] = float(line.rsplit(" ", 1)[1])
    values = [buckets[k] for k in sorted(buckets)]
    assert values == sorted(values), "buckets must be cumulative"
    assert buckets[float("inf")] == count


def test_log_bytes_grow_as_messages_are_stored(server: HeadwaterServer) -> None:
    with server.client() as http:
        before = metric(scrape(http), "headwater_log_bytes", log="ingest")
        big = track(new_id(), properties={"pad": "x" * 20_000})
        assert_ok(http.post("/v1/track", json=big, headers=AUTH))
        after = metric(scrape(http), "headwater_log_bytes", log="ingest")
    assert before > 0
    assert after - before >= 20_000


def test_browser_metric_payloads_are_counted(server: HeadwaterServer) -> None:
    name = "headwater_gateway_client_metrics_total"
    with server.client() as http:
        before = metric(scrape(http), name)
        assert_ok(http.post("/v1/m", content=b'{"series": []}'))
        assert_ok(http.post("/v1/m", content=b'{"series": []}'))
        after = metric(scrape(http), name)
    assert after - before == 2


def test_metric_labels_never_carry_write_keys_or_arbitrary_paths(server: HeadwaterServer) -> None:
    junk = f"/v1/{new_id('junk')}"
    with server.client() as http:
        http.get(f"/v1/projects/{WRITE_KEY}/settings")
        http.get("/v1/projects/wk_secret_unknown/settings")
        http.post(junk, json={})
        text = scrape(http)
    assert WRITE_KEY not in text
    assert "wk_secret_unknown" not in text
    assert junk not in text
    assert metric(text, REQUESTS, path="/v1/projects/{writeKey}/settings", status="200") >= 1
    assert metric(text, REQUESTS, path="/v1/projects/{writeKey}/settings", status="404") >= 1
    assert metric(text, REQUESTS, path="other", status="404") >= 1
