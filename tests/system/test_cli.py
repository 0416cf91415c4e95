"""The `headwater` command line, as an operator uses it next to a running `headwater up`."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from typing import Any

import httpx

from tests.support.server import OTHER_KEY, WRITE_KEY, HeadwaterServer, basic


def hw(
    server: HeadwaterServer, *args: str, timeout: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "headwater.cli.main",
            *args,
            "--config",
            str(server.config_path),
            "--data",
            str(server.data),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def _post(server: HeadwaterServer, key: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{server.url}/v1/track", json=body, headers={"Authorization": basic(key)}, timeout=5
    )


def _eventually(check: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(0.1)


def test_version() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "headwater.cli.main", "version"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert out.stdout.startswith("headwater ")


def test_sources_lifecycle_while_running(server: HeadwaterServer) -> None:
    name = f"cli-{uuid.uuid4().hex[:6]}"
    created = hw(server, "sources", "create", f"test/{name}", "--json")
    assert created.returncode == 0, created.stderr
    source = json.loads(created.stdout)[0]
    key = source["write_keys"][0]["key"]
    assert source["name"] == name and source["enabled"]

    listed = json.loads(hw(server, "sources", "list", "--workspace", "test", "--json").stdout)
    assert name in {s["name"] for s in listed}

    # the running gateway picks the new key up within its refresh interval
    assert _eventually(lambda: _post(server, key, {"userId": "u", "event": "E"}).status_code == 200)

    rotated = hw(server, "sources", "rotate", f"test/{name}", "--grace", "0", "--json")
    assert rotated.returncode == 0, rotated.stderr
    new_key = json.loads(rotated.stdout)["write_key"]
    assert new_key != key
    assert _eventually(lambda: _post(server, key, {"userId": "u", "event": "E"}).status_code == 401)
    assert _post(server, new_key, {"userId": "u", "event": "E"}).status_code == 200

    assert hw(server, "sources", "disable", f"test/{name}").returncode == 0
    assert _eventually(
        lambda: _post(server, new_key, {"userId": "u", "event": "E"}).status_code == 401
    )
    assert hw(server, "sources", "enable", f"test/{name}").returncode == 0
    assert _eventually(
        lambda: _post(server, new_key, {"userId": "u", "event": "E"}).status_code == 200
    )


def test_sources_errors_are_clear(server: HeadwaterServer) -> None:
    missing = hw(server, "sources", "rotate", "test/no-such-source")
    assert missing.returncode != 0
    assert "no source" in missing.stderr
    dup = hw(server, "sources", "create", "test/web")
    assert dup.returncode != 0
    assert "already exists" in dup.stderr


def test_tail_json_from_start_with_source_filter_and_limit(server: HeadwaterServer) -> None:
    run = uuid.uuid4().hex[:8]
    for i in range(3):
        assert (
            _post(server, WRITE_KEY, {"userId": "u", "event": f"{run}-web-{i}"}).status_code == 200
        )
        assert (
            _post(server, OTHER_KEY, {"userId": "u", "event": f"{run}-app-{i}"}).status_code == 200
        )
    out = hw(server, "tail", "--from-start", "--no-follow", "--json", "--source", "test/app")
    assert out.returncode == 0, out.stderr
    events = [json.loads(line)["event"] for line in out.stdout.splitlines()]
    mine = [e for e in events if e.startswith(run)]
    assert sorted(mine) == [f"{run}-app-{i}" for i in range(3)]

    limited = hw(server, "tail", "--from-start", "--json", "--limit", "2")
    assert limited.returncode == 0
    assert len(limited.stdout.splitlines()) == 2


def test_tail_follows_new_messages(server: HeadwaterServer) -> None:
    run = uuid.uuid4().hex[:8]
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "headwater.cli.main",
            "tail",
            "--json",
            "--limit",
            "2",
            "--data",
            str(server.data),
            "--source",
            "web",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        sent = 0
        deadline = time.monotonic() + 20
        while proc.poll() is None and time.monotonic() < deadline:  # until tail has two
            assert (
                _post(server, WRITE_KEY, {"userId": "u", "event": f"{run}-{sent}"}).status_code
                == 200
            )
            sent += 1
            time.sleep(0.3)
        out, _ = proc.communicate(timeout=5)
    finally:
        proc.kill()
    events = [json.loads(line)["event"] for line in out.splitlines()]
    assert len(events) == 2
    assert all(e.startswith(f"{run}-") for e in events)
    numbers = sorted(int(e.rsplit("-", 1)[1]) for e in events)
    assert numbers[1] == numbers[0] + 1  # consecutive: nothing skipped while following


def test_tail_pretty_output_names_the_source(server: HeadwaterServer) -> None:
    run = uuid.uuid4().hex[:8]
    assert _post(server, WRITE_KEY, {"userId": f"{run}-user", "event": "Pretty"}).status_code == 200
    out = hw(server, "tail", "--from-start", "--no-follow", "--source", "web")
    line = next(ln for ln in out.stdout.splitlines() if f"{run}-user" in ln)
    assert "test/web" in line and "track" in line and "Pretty" in line
