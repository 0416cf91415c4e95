"""Everything `headwater up` does before serving: data dir, control plane, admin token, log."""

from __future__ import annotations

import os
import secrets
import shutil
from dataclasses import dataclass

from headwater.config import Config
from headwater.control.declarative import apply_config
from headwater.control.store import ControlStore, Source
from headwater.log.embedded.store import open_log
from headwater.paths import DataPaths

ADMIN_TOKEN_ENV = "HEADWATER_ADMIN_TOKEN"  # noqa: S105 - the name of a variable, not a secret


@dataclass(frozen=True, slots=True)
class Prepared:
    """What the banner shows after preparing."""

    sources: list[Source]
    new_admin_token: str | None


def prepare(config: Config, paths: DataPaths) -> Prepared:
    """Create or open the data directory and apply the config file to it."""
    paths.root.mkdir(parents=True, exist_ok=True)
    if config.log.backend == "embedded":
        open_log(paths.log_dir("ingest"), config.log.partitions).close()
    shutil.rmtree(paths.metrics_dir, ignore_errors=True)
    paths.metrics_dir.mkdir(parents=True, exist_ok=True)
    store = ControlStore(paths.control_db)
    try:
        applied = apply_config(store, config)
        new_token = None
        env_token = os.environ.get(ADMIN_TOKEN_ENV)
        if env_token:
            store.set_admin_token(env_token)
        elif not store.has_admin_token():
            new_token = f"hwadm_{secrets.token_urlsafe(32)}"
            store.set_admin_token(new_token)
        sources = applied.sources or [s for s in store.list_sources() if s.enabled]
    finally:
        store.close()
    return Prepared(sources, new_token)
