"""The processing benchmark: one processor with dedupe and a 20-rule tracking plan, next to
the pass-through processor in the same run.

    .venv/bin/python bench/processing.py [--events 1000000] [--batch-events 300]
        [--redis redis://127.0.0.1:6379/0] [--out bench/results/processing-latest.json]
        [--strict]

Three runs of one `headwater processor` over the same `--events` events preloaded into an
embedded `ingest` log (8 partitions):

- pass-through: no dedupe, no plan (the baseline);
- dedupe + plan, embedded: dedupe state and the delivery overview in SQLite;
- dedupe + plan, Redis: the same state in Redis (keys under `hwbench-<random>`, deleted after).

The plan has 20 track rules (four for the events the benchmark sends, typed and with a required
property, sixteen others) and the source omits unplanned properties and violating fields, so
every message is decoded, validated and re-encoded. Every run also counts every message in the
delivery overview. Bars: at least 150,000 events/s embedded and 60,000 events/s with Redis.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import uuid
from pathlib import Path

import redis
from dedupe import delete_redis_prefix
from gateway import SETTLE_S
from pipeline import bench_processor
from pipeline_logs import config_text, payload_batches
from pipeline_report import PARTITIONS, ProcessorRun
from servers import ROOT, WRITE_KEY

BARS = {"dedupe + plan, embedded": 150_000, "dedupe + plan, Redis": 60_000}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--events", type=int, default=1_000_000)
    p.add_argument("--batch-events", type=int, default=300)
    p.add_argument("--redis", default="redis://127.0.0.1:6379/0")
    out = ROOT / "bench" / "results" / "processing-latest.json"
    p.add_argument("--out", type=Path, default=out)
    p.add_argument("--strict", action="store_true", help="exit 1 when a bar fails")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    prefix = f"hwbench-{uuid.uuid4().hex[:8]}"
    groups = payload_batches(args.events, PARTITIONS, args.batch_events)
    runs: list[ProcessorRun] = []
    try:
        with tempfile.TemporaryDirectory(prefix="hwbench-processing-") as tmp:
            workdir = Path(tmp)
            for label, dedupe_plan, state in (
                ("pass-through", False, None),
                ("dedupe + plan, embedded", True, None),
                ("dedupe + plan, Redis", True, (args.redis, prefix)),
            ):
                config = workdir / f"{len(runs)}.yaml"
                config.write_text(
                    config_text(
                        WRITE_KEY, PARTITIONS, dedupe=dedupe_plan, plan=dedupe_plan, redis=state
                    )
                )
                time.sleep(SETTLE_S)
                runs.append(bench_processor(label, workdir, config, groups, args))
    finally:
        client = redis.Redis.from_url(args.redis)
        delete_redis_prefix(client, prefix)
        client.close()
    base = runs[0].events_per_s
    print(
        f"\none processor, {args.events:,} events preloaded in record batches of "
        f"{args.batch_events} per partition, {PARTITIONS} partitions"
    )
    print(f"{'run':<26}{'events/s':>12}{'seconds':>9}{'vs pass-through':>17}")
    print("-" * 64)
    for r in runs:
        ratio = f"{r.events_per_s / base:.2f}x" if base else "-"
        print(f"{r.label:<26}{r.events_per_s:>12,.0f}{(r.seconds or 0):>9.2f}{ratio:>17}")
    passed = True
    for label, bar in BARS.items():
        rate = next(r.events_per_s for r in runs if r.label == label)
        ok = rate >= bar
        passed &= ok
        print(f"[{'PASS' if ok else 'FAIL'}] {label} >= {bar:,} events/s: {rate:,.0f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "command": "python bench/processing.py " + " ".join(argv or sys.argv[1:]),
                "events": args.events,
                "runs": [r.to_json() for r in runs],
                "bars": {label: bar for label, bar in BARS.items()},
                "passed": passed,
            },
            indent=2,
        )
    )
    print(f"results saved to {args.out}")
    if any(r.problem for r in runs):
        return 1
    return 1 if args.strict and not passed else 0


if __name__ == "__main__":
    sys.exit(main())
