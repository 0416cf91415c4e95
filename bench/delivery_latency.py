"""Parts 2 and 3 of the delivery benchmark (`delivery.py`), end-to-end latency through
`headwater up`: paced runs with a healthy and a failing destination (isolation), the max
sustained rate of one webhook and a paced run at half of it (latency), and the CPU each
process used meanwhile."""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path
from typing import Any

from delivery_load import LatencyRun, Requests, blast, latencies, paced
from delivery_setup import (
    get_json,
    receiver_stats,
    run_loop,
    start_receiver,
    start_up,
    stop_all,
    wait_received,
    webhook,
)
from gateway import SETTLE_S
from servers import Server, cmdline, process_tree

DRAIN_TIMEOUT_S = 45.0
BLAST_CONNECTIONS = 32
BLAST_MAX_S = 12.0
FAILING_TIMEOUT = "1s"  # the timing-out destination's `timeout`
SLOW_DELAY_S = 5.0  # ... and how long its receiver takes to answer


# --- CPU use ------------------------------------------------------------------------------------


TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")


def _role(pid: int, root: int) -> str:
    line = cmdline(pid)
    if pid == root:
        return "up (supervisor)"
    if "headwater.log.embedded" in line:
        return "log server"
    for role in ("processor", "router"):
        if f"headwater {role}" in line:
            return role
    return "gateway"


def cpu_seconds(servers: list[Server], up: Server) -> dict[str, float]:
    """CPU seconds (user + system) so far of each role of `up`, of each other server, and of
    this process (the load generator)."""
    out: dict[str, float] = {}
    named = [(_role(pid, up.proc.pid), pid) for pid in process_tree(up.proc.pid)]
    named += [(s.name, s.proc.pid) for s in servers if s is not up]
    for name, pid in named:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) * TICK_S
    t = os.times()
    out["load generator"] = t.user + t.system
    return out


def cpu_share(before: dict[str, float], after: dict[str, float], wall: float) -> dict[str, float]:
    """Each one's CPU use over `wall` seconds, in cores (1.0 = one core busy)."""
    return {k: round((after[k] - before.get(k, 0.0)) / wall, 3) for k in after if wall > 0}


# --- the parts ---------------------------------------------------------------------------------


def paced_run(
    label: str,
    up: Server,
    healthy: Server,
    other: Server | None,
    rate: float,
    args: argparse.Namespace,
    salt: int,
) -> LatencyRun:
    """`--warmup` + `--seconds` at `rate`; the healthy receiver's latency over the measured
    part (all of it must arrive, within DRAIN_TIMEOUT_S)."""
    reqs = Requests(args.request_events, salt)
    per_s = rate / reqs.size
    warm = round(args.warmup * per_s)
    count = warm + round(args.seconds * per_s)
    print(f"{label}: {rate:,.0f} events/s in requests of {reqs.size}, {args.warmup:g} s warm-up "
          f"+ {args.seconds:g} s", flush=True)  # fmt: skip
    before = receiver_stats(healthy)["unique"]  # what earlier runs left there
    servers = [up, healthy] + ([other] if other is not None else [])
    cpu0, t0 = cpu_seconds(servers, up), time.perf_counter()
    sent = run_loop(paced(up.port, reqs, count, rate))
    cpu = cpu_share(cpu0, cpu_seconds(servers, up), time.perf_counter() - t0)
    acked = sum(1 for s in sent.status if s == 200) * reqs.size
    received = wait_received(healthy, before + acked, DRAIN_TIMEOUT_S)
    arrivals = get_json(healthy.base_url + "/arrivals", timeout=60)
    run = latencies(label, reqs, sent, arrivals, warm, rate)
    run.received = received
    run.cpu_cores = cpu
    if other is not None:
        run.other = receiver_stats(other)
    if sent.behind_max_s > 0.5:
        note = f"the load generator fell {sent.behind_max_s:.1f} s behind its schedule"
        run.problem = f"{run.problem}; {note}" if run.problem else note
    mark = f"  <-- {run.problem}" if run.problem else ""
    print(f"    healthy destination: p50 {run.p50_ms:.1f} ms, p95 {run.p95_ms:.1f} ms, "
          f"p99 {run.p99_ms:.1f} ms (gateway ack p99 {run.ack_p99_ms:.1f} ms){mark}",
          flush=True)  # fmt: skip
    if other is not None:
        o = run.other
        print(f"    other destination's receiver: {o['requests']:,} requests, {o['events']:,} "
              f"events ({o['unique']:,} distinct, {o['duplicates']:,} again)",
              flush=True)  # fmt: skip
    busy = ", ".join(f"{k} {v:.2f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
    print(f"    CPU (cores) while sending: {busy}; total {sum(cpu.values()):.2f} of "
          f"{os.cpu_count()}", flush=True)  # fmt: skip
    return run


def part_isolation(workdir: Path, args: argparse.Namespace) -> list[LatencyRun]:
    cases = [
        ("both healthy", 200, 0.0, {}),
        ("other answers 500", 500, 0.0, {}),
        (f"other times out ({FAILING_TIMEOUT})", 200, SLOW_DELAY_S, {"timeout": FAILING_TIMEOUT}),
    ]
    runs = []
    for n, (label, status, delay, extra) in enumerate(cases):
        servers: list[Server] = []
        try:
            healthy = start_receiver(workdir, f"iso{n}-healthy")
            servers.append(healthy)
            other = start_receiver(workdir, f"iso{n}-other", status, delay)
            servers.append(other)
            destinations = [
                webhook("healthy", healthy.port, batch_size=100),
                webhook("other", other.port, batch_size=100, **extra),
            ]
            up = start_up(workdir, f"iso{n}-up", destinations)
            servers.append(up)
            time.sleep(SETTLE_S)
            runs.append(paced_run(label, up, healthy, other, args.rate, args, 100 + n))
            runs[-1].other = {**runs[-1].other, "router_log": _router_lines(up)}
        finally:
            stop_all(servers)
    return runs


def _router_lines(up: Server) -> list[str]:
    """The router's last lines but its per-request `HTTP Request:` ones (warnings, errors)."""
    lines = up.log_tail(5000).splitlines()
    return [x for x in lines if " router " in x and "HTTP Request:" not in x][-8:]


def part_latency(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    """The max sustained rate of `headwater up` with one webhook (a closed-loop blast), then a
    paced run at half of it on a fresh instance (a fresh data directory: the run measures half
    load, not the recovery from the blast's backlog)."""
    blast_info = measure_max(workdir, args)
    max_rate = blast_info["sustained_events_per_s"]
    run = None
    if max_rate > 0:
        servers: list[Server] = []
        try:
            time.sleep(SETTLE_S)
            healthy = start_receiver(workdir, "half-receiver")
            servers.append(healthy)
            up = start_up(workdir, "half-up", [webhook("hook", healthy.port, batch_size=100)])
            servers.append(up)
            time.sleep(SETTLE_S)
            label = f"half of max ({max_rate / 2:,.0f}/s)"
            run = paced_run(label, up, healthy, None, max_rate / 2, args, 300)
        finally:
            stop_all(servers)
    return {"blast": blast_info, "half": run.to_json() if run else None, "_run": run}


def measure_max(workdir: Path, args: argparse.Namespace) -> dict[str, Any]:
    servers: list[Server] = []
    try:
        healthy = start_receiver(workdir, "max-receiver")
        servers.append(healthy)
        up = start_up(workdir, "max-up", [webhook("hook", healthy.port, batch_size=100)])
        servers.append(up)
        time.sleep(SETTLE_S)
        reqs = Requests(args.request_events, 200)  # the paced run's requests
        count = args.blast_events // reqs.size
        print(f"max sustained rate: up to {count * reqs.size:,} events in requests of "
              f"{reqs.size}, {BLAST_CONNECTIONS} connections, closed loop", flush=True)  # fmt: skip
        cpu0, t0 = cpu_seconds(servers, up), time.perf_counter()
        sent = run_loop(blast(up.port, reqs, count, BLAST_MAX_S, BLAST_CONNECTIONS))
        acked = sum(1 for s in sent.status if s == 200) * reqs.size
        stats = wait_received(healthy, acked, DRAIN_TIMEOUT_S * 2)
        cpu = cpu_share(cpu0, cpu_seconds(servers, up), time.perf_counter() - t0)
        first = min(sent.sent) * 1000
        span_s = (stats["last_ms"] - first) / 1000 if stats["last_ms"] else 0.0
        max_rate = stats["unique"] / span_s if span_s > 0 else 0.0
        ack_rate = acked / sent.wall_s if sent.wall_s else 0.0
        info: dict[str, Any] = {
            "sent_events": len(sent.status) * reqs.size,
            "acked_events": acked,
            "acked_events_per_s": ack_rate,
            "received": stats,
            "seconds_to_last_arrival": span_s,
            "sustained_events_per_s": max_rate,
            "cpu_cores": cpu,
        }
        print(f"    acknowledged {ack_rate:,.0f} events/s; all {stats['unique']:,} delivered "
              f"{span_s:.2f} s after the first send: {max_rate:,.0f} events/s",
              flush=True)  # fmt: skip
        busy = ", ".join(f"{k} {v:.2f}" for k, v in sorted(cpu.items(), key=lambda kv: -kv[1]))
        print(f"    CPU (cores) until the last arrival: {busy}", flush=True)
        if stats["unique"] < acked:
            info["problem"] = f"{acked - stats['unique']:,} acknowledged events missing"
        return info
    finally:
        stop_all(servers)
