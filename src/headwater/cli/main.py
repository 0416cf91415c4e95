"""`headwater`: run, inspect and administer Headwater."""

from __future__ import annotations

import os

import click

from headwater import __version__
from headwater.cli.common import data_options
from headwater.cli.sources import sources
from headwater.cli.tail import tail
from headwater.config import Config
from headwater.paths import DataPaths


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def cli() -> None:
    """Headwater: a Segment-compatible customer-data ingestion platform."""


@cli.command()
def version() -> None:
    """Print Headwater's version."""
    click.echo(f"headwater {__version__}")


@cli.command()
@data_options
@click.option("--host", default="127.0.0.1", show_default=True, help="Address to listen on.")
@click.option("--port", default=8088, show_default=True, type=int, help="Port to listen on.")
@click.option(
    "--workers",
    default=None,
    type=click.IntRange(1, 256),
    help="Gateway worker processes (default: one per core).",
)
def up(
    config: Config,
    config_path: str | None,
    paths: DataPaths,
    host: str,
    port: int,
    workers: int | None,
) -> None:
    """Run every role on embedded storage: the Tracking API on a durable local log."""
    from headwater.cli.banner import print_banner
    from headwater.runtime.logd import LogServerError, LogServerProcess, server_settings
    from headwater.runtime.prepare import prepare
    from headwater.runtime.serve import PortInUse, listen, serve_gateway

    try:
        prepared = prepare(config, paths)
    except Exception as exc:
        raise click.ClickException(f"cannot prepare {paths.root}: {exc}") from exc
    try:
        sock = listen(host, port)
    except PortInUse as exc:
        raise click.ClickException(str(exc)) from None
    logd = LogServerProcess(server_settings(config, paths))
    try:
        logd.start()
    except LogServerError as exc:
        sock.close()
        raise click.ClickException(str(exc)) from None
    n = workers or os.cpu_count() or 1
    print_banner(config, paths, prepared, host, port, n, config_path)
    try:
        serve_gateway(config, paths, sock, n)
    finally:
        logd.stop()


cli.add_command(sources)
cli.add_command(tail)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="headwater")


if __name__ == "__main__":  # pragma: no cover
    main()
