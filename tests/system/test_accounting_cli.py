"""`headwater overview` and `headwater violations`: what the accounting of a data directory says
about one source, as JSON (the admin API's answer) or as tables."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from click.testing import CliRunner, Result

from headwater.accounting.store import Retention, SqliteAccountingStore
from headwater.accounting.tally import MINUTE_MS, Tally
from headwater.cli.main import cli
from headwater.config import Config
from headwater.control.declarative import apply_config
from headwater.control.store import ControlStore
from headwater.gateway.admin import AdminApi
from tests.support.server import ADMIN_TOKEN, HeadwaterServer, basic

WEB_SAMPLE = {
    "type": "track",
    "event": "Unplanned Thing",
    "userId": "u-1",
    "messageId": "m-unplanned",
}
SAMPLE_2 = {
    "type": "track",
    "event": "Order Completed",
    "userId": "u-2",
    "messageId": "m-violation",
    "properties": {"revenue": "lots"},
}


def declared() -> Config:
    return msgspec.convert(
        {
            "workspaces": [
                {
                    "name": "acme",
                    "tracking_plans": [
                        {"name": "shop", "rules": {"track": {"Order Completed": {}}}}
                    ],
                    "sources": [
                        {
                            "name": "web",
                            "tracking_plan": "shop",
                            "enforcement": {"unplanned_events": "block"},
                        },
                        {"name": "app"},
                    ],
                }
            ]
        },
        Config,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A data directory whose accounting counted, a minute ago, for acme/web: 5 received, 2
    failed on ingest, 1 duplicate, 1 blocked as unplanned, 3 stored, and 2 violations (one of
    them twice); nothing for acme/app."""
    root = tmp_path_factory.mktemp("acct-cli") / "data"
    store = ControlStore(root / "control.db")
    try:
        apply_config(store, declared())
        web = store.source("acme/web").id
    finally:
        store.close()
    accounting = SqliteAccountingStore(
        root / "state" / "accounting.db", Retention.from_config(Config())
    )
    at = int(time.time() * 1000) - MINUTE_MS
    tally = Tally()
    tally.outcome(web, at, "ingest", "received", "", 5)
    tally.outcome(web, at, "ingest", "failed", "invalid_json", 2)
    tally.outcome(web, at, "processor", "duplicate", "message_id_seen", 1)
    tally.outcome(web, at, "processor", "blocked", "unplanned_event", 1)
    tally.outcome(web, at, "processor", "processed", "", 3)
    unplanned = msgspec.json.encode(WEB_SAMPLE)
    tally.violation(web, at, "Unplanned Thing", "unplanned_event", "event", unplanned)
    violating = msgspec.json.encode(SAMPLE_2)
    for _ in range(2):
        tally.violation(web, at, "Order Completed", "type", "properties.revenue", violating)
    try:
        assert accounting.record(tally)
    finally:
        accounting.close()
    yield root


def run(data: Path, *args: str) -> Result:
    """`headwater <args> --data <data>` in process, on a wide terminal (tables not wrapped)."""
    runner = CliRunner()
    return runner.invoke(cli, [*args, "--data", str(data)], env={"COLUMNS": "250"})


def run_json(data: Path, *args: str) -> Any:
    result = run(data, *args, "--json")
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def admin_answer(data: Path, path: str, query: str = "") -> Any:
    """What the admin API answers on the same data directory."""
    store = ControlStore(data / "control.db")
    accounting = SqliteAccountingStore(
        data / "state" / "accounting.db", Retention.from_config(Config())
    )
    try:
        status, body = AdminApi(store, accounting).handle("GET", f"/admin/v1{path}", query, b"")
    finally:
        accounting.close()
        store.close()
    assert status == 200
    return json.loads(body)


# -- overview ------------------------------------------------------------------------------------


def test_overview_json(data: Path) -> None:
    found = run_json(data, "overview", "acme/web")
    assert found["source"]["workspace"] == "acme"
    assert found["source"]["name"] == "web"
    assert found["source"]["id"].startswith("src_")
    assert found["granularity"] == "hour"
    assert found["summary"] == {
        "successfully_received": 5,
        "failed_on_ingest": 2,
        "filtered_at_source": 2,
        "failed_processing": 0,
        "stored": 3,
        "filtered_at_destination": 0,
        "pending_retry": 0,
        "failed_delivery": 0,
        "delivered": 0,
    }
    totals = {(t["stage"], t["outcome"], t["reason"]): t["count"] for t in found["totals"]}
    assert totals == {
        ("ingest", "received", ""): 5,
        ("ingest", "failed", "invalid_json"): 2,
        ("processor", "duplicate", "message_id_seen"): 1,
        ("processor", "blocked", "unplanned_event"): 1,
        ("processor", "processed", ""): 3,
    }
    assert sum(p["count"] for p in found["series"]) == 12


def test_overview_by_id_and_granularity(data: Path) -> None:
    by_ref = run_json(data, "overview", "acme/web", "--granularity", "minute")
    by_id = run_json(data, "overview", by_ref["source"]["id"], "--granularity", "minute")
    assert by_id["summary"] == by_ref["summary"]
    assert by_id["granularity"] == "minute"
    day = run_json(data, "overview", "acme/web", "--granularity", "day")
    assert day["summary"] == by_ref["summary"]
    (bucket,) = {p["time"] for p in day["series"]}
    assert bucket.endswith("T00:00:00Z")


def test_overview_of_another_source_or_another_time_is_empty(data: Path) -> None:
    app = run_json(data, "overview", "acme/app")
    assert set(app["summary"].values()) == {0}
    assert (app["totals"], app["series"]) == ([], [])
    past = run_json(
        data, "overview", "acme/web", "--from", "2024-05-01T00:00:00Z", "--to", "1714525200"
    )
    assert (past["from"], past["to"]) == ("2024-05-01T00:00:00Z", "2024-05-01T01:00:00Z")
    assert set(past["summary"].values()) == {0}


def test_overview_json_is_the_admin_api_answer(data: Path) -> None:
    now = int(time.time())
    window = (str(now - 2 * 86400), str(now + 60))
    cli_answer = run_json(data, "overview", "acme/web", "--from", window[0], "--to", window[1])
    api_answer = admin_answer(
        data, "/sources/acme/web/overview", f"from={window[0]}&to={window[1]}&granularity=hour"
    )
    assert cli_answer == api_answer


def test_overview_table_names_the_steps(data: Path) -> None:
    result = run(data, "overview", "acme/web")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "acme/web" in out
    lines = {" ".join(line.replace("│", " ").split()) for line in out.splitlines()}
    for step, n in (
        ("successfully received", 5),
        ("failed on ingest", 2),
        ("filtered at source", 2),
        ("failed processing", 0),
        ("stored", 3),
    ):
        assert f"{step} {n}" in lines, out
    for row in (
        "ingest received - 5",
        "ingest failed invalid_json 2",
        "processor blocked unplanned_event 1",
        "processor duplicate message_id_seen 1",
        "processor processed - 3",
    ):
        assert row in lines, out


# -- violations ----------------------------------------------------------------------------------


def test_violations_json(data: Path) -> None:
    found = run_json(data, "violations", "acme/web")
    assert found["window"] == "24h"
    assert found["total"] == 3
    rows = [(v["event"], v["type"], v["field"], v["count"]) for v in found["violations"]]
    assert rows == [  # most frequent first
        ("Order Completed", "type", "properties.revenue", 2),
        ("Unplanned Thing", "unplanned_event", "event", 1),
    ]
    first, second = found["violations"]
    assert [s["message"] for s in first["samples"]] == [SAMPLE_2, SAMPLE_2]
    assert [s["message"] for s in second["samples"]] == [WEB_SAMPLE]
    assert second["samples"][0]["received_at"].endswith("Z")
    for window in ("1h", "7d"):
        assert run_json(data, "violations", "acme/web", "--window", window)["total"] == 3
    assert run_json(data, "violations", "acme/app")["total"] == 0


def test_violations_json_is_the_admin_api_answer(data: Path) -> None:
    cli_answer = run_json(data, "violations", "acme/web", "--window", "7d")
    api_answer = admin_answer(data, "/sources/acme/web/violations", "window=7d")
    for answer in (cli_answer, api_answer):
        del answer["to"]  # now, as each of them saw it
        del answer["from"]
    assert cli_answer == api_answer


def test_violations_table(data: Path) -> None:
    result = run(data, "violations", "acme/web", "--window", "1h")
    assert result.exit_code == 0, result.output
    out = result.stdout
    assert "acme/web" in out and "3 violations" in out and "last 1h" in out
    lines = [" ".join(line.replace("│", " ").split()) for line in out.splitlines()]
    assert any(
        line.startswith("Unplanned Thing unplanned_event event 1 ") and "m-unplanned" in line
        for line in lines
    ), out
    assert any(
        line.startswith("Order Completed type properties.revenue 2 ") and "m-violation" in line
        for line in lines
    ), out


def test_violations_with_a_bad_window_is_refused(data: Path) -> None:
    result = run(data, "violations", "acme/web", "--window", "2h")
    assert result.exit_code != 0
    assert "2h" in result.output


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["overview", "violations"])
@pytest.mark.parametrize("ref", ["acme/nope", "nope/web", "src_nope"])
def test_an_unknown_source_is_a_clear_error(data: Path, command: str, ref: str) -> None:
    result = run(data, command, ref)
    assert result.exit_code == 1
    assert f"Error: no source '{ref}'" in result.stderr
    assert result.stdout == ""
    assert "Traceback" not in result.output


@pytest.mark.parametrize("command", ["overview", "violations"])
def test_a_directory_without_data_is_a_clear_error(tmp_path: Path, command: str) -> None:
    result = run(tmp_path / "empty", command, "acme/web")
    assert result.exit_code == 1
    assert "no Headwater data" in result.stderr
    assert not (tmp_path / "empty").exists()


@pytest.mark.parametrize(
    "args",
    [
        ("--from", "yesterday"),
        ("--from", "2024-05-02T00:00:00Z", "--to", "2024-05-01T00:00:00Z"),
        ("--granularity", "week"),
    ],
)
def test_an_overview_it_cannot_answer_is_a_clear_error(data: Path, args: tuple[str, ...]) -> None:
    result = run(data, "overview", "acme/web", *args)
    assert result.exit_code != 0
    assert "Error" in result.stderr
    assert "Traceback" not in result.output


def headwater_bin() -> list[str]:
    script = Path(sys.executable).with_name("headwater")
    return [str(script)] if script.exists() else [sys.executable, "-m", "headwater.cli.main"]


def test_the_installed_command(data: Path) -> None:
    """The real `headwater` entry point, as an operator runs it."""
    out = subprocess.run(
        [*headwater_bin(), "overview", "acme/web", "--data", str(data), "--json"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["summary"]["stored"] == 3
    missing = subprocess.run(
        [*headwater_bin(), "violations", "acme/nope", "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert missing.returncode == 1
    assert "no source 'acme/nope'" in missing.stderr
    assert "Traceback" not in missing.stderr


# -- next to a running headwater up --------------------------------------------------------------


def test_overview_and_violations_of_a_running_server(server: HeadwaterServer) -> None:
    """Events sent to a running server: the commands read its data directory while it runs,
    and say what its admin API says."""
    admin_headers = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    ws = f"cli-{uuid.uuid4().hex[:8]}"
    with server.client(headers=admin_headers) as http:
        assert http.post("/admin/v1/workspaces", json={"name": ws}).status_code == 201
        r = http.post("/admin/v1/sources", json={"workspace": ws, "name": "web"})
        assert r.status_code == 201, r.text
        source = r.json()
    key = source["write_keys"][0]["key"]
    for i in range(3):
        r = httpx.post(
            f"{server.url}/v1/track",
            json={"userId": "u", "event": f"E{i}", "messageId": f"{ws}-{i}"},
            headers={"Authorization": basic(key)},
            timeout=10,
        )
        assert r.status_code == 200, r.text

    def hw(*args: str) -> Any:
        out = subprocess.run(
            [
                *headwater_bin(),
                *args,
                "--config",
                str(server.config_path),
                "--data",
                str(server.data),
                "--json",
            ],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
        assert out.returncode == 0, out.stderr
        return json.loads(out.stdout)

    deadline = time.monotonic() + 15
    while True:
        found = hw("overview", f"{ws}/web", "--granularity", "minute")
        if found["summary"]["stored"] >= 3 or time.monotonic() > deadline:
            break
        time.sleep(0.3)
    assert found["summary"]["successfully_received"] == 3
    assert found["summary"]["stored"] == 3
    with server.client(headers=admin_headers) as http:
        api = http.get(f"/admin/v1/sources/{source['id']}/overview").json()
    assert api["summary"] == found["summary"]
    assert api["totals"] == found["totals"]
    violations = hw("violations", f"{ws}/web")
    assert (violations["total"], violations["violations"]) == (0, [])
    assert violations["source"] == {"id": source["id"], "workspace": ws, "name": "web"}
