"""The gateway benchmark: Headwater against nginx (the HTTP ceiling) and a naive FastAPI baseline.

    .venv/bin/python bench/gateway.py [--duration 10] [--connections 64] [--workers 1]
                                      [--out bench/results/latest.json]

All three servers run with the same worker count, one after the other, on 127.0.0.1; wrk (one
thread) drives each with two scenarios: single track events on /v1/track and 100-event batches on
/v1/batch. See bench/README.md for what the numbers mean and the bars they are held to.
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from loadgen import WrkError, WrkResult, run_wrk
from payloads import Scenario, scenarios, write_bodies
from servers import (
    ROOT,
    WRITE_KEY,
    RssSampler,
    Server,
    ServerError,
    start_fastapi,
    start_headwater,
    start_nginx,
)

WARMUP_S = 2.0
SETTLE_S = 1.5
AUTHORIZATION = "Basic " + base64.b64encode(f"{WRITE_KEY}:".encode()).decode()

# The bars Headwater's gateway is held to.
MIN_SHARE_OF_NGINX = 0.40
MIN_MULTIPLE_OF_FASTAPI = 5.0
MAX_SINGLE_P99_MS = 10.0
MIN_BATCH_EVENTS_PER_S = 400_000.0
MAX_GATEWAY_RSS_MB = 200.0

Starter = Callable[[Path, int], Server]
SERVERS: list[tuple[str, Starter]] = [
    ("nginx", start_nginx),
    ("fastapi", start_fastapi),
    ("headwater", start_headwater),
]


@dataclass
class Run:
    """One measured wrk run of one scenario against one server."""

    server: str
    scenario: Scenario
    wrk: WrkResult

    @property
    def events_per_s(self) -> float:
        return self.wrk.requests_per_s * self.scenario.events_per_request

    def to_json(self) -> dict[str, Any]:
        return {
            "server": self.server,
            "scenario": self.scenario.name,
            "path": self.scenario.path,
            "body_bytes": len(self.scenario.body),
            "events_per_request": self.scenario.events_per_request,
            "events_per_s": self.events_per_s,
            "flagged": self.wrk.errors > 0,
            **self.wrk.to_json(),
        }


@dataclass
class Bar:
    """One target and whether it was met."""

    name: str
    value: str
    passed: bool
    note: str = ""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured run")
    p.add_argument("--connections", type=int, default=64, help="wrk connections")
    p.add_argument("--workers", type=int, default=1, help="worker processes of every server")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "latest.json")
    p.add_argument("--strict", action="store_true", help="exit 1 when a bar fails")
    args = p.parse_args(argv)
    if not 1 <= args.duration <= 600 or args.connections < 1 or not 1 <= args.workers <= 64:
        p.error("need 1 <= --duration <= 600, --connections >= 1, 1 <= --workers <= 64")
    return args


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def check_once(server: Server, scenario: Scenario) -> None:
    """One request by hand before the load, so a misconfigured server fails loudly."""
    req = urllib.request.Request(
        server.base_url + scenario.path,
        data=scenario.body,
        method="POST",
        headers={"Content-Type": "text/plain", "Authorization": AUTHORIZATION},
    )
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            status, body = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, body = exc.code, exc.read()
    if status != 200:
        raise ServerError(f"{server.name} {scenario.path}: HTTP {status} {body[:300]!r}")


def measure(url: str, body: Path, duration: float, args: argparse.Namespace) -> WrkResult:
    return run_wrk(
        url,
        body,
        duration=duration,
        connections=args.connections,
        authorization=AUTHORIZATION,
    )


def bench_server(
    server: Server, bodies: dict[str, Path], args: argparse.Namespace, rss: dict[str, Any]
) -> list[Run]:
    """Warm-up and measured run of every scenario against one running server."""
    runs = []
    for i, sc in enumerate(scenarios()):
        if i:
            time.sleep(SETTLE_S)
        check_once(server, sc)
        url = server.base_url + sc.path
        print(f"  {sc.name}: {WARMUP_S:g} s warm-up, {args.duration:g} s measured", flush=True)
        sampler = RssSampler(server.proc.pid) if server.name == "headwater" else None
        with sampler or contextlib.nullcontext():
            measure(url, bodies[sc.name], WARMUP_S, args)
            time.sleep(0.5)
            result = measure(url, bodies[sc.name], args.duration, args)
        if sampler is not None:
            rss[sc.name] = {
                "max_worker_mb": round(sampler.max_worker_kb / 1024, 1),
                "max_total_mb": round(sampler.max_total_kb / 1024, 1),
                "samples": sampler.samples,
            }
        mark = "  <-- ERRORS" if result.errors else ""
        print(f"    {result.requests_per_s:,.0f} req/s, p99 {result.p99_ms:.2f} ms{mark}")
        runs.append(Run(server.name, sc, result))
    return runs


@contextlib.contextmanager
def signals_ignored() -> Iterator[None]:
    """Let a server be stopped completely even if Ctrl-C is pressed again meanwhile."""
    old = {sig: signal.signal(sig, signal.SIG_IGN) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def find(runs: list[Run], server: str, scenario: str) -> Run | None:
    return next((r for r in runs if r.server == server and r.scenario.name == scenario), None)


def judge(runs: list[Run], rss: dict[str, Any]) -> tuple[dict[str, float], list[Bar]]:
    """The ratios and bars from the measured runs."""
    nginx, fastapi = find(runs, "nginx", "single"), find(runs, "fastapi", "single")
    hw, hw_batch = find(runs, "headwater", "single"), find(runs, "headwater", "batch100")
    ratios: dict[str, float] = {}
    bars: list[Bar] = []
    if hw is None or hw_batch is None or nginx is None or fastapi is None:
        return ratios, bars
    hw_note = "Headwater run had errors" if hw.wrk.errors else ""
    ok = not hw.wrk.errors
    share = hw.wrk.requests_per_s / nginx.wrk.requests_per_s
    multiple = hw.wrk.requests_per_s / fastapi.wrk.requests_per_s
    worker_mb = max((v["max_worker_mb"] for v in rss.values()), default=0.0)
    total_mb = max((v["max_total_mb"] for v in rss.values()), default=0.0)
    ratios = {
        "single_share_of_nginx": share,
        "single_multiple_of_fastapi": multiple,
        "single_p99_ms": hw.wrk.p99_ms,
        "batch_events_per_s": hw_batch.events_per_s,
        "gateway_worker_rss_mb": worker_mb,
        "headwater_total_rss_mb": total_mb,
    }
    b_note = "Headwater run had errors" if hw_batch.wrk.errors else ""
    bars = [
        Bar(
            f"single events >= {MIN_SHARE_OF_NGINX:.0%} of nginx",
            f"{share:.1%}",
            ok and share >= MIN_SHARE_OF_NGINX,
            hw_note,
        ),
        Bar(
            f"single events >= {MIN_MULTIPLE_OF_FASTAPI:g}x FastAPI",
            f"{multiple:.2f}x",
            ok and multiple >= MIN_MULTIPLE_OF_FASTAPI,
            hw_note,
        ),
        Bar(
            f"single events p99 <= {MAX_SINGLE_P99_MS:g} ms",
            f"{hw.wrk.p99_ms:.2f} ms",
            ok and hw.wrk.p99_ms <= MAX_SINGLE_P99_MS,
            hw_note,
        ),
        Bar(
            f"batches >= {MIN_BATCH_EVENTS_PER_S:,.0f} events/s",
            f"{hw_batch.events_per_s:,.0f}",
            not hw_batch.wrk.errors and hw_batch.events_per_s >= MIN_BATCH_EVENTS_PER_S,
            b_note,
        ),
        Bar(
            f"gateway RSS <= {MAX_GATEWAY_RSS_MB:g} MB (largest worker)",
            f"{worker_mb:.1f} MB",
            0 < worker_mb <= MAX_GATEWAY_RSS_MB,
            f"whole tree incl. supervisor and log server: {total_mb:.1f} MB",
        ),
    ]
    return ratios, bars


def print_report(runs: list[Run], rss: dict[str, Any], bars: list[Bar], args: Any) -> None:
    print()
    print(
        f"Gateway benchmark: {args.workers} worker(s) per server, wrk -t1 -c{args.connections} "
        f"-d{args.duration:g}s, loopback"
    )
    head = f"{'server':<10} {'scenario':<9} {'req/s':>10} {'events/s':>11} "
    head += f"{'p50':>9} {'p99':>9} {'non-2xx':>8}"
    print(head)
    print("-" * len(head))
    for r in runs:
        flag = "  ERRORS" if r.wrk.errors else ""
        sock = f" (socket errors {r.wrk.socket_errors})" if r.wrk.socket_errors else ""
        print(
            f"{r.server:<10} {r.scenario.name:<9} {r.wrk.requests_per_s:>10,.0f} "
            f"{r.events_per_s:>11,.0f} {r.wrk.p50_ms:>7.2f}ms {r.wrk.p99_ms:>7.2f}ms "
            f"{r.wrk.non_2xx:>8}{flag}{sock}"
        )
    for name, v in rss.items():
        print(
            f"headwater RSS during {name}: largest gateway worker {v['max_worker_mb']:.1f} MB, "
            f"whole process tree {v['max_total_mb']:.1f} MB ({v['samples']} samples)"
        )
    nginx, fastapi = find(runs, "nginx", "single"), find(runs, "fastapi", "single")
    hw, hw_batch = find(runs, "headwater", "single"), find(runs, "headwater", "batch100")
    if hw and nginx and fastapi and hw_batch:
        print()
        print(
            f"Headwater single events: {hw.wrk.requests_per_s / nginx.wrk.requests_per_s:.1%} "
            f"of nginx, {hw.wrk.requests_per_s / fastapi.wrk.requests_per_s:.2f}x FastAPI"
        )
        print(f"Headwater batches: {hw_batch.events_per_s:,.0f} events/s")
    print()
    for bar in bars:
        note = f"  ({bar.note})" if bar.note else ""
        print(f"[{'PASS' if bar.passed else 'FAIL'}] {bar.name}: {bar.value}{note}")


def tool_version(cmd: list[str]) -> str:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    return (out.stdout + out.stderr).strip().splitlines()[0] if out.stdout + out.stderr else ""


def save(
    path: Path,
    args: argparse.Namespace,
    runs: list[Run],
    rss: dict[str, Any],
    ratios: dict[str, float],
    bars: list[Bar],
) -> None:
    commit = tool_version(["git", "-C", str(ROOT), "rev-parse", "HEAD"])
    data = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "settings": {
            "duration_s": args.duration,
            "connections": args.connections,
            "workers": args.workers,
            "wrk_threads": 1,
            "warmup_s": WARMUP_S,
        },
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_end": os.getloadavg(),
        },
        "versions": {
            "nginx": tool_version(["nginx", "-v"]),
            "wrk": tool_version(["wrk", "-v"]),
            "headwater_commit": commit,
        },
        "runs": [r.to_json() for r in runs],
        "headwater_rss": rss,
        "ratios": ratios,
        "bars": [bar.__dict__ for bar in bars],
        "all_bars_pass": bool(bars) and all(b.passed for b in bars),
        "any_errors": any(r.wrk.errors for r in runs),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")
    print(f"\nresults saved to {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    runs: list[Run] = []
    rss: dict[str, Any] = {}
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: 1-minute load average is {load:.2f}: other work skews the numbers")
    with tempfile.TemporaryDirectory(prefix="headwater-bench-") as tmp:
        workdir = Path(tmp)
        bodies = write_bodies(workdir)
        for i, (name, start) in enumerate(SERVERS):
            if i:
                time.sleep(SETTLE_S)
            print(f"{name}: starting with {args.workers} worker(s)", flush=True)
            server: Server | None = None
            try:
                server = start(workdir, args.workers)
                runs += bench_server(server, bodies, args, rss)
            except (ServerError, WrkError) as exc:
                print(f"{name}: FAILED: {exc}", file=sys.stderr)
                return 2
            finally:
                if server is not None:
                    with signals_ignored():
                        server.stop()
    ratios, bars = judge(runs, rss)
    print_report(runs, rss, bars, args)
    save(args.out, args, runs, rss, ratios, bars)
    if any(r.wrk.errors for r in runs):
        print("some runs had errors (non-2xx or socket errors): the numbers are not valid")
        return 1
    if args.strict and not all(b.passed for b in bars):
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: every server the benchmark started has been stopped", file=sys.stderr)
        sys.exit(130)
