"""`headwater processor` and `headwater gateway`: one role per process, for a fleet."""

from __future__ import annotations

import asyncio
import logging
import os
import signal

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
    if parent is None:  # on its own (not under `up`): its control plane follows the file
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
        await run_processor(config, paths, stop, member=member)
        if watcher is not None:
            watcher.cancel()

    loop = _event_loop()
    try:
        loop.run_until_complete(main())
    except OSError as exc:
        raise click.ClickException(f"the processor cannot start: {exc}") from None
    finally:
        loop.close()


async def _watch_parent(parent: int, stop: asyncio.Event) -> None:
    while not stop.is_set():
        if os.getppid() != parent:
            logging.getLogger(__name__).warning("the parent process is gone; stopping")
            stop.set()
            return
        await asyncio.sleep(0.5)
