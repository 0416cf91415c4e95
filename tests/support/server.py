"""A real `headwater up` in a subprocess, on a free loopback port and a temporary data dir."""

from __future__ import annotations

import base64
import contextlib
import ctypes
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import msgspec

from headwater.log.embedded import EmbeddedLogReader
from headwater.log.embedded.store import LogLayoutError

ADMIN_TOKEN = "hwadm_test_token"
WRITE_KEY = "wk_test_web_1"
OTHER_KEY = "wk_test_app_1"

CONFIG = f"""
workspaces:
  - name: test
    sources:
      - name: web
        write_keys: [{WRITE_KEY}]
      - name: app
        write_keys: [{OTHER_KEY}]
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def basic(key: str) -> str:
    return "Basic " + base64.b64encode(f"{key}:".encode()).decode()


class HeadwaterServer:
    """Start, stop, kill and restart `headwater up`; read what it stored."""

    def __init__(
        self, root: Path, config: str = CONFIG, workers: int = 1, env: dict[str, str] | None = None
    ) -> None:
        self.root = root
        self.data = root / "data"
        self.config_path = root / "headwater.yaml"
        self.config_path.write_text(config)
        self.workers = workers
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {**os.environ, "HEADWATER_ADMIN_TOKEN": ADMIN_TOKEN, **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = root / "server.log"

    def start(self, timeout: float = 30.0) -> None:
        log = self.log_path.open("ab")
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "headwater.cli.main",
                "up",
                "--config",
                str(self.config_path),
                "--data",
                str(self.data),
                "--port",
                str(self.port),
                "--workers",
                str(self.workers),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=self.env,
            start_new_session=True,
            preexec_fn=_die_with_parent,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"headwater up exited: {self.log_path.read_text()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"headwater up not ready: {self.log_path.read_text()[-3000:]}")

    def stop(self, timeout: float = 20.0) -> None:
        """Graceful stop (SIGTERM), as an operator would."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL every process of the server (gateway workers and the log server)."""
        if self.proc is None:
            return
        pids = [*_descendants(self.proc.pid), self.proc.pid]
        with contextlib.suppress(ProcessLookupError):  # the supervisor and its workers at once,
            os.killpg(self.proc.pid, signal.SIGKILL)  # so none is respawned meanwhile
        for pid in pids:  # and the log server, in a session of its own
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        _wait_gone(pids)

    def messages(self, log: str = "ingest") -> list[dict[str, Any]]:
        """Every message of `log` (stamped), oldest first per partition, with the source and
        the partition it was stored under (`__source_id`, `__partition`)."""
        reader = EmbeddedLogReader(self.data / "log" / log)
        try:
            out: list[dict[str, Any]] = []
            for p in range(reader.partitions):
                offset = 0
                while True:
                    batches = reader.read(p, offset)
                    if not batches:
                        break
                    for batch in batches:
                        for record in batch.records:
                            msg = msgspec.json.decode(record.message)
                            msg["__source_id"] = record.source_id
                            msg["__partition"] = p
                            out.append(msg)
                        offset = batch.end_offset
            return out
        finally:
            reader.close()

    def by_message_id(self, log: str) -> dict[str, dict[str, Any]]:
        """`messages(log)` by messageId; empty while the log is not made (whole) yet."""
        try:
            return {m["messageId"]: m for m in self.messages(log)}
        except (LogLayoutError, sqlite3.OperationalError):
            return {}

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=10.0, **kw)


def _die_with_parent() -> None:
    """If the test process dies (say, a timeout kills pytest), its server dies too; the
    server's own workers and log server then stop as their parent is gone."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


PR_SET_PDEATHSIG = 1


def _descendants(pid: int) -> list[int]:
    out: list[int] = []
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return out
    for child in children:
        out.append(int(child))
        out.extend(_descendants(int(child)))
    return out


def _wait_gone(pids: list[int], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    for pid in pids:
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            status = (
                Path(f"/proc/{pid}/status").read_text() if Path(f"/proc/{pid}").exists() else ""
            )
            if "State:\tZ" in status:
                break
            time.sleep(0.05)
