"""`headwater overview` and `headwater violations`: where a source's events went, and what
breaks its tracking plan (the same answers as the admin API's `/overview` and `/violations`)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import click
import msgspec
from rich.console import Console
from rich.table import Table

from headwater.accounting import AccountingStore, open_accounting, views
from headwater.cli.common import data_options
from headwater.config import Config
from headwater.control.store import ControlError, ControlStore
from headwater.gateway.admin import source_ref_json
from headwater.paths import DataPaths


@contextlib.contextmanager
def _opened(config: Config, paths: DataPaths, ref: str) -> Iterator[tuple[AccountingStore, Any]]:
    if not paths.control_db.exists():
        raise click.ClickException(f"no Headwater data in {paths.root} (see --data)")
    control = ControlStore(paths.control_db)
    store = None
    try:
        source = source_ref_json(control.source(ref))
        store = open_accounting(config, paths)
        yield store, source
    except (ControlError, views.ViewError) as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        if store is not None:
            store.close()
        control.close()


@click.command()
@data_options
@click.argument("source", metavar="WORKSPACE/SOURCE")
@click.option("--from", "start", default=None, help="Start: ISO 8601 or Unix seconds.")
@click.option("--to", "end", default=None, help="End (default: now).")
@click.option(
    "--granularity",
    type=click.Choice(list(views.GRANULARITIES)),
    default="hour",
    show_default=True,
)
@click.option("--json", "as_json", is_flag=True, help="Print the admin API's JSON.")
def overview(
    config: Config,
    config_path: str | None,
    paths: DataPaths,
    source: str,
    start: str | None,
    end: str | None,
    granularity: str,
    as_json: bool,
) -> None:
    """Where SOURCE's events went: received, failed on ingest, filtered, stored (by reason)."""
    with _opened(config, paths, source) as (store, src):
        found = views.overview(store, src, start=start, end=end, granularity=granularity)
    if as_json:
        click.echo(msgspec.json.encode(found).decode())
        return
    console = Console()
    name = f"{src['workspace']}/{src['name']}"
    console.print(f"[bold]{name}[/] from {found['from']} to {found['to']}")
    summary = Table("step", "events")
    for step, n in found["summary"].items():
        summary.add_row(step.replace("_", " "), f"{n:,}")
    console.print(summary)
    table = Table("stage", "outcome", "reason", "events")
    for row in found["totals"]:
        table.add_row(row["stage"], row["outcome"], row["reason"] or "-", f"{row['count']:,}")
    console.print(table)


@click.command()
@data_options
@click.argument("source", metavar="WORKSPACE/SOURCE")
@click.option("--window", type=click.Choice(list(views.WINDOWS)), default="24h", show_default=True)
@click.option("--samples", default=1, show_default=True, help="Sample messages to show per row.")
@click.option("--json", "as_json", is_flag=True, help="Print the admin API's JSON.")
def violations(
    config: Config,
    config_path: str | None,
    paths: DataPaths,
    source: str,
    window: str,
    samples: int,
    as_json: bool,
) -> None:
    """What breaks SOURCE's tracking plan: counts per event and violation, with samples."""
    with _opened(config, paths, source) as (store, src):
        found = views.violations(store, src, window=window)
    if as_json:
        click.echo(msgspec.json.encode(found).decode())
        return
    console = Console()
    console.print(
        f"[bold]{src['workspace']}/{src['name']}[/]: {found['total']:,} violations "
        f"in the last {window}"
    )
    table = Table("event", "violation", "field", "count", "sample")
    for v in found["violations"]:
        shown = [msgspec.json.encode(s["message"]).decode() for s in v["samples"][:samples]]
        table.add_row(v["event"], v["type"], v["field"] or "-", f"{v['count']:,}", "\n".join(shown))
    console.print(table)
