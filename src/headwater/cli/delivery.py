"""`headwater router` (the delivery role) and `headwater deadletter list|redrive|delete`."""

from __future__ import annotations

import logging
from collections.abc import Callable

import click
import msgspec
from rich.console import Console
from rich.table import Table

from headwater.accounting.tally import now_ms
from headwater.accounting.views import iso
from headwater.cli.common import F, data_options
from headwater.config import Config
from headwater.control.destinations import DestinationCatalog, StoredDestination
from headwater.control.store import ControlStore
from headwater.delivery.state import DeliveryState
from headwater.paths import DataPaths


@click.command()
@data_options
@click.option("--parent", type=int, default=None, hidden=True)
def router(config: Config, config_path: str | None, paths: DataPaths, parent: int | None) -> None:
    """Run a router: deliver the `events` log to the configured destinations."""
    from headwater.cli.roles import run_role
    from headwater.delivery.role import run_router
    from headwater.process import tune_gc

    logging.basicConfig(level=logging.INFO, format="%(asctime)s router %(message)s")
    tune_gc()
    run_role("router", config, paths, parent, lambda stop: run_router(config, paths, stop))


def _stored(paths: DataPaths) -> list[StoredDestination]:
    """Every destination of the control plane (the file's and the admin API's)."""
    store = ControlStore(paths.control_db)
    try:
        return DestinationCatalog(store).all()
    finally:
        store.close()


def _destination(paths: DataPaths, ref: str) -> tuple[str, str]:
    """(id, `workspace/name`) of a destination given as its id, `name` or `workspace/name`."""
    ws_name, _, name = ref.rpartition("/")
    found = [
        d
        for d in _stored(paths)
        if d.id == ref or (d.name == name and ws_name in ("", d.workspace))
    ]
    if not found:
        raise click.ClickException(f"no destination {ref!r} (headwater destinations list)")
    if len(found) > 1:
        raise click.ClickException(f"{ref!r} names several destinations: use workspace/name")
    return found[0].id, found[0].ref


def _names(paths: DataPaths) -> dict[str, str]:
    return {d.id: d.ref for d in _stored(paths)}


@click.group()
def deadletter() -> None:
    """Events a destination still refused at the end of their retry period."""


@deadletter.command("list")
@data_options
@click.option("--destination", "ref", default=None, help="name or workspace/name")
@click.option("--limit", type=click.IntRange(1, 10_000), default=50)
@click.option("--after", type=int, default=0, help="only dead letters with a larger id")
@click.option("--json", "as_json", is_flag=True, help="one JSON object per line")
def list_dead(
    config: Config,
    config_path: str | None,
    paths: DataPaths,
    ref: str | None,
    limit: int,
    after: int,
    as_json: bool,
) -> None:
    """List dead letters, oldest first, with the reason of their last failure."""
    from headwater.delivery.role import delivery_state

    dest = None if ref is None else _destination(paths, ref)[0]
    names = _names(paths)
    state = delivery_state(config, paths)
    try:
        dead = state.dead_letters(dest, limit, after)
        counts = state.dead_count(dest)
    finally:
        state.close()
    if as_json:
        for d in dead:
            click.echo(
                msgspec.json.encode(
                    {
                        "id": d.id,
                        "destination": names.get(d.destination_id, d.destination_id),
                        "message_id": d.event.message_id,
                        "attempts": d.attempts,
                        "first_attempt": iso(d.first_ms),
                        "failed_at": iso(d.failed_ms),
                        "reason": d.reason,
                        "status": d.status,
                        "request": _text(d.request),
                        "response": _text(d.response),
                    }
                )
            )
        return
    table = Table(title=f"dead letters ({sum(counts.values())} in all)")
    for column in ("id", "destination", "messageId", "attempts", "failed at", "reason"):
        table.add_column(column)
    for d in dead:
        table.add_row(
            str(d.id),
            names.get(d.destination_id, d.destination_id),
            d.event.message_id,
            str(d.attempts),
            iso(d.failed_ms),
            d.reason,
        )
    Console().print(table)


def _chosen(func: F) -> F:
    """The options naming a destination's dead letters: `--destination`, `--id`, `--all`."""
    func = click.option("--all", "everything", is_flag=True,
                        help="every dead letter of the destination")(func)  # fmt: skip
    func = click.option("--id", "ids", type=int, multiple=True,
                        help="a dead letter's id (repeat)")(func)  # fmt: skip
    return click.option("--destination", "ref", required=True, help="name or workspace/name")(func)


def _on_chosen(
    config: Config,
    paths: DataPaths,
    ref: str,
    ids: tuple[int, ...],
    everything: bool,
    act: Callable[[DeliveryState, str, list[int] | None], int],
) -> tuple[int, str]:
    """`act(state, destination id, ids or None for all)`; (its count, `workspace/name`)."""
    from headwater.delivery.role import delivery_state

    if not ids and not everything:
        raise click.UsageError("name dead letters with --id, or pass --all")
    dest, label = _destination(paths, ref)
    state = delivery_state(config, paths)
    try:
        return act(state, dest, None if everything else list(ids)), label
    finally:
        state.close()


@deadletter.command("redrive")
@data_options
@_chosen
def redrive(
    config: Config,
    config_path: str | None,
    paths: DataPaths,
    ref: str,
    ids: tuple[int, ...],
    everything: bool,
) -> None:
    """Deliver dead letters again (a fresh retry period; a running router picks them up)."""
    n, label = _on_chosen(
        config, paths, ref, ids, everything, lambda s, d, i: s.redrive(d, i, now_ms())
    )
    click.echo(f"re-driven {n} dead letter{'s' * (n != 1)} of {label}")


@deadletter.command("delete")
@data_options
@_chosen
def delete(
    config: Config,
    config_path: str | None,
    paths: DataPaths,
    ref: str,
    ids: tuple[int, ...],
    everything: bool,
) -> None:
    """Delete dead letters for good."""
    n, label = _on_chosen(config, paths, ref, ids, everything, lambda s, d, i: s.delete_dead(d, i))
    click.echo(f"deleted {n} dead letter{'s' * (n != 1)} of {label}")


def _text(sample: bytes | None) -> str | None:
    return None if sample is None else sample.decode("utf-8", "replace")
