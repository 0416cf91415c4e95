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
import os
import signal
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from gateway import (
    AUTHORIZATION,
    SETTLE_S,
    WARMUP_S,
    _raise_interrupt,
    check_once,
    signals_ignored,
)
from loadgen import WrkError, WrkResult, run_wrk
from payloads import Scenario, scenarios, write_bodies
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
from pipeline_report import (
    PARTITIONS,
    STAGE,
    GatewayRun,
    ProcessorRun,
    judge,
    print_report,
    save,
)
from servers import ROOT, VENV_BIN, WRITE_KEY, Server, ServerError, _spawn, free_port

from headwater.config import load_config
from headwater.paths import DataPaths

PROCESSOR_TIMEOUT_S = 90.0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--duration", type=float, default=10.0, help="seconds per measured wrk run")
    p.add_argument("--connections", type=int, default=64, help="wrk connections per gateway")
    p.add_argument("--events", type=int, default=1_000_000, help="events preloaded for (b)")
    p.add_argument(
        "--batch-events", type=int, default=300, help="events per preloaded record batch"
    )
    p.add_argument("--nats", default=NATS_URL, help="NATS server with JetStream")
    p.add_argument(
        "--dedupe", action="store_true", help="the processor deduplicates (default: pass-through)"
    )
    p.add_argument(
        "--plan", action="store_true", help="the source enforces a 20-rule tracking plan"
    )
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
    run.record(progress, ends)
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
            embedded.write_text(
                config_text(WRITE_KEY, PARTITIONS, dedupe=args.dedupe, plan=args.plan)
            )

            def jetstream_config(name: str) -> Path:
                path = workdir / f"{name}.yaml"
                text = config_text(
                    WRITE_KEY,
                    PARTITIONS,
                    prefix=ns.prefix(name),
                    url=args.nats,
                    dedupe=args.dedupe,
                    plan=args.plan,
                )
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
