"""`headwater profile` (what the Profile API answers, read from the data directory) and
`headwater identity rebuild` (the graph made again from its journal)."""

from __future__ import annotations

from typing import Any

import click
import msgspec
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from headwater.cli.common import data_options
from headwater.config import Config
from headwater.control.identity import IdentityCatalog
from headwater.control.store import ControlStore
from headwater.identity.api import WHAT, ProfileApi, ProfileError, open_lookup
from headwater.identity.resolver import rebuild as rebuild_graph
from headwater.identity.settings import IdentitySettings, identity_settings
from headwater.identity.stores import discard, open_store, store_exists
from headwater.paths import DataPaths

REBUILT = "identity-rebuilt"  # the scratch graph a rebuild makes, then deletes


@click.command()
@data_options
@click.argument("ref", metavar="ID_TYPE:VALUE")
@click.option("--space", default=None, help="The workspace (default: the only one declared).")
@click.option("--limit", default=None, type=int, help="Events and identifiers to show.")
@click.option("--json", "as_json", is_flag=True, help="Print the Profile API's JSON.")
def profile(
    config: Config,
    config_path: str | None,
    paths: DataPaths,
    ref: str,
    space: str | None,
    limit: int | None,
    as_json: bool,
) -> None:
    """One profile: its traits, identifiers, metadata, links and recent events."""
    if space is None:
        names = [ws.name for ws in config.workspaces]
        if len(names) != 1:
            raise click.ClickException("name the workspace with --space")
        space = names[0]
    if not store_exists(config, paths):
        raise click.ClickException(f"no profiles in {paths.root} (is identity.enabled on?)")
    api = ProfileApi(open_lookup(config, paths), {})
    lookup = api.lookup
    try:
        found = api.find(space, ref)
        reader = lookup.reader(space)
        assert reader is not None
        limited = {} if limit is None else {"limit": str(limit)}
        answers: dict[str, Any] = {
            what: api.resource(
                reader, found, what, limited if what in ("events", "external_ids") else {}, ""
            )
            for what in WHAT
        }
    except ProfileError as exc:
        raise click.ClickException(exc.message) from None
    if as_json:
        click.echo(msgspec.json.encode({"profile_id": found, **answers}).decode())
        return
    _print(found, answers)


def _print(found: str, answers: dict[str, Any]) -> None:
    console = Console()
    meta = answers["metadata"]["metadata"]
    console.print(f"[bold]{found}[/] created {meta['created_at']}, updated {meta['updated_at']}")
    if meta["merged_profiles"]:
        console.print(f"merged from {', '.join(meta['merged_profiles'])}")
    traits = Table("trait", "value")
    for name, value in answers["traits"]["traits"].items():
        traits.add_row(name, msgspec.json.encode(value).decode())
    console.print(traits)
    ids = Table("type", "value", "first seen", "first message")
    for x in answers["external_ids"]["data"]:
        ids.add_row(x["type"], x["id"], x["created_at"], x["first_message_id"])
    console.print(ids)
    for link in answers["links"]["data"]:
        groups = ", ".join(g["id"] for g in link["external_ids"])
        console.print(f"linked to {link['to_collection']}: {groups}")
    events = Table("type", "event", "messageId")
    for e in answers["events"]["data"]:
        name = str(e.get("event") or e.get("name") or "")
        events.add_row(str(e.get("type")), name, str(e.get("messageId")))
    console.print(events)


def _control_settings(paths: DataPaths) -> dict[str, IdentitySettings]:
    """Each workspace's identity settings, as the processor reads them (the control plane)."""
    if not paths.control_db.exists():
        return {}
    control = ControlStore(paths.control_db)
    try:
        return {ws: identity_settings(c) for ws, c in IdentityCatalog(control).all().items()}
    finally:
        control.close()


@click.group()
def identity() -> None:
    """The identity graph."""


@identity.command()
@data_options
def rebuild(config: Config, config_path: str | None, paths: DataPaths) -> None:
    """Make the identity graph again from its journal, in the order it was resolved, and say
    whether it comes out the same, with the settings Headwater would start with (those the
    file declares, else the admin API's); exits 1 if not."""
    if not store_exists(config, paths):
        raise click.ClickException(f"no identity graph in {paths.root}")
    discard(config, paths, REBUILT)
    source = open_store(config, paths, readonly=True)  # the processor may be writing it
    target = open_store(config, paths, name=REBUILT)
    settings = _control_settings(paths)
    for ws in config.workspaces:  # what the file declares wins, as it does when Headwater starts
        if ws.identity is not None:
            settings[ws.name] = identity_settings(ws.identity)
    try:
        total = source.journal_size()
        with Progress(transient=True) as bar:
            task = bar.add_task("replaying the journal", total=total)
            replayed = rebuild_graph(
                source,
                target,
                lambda ws: settings.get(ws) or identity_settings(),
                progress=lambda n: bar.advance(task, n),
            )
        workspaces = source.journal_workspaces()
        differences = [ws for ws in workspaces if source.partition(ws) != target.partition(ws)]
    finally:
        source.close()
        target.close()
    click.echo(f"replayed {replayed:,} journaled messages of {len(workspaces)} workspace(s)")
    if differences:
        click.echo(f"the rebuilt graph differs in: {', '.join(differences)}")
    else:
        click.echo("the rebuilt graph is the same as the current one")
    discard(config, paths, REBUILT)
    if differences:
        raise SystemExit(1)
