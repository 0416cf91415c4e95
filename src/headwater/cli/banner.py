"""What `headwater up` prints when it starts: where it listens, keys, and a line to try."""

from __future__ import annotations

import shlex

from rich.console import Console

from headwater import __version__
from headwater.config import Config
from headwater.paths import DataPaths
from headwater.runtime.prepare import ADMIN_TOKEN_ENV, Prepared


def print_banner(
    config: Config,
    paths: DataPaths,
    prepared: Prepared,
    host: str,
    port: int,
    workers: int,
    config_path: str | None,
) -> None:
    console = Console(highlight=False)
    url = f"http://{host}:{port}"
    lc = config.log
    console.print(
        f"[bold]Headwater {__version__}[/] Tracking API on [cyan]{url}[/] "
        f"({workers} worker{'s' if workers != 1 else ''})"
    )
    console.print(
        f"data: {paths.root.resolve()}  log: embedded, {lc.partitions} partitions, fsync {lc.fsync}"
    )
    if prepared.new_admin_token:
        console.print(
            f"[yellow]Admin token (shown once; set {ADMIN_TOKEN_ENV} to choose your "
            f"own):[/] {prepared.new_admin_token}",
            soft_wrap=True,
        )
    key = None
    if prepared.sources:
        console.print("sources:")
        for src in prepared.sources:
            keys = [k.key for k in src.write_keys if not k.disabled]
            console.print(f"  {src.ref:<24} write key {', '.join(keys) or '(none)'}")
            key = key or (keys[0] if keys else None)
    else:
        console.print(
            "no sources yet: declare them in headwater.yaml or run "
            "`headwater sources create WORKSPACE/NAME`"
        )
    if key:
        body = '{"userId":"user-1","event":"Signed Up","properties":{"plan":"pro"}}'
        console.print("try:", style="bold")
        console.print(
            f"  curl -s {url}/v1/track -u {shlex.quote(key + ':')} "
            f"-H 'Content-Type: application/json' -d {shlex.quote(body)}",
            soft_wrap=True,
        )
        opts = f" --config {shlex.quote(config_path)}" if config_path else ""
        opts += f" --data {shlex.quote(str(paths.root))}"
        console.print(f"  headwater tail{opts}", soft_wrap=True)
