"""`headwater destinations list`: the destinations of the control plane (file- and API-made)."""

from __future__ import annotations

from dataclasses import dataclass

import click
import msgspec
from rich.console import Console
from rich.table import Table

from headwater.cli.common import data_options
from headwater.config import Config
from headwater.control.destinations import DestinationCatalog, destination_json
from headwater.control.store import ControlError, ControlStore
from headwater.paths import DataPaths


@click.group()
def destinations() -> None:
    """Inspect destinations (works while `up` is running)."""


@destinations.command("list")
@data_options
@click.option("--workspace", default=None, help="Only this workspace.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON (secrets masked).")
def list_(
    config: Config, config_path: str | None, paths: DataPaths, workspace: str | None, as_json: bool
) -> None:
    """List destinations: type, sources, enabled, and whether the file or the API made them."""
    store = ControlStore(paths.control_db)
    try:
        found = DestinationCatalog(store).all(workspace)
    except ControlError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    if as_json:
        click.echo(msgspec.json.encode([destination_json(d) for d in found]).decode())
        return
    table = Table("destination", "type", "sources", "enabled", "managed by")
    for d in found:
        sources = ", ".join(d.config.sources) or "(every source)"
        table.add_row(
            d.ref, d.config.type, sources, "yes" if d.config.enabled else "no", d.managed_by
        )
    Console().print(table)


@destinations.command("status")
@data_options
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(config: Config, config_path: str | None, paths: DataPaths, as_json: bool) -> None:
    """Per destination: events delivered and failed since the router started, jobs awaiting
    a retry, dead letters, and end-to-end latency (received -> accepted) p50/p95/p99."""
    from headwater.delivery.role import delivery_state
    from headwater.observability.metrics import merge, quantile, read_snapshots

    store = ControlStore(paths.control_db)
    try:
        found = DestinationCatalog(store).all()
    finally:
        store.close()
    state = delivery_state(config, paths)
    try:
        pending, dead = state.pending(), state.dead_count()
    finally:
        state.close()
    snap = merge(read_snapshots(paths.metrics_dir))
    counts: dict[tuple[str, str], int] = {}
    for stage, _source, outcome, _reason, count in snap.stage:
        if stage.startswith("destination:"):
            key = (stage.removeprefix("destination:"), outcome)
            counts[key] = counts.get(key, 0) + count
    latency = {name: buckets for name, buckets, _s in snap.delivery}
    rows: list[DestinationStatus] = []
    for d in found:
        buckets = latency.get(d.name, [])
        n = {
            o: counts.get((d.name, o), 0) for o in ("delivered", "filtered", "discarded", "expired")
        }
        rows.append(
            DestinationStatus(
                d.ref,
                n["delivered"],
                n["filtered"],
                n["discarded"] + n["expired"],
                pending.get(d.id, 0),
                dead.get(d.id, 0),
                {q: quantile(buckets, v) for q, v in QUANTILES.items()},
            )
        )
    if as_json:
        click.echo(msgspec.json.encode(rows).decode())
        return
    table = Table("destination", *(c.replace("_", " ") for c in COUNTS), *QUANTILES)
    for row in rows:
        counted = [f"{getattr(row, c):,}" for c in COUNTS]
        latencies = [_seconds(row.latency_s[q]) for q in QUANTILES]
        table.add_row(row.destination, *counted, *latencies)
    Console().print(table)
    click.echo("counts and latency since each router started; latency: upper bucket bounds")


@dataclass
class DestinationStatus:
    """One row of `headwater destinations status`."""

    destination: str
    delivered: int
    filtered: int
    failed: int  # discarded or expired
    awaiting_retry: int
    dead_letters: int
    latency_s: dict[str, float]  # p50, p95, p99 of received -> accepted


COUNTS = ("delivered", "filtered", "failed", "awaiting_retry", "dead_letters")
QUANTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}


def _seconds(value: float) -> str:
    if value == 0:
        return "-"
    if value == float("inf"):
        return "> 4h"
    return f"≤ {value * 1000:.0f} ms" if value < 1 else f"≤ {value:g} s"
