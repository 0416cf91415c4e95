"""The delivery benchmark: webhook throughput of one router, isolation of a healthy destination
from a failing one, and end-to-end latency (gateway ack -> webhook received) at half load.

    .venv/bin/python bench/delivery.py [--parts throughput,isolation,latency]
        [--events 300000] [--batch-sizes 100,500]
        [--rate 5000] [--request-events 20] [--warmup 3] [--seconds 15]
        [--blast-events 200000] [--profile DIR]
        [--out bench/results/delivery-latest.json] [--strict]

Everything runs on 127.0.0.1; the webhooks are `bench/receiver.py` (asyncio + httptools, one
process each), which records the first arrival of every messageId (`time.time()`, ms).

1. throughput: `--events` realistic stamped track messages are preloaded into the embedded
   `events` log, as the processor writes them (the gateway's requests of 100 messages, each
   with its own stamp, spread over the 8 `ingest` partitions by messageId; then processor units
   of up to 4,096 records of one partition, keyed by profile and re-grouped with
   `processing.runtime.outputs_of`: runs per (partition, source, stamp), one append per unit).
   Then one `headwater router` process with one webhook destination (`batch_size` of
   `--batch-sizes`, default `max_in_flight` 8) is timed from its start until its consumer group
   (`routes.GROUP_PREFIX` + the destination's id) has committed the end offsets, and the
   receiver must have every messageId. Baselines in the same run, in this process: the same
   bodies (JSON arrays of `batch_size` messages as read from the log, stamped) POSTed by a
   plain `aiohttp.ClientSession` (the router's HTTP client) with the same concurrency (8),
   and by a raw asyncio HTTP/1.1 client (the receiver's ceiling).
   `--profile DIR` runs each router under `py-spy record --idle` (about a fifth slower) and
   prints where its event loop's time goes.
2. isolation: `headwater up --workers 1` with two webhook destinations (batch_size 100), driven
   at `--rate` events/s in requests of `--request-events` (`POST /v1/batch`, open loop) for
   `--warmup` + `--seconds` seconds; the healthy destination's end-to-end latency per event
   (its arrival at the receiver minus the gateway's acknowledgement of its request, both
   `time.time()`) over the measured events, with the other destination healthy, answering
   500, and timing out (its `timeout: 1s`, the receiver answering after 5 s). Retries:
   `delivery: {retry_base: 1s, retry_max: 5s}`, so the failing one retries all along.
3. latency: `headwater up --workers 1` with one webhook: its max sustained rate (a closed-loop
   blast of `--blast-events` in requests of `--request-events` by 32 connections; events /
   (last arrival - first send)), then, on a fresh instance, the same paced run as 2 at half
   that rate.

Bars (the issue's): 1. >= 50,000 events/s; 2. the healthy destination's p99 within 1.5x of
its p99 when both are healthy; 3. p99 < 250 ms at half of max load. Every process the run
starts is in its own process group and stopped at the end (also on failure or Ctrl-C), and its
temp directory is removed. See BENCHMARKS.md, "Delivery".
"""

# This file: the options, running the parts, the bars, the report and the JSON file. The parts:
# `delivery_router.py` (1.), `delivery_latency.py` (2. and 3.), with `delivery_load.py` (the
# raw HTTP client, the paced and closed-loop senders, latencies) and `delivery_setup.py` (the
# headwater.yaml, the message templates, the receivers, `headwater up`).

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from delivery_latency import part_isolation, part_latency
from delivery_router import IN_FLIGHT, part_throughput, summarize_profile
from gateway import SETTLE_S, Bar, _raise_interrupt
from pipeline_report import rate_bar
from servers import ROOT, VENV_BIN, ServerError

BARS = {"router_events_per_s": 50_000.0, "isolation_p99_ratio": 1.5, "e2e_p99_ms": 250.0}


# --- report -------------------------------------------------------------------------------------


def judge(results: dict[str, Any]) -> tuple[dict[str, Any], list[Bar]]:
    ratios: dict[str, Any] = {}
    bars: list[Bar] = []
    tp = results.get("throughput")
    if tp:
        runs = tp["_runs"]
        for size in sorted({r.batch_size for r in runs}):
            router = next(r for r in runs if r.label == f"router, batch_size {size}")
            base = next(r for r in runs if r.label == f"aiohttp loop, {size}")
            raw = next(r for r in runs if r.label == f"raw client, {size}")
            ratios[f"router_vs_aiohttp_{size}"] = (
                router.events_per_s / base.events_per_s if base.events_per_s else None
            )
            ratios[f"router_vs_raw_{size}"] = (
                router.events_per_s / raw.events_per_s if raw.events_per_s else None
            )
            name = f"1 router, webhook batch_size {size}"
            bars.append(rate_bar(name, router, BARS["router_events_per_s"]))
    iso = results.get("isolation")
    if iso:
        base = iso[0]
        for run in iso[1:]:
            r = run.p99_ms / base.p99_ms if base.p99_ms else None
            ratios[f"isolation_p99_{run.label}"] = r
            problem = run.problem or base.problem
            bars.append(
                Bar(
                    f"healthy p99 with {run.label} <= {BARS['isolation_p99_ratio']}x both healthy",
                    f"{r:.2f}x ({run.p99_ms:.1f} vs {base.p99_ms:.1f} ms)" if r else "-",
                    not problem and r is not None and r <= BARS["isolation_p99_ratio"],
                    problem,
                )
            )
    lat = results.get("latency")
    if lat and lat["_run"] is not None:
        run = lat["_run"]
        bars.append(
            Bar(
                f"end-to-end p99 at half of max load < {BARS['e2e_p99_ms']:.0f} ms",
                f"{run.p99_ms:.1f} ms at {run.rate_eps:,.0f} events/s",
                not run.problem and run.p99_ms < BARS["e2e_p99_ms"],
                run.problem,
            )
        )
    return ratios, bars


def print_report(results: dict[str, Any], ratios: dict[str, Any], bars: list[Bar]) -> None:
    tp = results.get("throughput")
    if tp:
        print(f"\n1. webhook throughput, {tp['events']:,} preloaded events "
              f"({tp['message_bytes']:.0f} B each, stamped), {IN_FLIGHT} in flight")  # fmt: skip
        head = f"{'run':<26}{'events/s':>11}{'seconds':>9}{'1st commit':>11}{'steady/s':>11}"
        head += f"{'requests':>10}{'vs aiohttp':>11}"
        print(head)
        print("-" * len(head))
        client_rate = {r.batch_size: r.events_per_s for r in tp["_runs"] if "aiohttp" in r.label}
        for r in tp["_runs"]:
            steady = f"{r.steady_events_per_s:,.0f}" if r.steady_events_per_s else "-"
            first = f"{r.first_commit_s:.2f}" if r.first_commit_s else "-"
            base = client_rate.get(r.batch_size)
            vs = f"{r.events_per_s / base:.2f}x" if base else "-"
            print(f"{r.label:<26}{r.events_per_s:>11,.0f}{(r.seconds or 0):>9.2f}{first:>11}"
                  f"{steady:>11}{r.received.get('requests', 0):>10,}{vs:>11}")  # fmt: skip
        print(f"(reading + stamping the log in-process: "
              f"{tp['read_and_stamp_events_per_s']:,.0f} events/s)")  # fmt: skip
    runs = list(results.get("isolation") or [])
    if results.get("latency") and results["latency"]["_run"] is not None:
        runs.append(results["latency"]["_run"])
    if runs:
        print("\n2./3. end-to-end latency of the healthy destination (gateway ack -> received)")
        head = f"{'run':<34}{'events/s':>9}{'events':>9}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}"
        head += f"{'max ms':>9}{'ack p99':>9}"
        print(head)
        print("-" * len(head))
        for r in runs:
            print(f"{r.label:<34}{r.rate_eps:>9,.0f}{r.events:>9,}{r.p50_ms:>9.1f}"
                  f"{r.p95_ms:>9.1f}{r.p99_ms:>9.1f}{r.max_ms:>9.1f}"
                  f"{r.ack_p99_ms:>9.1f}")  # fmt: skip
    if ratios:
        print()
        for k, v in ratios.items():
            print(f"{k}: {v:.2f}x" if v is not None else f"{k}: -")
    print()
    for bar in bars:
        note = f"  ({bar.note})" if bar.note else ""
        print(f"[{'PASS' if bar.passed else 'FAIL'}] {bar.name}: {bar.value}{note}")


def versions() -> dict[str, Any]:
    """The versions of the HTTP stack and the libraries on the delivery path."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, Any] = {}
    for name in ("aiohttp", "yarl", "multidict", "httptools", "uvloop", "msgspec"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def save(path: Path, args: argparse.Namespace, results: dict[str, Any], ratios: dict[str, Any],
         bars: list[Bar], load: tuple[float, float, float]) -> None:  # fmt: skip
    clean = {
        k: {kk: vv for kk, vv in v.items() if not kk.startswith("_")}
        for k, v in results.items()
        if isinstance(v, dict)
    }
    data = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": "python bench/delivery.py " + " ".join(sys.argv[1:]),
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_at_start": load,
            "loadavg_at_end": os.getloadavg(),
        },
        "versions": versions(),
        **clean,
        "isolation": [r.to_json() for r in results.get("isolation") or []],
        "ratios": ratios,
        "bars": [b.__dict__ for b in bars],
        "all_bars_pass": bool(bars) and all(b.passed for b in bars),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"\nresults saved to {path}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--parts", default="throughput,isolation,latency")
    p.add_argument("--events", type=int, default=300_000, help="preloaded events for 1.")
    p.add_argument("--batch-sizes", default="100,500", help="webhook batch_size values for 1.")
    p.add_argument("--rate", type=float, default=5000, help="events/s of the isolation runs")
    p.add_argument("--request-events", type=int, default=20, help="events per paced request")
    p.add_argument("--warmup", type=float, default=3.0, help="seconds before measuring")
    p.add_argument("--seconds", type=float, default=15.0, help="seconds measured per paced run")
    p.add_argument("--blast-events", type=int, default=200_000, help="for the max rate in 3.")
    p.add_argument("--profile", type=Path, default=None, help="py-spy the routers of 1. here")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "delivery-latest.json")
    p.add_argument("--strict", action="store_true", help="exit 1 when a bar fails")
    args = p.parse_args(argv)
    args.parts = [x.strip() for x in args.parts.split(",") if x.strip()]
    args.batch_sizes = [int(x) for x in args.batch_sizes.split(",") if x.strip()]
    if not set(args.parts) <= {"throughput", "isolation", "latency"}:
        p.error("--parts: throughput, isolation, latency")
    if not 1_000 <= args.events <= 3_000_000 or not all(1 <= b <= 1000 for b in args.batch_sizes):
        p.error("need 1000 <= --events <= 3000000 and batch sizes from 1 to 1000")
    if not 10 <= args.rate <= 200_000 or not 1 <= args.request_events <= 500:
        p.error("need 10 <= --rate <= 200000 and 1 <= --request-events <= 500")
    if not 0 <= args.warmup <= 60 or not 1 <= args.seconds <= 120:
        p.error("need 0 <= --warmup <= 60 and 1 <= --seconds <= 120")
    if not 1_000 <= args.blast_events <= 2_000_000:
        p.error("need 1000 <= --blast-events <= 2000000")
    if args.profile is not None and not shutil.which(str(VENV_BIN / "py-spy")):
        p.error(f"--profile needs py-spy: {VENV_BIN / 'pip'} install py-spy")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    load = os.getloadavg()
    if load[0] > 0.5:
        print(f"warning: 1-minute load average is {load[0]:.2f}: other work skews the numbers")
    results: dict[str, Any] = {}
    try:
        with tempfile.TemporaryDirectory(prefix="hwbench-delivery-") as tmp:
            workdir = Path(tmp)
            if "throughput" in args.parts:
                results["throughput"] = part_throughput(workdir, args)
                shutil.rmtree(workdir / "throughput-data", ignore_errors=True)
            if "isolation" in args.parts:
                time.sleep(SETTLE_S)
                results["isolation"] = part_isolation(workdir, args)
            if "latency" in args.parts:
                time.sleep(SETTLE_S)
                results["latency"] = part_latency(workdir, args)
    except (ServerError, RuntimeError, OSError, subprocess.SubprocessError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 2
    ratios, bars = judge(results)
    print_report(results, ratios, bars)
    if args.profile is not None:
        for path in sorted(args.profile.glob("router-*.txt")):
            print("\n" + summarize_profile(path))
    save(args.out, args, results, ratios, bars, load)
    problems = [r.problem for r in results.get("throughput", {}).get("_runs", []) if r.problem]
    problems += [r.problem for r in results.get("isolation") or [] if r.problem]
    if problems:
        print("some runs were not valid: " + "; ".join(p.split("\n")[0] for p in problems))
        return 1
    return 1 if args.strict and not all(b.passed for b in bars) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print("\ninterrupted: every process the benchmark started has been stopped",
              file=sys.stderr)  # fmt: skip
        sys.exit(130)
