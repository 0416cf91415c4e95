"""Starting, watching and stopping the three servers the benchmark compares.

Each server runs in its own session (process group) so that it can be stopped as a whole and does
not see the terminal's Ctrl-C; `Server.stop` ends it gracefully, then kills whatever is left.
Everything listens on 127.0.0.1 on a free port.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
WRITE_KEY = "wk_bench"


class ServerError(Exception):
    """A server did not come up."""


def free_port() -> int:
    """A port nothing listens on right now (the kernel's choice)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Server:
    """One running server process (and its children)."""

    name: str
    port: int
    proc: subprocess.Popen[bytes]
    log_path: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_tail(self, lines: int = 30) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def wait_ready(self, path: str, *, want: int | None, timeout: float = 60.0) -> None:
        """Poll GET `path` until it answers (with status `want`, if given)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise ServerError(
                    f"{self.name} exited with {self.proc.returncode}:\n{self.log_tail()}"
                )
            status = http_status(self.base_url + path)
            if status is not None and (want is None or status == want):
                return
            time.sleep(0.2)
        raise ServerError(f"{self.name} not ready after {timeout:.0f} s:\n{self.log_tail()}")

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM the main process, wait, then SIGKILL anything left in its process group."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        if self.proc.poll() is None:
            self.proc.wait(5)


def http_status(url: str, timeout: float = 1.0) -> int | None:
    """The status of GET `url`, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def _spawn(name: str, cmd: list[str], workdir: Path, env: dict[str, str] | None = None) -> Server:
    log_path = workdir / f"{name}.log"
    port = int(cmd[cmd.index("--port") + 1]) if "--port" in cmd else 0
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=workdir,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
    return Server(name, port, proc, log_path)


NGINX_CONF = """\
daemon off;
master_process on;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    default_type application/json;
    keepalive_requests 1000000;
    client_max_body_size 1m;
    client_body_buffer_size 512k;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    server {{
        listen 127.0.0.1:{port};
        location / {{ return 200 '{{"success":true}}'; }}
    }}
}}
"""


def start_nginx(workdir: Path, workers: int) -> Server:
    """nginx answering {"success":true} to everything: the HTTP ceiling."""
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    prefix = workdir / "nginx"
    prefix.mkdir()
    port = free_port()
    conf = prefix / "nginx.conf"
    conf.write_text(NGINX_CONF.format(workers=workers, prefix=prefix, port=port))
    server = _spawn("nginx", [nginx, "-p", str(prefix), "-e", "stderr", "-c", str(conf)], workdir)
    server.port = port
    server.wait_ready("/", want=200, timeout=15)
    return server


def start_fastapi(workdir: Path, workers: int) -> Server:
    """The naive FastAPI + pydantic baseline under uvicorn, set up as FastAPI's documentation
    installs it (`fastapi[standard]`: uvicorn with httptools and uvloop)."""
    cmd = [
        str(VENV_BIN / "python"),
        "-m",
        "uvicorn",
        "--app-dir",
        str(ROOT / "bench"),
        "fastapi_baseline:app",
        "--host",
        "127.0.0.1",
        "--port",
        str(free_port()),
        "--workers",
        str(workers),
        "--log-level",
        "warning",
        "--no-access-log",
        "--http",
        "httptools",
        "--loop",
        "uvloop",
    ]
    server = _spawn("fastapi", cmd, workdir, {"PYTHONPATH": str(ROOT / "bench")})
    server.wait_ready("/healthz", want=200)
    return server


def start_headwater(workdir: Path, workers: int) -> Server:
    """`headwater up` on a fresh data directory, with durable (fsync always) acknowledgement."""
    config = workdir / "headwater.yaml"
    config.write_text(
        "workspaces:\n"
        "  - name: bench\n"
        "    sources:\n"
        "      - name: bench\n"
        f"        write_keys: [{WRITE_KEY}]\n"
    )
    data = workdir / "headwater-data"
    cmd = [
        str(VENV_BIN / "headwater"),
        "up",
        "--config",
        str(config),
        "--data",
        str(data),
        "--port",
        str(free_port()),
        "--workers",
        str(workers),
    ]
    server = _spawn("headwater", cmd, workdir)
    server.wait_ready("/readyz", want=200)
    return server


# --- memory -------------------------------------------------------------------------------------


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    task_dir = Path(f"/proc/{pid}/task")
    try:
        for task in task_dir.iterdir():
            kids.extend(int(c) for c in (task / "children").read_text().split())
    except OSError:
        pass
    return kids


def process_tree(root: int) -> list[int]:
    """`root` and all its descendants."""
    seen: list[int] = []
    todo = [root]
    while todo:
        pid = todo.pop()
        if pid not in seen:
            seen.append(pid)
            todo.extend(_children(pid))
    return seen


def rss_kb(pid: int) -> int:
    """VmRSS of `pid` in kB (0 if it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return 0


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


@dataclass
class RssSampler:
    """Samples the RSS of a Headwater process tree in a background thread.

    Gateway workers are the children of `headwater up` other than the embedded log server
    (`python -m headwater.log.embedded`); the total is the whole tree, supervisor and log included.
    """

    root: int
    interval: float = 0.25
    max_worker_kb: int = 0
    max_total_kb: int = 0
    samples: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def sample(self) -> None:
        total = worker_max = 0
        for pid in process_tree(self.root):
            kb = rss_kb(pid)
            total += kb
            if pid != self.root and "headwater.log.embedded" not in cmdline(pid):
                worker_max = max(worker_max, kb)
        self.max_total_kb = max(self.max_total_kb, total)
        self.max_worker_kb = max(self.max_worker_kb, worker_max)
        self.samples += 1

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.sample()

    def __enter__(self) -> RssSampler:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self.sample()
