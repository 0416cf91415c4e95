"""`headwater profile` (what the Profile API answers, from the data directory) and `headwater
identity rebuild` (the graph made again from its journal, with the settings of headwater.yaml),
on an identity store the identity step filled with realistic messages."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from headwater.cli.main import cli
from headwater.events.stamp import Stamp, encode_stamp
from headwater.identity.api import WHAT, ProfileApi, store_lookup
from headwater.identity.resolver import IdentityResolver
from headwater.identity.sqlite_store import SqliteIdentityStore
from headwater.identity.step import IdentityStep
from headwater.processing.runtime import Item

WEB, APP = "src_web", "src_app"
T0 = datetime(2026, 3, 1, 10, 0, tzinfo=UTC)
EMAIL = "ada@example.com"
# (source, minutes after T0 its request was received, message): one unit each, in this order
STORY: list[tuple[str, float, dict[str, Any]]] = [
    (WEB, 0, {"type": "page", "anonymousId": "laptop", "messageId": "m1", "name": "Home"}),
    (WEB, 1, {"type": "identify", "anonymousId": "laptop", "messageId": "m2",
              "traits": {"email": EMAIL, "plan": "free", "name": "Ada"}}),
    (APP, 2, {"type": "screen", "anonymousId": "phone", "messageId": "m3", "name": "Feed"}),
    (APP, 3, {"type": "identify", "anonymousId": "phone", "messageId": "m4",
              "traits": {"email": EMAIL, "plan": "pro"}}),  # the email merges the phone in
    (WEB, 4, {"type": "identify", "userId": "ada", "anonymousId": "laptop", "messageId": "m5"}),
    (WEB, 5, {"type": "group", "userId": "ada", "groupId": "acct_42", "messageId": "m6"}),
    (WEB, 6, {"type": "identify", "userId": "ada", "messageId": "m7",
              "traits": {"email": "ada@work.io", "city": "London"}}),  # a second email
    (WEB, 7, {"type": "track", "anonymousId": "someone-else", "messageId": "m8",
              "event": "Order Completed"}),
]  # fmt: skip
TRAITS = {"city": "London", "email": "ada@work.io", "name": "Ada", "plan": "pro"}


def config_yaml(tmp_path: Path, acme: str = "", *, beta: bool = False) -> Path:
    """headwater.yaml declaring acme (with `acme` as its identity settings) and maybe beta."""
    path = tmp_path / "headwater.yaml"
    text = (
        "workspaces:\n"
        "  - name: acme\n"
        "    access_tokens: [pat_acme_1]\n"
        "    sources: [{name: web, write_keys: [wk_web]}, {name: app, write_keys: [wk_app]}]\n"
        f"    identity: {{enabled: true{', types: ' + acme if acme else ''}}}\n"
    )
    if beta:
        text += "  - name: beta\n    access_tokens: [pat_beta_1]\n"
    path.write_text(text)
    return path


def fill(data: Path) -> dict[str, str]:
    """The story through the identity step into `<data>/state/identity.db`; messageId ->
    profileId."""
    store = SqliteIdentityStore(data / "state" / "identity.db")
    step = IdentityStep(IdentityResolver(store), {WEB: "acme", APP: "acme"}.get)
    out = {}
    try:
        for n, (source, minutes, message) in enumerate(STORY):
            stamp = encode_stamp(Stamp(T0 + timedelta(minutes=minutes)))
            it = Item(source, json.dumps(message).encode(), stamp=stamp, position=f"0:{n}:0")
            step([it])
            out[message["messageId"]] = json.loads(it.message)["profileId"]
    finally:
        store.close()
    return out


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def ids(data: Path) -> dict[str, str]:
    return fill(data)


def hw(config: Path, data: Path, *args: str) -> Result:
    """`headwater <args> --config <config> --data <data>`, in process, on a wide terminal."""
    return CliRunner().invoke(
        cli, [*args, "--config", str(config), "--data", str(data)], env={"COLUMNS": "250"}
    )


def test_the_story_merged_both_devices_into_the_laptops_profile(ids: dict[str, str]) -> None:
    assert ids["m1"] == ids["m4"] == ids["m7"] != ids["m3"]  # m3 made the phone's, merged since
    assert ids["m8"] not in (ids["m1"], ids["m3"])


def test_json_prints_what_the_profile_api_answers(
    tmp_path: Path, data: Path, ids: dict[str, str]
) -> None:
    result = hw(config_yaml(tmp_path), data, "profile", "user_id:ada", "--json")
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert set(shown) == {"profile_id", *WHAT}
    assert shown["profile_id"] == ids["m1"]
    assert shown["traits"]["traits"] == TRAITS
    assert [e["messageId"] for e in shown["events"]["data"]] == [f"m{n}" for n in range(7, 0, -1)]
    assert shown["metadata"]["metadata"]["merged_profiles"] == [ids["m3"]]
    assert shown["links"]["data"][0]["external_ids"][0]["id"] == "acct_42"
    api = ProfileApi(store_lookup(data / "state" / "identity.db"), {"pat_acme_1": "acme"})
    auth = "Basic " + base64.b64encode(b"pat_acme_1:").decode()
    for what in WHAT:
        path = f"/v1/spaces/acme/collections/users/profiles/email:{EMAIL}/{what}"
        status, body = api.handle("GET", path, "", auth)
        answer = json.loads(body)
        assert status == 200, answer
        if "cursor" in answer:
            assert shown[what]["cursor"] == {**answer["cursor"], "url": ""}
            answer["cursor"] = shown[what]["cursor"]
        assert shown[what] == answer, what


@pytest.mark.parametrize("ref", ["anonymous_id:phone", "email:ada@work.io", "segment_id:{m3}"])
def test_any_identifier_or_merged_profile_id_shows_the_survivor(
    tmp_path: Path, data: Path, ids: dict[str, str], ref: str
) -> None:
    result = hw(config_yaml(tmp_path), data, "profile", ref.format(**ids), "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["profile_id"] == ids["m1"]


def test_the_table_shows_the_profile_its_traits_identifiers_links_and_events(
    tmp_path: Path, data: Path, ids: dict[str, str]
) -> None:
    result = hw(config_yaml(tmp_path), data, "profile", "anonymous_id:laptop")
    assert result.exit_code == 0, result.output
    out = result.output
    assert ids["m1"] in out and f"merged from {ids['m3']}" in out
    for name, value in TRAITS.items():
        assert name in out and json.dumps(value) in out
    assert '"pro"' in out and '"free"' not in out  # the last value set, only
    for value in ("laptop", "phone", "ada", EMAIL, "ada@work.io"):
        assert value in out
    assert "linked to accounts: acct_42" in out
    assert "Home" in out and "Feed" in out and "m7" in out
    assert "someone-else" not in out and "m8" not in out


@pytest.mark.usefixtures("ids")
def test_limit_bounds_the_events_and_identifiers_shown(tmp_path: Path, data: Path) -> None:
    shown = hw(config_yaml(tmp_path), data, "profile", "user_id:ada", "--json", "--limit", "2")
    assert shown.exit_code == 0, shown.output
    answer = json.loads(shown.output)
    assert [e["messageId"] for e in answer["events"]["data"]] == ["m7", "m6"]
    assert answer["events"]["cursor"]["has_more"] is True
    assert len(answer["external_ids"]["data"]) == 2
    assert answer["external_ids"]["cursor"] == {
        "url": "",
        "has_more": True,
        "next": "2",
        "limit": 2,
    }


@pytest.mark.usefixtures("ids")
def test_limit_does_not_cut_the_traits(tmp_path: Path, data: Path) -> None:
    shown = hw(config_yaml(tmp_path), data, "profile", "user_id:ada", "--json", "--limit", "2")
    assert json.loads(shown.output)["traits"]["traits"] == TRAITS


def test_space_is_needed_when_several_workspaces_are_declared(
    tmp_path: Path, data: Path, ids: dict[str, str]
) -> None:
    config = config_yaml(tmp_path, beta=True)
    result = hw(config, data, "profile", "user_id:ada")
    assert result.exit_code != 0
    assert "--space" in result.output and "Traceback" not in result.output
    result = hw(config, data, "profile", "user_id:ada", "--space", "acme", "--json")
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["profile_id"] == ids["m1"]
    result = hw(config, data, "profile", "user_id:ada", "--space", "beta")
    assert result.exit_code == 1 and "no profile 'user_id:ada' in space 'beta'" in result.output


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("user_id:nobody", "no profile 'user_id:nobody' in space 'acme'"),
        ("segment_id:use_nothing", "no profile 'segment_id:use_nothing'"),
        ("ada", "<id_type>:<value>"),
    ],
)
@pytest.mark.usefixtures("ids")
def test_a_profile_that_is_not_there_is_an_error(
    tmp_path: Path, data: Path, ref: str, message: str
) -> None:
    for extra in ((), ("--json",)):
        result = hw(config_yaml(tmp_path), data, "profile", ref, *extra)
        assert result.exit_code == 1 and message in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)


@pytest.mark.parametrize("command", [["profile", "user_id:ada"], ["identity", "rebuild"]])
def test_no_identity_store_is_an_error_that_says_so(
    tmp_path: Path, data: Path, command: list[str]
) -> None:
    result = hw(config_yaml(tmp_path), data, *command)
    assert result.exit_code == 1
    assert "identity" in result.output and str(data) in result.output
    assert not (data / "state" / "identity.db").exists()


@pytest.mark.parametrize(
    "types",
    [
        "",
        "{email: {limit: 2, period: 1h}}",  # both of ada's emails fit
        "{email: {limit: 1, period: 30s}}",  # her emails came 5 minutes apart
        "{email: {blocked_patterns: ['@spam\\.io$']}, user_id: {priority: 1}}",
    ],
)
@pytest.mark.usefixtures("ids")
def test_rebuild_with_the_same_rules_makes_the_same_graph(
    tmp_path: Path, data: Path, types: str
) -> None:
    db = data / "state" / "identity.db"
    before = SqliteIdentityStore(db)
    partition = before.partition("acme")
    before.close()
    result = hw(config_yaml(tmp_path, types), data, "identity", "rebuild")
    assert result.exit_code == 0, result.output
    assert "replayed 7 journaled messages of 1 workspace(s)" in result.output
    assert "the rebuilt graph is the same as the current one" in result.output
    assert sorted(p.name for p in db.parent.iterdir() if "rebuilt" in p.name) == []
    after = SqliteIdentityStore(db)
    assert after.partition("acme") == partition  # the graph itself is left as it was
    after.close()


@pytest.mark.parametrize(
    "types",
    [
        "{email: {blocked_patterns: ['@example\\.com$']}}",  # the email that merged the phone
        "{email: {blocked: ['ADA@EXAMPLE.COM']}}",
        "{email: {limit: 1}}",  # no second email this week
        "{email: {limit: 1, period: ever}}",
        "{anonymous_id: {limit: 1, period: ever}}",  # the phone can no longer join
    ],
)
@pytest.mark.usefixtures("ids")
def test_rebuild_with_rules_that_change_the_graph_exits_1(
    tmp_path: Path, data: Path, types: str
) -> None:
    result = hw(config_yaml(tmp_path, types), data, "identity", "rebuild")
    assert result.exit_code == 1, result.output
    assert "replayed 7 journaled messages of 1 workspace(s)" in result.output
    assert "the rebuilt graph differs in: acme" in result.output
    assert "is the same" not in result.output
    assert not (data / "state" / "identity.rebuilt.db").exists()
