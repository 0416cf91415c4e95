"""Per-process counters for the hot path, snapshot files, and the merged Prometheus view.

Bumping a counter is a dict update. Every second each process writes its totals to
`<data>/run/metrics/<pid>.json`; `/metrics`, answered by any worker, merges every snapshot (so
the numbers cover all gateway processes) and adds gauges read from the log.
"""

from __future__ import annotations

import bisect
import contextlib
import os
from collections.abc import Iterable, Iterator
from pathlib import Path

import msgspec
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from headwater.accounting.tally import FAILED, INGEST, Tally, now_ms

ACK_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
# end-to-end delivery latency: received at the gateway -> accepted by the destination
DELIVERY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 1800.0,
    3600.0, 14400.0,
)  # fmt: skip


class Snapshot(msgspec.Struct):
    """One process's totals since it started."""

    requests: list[tuple[str, int, int]] = []
    accepted: list[tuple[str, int]] = []
    dropped: list[tuple[str, str, int]] = []
    rejected: list[tuple[str, int]] = []
    client_metrics: int = 0
    ack_buckets: list[int] = []
    ack_sum: float = 0.0
    stage: list[tuple[str, str, str, str, int]] = []  # stage, source, outcome, reason, count
    # destination, events per DELIVERY_BUCKETS bucket (received -> accepted), sum of seconds
    delivery: list[tuple[str, list[int], float]] = []


def write_snapshot(directory: Path, snapshot: Snapshot) -> None:
    """Write one process's snapshot atomically (`<pid>.json`)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{os.getpid()}.json"
    tmp = path.with_suffix(".tmp")
    tmp.write_bytes(msgspec.json.encode(snapshot))
    os.replace(tmp, path)


class GatewayMetrics:
    """Counters of one gateway process."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.accepted: dict[str, int] = {}
        self.dropped: dict[tuple[str, str], int] = {}
        self.rejected: dict[str, int] = {}
        self.client_metrics = 0
        self.failed = Tally()  # failed on ingest, for the delivery overview (taken each second)
        self.ack_buckets = [0] * (len(ACK_BUCKETS) + 1)
        self.ack_sum = 0.0

    def request(self, route: str, status: int) -> None:
        key = (route, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def accept(self, source_id: str, n: int) -> None:
        self.accepted[source_id] = self.accepted.get(source_id, 0) + n

    def drop(self, source_id: str, reason: str, n: int = 1) -> None:
        key = (source_id, reason)
        self.dropped[key] = self.dropped.get(key, 0) + n
        if source_id:
            self.failed.outcome(source_id, now_ms(), INGEST, FAILED, reason, n)

    def take_failed(self) -> Tally:
        """The failed-on-ingest counts since the last call."""
        taken, self.failed = self.failed, Tally()
        return taken

    def reject(self, code: str, n: int) -> None:
        """Messages refused with 429/503: not stored, not acknowledged, the client retries."""
        self.rejected[code] = self.rejected.get(code, 0) + n

    def observe_ack(self, seconds: float) -> None:
        self.ack_buckets[bisect.bisect_left(ACK_BUCKETS, seconds)] += 1
        self.ack_sum += seconds

    def snapshot(self) -> Snapshot:
        return Snapshot(
            requests=[(r, s, n) for (r, s), n in self.requests.items()],
            accepted=list(self.accepted.items()),
            dropped=[(s, r, n) for (s, r), n in self.dropped.items()],
            rejected=list(self.rejected.items()),
            client_metrics=self.client_metrics,
            ack_buckets=list(self.ack_buckets),
            ack_sum=self.ack_sum,
        )

    def flush(self, directory: Path) -> None:
        """Write this process's snapshot atomically."""
        write_snapshot(directory, self.snapshot())


def read_snapshots(directory: Path) -> list[Snapshot]:
    """Every process's latest snapshot (unreadable files are skipped)."""
    out: list[Snapshot] = []
    if not directory.is_dir():
        return out
    for path in sorted(directory.glob("*.json")):
        with contextlib.suppress(OSError, msgspec.DecodeError):
            out.append(msgspec.json.decode(path.read_bytes(), type=Snapshot))
    return out


def merge(snapshots: Iterable[Snapshot]) -> Snapshot:
    """Add up snapshots of several processes."""
    requests: dict[tuple[str, int], int] = {}
    accepted: dict[str, int] = {}
    dropped: dict[tuple[str, str], int] = {}
    rejected: dict[str, int] = {}
    stage: dict[tuple[str, str, str, str], int] = {}
    buckets = [0] * (len(ACK_BUCKETS) + 1)
    total = Snapshot(ack_buckets=buckets)
    snapshots_seen = list(snapshots)
    for snap in snapshots_seen:
        for r, s, n in snap.requests:
            requests[(r, s)] = requests.get((r, s), 0) + n
        for src, n in snap.accepted:
            accepted[src] = accepted.get(src, 0) + n
        for src, reason, n in snap.dropped:
            dropped[(src, reason)] = dropped.get((src, reason), 0) + n
        for code, n in snap.rejected:
            rejected[code] = rejected.get(code, 0) + n
        for name, src, outcome, reason, n in snap.stage:
            key = (name, src, outcome, reason)
            stage[key] = stage.get(key, 0) + n
        for i, n in enumerate(snap.ack_buckets[: len(buckets)]):
            buckets[i] += n
        total.ack_sum += snap.ack_sum
        total.client_metrics += snap.client_metrics
    total.requests = [(r, s, n) for (r, s), n in sorted(requests.items())]
    total.accepted = sorted(accepted.items())
    total.dropped = [(s, r, n) for (s, r), n in sorted(dropped.items())]
    total.rejected = sorted(rejected.items())
    total.stage = [(*key, n) for key, n in sorted(stage.items())]
    total.delivery = _merged_latency(snap.delivery for snap in snapshots_seen)
    return total


def _merged_latency(
    parts: Iterable[list[tuple[str, list[int], float]]],
) -> list[tuple[str, list[int], float]]:
    merged: dict[str, tuple[list[int], float]] = {}
    for part in parts:
        for name, counts, seconds in part:
            mine, total = merged.get(name, ([0] * (len(DELIVERY_BUCKETS) + 1), 0.0))
            for i, n in enumerate(counts[: len(mine)]):
                mine[i] += n
            merged[name] = (mine, total + seconds)
    return [(name, counts, total) for name, (counts, total) in sorted(merged.items())]


def quantile(counts: list[int], q: float, bounds: tuple[float, ...] = DELIVERY_BUCKETS) -> float:
    """The `q` quantile (0..1) of a histogram: the upper bound of the bucket it falls in
    (`inf` past the last bound; 0.0 when empty)."""
    total = sum(counts)
    if total == 0:
        return 0.0
    rank, seen = q * total, 0
    for bound, n in zip((*bounds, float("inf")), counts, strict=False):
        seen += n
        if seen >= rank:
            return bound
    return float("inf")


class LogGauges(msgspec.Struct):
    """Figures read from the log at scrape time."""

    log: str
    bytes: int
    end_offsets: list[int]
    lag: dict[str, int]


def render(snapshot: Snapshot, logs: list[LogGauges], pending_bytes: int) -> bytes:
    """Prometheus text exposition of the merged counters and the log gauges."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Collector(snapshot, logs, pending_bytes))
    return bytes(generate_latest(registry))


class _Collector:
    def __init__(self, snap: Snapshot, logs: list[LogGauges], pending: int) -> None:
        self.snap, self.logs, self.pending = snap, logs, pending

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        snap = self.snap
        req = CounterMetricFamily(
            "headwater_gateway_requests",
            "HTTP requests by path and status",
            labels=["path", "status"],
        )
        for route, status, n in snap.requests:
            req.add_metric([route, str(status)], n)
        yield req
        acc = CounterMetricFamily(
            "headwater_gateway_messages_accepted",
            "Messages stored in the log",
            labels=["source_id"],
        )
        for src, n in snap.accepted:
            acc.add_metric([src], n)
        yield acc
        drop = CounterMetricFamily(
            "headwater_gateway_messages_dropped",
            "Messages dropped by the gateway, by reason code",
            labels=["source_id", "reason"],
        )
        for src, reason, n in snap.dropped:
            drop.add_metric([src, reason], n)
        yield drop
        rej = CounterMetricFamily(
            "headwater_gateway_messages_rejected",
            "Messages refused with 429/503 (not stored, not acknowledged; clients retry)",
            labels=["code"],
        )
        for code, n in snap.rejected:
            rej.add_metric([code], n)
        yield rej
        yield CounterMetricFamily(
            "headwater_gateway_client_metrics",
            "Browser client metric payloads received on /v1/m",
            value=snap.client_metrics,
        )
        cumulative = 0
        buckets: list[tuple[str, float]] = []
        for bound, n in zip((*ACK_BUCKETS, float("inf")), snap.ack_buckets, strict=False):
            cumulative += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
        yield HistogramMetricFamily(
            "headwater_gateway_ack_latency_seconds",
            "Request received to durable acknowledgement",
            buckets=buckets,
            sum_value=snap.ack_sum,
        )
        outcomes = CounterMetricFamily(
            "headwater_stage_messages",
            "Messages that left a stage, by outcome and reason code",
            labels=["stage", "source_id", "outcome", "reason"],
        )
        for name, src, outcome, reason, n in snap.stage:
            outcomes.add_metric([name, src, outcome, reason], n)
        yield outcomes
        latency = HistogramMetricFamily(
            "headwater_delivery_latency_seconds",
            "Received at the gateway to accepted by the destination",
            labels=["destination"],
        )
        for name, counts, seconds in snap.delivery:
            cumulative, per_bound = 0, []
            for bound, n in zip((*DELIVERY_BUCKETS, float("inf")), counts, strict=False):
                cumulative += n
                per_bound.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            latency.add_metric([name], per_bound, sum_value=seconds)
        yield latency
        size = GaugeMetricFamily("headwater_log_bytes", "Bytes of log data on disk", labels=["log"])
        end = GaugeMetricFamily(
            "headwater_log_end_offset", "Next offset, summed over partitions", labels=["log"]
        )
        lag = GaugeMetricFamily(
            "headwater_log_consumer_lag",
            "Records not yet committed by a consumer group",
            labels=["log", "group"],
        )
        for g in self.logs:
            size.add_metric([g.log], g.bytes)
            end.add_metric([g.log], sum(g.end_offsets))
            for group, n in g.lag.items():
                lag.add_metric([g.log, group], n)
        yield size
        yield end
        yield lag
        yield GaugeMetricFamily(
            "headwater_gateway_log_pending_bytes",
            "Bytes waiting for the log writer in the answering process",
            value=self.pending,
        )
