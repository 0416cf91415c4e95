"""`headwater sources create|list|rotate|disable|enable`: manage sources and write keys."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import click
import msgspec
from rich.console import Console
from rich.table import Table

from headwater.cli.common import data_options
from headwater.config import Config, parse_duration
from headwater.control.store import ControlError, ControlStore, Source
from headwater.gateway.admin import source_json
from headwater.paths import DataPaths


@contextlib.contextmanager
def _store(paths: DataPaths) -> Iterator[ControlStore]:
    store = ControlStore(paths.control_db)
    try:
        yield store
    except ControlError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()


def _show(sources: list[Source], as_json: bool) -> None:
    if as_json:
        click.echo(msgspec.json.encode([source_json(s) for s in sources]).decode())
        return
    table = Table("source", "id", "enabled", "write keys")
    for s in sources:
        keys = []
        for k in s.write_keys:
            note = " (disabled)" if k.disabled else (" (expiring)" if k.expires_ms else "")
            keys.append(k.key + note)
        table.add_row(s.ref, s.id, "yes" if s.enabled else "no", "\n".join(keys))
    Console().print(table)


@click.group()
def sources() -> None:
    """Manage sources and their write keys (works while `up` is running)."""


@sources.command("create")
@data_options
@click.argument("ref", metavar="WORKSPACE/NAME")
@click.option("--write-key", "write_keys", multiple=True, help="Use this write key (repeatable).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def create(
    config: Config,
    config_path: str | None,
    paths: DataPaths,
    ref: str,
    write_keys: tuple[str, ...],
    as_json: bool,
) -> None:
    """Create a source (and its workspace if new); prints its write key."""
    workspace, sep, name = ref.partition("/")
    if not sep:
        raise click.UsageError("give the source as WORKSPACE/NAME")
    with _store(paths) as store:
        store.ensure_workspace(workspace, managed_by="api")
        src = store.create_source(workspace, name, write_keys=list(write_keys) or None)
        _show([src], as_json)


@sources.command("list")
@data_options
@click.option("--workspace", default=None, help="Only this workspace.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def list_(
    config: Config, config_path: str | None, paths: DataPaths, workspace: str | None, as_json: bool
) -> None:
    """List sources with their write keys."""
    with _store(paths) as store:
        _show(store.list_sources(workspace), as_json)


@sources.command("rotate")
@data_options
@click.argument("ref", metavar="WORKSPACE/NAME|ID")
@click.option(
    "--grace",
    default="24h",
    show_default=True,
    help="How long the old keys keep working (e.g. 0, 30m, 24h).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def rotate(
    config: Config, config_path: str | None, paths: DataPaths, ref: str, grace: str, as_json: bool
) -> None:
    """Issue a new write key; the old ones stop after the grace period."""
    try:
        seconds = parse_duration(grace)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--grace") from None
    with _store(paths) as store:
        src, key = store.rotate_write_key(ref, grace_seconds=seconds)
        if as_json:
            click.echo(msgspec.json.encode({"write_key": key, "source": source_json(src)}))
        else:
            click.echo(f"new write key for {src.ref}: {key}")


@sources.command("disable")
@data_options
@click.argument("ref", metavar="WORKSPACE/NAME|ID")
def disable(config: Config, config_path: str | None, paths: DataPaths, ref: str) -> None:
    """Stop accepting events for a source (its write keys get 401)."""
    with _store(paths) as store:
        src = store.set_source_enabled(ref, False)
        click.echo(f"disabled {src.ref}")


@sources.command("enable")
@data_options
@click.argument("ref", metavar="WORKSPACE/NAME|ID")
def enable(config: Config, config_path: str | None, paths: DataPaths, ref: str) -> None:
    """Accept events for a disabled source again."""
    with _store(paths) as store:
        src = store.set_source_enabled(ref, True)
        click.echo(f"enabled {src.ref}")
