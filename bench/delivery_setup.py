"""What every part of the delivery benchmark (`delivery.py`) sets up: a headwater.yaml with
webhook destinations, the message templates, the webhook receivers (`receiver.py`), a
`headwater up` instance, and stopping them all; `run_loop` runs a coroutine on uvloop."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from gateway import signals_ignored
from pipeline_logs import message_templates
from servers import ROOT, VENV_BIN, WRITE_KEY, Server, _spawn, free_port

from headwater.control.store import stable_id
from headwater.delivery.routes import GROUP_PREFIX, destination_id

PARTITIONS = 8
WORKSPACE = "bench"
SOURCE = "bench"
SOURCE_ID = stable_id("src", WORKSPACE, SOURCE)

# 1,000 track messages split around their messageId value, and their batches' sentAt.
TEMPLATES, SENT_AT = message_templates(300)


# --- configuration ------------------------------------------------------------------------------


def webhook(name: str, port: int, **settings: Any) -> dict[str, Any]:
    return {
        "name": name,
        "type": "webhook",
        "sources": [SOURCE],
        "settings": {"url": f"http://127.0.0.1:{port}/in", **settings},
    }


def config_text(destinations: list[dict[str, Any]]) -> str:
    """A headwater.yaml (JSON is YAML): one source, the destinations, short retries."""
    conf = {
        "log": {"partitions": PARTITIONS},
        "delivery": {"retry_base": "1s", "retry_max": "5s"},
        "workspaces": [
            {
                "name": WORKSPACE,
                "sources": [{"name": SOURCE, "write_keys": [WRITE_KEY]}],
                "destinations": destinations,
            }
        ],
    }
    return json.dumps(conf, indent=2) + "\n"


def group_of(name: str) -> str:
    """The destination's consumer group on `events` (as `routes.Route.group` names it)."""
    return GROUP_PREFIX + destination_id(WORKSPACE, name)


# --- processes ----------------------------------------------------------------------------------


def start_receiver(workdir: Path, name: str, status: int = 200, delay: float = 0.0) -> Server:
    port = free_port()
    cmd = [str(VENV_BIN / "python"), str(ROOT / "bench" / "receiver.py"), "--port", str(port)]
    cmd += ["--status", str(status), "--delay", str(delay)]
    server = _spawn(name, cmd, workdir)
    try:
        server.wait_ready("/stats", want=200, timeout=15)
    except BaseException:
        with signals_ignored():
            server.stop()
        raise
    return server


def start_up(workdir: Path, name: str, destinations: list[dict[str, Any]]) -> Server:
    conf = workdir / f"{name}.yaml"
    conf.write_text(config_text(destinations))
    cmd = [str(VENV_BIN / "headwater"), "up", "--config", str(conf), "--data"]
    cmd += [str(workdir / f"{name}-data"), "--port", str(free_port()), "--workers", "1"]
    server = _spawn(name, cmd, workdir)
    try:
        server.wait_ready("/readyz", want=200)
    except BaseException:
        with signals_ignored():
            server.stop()
        raise
    return server


def get_json(url: str, timeout: float = 30.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as resp:
        return json.loads(resp.read())


def receiver_stats(server: Server) -> dict[str, Any]:
    return dict(get_json(server.base_url + "/stats"))


def wait_received(server: Server, want: int, timeout: float) -> dict[str, Any]:
    """Poll the receiver until it holds `want` distinct messageIds (or `timeout`)."""
    deadline = time.monotonic() + timeout
    stats = receiver_stats(server)
    while stats["unique"] < want and time.monotonic() < deadline:
        time.sleep(0.1)
        stats = receiver_stats(server)
    return stats


def stop_all(servers: list[Server]) -> None:
    with signals_ignored():
        for s in reversed(servers):
            try:
                s.stop()
            except Exception as exc:  # keep stopping the others
                print(f"warning: stopping {s.name}: {exc}", file=sys.stderr)


def run_loop(coro: Any) -> Any:
    try:
        import uvloop

        return uvloop.run(coro)
    except ImportError:  # pragma: no cover
        return asyncio.run(coro)
