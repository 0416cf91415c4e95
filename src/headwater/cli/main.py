"""`headwater`: run, inspect and administer Headwater."""

from __future__ import annotations

import os

import click

from headwater import __version__
from headwater.cli.accounting import overview, violations
from headwater.cli.common import F, data_options
from headwater.cli.delivery import deadletter, router
from headwater.cli.destinations import destinations
from headwater.cli.identity import identity, profile
from headwater.cli.roles import processor
from headwater.cli.sources import sources
from headwater.cli.status import status
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


def _server_options(func: F) -> F:
    """The options `up` and `gateway` share."""
    func = click.option(
        "--workers",
        default=None,
        type=click.IntRange(1, 256),
        help="Gateway worker processes (default: one per core).",
    )(func)
    func = click.option(
        "--port", default=8088, show_default=True, type=int, help="Port to listen on."
    )(func)
    func = click.option(
        "--host", default="127.0.0.1", show_default=True, help="Address to listen on."
    )(func)
    return data_options(func)


@cli.command()
@_server_options
def up(
    config: Config,
    config_path: str | None,
    paths: DataPaths,
    host: str,
    port: int,
    workers: int | None,
) -> None:
    """Run every role on one machine: the Tracking API, the log, the processor and the
    router."""
    _serve(config, config_path, paths, host, port, workers, with_processor=True)


@cli.command()
@_server_options
def gateway(
    config: Config,
    config_path: str | None,
    paths: DataPaths,
    host: str,
    port: int,
    workers: int | None,
) -> None:
    """Run only the Tracking API (any number of them on JetStream; processors run apart)."""
    _serve(config, config_path, paths, host, port, workers, with_processor=False)


def _serve(
    config: Config,
    config_path: str | None,
    paths: DataPaths,
    host: str,
    port: int,
    workers: int | None,
    *,
    with_processor: bool,
) -> None:
    from headwater.cli.banner import print_banner
    from headwater.runtime.children import ChildProcess
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
    logd = None
    if config.log.backend == "embedded":
        logd = LogServerProcess(server_settings(config, paths))
        try:
            logd.start()
        except LogServerError as exc:
            sock.close()
            raise click.ClickException(str(exc)) from None
    processor = None
    if with_processor:
        args = ["processor", "--data", str(paths.root)]
        if config_path is not None:
            args += ["--config", config_path]
        processor = ChildProcess("processor", args)
        processor.start()
    delivering = None
    if with_processor:  # idle until a destination is declared (file or admin API)
        args = ["router", "--data", str(paths.root)]
        if config_path is not None:
            args += ["--config", config_path]
        delivering = ChildProcess("router", args)
        delivering.start()
    n = workers or os.cpu_count() or 1
    print_banner(config, paths, prepared, host, port, n, config_path)
    try:
        serve_gateway(config, paths, sock, n)
    finally:
        if delivering is not None:
            delivering.stop()
        if processor is not None:
            processor.stop()
        if logd is not None:
            logd.stop()


cli.add_command(sources)
cli.add_command(processor)
cli.add_command(router)
cli.add_command(deadletter)
cli.add_command(destinations)
cli.add_command(status)
cli.add_command(tail)
cli.add_command(overview)
cli.add_command(violations)
cli.add_command(profile)
cli.add_command(identity)


def main() -> None:
    """Console-script entry point."""
    cli(prog_name="headwater")


if __name__ == "__main__":  # pragma: no cover
    main()
