"""Identity settings in the control plane: what the file declares wins at every start, what the
admin API set stays when the file says nothing, and bad settings are refused."""

from __future__ import annotations

from pathlib import Path

import pytest

from headwater.config import IdentityConfig, load_config
from headwater.control.declarative import apply_config
from headwater.control.identity import IdentityCatalog
from headwater.control.store import ControlError, ControlStore


def config(tmp_path: Path, identity: str) -> Path:
    path = tmp_path / "headwater.yaml"
    path.write_text(
        "workspaces:\n  - name: acme\n" + identity + "    sources: [{name: web}]\n",
        encoding="utf-8",
    )
    return path


def test_the_file_wins_at_every_start_and_the_api_keeps_the_rest(tmp_path: Path) -> None:
    store = ControlStore(tmp_path / "control.db")
    catalog = IdentityCatalog(store)
    apply_config(store, load_config(config(tmp_path, "")))
    assert catalog.get("acme") == IdentityConfig()  # nothing set: the defaults
    catalog.put("acme", {"enabled": True, "max_merges": 7})
    apply_config(store, load_config(config(tmp_path, "")))  # the file says nothing of identity
    assert catalog.get("acme").max_merges == 7
    declared = "    identity: {enabled: true, max_merges: 3}\n"
    apply_config(store, load_config(config(tmp_path, declared)))
    assert catalog.get("acme").max_merges == 3
    assert catalog.all() == {"acme": catalog.get("acme")}
    store.close()


def test_unchanged_settings_keep_the_control_plane_version(tmp_path: Path) -> None:
    store = ControlStore(tmp_path / "control.db")
    catalog = IdentityCatalog(store)
    store.ensure_workspace("acme", managed_by="api")
    catalog.put("acme", {"enabled": True})
    version = store.version()
    catalog.put("acme", {"enabled": True})
    assert store.version() == version  # the processor has nothing to reload
    catalog.put("acme", {"enabled": False})
    assert store.version() != version
    store.close()


@pytest.mark.parametrize(
    "bad",
    [
        {"max_identifiers": 0},
        {"types": {"email": {"period": "-1s"}}},
        {"types": {"email": {"blocked_patterns": ["("]}}},
        {"types": {"Bad Type!": {}}},
        {"enabled": "yes please"},
        {"unknown": 1},
    ],
)
def test_bad_settings_are_refused_with_a_validation_error(tmp_path: Path, bad: object) -> None:
    store = ControlStore(tmp_path / "control.db")
    catalog = IdentityCatalog(store)
    store.ensure_workspace("acme", managed_by="api")
    with pytest.raises(ControlError) as err:
        catalog.put("acme", bad)
    assert err.value.code == "validation_error"
    assert catalog.get("acme") == IdentityConfig()
    store.close()
