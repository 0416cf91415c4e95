"""The SQLite control plane (`headwater.control.store`): workspaces, sources, write keys,
rotation with a grace period, the admin token, and the version gateways cache on."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from headwater.control.store import ControlError, ControlStore, WriteKey, now_ms


@pytest.fixture
def store(tmp_path: Path) -> Iterator[ControlStore]:
    s = ControlStore(tmp_path / "nested" / "control.db")
    yield s
    s.close()


def codes(exc: pytest.ExceptionInfo[ControlError]) -> tuple[int, str]:
    return exc.value.status, exc.value.code


# -- workspaces ----------------------------------------------------------------------------------


def test_workspaces(store: ControlStore) -> None:
    b = store.create_workspace("beta")
    a = store.create_workspace("acme")
    assert a.id.startswith("ws_")
    assert a.id != b.id
    assert [w.name for w in store.list_workspaces()] == ["acme", "beta"]
    assert store.workspace("acme") == a
    assert store.workspace(a.id) == a


def test_duplicate_and_unknown_workspaces(store: ControlStore) -> None:
    store.create_workspace("acme")
    with pytest.raises(ControlError) as info:
        store.create_workspace("acme")
    assert codes(info) == (409, "conflict")
    with pytest.raises(ControlError) as info:
        store.workspace("nope")
    assert codes(info) == (404, "not_found")


@pytest.mark.parametrize("name", ["", "a/b", " acme", "acme ", "x" * 101])
def test_invalid_names(store: ControlStore, name: str) -> None:
    with pytest.raises(ControlError) as info:
        store.create_workspace(name)
    assert codes(info) == (400, "bad_request")
    store.create_workspace("ok")
    with pytest.raises(ControlError):
        store.create_source("ok", name)
    assert store.list_sources() == []


def test_ensure_workspace_is_idempotent(store: ControlStore) -> None:
    first = store.ensure_workspace("acme", managed_by="config")
    version = store.version()
    assert store.ensure_workspace("acme", managed_by="config") == first
    assert store.version() == version


# -- sources and write keys ----------------------------------------------------------------------


def test_a_new_source_gets_a_generated_write_key(store: ControlStore) -> None:
    store.create_workspace("acme")
    src = store.create_source("acme", "web")
    assert src.id.startswith("src_")
    assert src.ref == "acme/web"
    assert src.enabled
    (key,) = src.write_keys
    assert key.key.startswith("wk_")
    assert len(key.key) > 20
    assert key.expires_ms is None
    assert not key.disabled
    assert store.key_grants()[key.key].source_id == src.id


def test_a_source_with_given_keys(store: ControlStore) -> None:
    ws = store.create_workspace("acme")
    src = store.create_source("acme", "web", write_keys=["k1", "k2"])
    assert sorted(k.key for k in src.write_keys) == ["k1", "k2"]
    grant = store.key_grants()["k2"]
    assert (grant.source_id, grant.workspace_id, grant.source_name) == (src.id, ws.id, "web")


def test_sources_are_found_by_id_or_ref(store: ControlStore) -> None:
    store.create_workspace("acme")
    src = store.create_source("acme", "web", write_keys=["k1"])
    assert store.source(src.id) == src
    assert store.source("acme/web") == src
    for ref in ("acme/nope", "nope/web", "src_nope", "acme/"):
        with pytest.raises(ControlError) as info:
            store.source(ref)
        assert codes(info) == (404, "not_found")


def test_duplicate_source_names(store: ControlStore) -> None:
    store.create_workspace("acme")
    store.create_workspace("beta")
    store.create_source("acme", "web")
    store.create_source("beta", "web")  # another workspace: fine
    with pytest.raises(ControlError) as info:
        store.create_source("acme", "web")
    assert codes(info) == (409, "conflict")


def test_a_source_in_an_unknown_workspace(store: ControlStore) -> None:
    with pytest.raises(ControlError) as info:
        store.create_source("nope", "web")
    assert codes(info) == (404, "not_found")


def test_list_sources(store: ControlStore) -> None:
    store.create_workspace("b")
    store.create_workspace("a")
    store.create_source("b", "z")
    store.create_source("a", "y")
    store.create_source("b", "x")
    assert [s.ref for s in store.list_sources()] == ["a/y", "b/x", "b/z"]
    assert [s.ref for s in store.list_sources("b")] == ["b/x", "b/z"]
    with pytest.raises(ControlError):
        store.list_sources("nope")


@pytest.mark.parametrize("key", ["", "has space", "has:colon", "tab\tkey", "k" * 201])
def test_invalid_write_keys(store: ControlStore, key: str) -> None:
    store.create_workspace("acme")
    with pytest.raises(ControlError) as info:
        store.create_source("acme", "web", write_keys=["good", key] if key else ["good", ""])
    assert codes(info) == (400, "bad_request")
    # nothing of the failed request was kept
    assert store.list_sources() == []
    assert store.key_grants() == {}


def test_a_write_key_belongs_to_one_source(store: ControlStore) -> None:
    store.create_workspace("acme")
    store.create_source("acme", "web", write_keys=["shared"])
    with pytest.raises(ControlError) as info:
        store.create_source("acme", "app", write_keys=["shared"])
    assert codes(info) == (409, "conflict")
    assert [s.name for s in store.list_sources()] == ["web"]


def test_disabling_a_source_stops_its_keys(store: ControlStore) -> None:
    store.create_workspace("acme")
    src = store.create_source("acme", "web", write_keys=["k1"])
    assert not store.set_source_enabled("acme/web", False).enabled
    assert "k1" not in store.key_grants()
    assert store.set_source_enabled(src.id, True).enabled
    assert "k1" in store.key_grants()


def test_disable_write_key(store: ControlStore) -> None:
    store.create_workspace("acme")
    store.create_source("acme", "web", write_keys=["k1", "k2"])
    store.disable_write_key("k1")
    assert set(store.key_grants()) == {"k2"}
    keys = {k.key: k for k in store.source("acme/web").write_keys}
    assert keys["k1"].disabled
    assert not keys["k1"].active(now_ms())
    with pytest.raises(ControlError) as info:
        store.disable_write_key("nope")
    assert codes(info) == (404, "not_found")


# -- rotation ------------------------------------------------------------------------------------


def test_rotation_keeps_old_keys_for_the_grace_period(store: ControlStore) -> None:
    store.create_workspace("acme")
    store.create_source("acme", "web", write_keys=["old"])
    before = now_ms()
    src, new = store.rotate_write_key("acme/web", grace_seconds=3600)
    keys = {k.key: k for k in src.write_keys}
    assert set(keys) == {"old", new}
    assert new.startswith("wk_")
    assert keys[new].expires_ms is None
    expires = keys["old"].expires_ms
    assert expires is not None
    assert before + 3_600_000 <= expires <= now_ms() + 3_600_000
    assert keys["old"].active(now_ms())
    assert not keys["old"].active(expires)
    grants = store.key_grants()
    assert grants["old"].expires_ms == expires
    assert grants[new].expires_ms is None


def test_rotating_again_never_extends_an_earlier_expiry(store: ControlStore) -> None:
    store.create_workspace("acme")
    store.create_source("acme", "web", write_keys=["k0"])
    _, k1 = store.rotate_write_key("acme/web", grace_seconds=60)
    src, k2 = store.rotate_write_key("acme/web", grace_seconds=86400)
    keys = {k.key: k for k in src.write_keys}
    assert keys["k0"].expires_ms is not None
    assert keys[k1].expires_ms is not None
    assert keys["k0"].expires_ms < keys[k1].expires_ms
    assert keys["k0"].expires_ms <= now_ms() + 60_000
    assert keys[k2].expires_ms is None


def test_rotation_without_grace_expires_old_keys_now(store: ControlStore) -> None:
    store.create_workspace("acme")
    store.create_source("acme", "web", write_keys=["old"])
    src, new = store.rotate_write_key("acme/web", grace_seconds=0)
    keys = {k.key: k for k in src.write_keys}
    assert not keys["old"].active(now_ms())
    assert keys[new].active(now_ms())


def test_rotation_leaves_disabled_keys_alone(store: ControlStore) -> None:
    store.create_workspace("acme")
    store.create_source("acme", "web", write_keys=["off", "on"])
    store.disable_write_key("off")
    src, _ = store.rotate_write_key("acme/web")
    keys = {k.key: k for k in src.write_keys}
    assert keys["off"].disabled
    assert keys["off"].expires_ms is None
    assert keys["on"].expires_ms is not None


def test_write_key_active() -> None:
    assert WriteKey("k", 0, None, False).active(10**15)
    assert WriteKey("k", 0, 1000, False).active(999)
    assert not WriteKey("k", 0, 1000, False).active(1000)
    assert not WriteKey("k", 0, None, True).active(0)


# -- versions ------------------------------------------------------------------------------------


def test_every_change_bumps_the_version(store: ControlStore) -> None:
    seen = [store.version()]
    store.create_workspace("acme")
    seen.append(store.version())
    src = store.create_source("acme", "web", write_keys=["k1"])
    seen.append(store.version())
    store.rotate_write_key(src.id)
    seen.append(store.version())
    store.disable_write_key("k1")
    seen.append(store.version())
    store.set_source_enabled(src.id, False)
    seen.append(store.version())
    store.set_admin_token("t")
    seen.append(store.version())
    assert seen == sorted(set(seen))


def test_failed_changes_do_not_bump_the_version(store: ControlStore) -> None:
    store.create_workspace("acme")
    version = store.version()
    with pytest.raises(ControlError):
        store.create_workspace("acme")
    with pytest.raises(ControlError):
        store.create_source("acme", "web", write_keys=["bad key"])
    with pytest.raises(ControlError):
        store.disable_write_key("nope")
    assert store.version() == version


def test_two_handles_on_one_file_see_each_other(tmp_path: Path) -> None:
    path = tmp_path / "control.db"
    first, second = ControlStore(path), ControlStore(path)
    try:
        first.create_workspace("acme")
        first.create_source("acme", "web", write_keys=["k1"])
        assert second.version() == first.version()
        assert "k1" in second.key_grants()
        second.disable_write_key("k1")
        assert "k1" not in first.key_grants()
    finally:
        first.close()
        second.close()


def test_data_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "control.db"
    s = ControlStore(path)
    src = s.create_source(s.create_workspace("acme").name, "web", write_keys=["k1"])
    version = s.version()
    s.close()
    s = ControlStore(path)
    try:
        assert s.source("acme/web") == src
        assert s.version() == version
    finally:
        s.close()


# -- admin token ---------------------------------------------------------------------------------


def test_admin_token_is_stored_hashed(store: ControlStore) -> None:
    assert not store.has_admin_token()
    assert store.admin_token_hash() is None
    assert not store.check_admin_token("")
    store.set_admin_token("s3cret-token")
    assert store.has_admin_token()
    assert store.admin_token_hash() == hashlib.sha256(b"s3cret-token").hexdigest()
    assert store.check_admin_token("s3cret-token")
    assert not store.check_admin_token("s3cret-token ")
    assert not store.check_admin_token("")
    files = list(store.path.parent.glob(store.path.name + "*"))  # the database and its WAL
    assert store.path in files
    assert not any(b"s3cret-token" in f.read_bytes() for f in files)
    store.set_admin_token("next")
    assert store.check_admin_token("next")
    assert not store.check_admin_token("s3cret-token")
