"""The pipeline benchmark's results: one run of each part, the bars, the table, the JSON file."""

from __future__ import annotations

import argparse
import json
import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway import WARMUP_S, Bar, tool_version
from loadgen import WrkResult
from payloads import BATCH_SIZE
from pipeline_logs import Namespace, Progress
from servers import ROOT

PARTITIONS = 8
STAGE = "processor"

# The bars of the issue.
MIN_JETSTREAM_GATEWAY_EVENTS_PER_S = 300_000.0  # one gateway process into JetStream
MIN_PROCESSOR_EVENTS_PER_S = 300_000.0  # one processor process, embedded


@dataclass
class GatewayRun:
    """One measurement of (a): some gateway processes on one backend, each driven by one wrk."""

    label: str
    backend: str
    results: list[WrkResult]
    stored_messages: int | None = None  # JetStream: stream messages added by the measured run

    @property
    def requests_per_s(self) -> float:
        return sum(r.requests_per_s for r in self.results)

    @property
    def events_per_s(self) -> float:
        return self.requests_per_s * BATCH_SIZE

    @property
    def errors(self) -> int:
        return sum(r.errors for r in self.results)

    @property
    def p50_ms(self) -> float:
        return max(r.p50_ms for r in self.results)  # the slower gateway's

    @property
    def p99_ms(self) -> float:
        return max(r.p99_ms for r in self.results)

    @property
    def events_per_stored_batch(self) -> float | None:
        if not self.stored_messages:
            return None
        return sum(r.requests for r in self.results) * BATCH_SIZE / self.stored_messages

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "backend": self.backend,
            "gateways": len(self.results),
            "requests_per_s": self.requests_per_s,
            "events_per_s": self.events_per_s,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "errors": self.errors,
            "stored_messages": self.stored_messages,
            "events_per_stored_batch": self.events_per_stored_batch,
            "wrk": [r.to_json() for r in self.results],
        }


@dataclass
class ConsumerRun:
    """N preloaded events through one consumer (a processor, a router, or a loop in this
    process), timed from its start until its group has committed the log's end offsets."""

    label: str
    events: int
    seconds: float | None  # None: it did not finish
    first_commit_s: float | None = None
    events_at_first_commit: int = 0
    problem: str = ""

    @property
    def events_per_s(self) -> float:
        return self.events / self.seconds if self.seconds else 0.0

    @property
    def steady_events_per_s(self) -> float | None:
        """The rate from the first commit on (start-up left out)."""
        if self.seconds is None or self.first_commit_s is None:
            return None
        span = self.seconds - self.first_commit_s
        return (self.events - self.events_at_first_commit) / span if span > 0 else None

    def record(self, progress: Progress, ends: list[int]) -> None:
        """Take the times of `progress` (of `wait_consumed` on a log with end offsets `ends`)."""
        self.seconds = progress.done_s
        self.first_commit_s = progress.first_commit_s
        if progress.first_commit_s is not None and progress.committed_at_first is not None:
            done = sum(progress.committed_at_first.values())
            self.events_at_first_commit = round(self.events * done / max(1, sum(ends)))

    def to_json(self) -> dict[str, Any]:
        return {
            **asdict(self),
            "events_per_s": self.events_per_s,
            "steady_events_per_s": self.steady_events_per_s,
        }


def rate_bar(name: str, run: ConsumerRun, minimum: float) -> Bar:
    """The bar "`name` >= `minimum` events/s" (a run with a problem fails it); its note is the
    problem's first line, or the rate after the first commit."""
    steady = run.steady_events_per_s
    return Bar(
        f"{name} >= {minimum:,.0f} events/s",
        f"{run.events_per_s:,.0f}",
        not run.problem and run.events_per_s >= minimum,
        run.problem.split("\n")[0] or (f"{steady:,.0f} after the first commit" if steady else ""),
    )


@dataclass
class ProcessorRun(ConsumerRun):
    """One measurement of (b): N preloaded events through one processor (or the loop)."""

    preload_s: float = 0.0
    stored_batches: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "label": self.label,
            "events": self.events,
            "seconds": self.seconds,
            "events_per_s": self.events_per_s,
            "first_commit_s": self.first_commit_s,
            "events_at_first_commit": self.events_at_first_commit,
            "steady_events_per_s": self.steady_events_per_s,
            "preload_s": self.preload_s,
            "stored_batches": self.stored_batches,
            "outcomes": self.outcomes,
            "problem": self.problem,
        }


# --- the report ---------------------------------------------------------------------------------


def find(runs: list[Any], label: str) -> Any:
    return next((r for r in runs if r.label == label), None)


def ratio(a: float, b: float | None) -> float | None:
    return a / b if b else None


def judge(
    gw: list[GatewayRun], pr: list[ProcessorRun]
) -> tuple[dict[str, float | None], list[Bar]]:
    emb, js1, js2 = find(gw, "embedded"), find(gw, "jetstream"), find(gw, "jetstream x2")
    loop, p_emb = find(pr, "in-process"), find(pr, "processor-embedded")
    p_js = find(pr, "processor-jetstream")
    ratios: dict[str, float | None] = {}
    bars: list[Bar] = []
    if emb and js1:
        ratios["gateway_jetstream_vs_embedded"] = ratio(js1.events_per_s, emb.events_per_s)
    if js1 and js2:
        ratios["gateway_jetstream_x2_vs_x1"] = ratio(js2.events_per_s, js1.events_per_s)
    if emb and js2:
        ratios["gateway_jetstream_x2_vs_embedded"] = ratio(js2.events_per_s, emb.events_per_s)
    if loop and p_emb:
        ratios["processor_embedded_vs_in_process"] = ratio(p_emb.events_per_s, loop.events_per_s)
    if loop and p_js:
        ratios["processor_jetstream_vs_in_process"] = ratio(p_js.events_per_s, loop.events_per_s)
    if p_emb and p_js:
        ratios["processor_jetstream_vs_embedded"] = ratio(p_js.events_per_s, p_emb.events_per_s)
    if js1:
        bars.append(
            Bar(
                f"1 gateway into JetStream >= {MIN_JETSTREAM_GATEWAY_EVENTS_PER_S:,.0f} events/s",
                f"{js1.events_per_s:,.0f}",
                not js1.errors and js1.events_per_s >= MIN_JETSTREAM_GATEWAY_EVENTS_PER_S,
                "run had errors" if js1.errors else "",
            )
        )
    if p_emb:
        bars.append(rate_bar("1 processor, embedded", p_emb, MIN_PROCESSOR_EVENTS_PER_S))
    return ratios, bars


def _x(value: float | None) -> str:
    return f"{value:.2f}x" if value is not None else "-"


def print_report(
    gw: list[GatewayRun], pr: list[ProcessorRun], bars: list[Bar], args: argparse.Namespace
) -> None:
    print()
    print_gateway(gw, args)
    print()
    print_processor(pr, args)
    print()
    for bar in bars:
        note = f"  ({bar.note})" if bar.note else ""
        print(f"[{'PASS' if bar.passed else 'FAIL'}] {bar.name}: {bar.value}{note}")


def print_gateway(gw: list[GatewayRun], args: argparse.Namespace) -> None:
    print(
        f"(a) gateway -> log: POST /v1/batch ({BATCH_SIZE} events), --workers 1 per gateway, "
        f"wrk -t1 -c{args.connections} -d{args.duration:g}s per gateway, {PARTITIONS} partitions"
    )
    head = f"{'log':<14} {'gateways':>8} {'req/s':>9} {'events/s':>11} {'p50':>9} {'p99':>9} "
    head += f"{'errors':>6} {'vs embedded':>12} {'ev/batch':>9}"
    print(head)
    print("-" * len(head))
    emb = find(gw, "embedded")
    for r in gw:
        flag = "  ERRORS" if r.errors else ""
        vs = "baseline" if r is emb else _x(ratio(r.events_per_s, emb.events_per_s if emb else 0))
        per = f"{r.events_per_stored_batch:,.0f}" if r.events_per_stored_batch else "-"
        print(
            f"{r.label:<14} {len(r.results):>8} {r.requests_per_s:>9,.0f} "
            f"{r.events_per_s:>11,.0f} {r.p50_ms:>7.2f}ms {r.p99_ms:>7.2f}ms {r.errors:>6} "
            f"{vs:>12} {per:>9}{flag}"
        )
        if len(r.results) > 1:
            for i, w in enumerate(r.results, 1):
                print(
                    f"{'  gateway ' + str(i):<14} {'':>8} {w.requests_per_s:>9,.0f} "
                    f"{w.requests_per_s * BATCH_SIZE:>11,.0f} {w.p50_ms:>7.2f}ms "
                    f"{w.p99_ms:>7.2f}ms {w.errors:>6}"
                )
    print(
        "  (x2: rates summed, p50/p99 of the slower gateway; ev/batch: events per JetStream "
        "message the gateway stored)"
    )


def print_processor(pr: list[ProcessorRun], args: argparse.Namespace) -> None:
    print(
        f"(b) processor pass-through ingest -> events: {args.events:,} events preloaded in "
        f"record batches of {args.batch_events} per partition, one process"
    )
    head = f"{'run':<20} {'events/s':>10} {'seconds':>8} {'1st commit':>10} "
    head += f"{'after 1st':>10} {'vs loop':>8} {'vs embedded':>11}"
    print(head)
    print("-" * len(head))
    loop, p_emb = find(pr, "in-process"), find(pr, "processor-embedded")
    for r in pr:
        secs = f"{r.seconds:.2f}" if r.seconds else "-"
        first = f"{r.first_commit_s:.2f}s" if r.first_commit_s is not None else "-"
        steady = f"{r.steady_events_per_s:,.0f}" if r.steady_events_per_s else "-"
        vs_loop = "baseline" if r is loop else _x(ratio(r.events_per_s, loop and loop.events_per_s))
        vs_emb = (
            "-"
            if r is loop or r is p_emb
            else _x(ratio(r.events_per_s, p_emb and p_emb.events_per_s))
        )
        flag = "  FAILED" if r.problem else ""
        print(
            f"{r.label:<20} {r.events_per_s:>10,.0f} {secs:>8} {first:>10} {steady:>10} "
            f"{vs_loop:>8} {vs_emb:>11}{flag}"
        )
    print(
        "  (events/s = events / seconds from starting the process to its last commit; "
        "1st commit: start-up plus the first unit)"
    )


def save(
    path: Path,
    args: argparse.Namespace,
    gw: list[GatewayRun],
    pr: list[ProcessorRun],
    ratios: dict[str, float | None],
    bars: list[Bar],
    nats_version: str,
    ns: Namespace,
) -> None:
    data = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {
            "duration_s": args.duration,
            "connections": args.connections,
            "wrk_threads": 1,
            "warmup_s": WARMUP_S,
            "gateway_workers": 1,
            "partitions": PARTITIONS,
            "events": args.events,
            "batch_events": args.batch_events,
            "nats": args.nats,
            "nats_prefix": ns.base,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_end": os.getloadavg(),
        },
        "versions": {
            "wrk": tool_version(["wrk", "-v"]),
            "nats_server": nats_version,
            "headwater_commit": tool_version(["git", "-C", str(ROOT), "rev-parse", "HEAD"]),
        },
        "gateway": [r.to_json() for r in gw],
        "processor": [r.to_json() for r in pr],
        "ratios": ratios,
        "bars": [bar.__dict__ for bar in bars],
        "all_bars_pass": bool(bars) and all(b.passed for b in bars),
        "any_errors": any(r.errors for r in gw) or any(r.problem for r in pr),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nresults saved to {path}")
