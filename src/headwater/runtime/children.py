"""Supervising a role run as a child process of `headwater up` (the log server, the processor)."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time

log = logging.getLogger(__name__)


class ChildProcess:
    """Runs `python -m headwater <args> --parent <our pid>` and restarts it if it dies.

    The child runs in its own session (terminal signals come to us; we stop it when we are
    done) and stops by itself if we disappear (`--parent`). Subclasses may run another command
    (`command`) and wait until the child is ready after every start (`started`).
    """

    def __init__(self, name: str, args: list[str], restart_delay: float = 1.0) -> None:
        self.name = name
        self.args = args
        self.restart_delay = restart_delay
        self._proc: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watcher: threading.Thread | None = None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def command(self) -> list[str]:
        """The child's command line."""
        return [sys.executable, "-m", "headwater", *self.args, "--parent", str(os.getpid())]

    def started(self) -> None:
        """Called after each start; raise to say the child did not come up."""

    def start(self) -> None:
        """Start the child (and wait until `started` returns), then watch over it."""
        self._spawn()
        self.started()
        self._watcher = threading.Thread(target=self._watch, name=f"{self.name}-watch", daemon=True)
        self._watcher.start()

    def stop(self, timeout: float = 15.0) -> None:
        """Ask the child to finish (SIGTERM), kill it after `timeout` seconds."""
        self._stopping.set()
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def exit_code(self) -> int | None:
        """The child's exit code, or None while it runs."""
        return None if self._proc is None else self._proc.poll()

    def _spawn(self) -> None:
        self._proc = subprocess.Popen(self.command(), start_new_session=True)

    def _watch(self) -> None:
        while not self._stopping.is_set():
            proc = self._proc
            assert proc is not None
            code = proc.wait()
            if self._stopping.is_set():
                return
            log.error("the %s exited with code %s; restarting it", self.name, code)
            time.sleep(self.restart_delay)
            if self._stopping.is_set():
                return
            try:
                self._spawn()
                self.started()
            except Exception:
                log.exception("restarting the %s failed", self.name)
