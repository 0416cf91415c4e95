"""Applying the workspaces and sources of `headwater.yaml` to the control store
(`headwater.control.declarative`), and the gateway's cache of write keys
(`headwater.gateway.keys`)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

import headwater.gateway.keys as keys_module
from headwater.config import Config
from headwater.control.declarative import apply_config
from headwater.control.store import ControlError, ControlStore, now_ms
from headwater.gateway.keys import KeyCache


def config(*workspaces: dict[str, Any]) -> Config:
    """A Config of the YAML shape `workspaces: [{name, sources: [{name, write_keys}]}]`."""
    return msgspec.convert({"workspaces": list(workspaces)}, Config)


def acme(*sources: dict[str, Any]) -> Config:
    return config({"name": "acme", "sources": list(sources)})


def active_keys(store: ControlStore, ref: str) -> set[str]:
    return {k.key for k in store.source(ref).write_keys if k.active(now_ms())}


# -- apply_config --------------------------------------------------------------------------------


def test_declared_workspaces_and_sources_are_created(store: ControlStore) -> None:
    applied = apply_config(
        store,
        config(
            {"name": "acme", "sources": [{"name": "web", "write_keys": ["k1", "k2"]}]},
            {"name": "beta", "sources": [{"name": "app", "write_keys": ["k3"]}]},
        ),
    )
    assert [s.ref for s in applied.sources] == ["acme/web", "beta/app"]
    assert all(s.enabled for s in applied.sources)
    assert [w.name for w in store.list_workspaces()] == ["acme", "beta"]
    grants = store.key_grants()
    assert set(grants) == {"k1", "k2", "k3"}
    assert grants["k1"].source_id == applied.sources[0].id
    assert grants["k3"].source_name == "app"


def test_every_data_directory_gives_a_declared_source_the_same_id(tmp_path: Path) -> None:
    """Gateways of one fleet each keep a control plane of their own: the messages they store
    must name the same source with the same id, or per-source views split in two."""
    declared = config(
        {"name": "acme", "sources": [{"name": "web", "write_keys": ["k1"]}, {"name": "ios"}]},
        {"name": "beta", "sources": [{"name": "web", "write_keys": ["k2"]}]},
    )
    ids = []
    for gateway in ("a", "b"):
        (tmp_path / gateway).mkdir()
        s = ControlStore(tmp_path / gateway / "control.db")
        try:
            applied = apply_config(s, declared)
            ids.append({src.ref: src.id for src in applied.sources})
            ids.append({w.name: w.id for w in s.list_workspaces()})
        finally:
            s.close()
    assert ids[0] == ids[2] and ids[1] == ids[3]
    assert len(set(ids[0].values())) == 3  # distinct sources keep distinct ids
    assert ids[0]["acme/web"] != ids[0]["beta/web"]


def test_an_empty_config_changes_nothing(store: ControlStore) -> None:
    version = store.version()
    assert apply_config(store, Config()).sources == []
    assert store.version() == version
    assert store.list_workspaces() == []


def test_applying_twice_is_idempotent(store: ControlStore) -> None:
    conf = acme({"name": "web", "write_keys": ["k1"]}, {"name": "app"})
    first = apply_config(store, conf)
    second = apply_config(store, conf)
    assert first.sources == second.sources
    assert len(store.list_sources()) == 2


def test_a_source_without_keys_keeps_its_generated_key(store: ControlStore) -> None:
    (src,) = apply_config(store, acme({"name": "web"})).sources
    (key,) = src.write_keys
    assert key.key.startswith("wk_")
    (again,) = apply_config(store, acme({"name": "web"})).sources
    assert [k.key for k in again.write_keys] == [key.key]


def test_the_declared_keys_are_exactly_the_active_config_keys(store: ControlStore) -> None:
    apply_config(store, acme({"name": "web", "write_keys": ["k1", "k2"]}))
    apply_config(store, acme({"name": "web", "write_keys": ["k2", "k3"]}))
    assert active_keys(store, "acme/web") == {"k2", "k3"}
    assert set(store.key_grants()) == {"k2", "k3"}
    # a removed key can come back
    apply_config(store, acme({"name": "web", "write_keys": ["k1"]}))
    assert set(store.key_grants()) == {"k1"}


def test_keys_made_through_the_api_are_left_alone(store: ControlStore) -> None:
    apply_config(store, acme({"name": "web", "write_keys": ["k1"]}))
    _, rotated = store.rotate_write_key("acme/web", grace_seconds=3600)
    apply_config(store, acme({"name": "web", "write_keys": ["k1"]}))
    assert rotated in store.key_grants()
    # the file is the source of truth for its own keys: k1 no longer expires
    assert store.key_grants()["k1"].expires_ms is None


def test_a_declared_key_of_another_source_is_a_conflict(store: ControlStore) -> None:
    store.create_workspace("acme")
    store.create_source("acme", "api-made", write_keys=["taken"])
    with pytest.raises(ControlError) as info:
        apply_config(store, acme({"name": "web", "write_keys": ["taken"]}))
    assert (info.value.status, info.value.code) == (409, "conflict")


def test_declared_enabled_flag_is_applied(store: ControlStore) -> None:
    declared = acme({"name": "web", "write_keys": ["k1"], "enabled": False})
    (src,) = apply_config(store, declared).sources
    assert not src.enabled
    assert store.key_grants() == {}
    (src,) = apply_config(store, acme({"name": "web", "write_keys": ["k1"]})).sources
    assert src.enabled
    assert "k1" in store.key_grants()


def test_sources_no_longer_declared_are_disabled_not_deleted(store: ControlStore) -> None:
    apply_config(store, acme({"name": "web", "write_keys": ["k1"]}, {"name": "app"}))
    applied = apply_config(store, acme({"name": "app"}))
    assert [s.ref for s in applied.sources] == ["acme/app"]
    web = store.source("acme/web")
    assert not web.enabled
    assert [k.key for k in web.write_keys] == ["k1"]
    assert "k1" not in store.key_grants()
    # declared again: enabled again
    apply_config(store, acme({"name": "web", "write_keys": ["k1"]}, {"name": "app"}))
    assert store.source("acme/web").enabled
    assert "k1" in store.key_grants()


def test_sources_made_through_the_api_are_never_disabled(store: ControlStore) -> None:
    store.create_workspace("acme")
    store.create_source("acme", "manual", write_keys=["km"])
    apply_config(store, acme({"name": "web"}))
    apply_config(store, Config())
    assert store.source("acme/manual").enabled
    assert "km" in store.key_grants()
    assert not store.source("acme/web").enabled


def test_invalid_declared_names_and_keys_are_refused(store: ControlStore) -> None:
    with pytest.raises(ControlError):
        apply_config(store, acme({"name": "a/b"}))
    with pytest.raises(ControlError):
        apply_config(store, acme({"name": "web", "write_keys": ["has space"]}))
    assert store.key_grants() == {}


def test_renaming_a_source_in_the_file_keeps_its_write_key(store: ControlStore) -> None:
    apply_config(store, acme({"name": "web", "write_keys": ["wk_web"]}))
    (src,) = apply_config(store, acme({"name": "website", "write_keys": ["wk_web"]})).sources
    assert src.ref == "acme/website"
    assert store.key_grants()["wk_web"].source_id == src.id


# -- KeyCache ------------------------------------------------------------------------------------


def test_key_cache_lookup(store: ControlStore) -> None:
    (src,) = apply_config(store, acme({"name": "web", "write_keys": ["k1"]})).sources
    cache = KeyCache(store)
    grant = cache.lookup("k1")
    assert grant is not None
    assert (grant.source_id, grant.source_name) == (src.id, "web")
    assert cache.lookup("nope") is None
    for not_a_string in (None, 1, b"k1", ["k1"]):
        assert cache.lookup(not_a_string) is None


def test_key_cache_sees_a_new_key_at_once_and_a_disabled_one_after_refresh(
    store: ControlStore,
) -> None:
    cache = KeyCache(store)
    assert cache.lookup("k1") is None
    store.create_workspace("acme")
    store.create_source("acme", "web", write_keys=["k1"])
    assert cache.lookup("k1") is not None  # a miss re-reads the control plane
    store.set_source_enabled("acme/web", False)
    assert cache.lookup("k1") is not None  # a hit does not: until the next refresh
    cache.refresh()
    assert cache.lookup("k1") is None


def test_key_cache_refresh_is_cheap_when_nothing_changed(store: ControlStore) -> None:
    store.create_workspace("acme")
    store.create_source("acme", "web", write_keys=["k1"])
    cache = KeyCache(store)
    calls = 0
    real = store.key_grants

    def counting() -> Any:
        nonlocal calls
        calls += 1
        return real()

    store.key_grants = counting  # type: ignore[method-assign]
    cache.refresh()
    cache.refresh()
    assert calls == 0
    store.disable_write_key("k1")
    cache.refresh()
    assert calls == 1
    assert cache.lookup("k1") is None


def test_key_cache_honours_the_grace_period(store: ControlStore) -> None:
    store.create_workspace("acme")
    store.create_source("acme", "web", write_keys=["old"])
    cache = KeyCache(store)
    _, new = store.rotate_write_key("acme/web", grace_seconds=3600)
    cache.refresh()
    assert cache.lookup("old") is not None
    assert cache.lookup(new) is not None
    _, newer = store.rotate_write_key("acme/web", grace_seconds=0)
    cache.refresh()
    assert cache.lookup("old") is None  # expired without waiting for a refresh of its own
    assert cache.lookup(new) is None
    assert cache.lookup(newer) is not None


def test_key_cache_checks_expiry_at_lookup_time(
    store: ControlStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.create_workspace("acme")
    store.create_source("acme", "web", write_keys=["old"])
    store.rotate_write_key("acme/web", grace_seconds=60)
    cache = KeyCache(store)
    grant = cache.lookup("old")
    assert grant is not None
    assert grant.expires_ms is not None
    expires_ns = grant.expires_ms * 1_000_000
    clock = SimpleNamespace(time_ns=lambda: expires_ns - 1_000_000)
    monkeypatch.setattr(keys_module, "time", clock)
    assert cache.lookup("old") is not None  # one millisecond before
    clock.time_ns = lambda: expires_ns
    assert cache.lookup("old") is None
