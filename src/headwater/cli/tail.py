"""`headwater tail`: print stored messages as they arrive."""

from __future__ import annotations

import asyncio
import sys

import click
import msgspec
from rich.console import Console
from rich.markup import escape

from headwater.cli.common import data_options
from headwater.config import Config
from headwater.control.store import ControlError, ControlStore
from headwater.log.embedded.store import LogLayoutError
from headwater.log.factory import LOG_NAMES, open_logs
from headwater.log.records import Record
from headwater.paths import DataPaths

_decoder = msgspec.json.Decoder(dict[str, object])


@click.command()
@data_options
@click.option(
    "--log",
    "log_name",
    type=click.Choice(LOG_NAMES),
    default="ingest",
    show_default=True,
    help="Which log: ingest (as the gateway stored it) or events (after the processor).",
)
@click.option(
    "--source",
    "source",
    default=None,
    metavar="NAME",
    help="Only this source (NAME or WORKSPACE/NAME).",
)
@click.option("--from-start", is_flag=True, help="Start at the oldest retained message.")
@click.option(
    "--limit", type=click.IntRange(min=1), default=None, help="Stop after this many messages."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON object per line.")
@click.option(
    "--follow/--no-follow", default=True, show_default=True, help="Keep waiting for new messages."
)
def tail(
    config: Config,
    config_path: str | None,
    paths: DataPaths,
    log_name: str,
    source: str | None,
    from_start: bool,
    limit: int | None,
    as_json: bool,
    follow: bool,
) -> None:
    """Print messages stored in a log, embedded or on JetStream (works while `up` runs)."""
    source_ids = _resolve_sources(paths, source) if source else None
    printer = _Printer(as_json, paths)
    try:
        asyncio.run(_tail(config, paths, log_name, source_ids, printer, from_start, limit, follow))
    except KeyboardInterrupt:
        pass
    except LogLayoutError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot read the {log_name} log: {exc}") from None


async def _tail(
    config: Config,
    paths: DataPaths,
    log_name: str,
    source_ids: set[str] | None,
    printer: _Printer,
    from_start: bool,
    limit: int | None,
    follow: bool,
) -> None:
    async with open_logs(config, paths, (log_name,), create=False) as logs:
        log = logs[log_name]
        positions = await (log.start_offsets() if from_start else log.end_offsets())
        printed = 0
        while True:
            progressed = False
            for p in range(log.partitions):
                for batch in await log.read(p, positions[p], 1000):
                    for i, record in enumerate(batch.records):
                        if batch.base_offset + i < positions[p]:
                            continue
                        if source_ids is not None and record.source_id not in source_ids:
                            continue
                        printer.show(record)
                        printed += 1
                        if limit is not None and printed >= limit:
                            return
                    positions[p] = max(positions[p], batch.end_offset)
                    progressed = True
            if not progressed:
                if not follow:
                    return
                await asyncio.sleep(0.2)


def _resolve_sources(paths: DataPaths, name: str) -> set[str]:
    store = ControlStore(paths.control_db)
    try:
        if "/" in name:
            return {store.source(name).id}
        found = {s.id for s in store.list_sources() if s.name == name or s.id == name}
    except ControlError as exc:
        raise click.ClickException(str(exc)) from None
    finally:
        store.close()
    if not found:
        raise click.ClickException(f"no source {name!r}")
    return found


class _Printer:
    def __init__(self, as_json: bool, paths: DataPaths) -> None:
        self.as_json = as_json
        self.console = Console(highlight=False, soft_wrap=True)
        self.names: dict[str, str] = {}
        self.paths = paths

    def show(self, record: Record) -> None:
        if self.as_json:
            sys.stdout.buffer.write(record.message + b"\n")
            sys.stdout.flush()
            return
        msg = _decoder.decode(record.message)
        kind = str(msg.get("type", "?"))
        what = msg.get("event") or msg.get("name") or msg.get("groupId") or ""
        who = msg.get("userId") or msg.get("anonymousId") or ""
        self.console.print(
            f"[dim]{escape(str(msg.get('receivedAt', '')))}[/] "
            f"[cyan]{escape(self._source(record.source_id))}[/] [bold]{kind:<8}[/] "
            f"{escape(str(what))} [green]{escape(str(who))}[/] "
            f"[dim]{escape(str(msg.get('messageId', '')))}[/]"
        )

    def _source(self, source_id: str) -> str:
        if source_id not in self.names:
            store = ControlStore(self.paths.control_db)
            try:
                self.names[source_id] = store.source(source_id).ref
            except ControlError:
                self.names[source_id] = source_id
            finally:
                store.close()
        return self.names[source_id]
