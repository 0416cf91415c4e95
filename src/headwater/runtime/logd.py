"""Starting and supervising the embedded log server as a child process of `headwater up`."""

from __future__ import annotations

import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import msgspec

from headwater.config import Config, parse_duration, parse_size
from headwater.log.embedded.protocol import socket_path
from headwater.log.embedded.server import ServerSettings
from headwater.paths import DataPaths

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


class LogServerProcess:
    """Runs the log server in a child process and restarts it if it dies."""

    def __init__(self, settings: ServerSettings) -> None:
        self.settings = settings
        self.path = socket_path(Path(settings.root))
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    def start(self, timeout: float = 15.0) -> None:
        """Start the server and wait until it accepts connections."""
        self._spawn()
        self._wait_ready(timeout)
        self._watcher = threading.Thread(target=self._watch, name="logd-watch", daemon=True)
        self._watcher.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Let the server finish its pending commits and exit."""
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def _spawn(self) -> None:
        self._proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "headwater.log.embedded",
                msgspec.json.encode(self.settings).decode(),
                "--parent",
                str(os.getpid()),
            ],
            start_new_session=True,  # terminal signals go to us; we stop it when we are done
        )

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self._proc is not None
            code = self._proc.poll()
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

    def _watch(self) -> None:
        while not self._stopping.is_set():
            proc = self._proc
            assert proc is not None
            code = proc.wait()
            if self._stopping.is_set():
                return
            log.error("the log server exited with code %s; restarting it", code)
            time.sleep(0.5)
            try:
                self._spawn()
                self._wait_ready(15.0)
            except LogServerError:
                log.exception("restarting the log server failed")
