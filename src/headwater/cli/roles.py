"""`headwater processor` and `headwater gateway`: one role per process, for a fleet."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable

import click

from headwater.cli.common import data_options
from headwater.config import Config
from headwater.paths import DataPaths


def _event_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is a dependency on supported platforms
        return asyncio.new_event_loop()


@click.command()
@data_options
@click.option("--parent", type=int, default=None, hidden=True)
def processor(
    config: Config, config_path: str | None, paths: DataPaths, parent: int | None
) -> None:
    """Run a processor: ingest -> steps -> events (any number of them on JetStream)."""
    from headwater.process import tune_gc
    from headwater.processing.processor import member_id, run_processor

    logging.basicConfig(level=logging.INFO, format="%(asctime)s processor %(message)s")
    tune_gc()
    member = member_id()
    run_role(
        "processor",
        config,
        paths,
        parent,
        lambda stop: run_processor(config, paths, stop, member=member),
    )


def run_role(
    name: str,
    config: Config,
    paths: DataPaths,
    parent: int | None,
    body: Callable[[asyncio.Event], Awaitable[None]],
) -> None:
    """Run a role's `body(stop)` on its own event loop until SIGINT/SIGTERM (or its parent,
    `headwater up`, is gone) sets `stop`. On its own (no parent) the role first applies the
    file to its control plane, as `up` does for its children."""
    if parent is None:
        from headwater.control.declarative import apply_config
        from headwater.control.store import ControlStore

        store = ControlStore(paths.control_db)
        try:
            apply_config(store, config)
        finally:
            store.close()

    async def main() -> None:
        loop = asyncio.get_running_loop()
        stop = asyncio.Event()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        watcher = None if parent is None else loop.create_task(_watch_parent(parent, stop))
        await body(stop)
        if watcher is not None:
            watcher.cancel()

    loop = _event_loop()
    try:
        loop.run_until_complete(main())
    except OSError as exc:
        raise click.ClickException(f"the {name} cannot start: {exc}") from None
    finally:
        loop.close()


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if os.getppid() != parent:
            logging.getLogger(__name__).warning("the parent process is gone; stopping")
            stop.set()
            return
        await asyncio.sleep(0.5)
