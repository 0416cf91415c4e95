"""Opening the logs a configuration names, on whichever backend it chooses."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

from headwater.config import Config, parse_duration, parse_size
from headwater.log.base import Log
from headwater.log.embedded.appender import AppendSettings, FsyncPolicy
from headwater.log.embedded.store import LogLayoutError
from headwater.paths import DataPaths

LOG_NAMES = ("ingest", "events")


def append_settings(config: Config) -> AppendSettings:
    """The embedded append path's settings from the `log:` section."""
    lc = config.log
    return AppendSettings(
        partitions=lc.partitions,
        fsync=FsyncPolicy(lc.fsync),
        fsync_interval_ms=int(parse_duration(lc.fsync_interval) * 1000),
        segment_bytes=parse_size(lc.segment_bytes),
        min_free_disk_bytes=parse_size(lc.min_free_disk),
    )


@contextlib.asynccontextmanager
async def open_logs(
    config: Config,
    paths: DataPaths,
    names: tuple[str, ...] = LOG_NAMES,
    *,
    create: bool = True,
    missing_ok: bool = False,
) -> AsyncIterator[dict[str, Log]]:
    """The named logs, open for reading and appending; closed on exit.

    Embedded logs live under the data directory; JetStream logs share one connection. With
    `create=False` (tools that only read), a log that does not exist yet raises
    `LogLayoutError`, or is left out with `missing_ok=True`; nothing is created.
    """
    logs: dict[str, Log] = {}
    if config.log.backend == "jetstream":
        from headwater.log.jetstream import JetStreamLog, JetStreamSettings, connect, ensure_log
        from headwater.log.jetstream.streams import log_exists

        settings = JetStreamSettings.from_config(config)
        nc = await connect(settings.url, name="headwater-tool", forever=create)
        try:
            js = nc.jetstream()
            for name in names:
                if create:
                    await ensure_log(js, settings, name)
                elif not await log_exists(js, settings, name):
                    if missing_ok:
                        continue
                    raise LogLayoutError(
                        f"no {name} log on JetStream under the prefix {settings.prefix!r}"
                    )
                logs[name] = JetStreamLog(name, nc, settings, js)
            yield logs
        finally:
            await nc.close()
        return
    from headwater.log.embedded.log import EmbeddedLog

    try:
        for name in names:
            if missing_ok and not (paths.log_dir(name) / "index.db").exists():
                continue
            logs[name] = EmbeddedLog(name, paths.log_dir(name), append_settings(config), create)
        yield logs
    finally:
        for lg in logs.values():
            await lg.close()
