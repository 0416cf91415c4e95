"""`headwater status`: partitions, owners, offsets and lag of every log, on either backend."""

from __future__ import annotations

import asyncio
import fcntl
import os
import sys

import click
import msgspec
from rich.console import Console
from rich.table import Table

from headwater.cli.common import data_options
from headwater.config import Config
from headwater.log.embedded.store import LogLayoutError
from headwater.log.factory import LOG_NAMES, open_logs
from headwater.paths import DataPaths


class PartitionStatus(msgspec.Struct):
    """One partition of one log."""

    log: str
    partition: int
    start: int
    end: int
    owner: str | None
    committed: dict[str, int]
    lag: dict[str, int]


@click.command()
@data_options
@click.option("--json", "as_json", is_flag=True, help="One JSON object per partition and log.")
def status(config: Config, config_path: str | None, paths: DataPaths, as_json: bool) -> None:
    """Show every log's partitions: owner, offsets, and each consumer group's lag."""
    try:
        rows = asyncio.run(collect(config, paths))
    except LogLayoutError as exc:
        raise click.ClickException(str(exc)) from None
    except OSError as exc:
        raise click.ClickException(f"cannot read the logs: {exc}") from None
    if as_json:
        for row in rows:
            sys.stdout.buffer.write(msgspec.json.encode(row) + b"\n")
        return
    unit = "records" if config.log.backend == "embedded" else "batches"
    table = Table(title=f"Headwater logs ({config.log.backend}; offsets count {unit})")
    for column in ("log", "partition", "owner", "start", "end", "committed", "lag"):
        table.add_column(column, justify="right" if column in ("start", "end", "lag") else "left")
    for row in rows:
        table.add_row(
            row.log,
            str(row.partition),
            row.owner or "-",
            str(row.start),
            str(row.end),
            ", ".join(f"{g}={o}" for g, o in row.committed.items()) or "-",
            ", ".join(f"{g}={n}" for g, n in row.lag.items()) or "-",
        )
    Console().print(table)


async def collect(config: Config, paths: DataPaths) -> list[PartitionStatus]:
    """The status of every partition of every log that exists."""
    rows: list[PartitionStatus] = []
    async with open_logs(config, paths, LOG_NAMES, create=False, missing_ok=True) as logs:
        if not logs:
            where = (
                f"JetStream (prefix {config.log.prefix!r})"
                if config.log.backend == "jetstream"
                else str(paths.root)
            )
            raise LogLayoutError(f"no log in {where}: start Headwater once to create it")
        owners = await _owners(config, paths, next(iter(logs.values())).partitions)
        for name, log in logs.items():
            starts, ends = await log.start_offsets(), await log.end_offsets()
            groups = await log.groups()
            committed = {g: await log.committed(g) for g in groups}
            for p in range(log.partitions):
                done = {g: c.get(p, 0) for g, c in committed.items()}
                rows.append(
                    PartitionStatus(
                        log=name,
                        partition=p,
                        start=starts[p],
                        end=ends[p],
                        owner=owners.get(p) if name == "ingest" else None,
                        committed=done,
                        lag={g: max(0, ends[p] - max(c, starts[p])) for g, c in done.items()},
                    )
                )
    return rows


async def _owners(config: Config, paths: DataPaths, partitions: int) -> dict[int, str]:
    """Which processor owns each `ingest` partition."""
    if config.log.backend == "jetstream":
        from headwater.log.jetstream import Names, connect
        from headwater.log.jetstream.leases import read_leases

        nc = await connect(config.log.url, name="headwater-status", forever=False)
        try:
            return await read_leases(nc.jetstream(), Names(config.log.prefix).leases_bucket)
        finally:
            await nc.close()
    lock = paths.root / "processor.lock"
    if not lock.exists():
        return {}
    fd = os.open(lock, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        fcntl.flock(fd, fcntl.LOCK_UN)
        return {}  # nobody holds it: no processor is running
    except BlockingIOError:
        return dict.fromkeys(range(partitions), "embedded processor")
    finally:
        os.close(fd)
