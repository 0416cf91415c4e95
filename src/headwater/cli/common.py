"""Options and helpers shared by every command that reads Headwater's data."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from headwater.config import Config, ConfigError, load_config
from headwater.paths import DataPaths

F = TypeVar("F", bound=Callable[..., Any])


def data_options(func: F) -> F:
    """`--config` and `--data`, as `headwater up` takes them."""

    @click.option(
        "--config",
        "config_path",
        type=click.Path(dir_okay=False),
        envvar="HEADWATER_CONFIG",
        default=None,
        help="headwater.yaml to read (also $HEADWATER_CONFIG).",
    )
    @click.option(
        "--data",
        "data_dir",
        type=click.Path(file_okay=False),
        default=None,
        help="Data directory (default: the config's `data`, else ./.headwater).",
    )
    @functools.wraps(func)
    def wrapper(*args: Any, config_path: str | None, data_dir: str | None, **kw: Any) -> Any:
        config = load(config_path or None)
        data = data_dir or os.environ.get("HEADWATER_DATA") or config.data or ".headwater"
        return func(
            *args, config=config, config_path=config_path or None, paths=DataPaths(Path(data)), **kw
        )

    return wrapper  # type: ignore[return-value]


def load(config_path: str | None) -> Config:
    try:
        return load_config(config_path)
    except ConfigError as exc:
        raise click.ClickException(str(exc)) from None
