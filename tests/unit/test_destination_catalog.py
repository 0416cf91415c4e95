"""Destinations in the control plane (`headwater.control.destinations.DestinationCatalog`): made,
changed and deleted through the catalog, checked as the file is, declared in `headwater.yaml`
next to API-made ones, versioned for the router, and shown with their secrets masked."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from click.testing import CliRunner

from headwater.cli.destinations import destinations
from headwater.config import Config, DestinationConfig, FilterConfig, load_config
from headwater.control.declarative import apply_config
from headwater.control.destinations import (
    MASK,
    DestinationCatalog,
    destination_json,
    keep_masked,
    mask_settings,
)
from headwater.control.store import MANAGED_BY_API, MANAGED_BY_CONFIG, ControlError, ControlStore
from headwater.delivery.routes import destination_id

HOOK = {"url": "http://127.0.0.1:9/in"}


@pytest.fixture
def catalog(store: ControlStore) -> DestinationCatalog:
    """A catalog over workspaces acme (sources web, app) and other (source web)."""
    store.create_workspace("acme")
    store.create_workspace("other")
    for ref in ("acme/web", "acme/app", "other/web"):
        ws, _, name = ref.partition("/")
        store.create_source(ws, name)
    return DestinationCatalog(store)


def hook(name: str = "hook", **fields: Any) -> DestinationConfig:
    fields.setdefault("settings", HOOK)
    return msgspec.convert({"name": name, "type": "webhook", **fields}, DestinationConfig)


def config(*workspaces: dict[str, Any]) -> Config:
    """A Config of the YAML shape `workspaces: [{name, sources, destinations}]`."""
    return msgspec.convert({"workspaces": list(workspaces)}, Config)


def acme(*destinations: dict[str, Any]) -> dict[str, Any]:
    return {"name": "acme", "sources": [{"name": "web"}], "destinations": list(destinations)}


def declared(name: str = "hook", **fields: Any) -> dict[str, Any]:
    return {"name": name, "type": "webhook", "settings": HOOK, **fields}


@contextlib.contextmanager
def expect_error(status: int, code: str, *words: str) -> Iterator[None]:
    """The block raises a `ControlError` of `status` and `code` whose message has `words`."""
    with pytest.raises(ControlError) as info:
        yield
    err = info.value
    assert (err.status, err.code) == (status, code), f"{err.status} {err.code}: {err}"
    for word in words:
        assert word in str(err), str(err)


# -- create, read --------------------------------------------------------------------------------


def test_create_stores_the_whole_config(catalog: DestinationCatalog) -> None:
    conf = hook(
        sources=["web"],
        filters={"types": ["track"], "events": ["Order Completed"], "where": "properties.x > 1"},
        retry_period=90,
        ordered=True,
        settings={**HOOK, "batch_size": 10, "headers": {"X-Team": "data"}},
    )
    made = catalog.create("acme", conf)
    assert made.id == destination_id("acme", "hook")
    assert (made.workspace, made.ref, made.managed_by) == ("acme", "acme/hook", MANAGED_BY_API)
    assert made.config == conf
    assert made.updated_ms > 0
    assert catalog.get(made.id) == made
    assert catalog.get("acme/hook") == made
    assert catalog.all() == [made]


def test_all_is_ordered_and_filtered_by_workspace(catalog: DestinationCatalog) -> None:
    b = catalog.create("acme", hook("b"))
    a = catalog.create("acme", hook("a"))
    other = catalog.create("other", hook("a"))  # the same name in another workspace
    assert catalog.all() == [a, b, other]
    assert catalog.all("acme") == [a, b]
    assert catalog.all("other") == [other]
    assert a.id != other.id
    with expect_error(404, "not_found"):
        catalog.all("nowhere")


def test_unknown_refs_are_not_found(catalog: DestinationCatalog) -> None:
    catalog.create("acme", hook())
    for ref in ("dst_nope", "acme/nope", "other/hook", "nowhere/hook"):
        with expect_error(404, "not_found", ref):
            catalog.get(ref)
        with expect_error(404, "not_found"):
            catalog.update(ref, {"enabled": False})
        with expect_error(404, "not_found"):
            catalog.delete(ref)


def test_a_taken_name_is_a_conflict_an_unknown_workspace_not_found(
    catalog: DestinationCatalog,
) -> None:
    first = catalog.create("acme", hook())
    with expect_error(409, "conflict", "acme/hook"):
        catalog.create("acme", hook(settings={"url": "http://127.0.0.1:9/other"}))
    assert catalog.all() == [first]
    with expect_error(404, "not_found", "nowhere"):
        catalog.create("nowhere", hook())


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("fields", "words"),
    [
        ({"name": "a/b"}, ["name"]),
        ({"name": ""}, ["name"]),
        ({"name": " padded"}, ["name"]),
        ({"type": "carrier-pigeon"}, ["type", "carrier-pigeon", "webhook"]),
        ({"sources": ["web", "mobile"]}, ["sources", "mobile"]),
        ({"settings": {}}, ["settings", "url"]),
        ({"settings": {**HOOK, "method": "GET"}}, ["settings", "method"]),
        ({"settings": {**HOOK, "colour": "red"}}, ["settings", "colour"]),
        ({"filters": {"types": ["purchase"]}}, ["filters", "purchase"]),
        ({"filters": {"where": "properties.total >"}}, ["filters", "condition"]),
        ({"retry_period": 0}, ["retry_period"]),
        ({"retry_period": "-1h"}, ["retry_period"]),
        ({"retry_period": "soon"}, ["retry_period"]),
        ({"retry_period": float("inf")}, ["retry_period"]),
    ],
)
def test_invalid_destinations_are_refused(
    catalog: DestinationCatalog, fields: dict[str, Any], words: list[str]
) -> None:
    name = fields.pop("name", "hook")
    conf = hook(name, **fields)
    before = catalog.version()
    with expect_error(400, "validation_error", *words):
        catalog.create("acme", conf)
    assert catalog.all() == []
    assert catalog.version() == before


def test_sources_are_those_of_the_destinations_workspace(
    store: ControlStore, catalog: DestinationCatalog
) -> None:
    store.create_source("other", "mobile")
    with expect_error(400, "validation_error", "mobile"):
        catalog.create("acme", hook(sources=["mobile"]))
    assert catalog.create("other", hook(sources=["mobile", "web"])).config.sources == [
        "mobile",
        "web",
    ]


# -- update, delete ------------------------------------------------------------------------------


def test_update_changes_only_the_given_fields(catalog: DestinationCatalog) -> None:
    made = catalog.create("acme", hook(sources=["web"], retry_period="1h"))
    changed = catalog.update("acme/hook", {"enabled": False, "filters": {"types": ["identify"]}})
    assert changed.id == made.id
    assert changed.config == hook(
        sources=["web"], retry_period="1h", enabled=False, filters={"types": ["identify"]}
    )
    assert catalog.get(made.id) == changed
    assert changed.updated_ms >= made.updated_ms


@pytest.mark.parametrize(
    ("changes", "words"),
    [
        ({"name": "renamed"}, ["name"]),
        ({"colour": "red"}, ["colour"]),
        ({"enabled": "yes"}, ["enabled"]),
        ({"sources": ["mobile"]}, ["sources", "mobile"]),
        ({"type": "segment"}, ["settings", "write_key"]),
        ({"settings": {"url": "ftp://x"}}, ["settings", "url"]),
        ({"retry_period": 0}, ["retry_period"]),
    ],
)
def test_invalid_updates_change_nothing(
    catalog: DestinationCatalog, changes: dict[str, Any], words: list[str]
) -> None:
    made = catalog.create("acme", hook())
    before = catalog.version()
    with expect_error(400, "validation_error", *words):
        catalog.update(made.id, changes)
    assert catalog.get(made.id) == made
    assert catalog.version() == before


def test_update_keeps_masked_secrets(catalog: DestinationCatalog) -> None:
    settings = {**HOOK, "secret": "shh", "headers": {"Authorization": "Bearer abc", "X-A": "1"}}
    made = catalog.create("acme", hook(settings=settings))
    shown = destination_json(made)["settings"]
    assert shown == {**HOOK, "secret": MASK, "headers": {"Authorization": MASK, "X-A": "1"}}
    shown["url"] = "http://127.0.0.1:9/moved"
    shown["headers"]["X-A"] = "2"
    changed = catalog.update(made.id, {"settings": shown})
    assert changed.config.settings == {
        "url": "http://127.0.0.1:9/moved",
        "secret": "shh",
        "headers": {"Authorization": "Bearer abc", "X-A": "2"},
    }
    replaced = catalog.update(made.id, {"settings": {**HOOK, "secret": "new"}})
    assert replaced.config.settings == {**HOOK, "secret": "new"}  # settings replaced whole


def test_delete_removes_a_destination(catalog: DestinationCatalog) -> None:
    made = catalog.create("acme", hook())
    kept = catalog.create("acme", hook("kept"))
    assert catalog.delete("acme/hook") == made
    assert catalog.all() == [kept]
    with expect_error(404, "not_found"):
        catalog.get(made.id)
    assert catalog.create("acme", hook()).id == made.id  # the name is free again


def test_version_changes_on_every_write_and_only_then(catalog: DestinationCatalog) -> None:
    seen = [catalog.version()]

    def changed() -> bool:
        seen.append(catalog.version())
        return seen[-1] != seen[-2]

    made = catalog.create("acme", hook())
    assert changed()
    assert seen[-1][0] == 1
    catalog.update(made.id, {"enabled": False})
    assert changed()
    catalog.update(made.id, {"enabled": False})  # nothing to change
    assert not changed()
    catalog.update(made.id, {})
    assert not changed()
    catalog.delete(made.id)
    assert changed()
    assert seen[-1][0] == 0
    catalog.create("acme", hook())  # the same count as two writes ago: still a new version
    assert changed()
    assert len(set(seen)) == 5  # four writes and the start
    assert DestinationCatalog(catalog.store).version() == seen[-1]  # one more catalog: same


def test_config_managed_destinations_cannot_be_changed_or_deleted(
    catalog: DestinationCatalog,
) -> None:
    catalog.apply_config(config(acme(declared())))
    made = catalog.get("acme/hook")
    with expect_error(409, "managed_by_config", "acme/hook"):
        catalog.update(made.id, {"enabled": False})
    with expect_error(409, "managed_by_config"):
        catalog.delete("acme/hook")
    assert catalog.get(made.id) == made


# -- headwater.yaml ------------------------------------------------------------------------------


def test_apply_config_adds_updates_and_disables(catalog: DestinationCatalog) -> None:
    catalog.apply_config(config(acme(declared("a"), declared("b", sources=["web"]))))
    a, b = catalog.all()
    assert (a.name, a.managed_by, a.config.enabled) == ("a", MANAGED_BY_CONFIG, True)
    assert b.config.sources == ["web"]

    v = catalog.version()
    catalog.apply_config(config(acme(declared("a"), declared("b", sources=["web"]))))
    assert catalog.version() == v  # unchanged file: nothing written
    assert catalog.all() == [a, b]

    catalog.apply_config(config(acme(declared("a", filters={"types": ["track"]}))))
    assert catalog.version() != v
    a2, b2 = catalog.all()
    assert a2.config.filters == FilterConfig(types=["track"])
    assert (a2.managed_by, a2.config.enabled) == (MANAGED_BY_CONFIG, True)
    assert (b2.config.enabled, b2.managed_by) == (False, MANAGED_BY_API)  # disabled, kept
    assert b2.config.sources == ["web"]
    catalog.delete(b2.id)  # handed over to the API: it may go now


def test_a_destination_declared_again_is_enabled_and_managed_by_the_file(
    catalog: DestinationCatalog,
) -> None:
    catalog.apply_config(config(acme(declared())))
    catalog.apply_config(config(acme()))
    assert catalog.get("acme/hook").config.enabled is False
    catalog.apply_config(config(acme(declared())))
    again = catalog.get("acme/hook")
    assert (again.config.enabled, again.managed_by) == (True, MANAGED_BY_CONFIG)


def test_apply_config_leaves_api_made_destinations_alone(catalog: DestinationCatalog) -> None:
    mine = catalog.create("acme", hook("mine", enabled=False))
    catalog.apply_config(config(acme(declared())))
    catalog.apply_config(config(acme()))
    assert catalog.get("acme/mine") == mine


def test_the_file_takes_over_an_api_made_destination_of_the_same_name(
    catalog: DestinationCatalog,
) -> None:
    made = catalog.create("acme", hook(settings={"url": "http://127.0.0.1:9/api"}))
    catalog.apply_config(config(acme(declared())))
    taken = catalog.get(made.id)
    assert (taken.managed_by, taken.config.settings) == (MANAGED_BY_CONFIG, HOOK)


def test_apply_config_checks_the_stored_sources(catalog: DestinationCatalog) -> None:
    with expect_error(400, "validation_error", "nowhere"):
        catalog.apply_config(config(acme(declared(sources=["nowhere"]))))


def test_headwater_yaml_destinations_reach_the_control_plane(
    tmp_path: Path, store: ControlStore
) -> None:
    path = tmp_path / "headwater.yaml"
    path.write_text(
        """
workspaces:
  - name: shop
    sources: [{name: web}, {name: app}]
    destinations:
      - {name: My Hook, type: webhook, sources: [web], retry_period: 30m,
         settings: {url: "http://127.0.0.1:9/in", secret: shh}}
      - {name: Segment, type: segment, settings: {write_key: wk_abc}}
"""
    )
    apply_config(store, load_config(path))
    catalog = DestinationCatalog(store)
    hook_, segment = catalog.all()
    assert (hook_.ref, hook_.managed_by, hook_.config.retry_period) == (
        "shop/My Hook",
        MANAGED_BY_CONFIG,
        "30m",
    )
    assert hook_.id == destination_id("shop", "My Hook")
    assert destination_json(segment)["settings"] == {"write_key": MASK}
    assert destination_json(hook_)["settings"]["secret"] == MASK


# -- masking -------------------------------------------------------------------------------------


def test_mask_settings_hides_secret_settings_and_headers() -> None:
    secrets = {k: f"{k}-value" for k in ("secret", "write_key", "password", "token")}
    headers = {"authorization": "a", "X-Api-Key": "k", "X-Auth-TOKEN": "t", "Client-Secret": "c"}
    settings = {"url": "http://x", "timeout": 5, **secrets, "headers": {**headers, "X-T": "d"}}
    assert mask_settings(settings) == {
        "url": "http://x",
        "timeout": 5,
        **dict.fromkeys(secrets, MASK),
        "headers": {**dict.fromkeys(headers, MASK), "X-T": "d"},
    }
    assert settings["secret"] == "secret-value"  # not changed in place


def test_keep_masked_puts_back_only_masked_secrets() -> None:
    old = {"secret": "s", "headers": {"Authorization": "Bearer a", "X-Team": "data"}}
    new = {
        "secret": MASK,
        "token": MASK,  # nothing stored to keep: sent as it is
        "headers": {"AUTHORIZATION": MASK, "X-Team": MASK},  # X-Team is no secret
    }
    assert keep_masked(new, old) == {
        "secret": "s",
        "token": MASK,
        "headers": {"AUTHORIZATION": "Bearer a", "X-Team": MASK},
    }


def test_destination_json_has_the_documented_shape(catalog: DestinationCatalog) -> None:
    made = catalog.create("acme", hook(sources=["web"], settings={**HOOK, "secret": "s"}))
    shown = destination_json(made)
    fields = "id workspace name type sources settings filters enabled retry_period ordered"
    assert list(shown) == [*fields.split(), "managed_by", "updated_at"]
    assert shown["filters"] == {"types": None, "events": None, "where": None}
    assert shown["updated_at"].endswith("Z")
    assert len(shown["updated_at"]) == len("2024-05-01T12:00:00.000Z")
    assert msgspec.json.decode(msgspec.json.encode(shown)) == shown


def test_the_cli_lists_destinations(store: ControlStore, catalog: DestinationCatalog) -> None:
    catalog.create("acme", hook(sources=["web"], settings={**HOOK, "secret": "s"}))
    catalog.create("other", hook("all", enabled=False))
    data = ["--data", str(store.path.parent)]
    table = CliRunner().invoke(destinations, ["list", *data])
    assert table.exit_code == 0, table.output
    assert "acme/hook" in table.output and "(every source)" in table.output
    as_json = CliRunner().invoke(destinations, ["list", "--json", "--workspace", "acme", *data])
    (shown,) = msgspec.json.decode(as_json.output)
    assert (shown["name"], shown["settings"]["secret"]) == ("hook", MASK)
    missing = CliRunner().invoke(destinations, ["list", "--workspace", "nowhere", *data])
    assert missing.exit_code == 1 and "nowhere" in missing.output
