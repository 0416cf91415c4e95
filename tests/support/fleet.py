"""Headwater's roles as real processes (`up`, `gateway`, `processor`) and its CLI tools, on a
JetStream prefix (or an embedded data directory) of the test's own.

Every process runs in a session of its own and dies with the test process (PR_SET_PDEATHSIG);
`Fleet.close()` kills whatever is left, process trees included, and deletes the prefix.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx
import nats

from headwater.log.jetstream import Names
from headwater.log.jetstream.leases import read_leases
from tests.support.jetstream import NATS_URL, jetstream_config, purge_prefix, unique_prefix
from tests.support.server import _descendants, _die_with_parent, _wait_gone, basic, free_port

WRITE_KEY = "wk_acme_web_1"
WORKSPACES = f"""workspaces:
  - name: acme
    sources:
      - name: web
        write_keys: [{WRITE_KEY}]
"""


class Role:
    """One `python -m headwater <role>` process (and whatever it forks)."""

    def __init__(self, name: str, args: list[str], log_path: Path) -> None:
        self.name = name
        self.args = args
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Role:
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "headwater", *self.args],
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        return self

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def owns(self, owner: str | None) -> bool:
        """Whether a lease holder's id (`<host>-<pid>-<random>`) names this process."""
        return owner is not None and owner.rsplit("-", 2)[-2:-1] == [str(self.pid)]

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self, timeout: float = 20.0) -> int | None:
        """SIGTERM, as an operator stops it; the exit code (None if it had to be killed)."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                return None
        return self.proc.returncode

    def kill(self) -> None:
        """SIGKILL the process and every process under it, at once."""
        if self.proc is None:
            return
        pids = [*_descendants(self.proc.pid), self.proc.pid]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        self.proc.wait()
        _wait_gone(pids)


class Gateway(Role):
    """A role that serves the Tracking API (`gateway` or `up`)."""

    def __init__(self, name: str, args: list[str], log_path: Path, port: int) -> None:
        super().__init__(name, args, log_path)
        self.url = f"http://127.0.0.1:{port}"

    def wait_ready(self, timeout: float = 30.0) -> Gateway:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise RuntimeError(f"{self.name} exited: {self.output()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{self.name} not ready: {self.output()[-3000:]}")

    def send(self, ids: Iterable[str], event: str = "Test", timeout: float = 10.0) -> int:
        """POST one batch of track calls with these messageIds; the HTTP status."""
        body = {
            "batch": [
                {"type": "track", "event": event, "userId": f"u{n % 50}", "messageId": mid}
                for n, mid in enumerate(ids)
            ]
        }
        r = httpx.post(
            f"{self.url}/v1/batch",
            json=body,
            headers={"Authorization": basic(WRITE_KEY)},
            timeout=timeout,
        )
        if r.status_code == 200:
            assert r.json() == {"success": True}
        return r.status_code


class Fleet:
    """A configuration and the processes started on it."""

    def __init__(
        self,
        root: Path,
        *,
        jetstream: bool = True,
        partitions: int = 4,
        lease_ttl: str = "3s",
        nats_url: str = NATS_URL,
    ) -> None:
        self.root = root
        self.prefix = unique_prefix() if jetstream else None
        self.config = root / "headwater.yaml"
        log_line = ""
        if self.prefix is not None:
            log_line = jetstream_config(self.prefix, partitions, lease_ttl)
            log_line = log_line.replace(NATS_URL, nats_url)
        self.config.write_text(log_line + WORKSPACES)
        self.roles: list[Role] = []
        self._count = 0

    def __enter__(self) -> Fleet:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        for role in reversed(self.roles):
            role.kill()
        if self.prefix is not None:
            asyncio.run(purge_prefix(self.prefix))

    # -- roles ---------------------------------------------------------------------------------

    def _dir(self, name: str) -> tuple[str, Path]:
        self._count += 1
        label = f"{name}-{self._count}"
        return label, self.root / label

    def processor(self) -> Role:
        label, data = self._dir("processor")
        args = ["processor", "--config", str(self.config), "--data", str(data)]
        role = Role(label, args, self.root / f"{label}.log")
        self.roles.append(role)
        return role.start()

    def gateway(self, role: str = "gateway", data: Path | None = None) -> Gateway:
        label, own = self._dir(role)
        port = free_port()
        args = [role, "--config", str(self.config), "--data", str(data or own)]
        args += ["--host", "127.0.0.1", "--port", str(port), "--workers", "1"]
        gw = Gateway(label, args, self.root / f"{label}.log", port)
        self.roles.append(gw)
        gw.start()
        return gw.wait_ready()

    # -- tools ---------------------------------------------------------------------------------

    def headwater(self, *args: str, data: Path | None = None, timeout: float = 60.0) -> str:
        """Run a `headwater` command on this configuration; its stdout (it must succeed)."""
        cmd = [sys.executable, "-m", "headwater", *args, "--config", str(self.config)]
        cmd += ["--data", str(data or self.root / "tool")]
        done = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
        assert done.returncode == 0, done.stderr.decode(errors="replace")[-3000:]
        return done.stdout.decode()

    def headwater_fails(self, *args: str, data: Path | None = None, timeout: float = 60.0) -> str:
        """Run a `headwater` command that must fail; its stderr."""
        cmd = [sys.executable, "-m", "headwater", *args, "--config", str(self.config)]
        cmd += ["--data", str(data or self.root / "tool")]
        done = subprocess.run(cmd, capture_output=True, timeout=timeout, check=False)
        assert done.returncode != 0, done.stdout.decode(errors="replace")[-3000:]
        return done.stderr.decode(errors="replace")

    def status(self, data: Path | None = None) -> list[dict[str, Any]]:
        """`headwater status --json`: one dict per partition and log."""
        out = self.headwater("status", "--json", data=data)
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def messages(self, log: str, data: Path | None = None) -> list[dict[str, Any]]:
        """Every message of a log, from `headwater tail --from-start --no-follow --json`."""
        out = self.headwater(
            "tail", "--log", log, "--from-start", "--no-follow", "--json", data=data
        )
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def leases(self) -> dict[int, str]:
        """Who holds each `ingest` partition's lease now (straight from the bucket)."""
        assert self.prefix is not None
        return asyncio.run(_leases(self.prefix))

    def wait_leases(
        self, done: Callable[[dict[int, str]], bool], timeout: float, every: float = 0.05
    ) -> dict[int, str]:
        """Poll the leases until `done(leases)`; the last leases seen (check `done` again)."""
        deadline = time.monotonic() + timeout
        leases = self.leases()
        while not done(leases) and time.monotonic() < deadline:
            time.sleep(every)
            leases = self.leases()
        return leases


async def _leases(prefix: str) -> dict[int, str]:
    nc = await nats.connect(NATS_URL)
    try:
        return await read_leases(nc.jetstream(), Names(prefix).leases_bucket)
    finally:
        await nc.close()


def wait_until(check: Callable[[], bool], timeout: float, every: float = 0.2) -> bool:
    """Poll `check` until it holds or `timeout` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while True:
        if check():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(every)
