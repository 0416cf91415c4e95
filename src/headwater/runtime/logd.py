"""Starting and supervising the embedded log server as a child process of `headwater up`."""

from __future__ import annotations

import logging
import os
import socket
import sys
import time
from pathlib import Path

import msgspec

from headwater.config import Config, parse_duration, parse_size
from headwater.log.embedded.protocol import socket_path
from headwater.log.embedded.server import ServerSettings
from headwater.paths import DataPaths
from headwater.runtime.children import ChildProcess

log = logging.getLogger(__name__)


def server_settings(config: Config, paths: DataPaths, log_name: str = "ingest") -> ServerSettings:
    """The log server's settings from the `log:` section of the config."""
    lc = config.log
    return ServerSettings(
        root=str(paths.log_dir(log_name).resolve()),
        partitions=lc.partitions,
        fsync=lc.fsync,
        fsync_interval_ms=int(parse_duration(lc.fsync_interval) * 1000),
        segment_bytes=parse_size(lc.segment_bytes),
        min_free_disk_bytes=parse_size(lc.min_free_disk),
        retention_max_age_ms=int(parse_duration(lc.retention.max_age) * 1000),
        retention_max_bytes=parse_size(lc.retention.max_bytes),
    )


class LogServerError(Exception):
    """The log server could not be started."""


class LogServerProcess(ChildProcess):
    """Runs the log server in a child process and restarts it if it dies."""

    def __init__(self, settings: ServerSettings) -> None:
        super().__init__("log server", [], restart_delay=0.5)
        self.settings = settings
        self.path = socket_path(Path(settings.root))

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "headwater.log.embedded",
            msgspec.json.encode(self.settings).decode(),
            "--parent",
            str(os.getpid()),
        ]

    def started(self) -> None:
        """Wait until the server accepts connections."""
        self._wait_ready(15.0)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            code = self.exit_code()
            if code is not None:
                raise LogServerError(
                    f"the log server exited with code {code} (is another `headwater up` "
                    "running on this data directory?)"
                )
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
                try:
                    probe.connect(self.path)
                    return
                except OSError:
                    time.sleep(0.05)
        raise LogServerError(f"the log server did not start within {timeout:.0f}s")
