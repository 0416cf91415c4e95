"""The pipeline benchmark: the gateway into JetStream and the processor, against the embedded log.

    .venv/bin/python bench/pipeline.py [--duration 10] [--connections 64] [--events 1000000]
        [--batch-events 300] [--out bench/results/pipeline-latest.json] [--strict]

(a) `headwater gateway --workers 1` taking 100-event batches (`POST /v1/batch`) into the
    `ingest` log: on the embedded log (the baseline), on JetStream with one gateway process, and
    on JetStream with two gateway processes driven at once (one wrk each, rates summed).
(b) One `headwater processor` passing `--events` preloaded events from `ingest` to `events`:
    embedded and on JetStream, next to the same work done in a loop without any log I/O.

Everything on NATS lives under a prefix of this run's own (`hwbench-<random>`) and is deleted
at the end. See bench/README.md for what the numbers mean and the bars they are held to.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gateway import (
    AUTHORIZATION,
    SETTLE_S,
    WARMUP_S,
    Bar,
    _raise_interrupt,
    check_once,
    signals_ignored,
    tool_version,
)
from loadgen import WrkError, WrkResult, run_wrk
from payloads import BATCH_SIZE, Scenario, scenarios, write_bodies
from pipeline_logs import (
    NATS_URL,
    Namespace,
    Progress,
    config_text,
    in_process_rate,
    payload_batches,
    preload,
    processed_counts,
    wait_consumed,
)
from servers import ROOT, VENV_BIN, WRITE_KEY, Server, ServerError, _spawn, free_port

from headwater.config import load_config
from headwater.paths import DataPaths

PARTITIONS = 8
STAGE = "processor"
PROCESSOR_TIMEOUT_S = 90.0

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
class ProcessorRun:
    """One measurement of (b): N preloaded events through one processor (or the loop)."""

    label: str
    events: int
    seconds: float | None  # None: it did not finish
    first_commit_s: float | None = None
    events_at_first_commit: int = 0
    preload_s: float = 0.0
    stored_batches: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)
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


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured wrk run")
    p.add_argument("--connections", type=int, default=64, help="wrk connections per gateway")
    p.add_argument("--events", type=int, default=1_000_000, help="events preloaded for (b)")
    p.add_argument(
        "--batch-events", type=int, default=300, help="events per preloaded record batch"
    )
    p.add_argument("--nats", default=NATS_URL, help="NATS server with JetStream")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "pipeline-latest.json")
    p.add_argument("--strict", action="store_true", help="exit 1 when a bar fails")
    args = p.parse_args(argv)
    if not 1 <= args.duration <= 120 or args.connections < 1:
        p.error("need 1 <= --duration <= 120 and --connections >= 1")
    if not 10_000 <= args.events <= 5_000_000 or not 1 <= args.batch_events <= 2000:
        p.error("need 10000 <= --events <= 5000000 and 1 <= --batch-events <= 2000")
    return args


# --- (a) the gateway ----------------------------------------------------------------------------


def start_gateway(workdir: Path, name: str, config: Path) -> Server:
    """`headwater gateway --workers 1` on a data directory of its own (on an embedded config it
    also runs the embedded log server, as in production)."""
    data = workdir / f"{name}-data"
    cmd = [
        str(VENV_BIN / "headwater"),
        "gateway",
        "--config",
        str(config),
        "--data",
        str(data),
        "--port",
        str(free_port()),
        "--workers",
        "1",
    ]
    server = _spawn(name, cmd, workdir)
    try:
        server.wait_ready("/readyz", want=200)
    except BaseException:  # not ready, or interrupted while waiting: stop it before leaving
        with signals_ignored():
            server.stop()
        raise
    return server


def drive(servers: list[Server], body: Path, duration: float, connections: int) -> list[WrkResult]:
    """One wrk per gateway, all at once."""
    with ThreadPoolExecutor(len(servers)) as pool:
        futures = [
            pool.submit(
                run_wrk,
                s.base_url + "/v1/batch",
                body,
                duration=duration,
                connections=connections,
                authorization=AUTHORIZATION,
            )
            for s in servers
        ]
        return [f.result() for f in futures]


def bench_gateways(
    label: str,
    backend: str,
    count: int,
    workdir: Path,
    config: Path,
    batch: Scenario,
    body: Path,
    args: argparse.Namespace,
    ns: Namespace | None = None,
    prefix: str = "",
) -> GatewayRun:
    print(f"{label}: starting {count} gateway process(es)", flush=True)
    servers: list[Server] = []
    try:
        for i in range(count):
            servers.append(start_gateway(workdir, f"{label.replace(' ', '')}-{i + 1}", config))
        for s in servers:
            check_once(s, batch)
        print(f"  batch100: {WARMUP_S:g} s warm-up, {args.duration:g} s measured", flush=True)
        drive(servers, body, WARMUP_S, args.connections)
        time.sleep(0.5)
        before = asyncio.run(ns.appended(prefix, "ingest")) if ns else 0
        results = drive(servers, body, args.duration, args.connections)
        after = asyncio.run(ns.appended(prefix, "ingest")) if ns else 0
    finally:
        with signals_ignored():
            for s in servers:
                s.stop()
    run = GatewayRun(label, backend, results)
    if ns is not None:
        run.stored_messages = after - before
    mark = "  <-- ERRORS" if run.errors else ""
    print(f"    {run.events_per_s:,.0f} events/s, p99 {run.p99_ms:.2f} ms{mark}", flush=True)
    return run


# --- (b) the processor --------------------------------------------------------------------------


def bench_processor(
    label: str, workdir: Path, config_path: Path, groups: list[Any], args: argparse.Namespace
) -> ProcessorRun:
    """Preload `ingest`, then time one `headwater processor` until it has committed the end."""
    config = load_config(config_path)
    paths = DataPaths(workdir / f"{label}-data")
    print(f"{label}: preloading {args.events:,} events", flush=True)
    t = time.perf_counter()
    ends = asyncio.run(preload(config, paths, groups))
    run = ProcessorRun(label, args.events, None, preload_s=time.perf_counter() - t)
    run.stored_batches = sum(len(g) for g in groups)
    print(
        f"  loaded in {run.preload_s:.1f} s ({run.stored_batches:,} record batches); "
        "starting the processor",
        flush=True,
    )
    time.sleep(SETTLE_S)
    cmd = [str(VENV_BIN / "headwater"), "processor", "--config", str(config_path)]
    cmd += ["--data", str(paths.root)]
    started = time.perf_counter()
    proc = _spawn(label, cmd, workdir)
    progress = Progress()
    try:
        progress = asyncio.run(
            wait_consumed(
                config,
                paths,
                STAGE,
                started,
                timeout=PROCESSOR_TIMEOUT_S,
                alive=lambda: proc.proc.poll() is None,
                poll_s=0.02 if config.log.backend == "embedded" else 0.05,
            )
        )
    finally:
        with signals_ignored():
            proc.stop()
    run.seconds = progress.done_s
    run.first_commit_s = progress.first_commit_s
    if progress.first_commit_s is not None and progress.committed_at_first is not None:
        run.events_at_first_commit = round(
            args.events * sum(progress.committed_at_first.values()) / max(1, sum(ends))
        )
    run.outcomes = processed_counts(paths.metrics_dir, STAGE)
    if progress.done_s is None:
        why = "exited" if proc.proc.returncode not in (None, 0, -15) else "timed out"
        run.problem = f"did not reach the end offsets ({why}):\n{proc.log_tail()}"
    elif run.outcomes != {"processed": args.events}:
        run.problem = f"outcomes {run.outcomes}, expected {{'processed': {args.events}}}"
    if run.problem:
        print(f"  FAILED: {run.problem}", file=sys.stderr)
    else:
        print(
            f"    {run.events_per_s:,.0f} events/s ({run.seconds:.2f} s, first commit after "
            f"{run.first_commit_s:.2f} s)",
            flush=True,
        )
    return run


def bench_in_process(groups: list[Any], args: argparse.Namespace) -> ProcessorRun:
    print("in-process loop: decode, key, re-encode (no log I/O)", flush=True)
    events, seconds = in_process_rate(groups, PARTITIONS)
    run = ProcessorRun("in-process", events, seconds)
    run.stored_batches = sum(len(g) for g in groups)
    if events != args.events:
        run.problem = f"{events} events out, expected {args.events}"
    print(f"    {run.events_per_s:,.0f} events/s ({seconds:.2f} s)", flush=True)
    return run


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
        steady = p_emb.steady_events_per_s
        bars.append(
            Bar(
                f"1 processor, embedded >= {MIN_PROCESSOR_EVENTS_PER_S:,.0f} events/s",
                f"{p_emb.events_per_s:,.0f}",
                not p_emb.problem and p_emb.events_per_s >= MIN_PROCESSOR_EVENTS_PER_S,
                p_emb.problem.split("\n")[0]
                or (f"{steady:,.0f} after the first commit" if steady else ""),
            )
        )
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


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    signal.signal(signal.SIGTERM, _raise_interrupt)
    signal.signal(signal.SIGHUP, _raise_interrupt)
    load = os.getloadavg()[0]
    if load > 0.5:
        print(f"warning: 1-minute load average is {load:.2f}: other work skews the numbers")
    ns = Namespace(args.nats)
    try:
        nats_version = asyncio.run(ns.check())
    except Exception as exc:
        print(f"NATS with JetStream does not answer at {args.nats}: {exc}", file=sys.stderr)
        return 2
    print(f"NATS {nats_version} at {args.nats}; this run's prefix: {ns.base}")
    gw: list[GatewayRun] = []
    pr: list[ProcessorRun] = []
    try:
        with tempfile.TemporaryDirectory(prefix="headwater-pipeline-") as tmp:
            workdir = Path(tmp)
            body = write_bodies(workdir)["batch100"]
            batch = next(s for s in scenarios() if s.name == "batch100")
            embedded = workdir / "embedded.yaml"
            embedded.write_text(config_text(WRITE_KEY, PARTITIONS))

            def jetstream_config(name: str) -> Path:
                path = workdir / f"{name}.yaml"
                text = config_text(WRITE_KEY, PARTITIONS, prefix=ns.prefix(name), url=args.nats)
                path.write_text(text)
                return path

            try:
                gw.append(
                    bench_gateways("embedded", "embedded", 1, workdir, embedded, batch, body, args)
                )
                for label, count, name in (("jetstream", 1, "g1"), ("jetstream x2", 2, "g2")):
                    time.sleep(SETTLE_S)
                    config = jetstream_config(name)
                    try:
                        gw.append(
                            bench_gateways(
                                label,
                                "jetstream",
                                count,
                                workdir,
                                config,
                                batch,
                                body,
                                args,
                                ns,
                                ns.prefix(name),
                            )
                        )
                    finally:
                        asyncio.run(ns.purge(ns.prefix(name)))  # frees the disk at once
                time.sleep(SETTLE_S)
                groups = payload_batches(args.events, PARTITIONS, args.batch_events)
                pr.append(bench_in_process(groups, args))
                time.sleep(SETTLE_S)
                pr.append(bench_processor("processor-embedded", workdir, embedded, groups, args))
                time.sleep(SETTLE_S)
                pr.append(
                    bench_processor(
                        "processor-jetstream", workdir, jetstream_config("proc"), groups, args
                    )
                )
            except (ServerError, WrkError) as exc:
                print(f"FAILED: {exc}", file=sys.stderr)
                return 2
    finally:
        with signals_ignored():
            try:
                asyncio.run(ns.purge())
            except Exception as exc:
                print(f"warning: could not delete the streams under {ns.base}: {exc}")
    ratios, bars = judge(gw, pr)
    print_report(gw, pr, bars, args)
    save(args.out, args, gw, pr, ratios, bars, nats_version, ns)
    if any(r.errors for r in gw) or any(r.problem for r in pr):
        print("some runs had errors (non-2xx, socket errors, or a processor that did not finish)")
        return 1
    if args.strict and not all(b.passed for b in bars):
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        print(
            "\ninterrupted: every process the benchmark started has been stopped and its streams "
            "deleted",
            file=sys.stderr,
        )
        sys.exit(130)
