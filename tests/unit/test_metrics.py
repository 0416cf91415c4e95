"""Gateway counters, per-process snapshot files, their merge, and the Prometheus text
(`headwater.observability.metrics`)."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from headwater.observability.metrics import (
    ACK_BUCKETS,
    GatewayMetrics,
    LogGauges,
    Snapshot,
    merge,
    read_snapshots,
    render,
)


def busy_metrics() -> GatewayMetrics:
    m = GatewayMetrics()
    m.request("/v1/batch", 200)
    m.request("/v1/batch", 200)
    m.request("/v1/track", 400)
    m.accept("src_a", 5)
    m.accept("src_a", 2)
    m.accept("src_b", 1)
    m.drop("src_a", "no_user_anon_id")
    m.drop("src_a", "no_user_anon_id", 3)
    m.drop("", "unknown_source", 2)
    m.reject("log_full", 10)
    m.client_metrics = 4
    m.observe_ack(0.0004)
    m.observe_ack(0.003)
    m.observe_ack(30.0)
    return m


def samples(text: bytes) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text.decode()):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


# -- counters ------------------------------------------------------------------------------------


def test_counters_add_up() -> None:
    snap = busy_metrics().snapshot()
    assert sorted(snap.requests) == [("/v1/batch", 200, 2), ("/v1/track", 400, 1)]
    assert sorted(snap.accepted) == [("src_a", 7), ("src_b", 1)]
    assert sorted(snap.dropped) == [("", "unknown_source", 2), ("src_a", "no_user_anon_id", 4)]
    assert snap.rejected == [("log_full", 10)]
    assert snap.client_metrics == 4
    assert snap.ack_sum == pytest.approx(30.0034)


def test_a_fresh_process_has_nothing_counted() -> None:
    snap = GatewayMetrics().snapshot()
    assert (snap.requests, snap.accepted, snap.dropped, snap.rejected) == ([], [], [], [])
    assert snap.ack_buckets == [0] * (len(ACK_BUCKETS) + 1)


@pytest.mark.parametrize(
    ("seconds", "bucket"),
    [
        (0.0, 0),
        (0.0005, 0),  # a bound belongs to its bucket (Prometheus `le`)
        (0.00050001, 1),
        (0.001, 1),
        (0.3, ACK_BUCKETS.index(0.5)),
        (5.0, len(ACK_BUCKETS) - 1),
        (5.01, len(ACK_BUCKETS)),  # +Inf
    ],
)
def test_ack_latency_buckets(seconds: float, bucket: int) -> None:
    m = GatewayMetrics()
    m.observe_ack(seconds)
    expected = [0] * (len(ACK_BUCKETS) + 1)
    expected[bucket] = 1
    assert m.ack_buckets == expected


# -- snapshot files ------------------------------------------------------------------------------


def test_flush_and_read_back(tmp_path: Path) -> None:
    directory = tmp_path / "run" / "metrics"
    m = busy_metrics()
    m.flush(directory)
    assert [p.name for p in directory.iterdir()] == [f"{os.getpid()}.json"]
    (snap,) = read_snapshots(directory)
    assert snap == m.snapshot()
    m.accept("src_a", 1)
    m.flush(directory)  # replaces this process's file
    (snap,) = read_snapshots(directory)
    assert ("src_a", 8) in snap.accepted


def test_reading_skips_what_is_not_a_snapshot(tmp_path: Path) -> None:
    busy_metrics().flush(tmp_path)
    (tmp_path / "1.json").write_bytes(b"{not json")
    (tmp_path / "2.json").write_bytes(b'{"requests": "nope"}')
    (tmp_path / "3.tmp").write_bytes(msgspec.json.encode(busy_metrics().snapshot()))
    (tmp_path / "4.json").mkdir()
    assert len(read_snapshots(tmp_path)) == 1


def test_reading_a_missing_directory_gives_nothing(tmp_path: Path) -> None:
    assert read_snapshots(tmp_path / "nope") == []


def test_an_older_snapshot_with_fewer_fields_still_reads(tmp_path: Path) -> None:
    (tmp_path / "7.json").write_bytes(b'{"accepted": [["src_a", 3]]}')
    (snap,) = read_snapshots(tmp_path)
    assert snap.accepted == [("src_a", 3)]
    assert merge([snap]).accepted == [("src_a", 3)]


# -- merge ---------------------------------------------------------------------------------------


def test_merge_adds_up_processes() -> None:
    one, two = busy_metrics(), GatewayMetrics()
    two.request("/v1/batch", 200)
    two.accept("src_c", 9)
    two.drop("src_a", "no_user_anon_id")
    two.observe_ack(0.0004)
    two.client_metrics = 1
    total = merge([one.snapshot(), two.snapshot()])
    assert total.requests == [("/v1/batch", 200, 3), ("/v1/track", 400, 1)]
    assert total.accepted == [("src_a", 7), ("src_b", 1), ("src_c", 9)]
    assert total.dropped == [("", "unknown_source", 2), ("src_a", "no_user_anon_id", 5)]
    assert total.rejected == [("log_full", 10)]
    assert total.client_metrics == 5
    assert total.ack_buckets[0] == 2
    assert sum(total.ack_buckets) == 4
    assert total.ack_sum == pytest.approx(30.0038)


def test_merge_of_nothing_is_zero() -> None:
    total = merge([])
    assert total.requests == total.accepted == total.dropped == total.rejected == []
    assert total.ack_buckets == [0] * (len(ACK_BUCKETS) + 1)
    assert total.client_metrics == 0


def test_merge_tolerates_bucket_lists_of_another_length() -> None:
    short = Snapshot(ack_buckets=[1, 2])
    long = Snapshot(ack_buckets=[1] * (len(ACK_BUCKETS) + 5))
    total = merge([short, long])
    assert len(total.ack_buckets) == len(ACK_BUCKETS) + 1
    assert total.ack_buckets[:3] == [2, 3, 1]


_counts = st.integers(0, 1000)


@given(st.lists(st.lists(st.tuples(st.sampled_from(["a", "b", "c"]), _counts), max_size=5)))
def test_merge_preserves_totals(processes: list[list[tuple[str, int]]]) -> None:
    snaps = []
    for accepted in processes:
        m = GatewayMetrics()
        for source, n in accepted:
            m.accept(source, n)
        snaps.append(m.snapshot())
    total = merge(snaps)
    assert sum(n for _, n in total.accepted) == sum(n for p in processes for _, n in p)
    assert [s for s, _ in total.accepted] == sorted({s for p in processes for s, _ in p})


# -- Prometheus text -----------------------------------------------------------------------------


def test_render_counters_and_gauges() -> None:
    logs = [LogGauges("ingest", 4096, [3, 4, 5], {"warehouse": 7, "s3": 0})]
    text = render(merge([busy_metrics().snapshot()]), logs, 123)
    got = samples(text)
    assert (
        got[("headwater_gateway_requests_total", (("path", "/v1/batch"), ("status", "200")))] == 2
    )
    assert got[("headwater_gateway_messages_accepted_total", (("source_id", "src_a"),))] == 7
    key = (("reason", "no_user_anon_id"), ("source_id", "src_a"))
    assert got[("headwater_gateway_messages_dropped_total", key)] == 4
    assert got[("headwater_gateway_messages_rejected_total", (("code", "log_full"),))] == 10
    assert got[("headwater_gateway_client_metrics_total", ())] == 4
    assert got[("headwater_log_bytes", (("log", "ingest"),))] == 4096
    assert got[("headwater_log_end_offset", (("log", "ingest"),))] == 12
    lag = ("headwater_log_consumer_lag", (("group", "warehouse"), ("log", "ingest")))
    assert got[lag] == 7
    assert got[("headwater_gateway_log_pending_bytes", ())] == 123


def test_render_ack_histogram_is_cumulative() -> None:
    got = samples(render(merge([busy_metrics().snapshot()]), [], 0))
    name = "headwater_gateway_ack_latency_seconds"
    assert got[(name + "_bucket", (("le", "0.0005"),))] == 1
    assert got[(name + "_bucket", (("le", "0.005"),))] == 2
    assert got[(name + "_bucket", (("le", "5.0"),))] == 2
    assert got[(name + "_bucket", (("le", "+Inf"),))] == 3
    assert got[(name + "_count", ())] == 3
    assert got[(name + "_sum", ())] == pytest.approx(30.0034)
    buckets = [v for (n, _), v in got.items() if n == name + "_bucket"]
    assert len(buckets) == len(ACK_BUCKETS) + 1
    assert buckets == sorted(buckets)


def test_render_with_nothing_counted_yet() -> None:
    text = render(merge([]), [], 0)
    got = samples(text)
    assert got[("headwater_gateway_ack_latency_seconds_count", ())] == 0
    assert got[("headwater_gateway_client_metrics_total", ())] == 0
    assert b"# TYPE headwater_gateway_requests_total counter" in text


def test_render_escapes_label_values() -> None:
    m = GatewayMetrics()
    m.request('/v1/"odd"\\path\n', 404)
    got = samples(render(merge([m.snapshot()]), [], 0))
    key = ("headwater_gateway_requests_total", (("path", '/v1/"odd"\\path\n'), ("status", "404")))
    assert got[key] == 1
